"""Retry policy and health reporting: the one owner of reconnects.

Components offer ``async def run(self) -> None`` and raise when they fail; :func:`supervise` runs
them again after a capped exponential backoff with jitter. A failing component is logged once when
it starts failing and once when it recovers, at DEBUG in between.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable

from edge_agent.errors import ConfigError

log = logging.getLogger(__name__)


class Backoff:
    """Capped exponential backoff with full jitter on the upper half: delays grow
    initial, 2·initial, 4·initial … up to ``max_s``, each drawn from [d/2, d]."""

    def __init__(self, initial_s: float, max_s: float, *, rng: random.Random | None = None) -> None:
        self.initial_s = max(initial_s, 0.001)
        self.max_s = max(max_s, self.initial_s)
        self._attempt = 0
        self._rng = rng or random.Random()

    def next_delay(self) -> float:
        ceiling = min(self.max_s, self.initial_s * (2**self._attempt))
        self._attempt = min(self._attempt + 1, 62)
        return self._rng.uniform(ceiling / 2, ceiling)

    def reset(self) -> None:
        self._attempt = 0


class Health:
    """Failure / recovery bookkeeping for one component, with state-change logging."""

    def __init__(
        self,
        kind: str,
        name: str,
        *,
        on_change: Callable[[bool], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.kind = kind
        self.name = name
        self.up = False
        self.failures = 0
        self._failing_since: float | None = None
        self._on_change = on_change
        self._clock = clock
        # Structured context for JSON logs (edge_agent.logs.JsonFormatter).
        self.log_extra: dict[str, str] = (
            {"source": name} if kind == "source" else {"component": kind}
        )

    def ok(self) -> None:
        """The component did useful work (a good poll, an acknowledged publish)."""
        if self.up:
            return
        self.up = True
        if self._failing_since is not None:
            # Good news, and the unavailable warning before it already drew attention.
            log.info(
                "%s '%s' recovered after %.1f s",
                self.kind,
                self.name,
                self._clock() - self._failing_since,
                extra=self.log_extra,
            )
            self._failing_since = None
        else:
            log.info("%s '%s' up", self.kind, self.name, extra=self.log_extra)
        if self._on_change:
            self._on_change(True)

    def failed(self, exc: BaseException, retry_in_s: float) -> None:
        self.failures += 1
        reason = str(exc) or type(exc).__name__
        if self._failing_since is None:
            self._failing_since = self._clock()
            log.warning(
                "%s '%s' unavailable: %s; retrying in %.1f s",
                self.kind,
                self.name,
                reason,
                retry_in_s,
                extra=self.log_extra,
            )
        else:
            log.debug(
                "%s '%s' still unavailable: %s; retrying in %.1f s",
                self.kind,
                self.name,
                reason,
                retry_in_s,
                extra=self.log_extra,
            )
        was_up = self.up
        self.up = False
        if self._on_change and (was_up or self.failures == 1):
            self._on_change(False)


async def supervise(
    run: Callable[[], Awaitable[None]],
    health: Health,
    backoff: Backoff,
    *,
    fatal: tuple[type[BaseException], ...] = (ConfigError,),
    on_restart: Callable[[], None] | None = None,
) -> None:
    """Run ``run()`` until it returns; after a failure wait a backoff delay and run it again.

    The backoff starts over once the component has recovered (``health.up``) before failing.
    Exceptions in ``fatal`` propagate (they are not fixed by retrying). Cancellation propagates.
    """
    while True:
        try:
            await run()
            return
        except asyncio.CancelledError:
            raise
        except fatal:
            raise
        except Exception as exc:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                # The component failed while being cancelled (a library turned the
                # cancellation into its own error): stop, do not retry.
                raise asyncio.CancelledError from exc
            if health.up:
                backoff.reset()
            delay = backoff.next_delay()
            if health.failures == 0 or health.up:
                log.debug(
                    "%s '%s' failed",
                    health.kind,
                    health.name,
                    exc_info=True,
                    extra=health.log_extra,
                )
            health.failed(exc, delay)
            if on_restart:
                on_restart()
            await asyncio.sleep(delay)
