"""Retry policy and health reporting: the one owner of reconnects.

Components offer ``async def run(self) -> None`` and raise when they fail; :func:`supervise` runs
them again after a capped exponential backoff with jitter. A failing component is logged once when
it starts failing and once when it recovers, at DEBUG in between; a link that keeps dropping right
after it came up is logged as unstable, with a summary at most once a period.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable

from edge_agent.errors import ConfigError

log = logging.getLogger(__name__)

# A broker link has held once it lasted this many keepalive periods (at least LINK_HELD_MIN_S):
# it then carried keepalive exchanges both ways, so a broker, proxy or firewall that drops links
# after a while has had its chance. Only a link that held resets the backoff.
LINK_HELD_KEEPALIVES = 2
LINK_HELD_MIN_S = 10.0


def link_held_after_s(keepalive_s: float) -> float:
    """How long a broker link must last to count as held (see ``LINK_HELD_KEEPALIVES``)."""
    return max(LINK_HELD_MIN_S, LINK_HELD_KEEPALIVES * keepalive_s)


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
    """Failure / recovery bookkeeping for one component, with state-change logging.

    ``held_after_s``: a link that fails sooner than this after it came up has not held: the
    component is *unstable* (flapping) rather than recovered and lost again. The first such drop
    is logged with how long the link lasted, later ones are summed up at most once every
    ``summary_every_s`` ("unstable: 5 drops in 60 s"), and once a link holds, "stable again" is
    logged once. The supervisor resets its backoff only for a link that held. ``0`` (the
    default, for sources): every success counts as held, every failure after it is a new outage.
    """

    def __init__(
        self,
        kind: str,
        name: str,
        *,
        on_change: Callable[[bool], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        held_after_s: float = 0.0,
        summary_every_s: float = 60.0,
    ) -> None:
        self.kind = kind
        self.name = name
        self.up = False
        self.failures = 0
        self.held_after_s = held_after_s
        self.summary_every_s = summary_every_s
        self._failing_since: float | None = None
        self._up_since = 0.0
        # While unstable: when it started, drops since then and since the last summary.
        self._unstable_since: float | None = None
        self._drops = 0
        self._drops_unsummed = 0
        self._summary_at = 0.0
        self._on_change = on_change
        self._clock = clock
        # Structured context for JSON logs (edge_agent.logs.JsonFormatter).
        self.log_extra: dict[str, str] = (
            {"source": name} if kind == "source" else {"component": kind}
        )

    @property
    def held(self) -> bool:
        """Up, for at least ``held_after_s``."""
        return self.up and self._clock() - self._up_since >= self.held_after_s

    def ok(self) -> None:
        """The component did useful work (a good poll, a link that is up); cheap to repeat."""
        if self.up:
            if self._unstable_since is not None and self.held:
                log.info(
                    "%s '%s' stable again: the link has held %.0f s, after %d drop(s) in %.0f s",
                    self.kind,
                    self.name,
                    self._clock() - self._up_since,
                    self._drops,
                    self._up_since - self._unstable_since,
                    extra=self.log_extra,
                )
                self._unstable_since = None
            return
        self.up = True
        self._up_since = self._clock()
        if self._unstable_since is not None:
            log.debug("%s '%s' up again (unstable)", self.kind, self.name, extra=self.log_extra)
        elif self._failing_since is not None:
            # Good news, and the unavailable warning before it already drew attention.
            log.info(
                "%s '%s' recovered after %.1f s",
                self.kind,
                self.name,
                self._up_since - self._failing_since,
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
        now = self._clock()
        was_up = self.up
        dropped = was_up and not self.held  # up, but not for long: not a new outage
        if self._unstable_since is not None:
            if was_up:
                self._drops += 1
                self._drops_unsummed += 1
            if self._drops_unsummed and now - self._summary_at >= self.summary_every_s:
                log.warning(
                    "%s '%s' unstable: %d drop(s) in %.0f s (last: %s); retrying in %.1f s",
                    self.kind,
                    self.name,
                    self._drops_unsummed,
                    now - self._summary_at,
                    reason,
                    retry_in_s,
                    extra=self.log_extra,
                )
                self._summary_at = now
                self._drops_unsummed = 0
            else:
                log.debug(
                    "%s '%s' still unstable: %s; retrying in %.1f s",
                    self.kind,
                    self.name,
                    reason,
                    retry_in_s,
                    extra=self.log_extra,
                )
        elif dropped:
            self._unstable_since = self._up_since
            self._summary_at = now
            self._drops = 1
            self._drops_unsummed = 0
            self._failing_since = None
            log.warning(
                "%s '%s' unstable: the link dropped %.1f s after it came up: %s; retrying in "
                "%.1f s (further drops are summed up)",
                self.kind,
                self.name,
                now - self._up_since,
                reason,
                retry_in_s,
                extra=self.log_extra,
            )
        elif self._failing_since is None:
            self._failing_since = now
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

    The backoff starts over only when the component had held (``health.held``: up, for
    ``health.held_after_s``) before failing: a link that drops right after it came up keeps
    backing off, instead of being retried at the initial delay forever.
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
            if health.held:
                backoff.reset()
            delay = backoff.next_delay()
            if health.failures == 0 or health.held:
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
