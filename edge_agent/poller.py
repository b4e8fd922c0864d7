"""Fixed-rate polling of one source.

Ticks fall on ``start + k × poll_interval``. A poll that overruns skips the ticks it missed and
counts them (``edge_agent_poll_skipped_ticks_total``) instead of piling polls up.

Every sample is screened before the engine sees it, whatever the protocol: a NaN or infinite
number, or a number outside the tag's configured ``min`` / ``max``, becomes a BAD sample (value
``None``), logged once when the tag goes bad and once when it is good again. The engine counts
BAD as unknown time, never as a state or a count.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable

from edge_agent.config.schema import SourceConfig
from edge_agent.errors import NotConnectedError, SourceError
from edge_agent.metrics import Metrics
from edge_agent.model import Quality, Sample, Source
from edge_agent.supervisor import Health

log = logging.getLogger(__name__)


class Poller:
    """Connects a source and polls it until the connection fails.

    ``run()`` raises :class:`NotConnectedError` when the source must be reconnected; the
    supervisor decides when. A transient :class:`SourceError` (e.g. Modbus "device busy") costs
    one poll, not the connection.
    """

    def __init__(
        self,
        source: Source,
        cfg: SourceConfig,
        *,
        deliver: Callable[[list[Sample]], None],
        health: Health,
        metrics: Metrics,
        on_source_restart: Callable[[], None] = lambda: None,
        monotonic: Callable[[], float] = time.monotonic,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.source = source
        self.cfg = cfg
        self._deliver = deliver
        self.health = health
        self._monotonic = monotonic
        self._clock = clock
        self.skipped_ticks = 0
        self.polls = 0
        self.connected_once = False
        labels = {"source": cfg.name}
        self._m_duration = metrics.poll_duration.labels(**labels)
        self._m_errors = metrics.poll_errors.labels(**labels)
        self._m_skipped = metrics.skipped_ticks.labels(**labels)
        self._m_bad = metrics.bad_samples.labels(**labels)
        self._m_age = metrics.tag_age.labels(**labels)
        self._m_last_good = metrics.last_good_read.labels(**labels)
        self._last_good: float | None = None
        self._transient_logged = False
        self._on_source_restart = on_source_restart
        self._server_start: float | None = None
        self._log_extra = {"source": cfg.name}
        self._limits: dict[str, tuple[float | None, float | None]] = {
            tag.name: (tag.min_value, tag.max_value)
            for tag in cfg.tags
            if tag.min_value is not None or tag.max_value is not None
        }
        self._screened_bad: set[str] = set()

    def screen(self, samples: list[Sample]) -> list[Sample]:
        """Samples with non-finite or out-of-range numbers turned BAD (see the module docs)."""
        limits = self._limits
        if not limits and not self._screened_bad:
            # Hot path (a scan per poll interval): without limits only a non-finite float can
            # turn a sample bad; return the list as it is when there is none.
            isfinite = math.isfinite
            for sample in samples:
                value = sample.value
                if isinstance(value, float) and not isfinite(value):
                    break
            else:
                return samples
        out: list[Sample] | None = None
        for index, sample in enumerate(samples):
            value = sample.value
            reason: str | None = None
            if sample.quality is not Quality.BAD and isinstance(value, int | float):
                if isinstance(value, float) and not math.isfinite(value):
                    reason = f"non-finite value {value!r}"
                elif sample.tag in limits and not isinstance(value, bool):
                    low, high = limits[sample.tag]
                    if low is not None and value < low:
                        reason = f"value {value!r} below its min {low:g}"
                    elif high is not None and value > high:
                        reason = f"value {value!r} above its max {high:g}"
            if reason is None:
                if self._screened_bad and sample.tag in self._screened_bad:
                    self._screened_bad.discard(sample.tag)
                    log.info(
                        "source '%s': tag '%s' is in range again",
                        self.cfg.name,
                        sample.tag,
                        extra=self._log_extra,
                    )
                continue
            if sample.tag not in self._screened_bad:
                self._screened_bad.add(sample.tag)
                log.warning(
                    "source '%s': tag '%s': %s; reported as bad",
                    self.cfg.name,
                    sample.tag,
                    reason,
                    extra=self._log_extra,
                )
            if out is None:
                out = list(samples)
            out[index] = Sample(
                sample.source, sample.tag, None, Quality.BAD, sample.source_time, sample.agent_time
            )
        return samples if out is None else out

    def _read_deadline_s(self) -> float:
        # Sources put a deadline on every request; this outer one only catches a stuck library.
        requests = max(1, int(getattr(self.source, "requests_per_scan", 1)))
        return self.cfg.timeout_s * (requests + 1)

    async def run(self) -> None:
        try:
            await self._run()
        except (NotConnectedError, SourceError, TimeoutError, OSError):
            self._m_errors.inc()
            raise
        finally:
            try:
                async with asyncio.timeout(self.cfg.timeout_s):
                    await self.source.close()
            except Exception:  # closing a dead connection may fail; nothing left to do
                log.debug(
                    "closing source '%s' failed",
                    self.cfg.name,
                    exc_info=True,
                    extra=self._log_extra,
                )

    async def _run(self) -> None:
        async with asyncio.timeout(self.cfg.timeout_s * 2):
            await self.source.connect()
        self.connected_once = True
        # OPC UA tells us when the PLC restarted: its counters were reset, not wrapped.
        start = getattr(self.source, "server_start_time", None)
        if isinstance(start, float):
            if self._server_start is not None and start != self._server_start:
                log.warning(
                    "source '%s' restarted since the last connection",
                    self.cfg.name,
                    extra=self._log_extra,
                )
                self._on_source_restart()
            self._server_start = start
        interval = self.cfg.poll_interval_s
        next_tick = self._monotonic()
        while True:
            started = self._monotonic()
            try:
                async with asyncio.timeout(self._read_deadline_s()):
                    samples = await self.source.read()
            except TimeoutError as exc:
                raise NotConnectedError(
                    f"no answer within {self._read_deadline_s():.1f} s"
                ) from exc
            except NotConnectedError:
                raise
            except SourceError as exc:
                self._m_errors.inc()
                if not self._transient_logged:
                    log.warning(
                        "source '%s': poll failed: %s", self.cfg.name, exc, extra=self._log_extra
                    )
                    self._transient_logged = True
                samples = []
            else:
                if self._transient_logged:
                    log.info(
                        "source '%s': polls succeed again", self.cfg.name, extra=self._log_extra
                    )
                    self._transient_logged = False
            elapsed = self._monotonic() - started
            self._m_duration.observe(elapsed)
            self.polls += 1
            if samples:
                samples = self.screen(samples)
                bad = sum(1 for s in samples if s.quality is not Quality.GOOD)
                if bad:
                    self._m_bad.inc(bad)
                else:
                    self._last_good = self._clock()
                    self._m_last_good.set(self._last_good)
                self._deliver(samples)
                self.health.ok()
            if self._last_good is not None:
                self._m_age.set(max(0.0, self._clock() - self._last_good))

            next_tick += interval
            now = self._monotonic()
            if now >= next_tick:
                missed = int((now - next_tick) // interval) + 1
                self.skipped_ticks += missed
                self._m_skipped.inc(missed)
                next_tick += missed * interval
                log.debug(
                    "source '%s': poll took %.3f s, skipped %d tick(s)",
                    self.cfg.name,
                    elapsed,
                    missed,
                    extra=self._log_extra,
                )
            await asyncio.sleep(next_tick - now)
