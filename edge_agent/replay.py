"""``edge-agent replay``: recorded samples through the live engine, on the samples' own clock.

Contract (DESIGN §5): each sample of the CSV (:mod:`edge_agent.samplecsv`) is ingested by every
line's :class:`~edge_agent.engine.line.LineEngine` as a sample read at its ``timestamp``
(``agent_time``; no ``source_time``). Time advances only with the samples: before a sample at
``t``, every window that ends at or before ``t`` is closed at its exact end, boundary by boundary
across lines, so the ``kpi/shift`` reports come out in time order however sparse the samples are.
The output is those reports (one per line per closed shift), then one ``kpi`` snapshot per line
of the windows still open at the last sample's time.

Replay reads no PLC, publishes nothing and never touches the state directory. It streams the
CSV (one row in memory at a time); only the reports, a few per line and shift, are held until
the end, so that a bad row anywhere prints errors only, never half a result.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, TextIO

from edge_agent import contract
from edge_agent.config.schema import AgentConfig
from edge_agent.console import format_table as format_lines
from edge_agent.engine.line import LineEngine
from edge_agent.engine.reports import KpiReport, Report
from edge_agent.engine.shifts import SHIFT
from edge_agent.exits import EXIT_CONFIG, EXIT_DATAERR, EXIT_NOINPUT, EXIT_OK
from edge_agent.model import Sample
from edge_agent.samplecsv import CsvProblem, SampleReader

MAX_PROBLEMS_SHOWN = 20


@dataclass(slots=True)
class ReplayResult:
    closed: list[dict[str, Any]] = field(default_factory=list)  # kpi/shift payloads, in time order
    open: list[dict[str, Any]] = field(default_factory=list)  # kpi snapshots, one per line
    samples: int = 0
    problems: list[CsvProblem] = field(default_factory=list)


class Replayer:
    """Drives one engine per configured line with samples in time order."""

    def __init__(self, cfg: AgentConfig) -> None:
        # An ended window waits for its counts as live (at most settle_s, so that replay of an
        # export gives the live reports); the end of the data settles the rest (finish).
        self.engines = [LineEngine(line, site=cfg.site) for line in cfg.lines]
        self.closed: list[dict[str, Any]] = []
        self.time: float | None = None

    def advance(self, t: float) -> None:
        """Move every engine to ``t``, closing the windows that end before it at their ends."""
        if self.time is not None and t <= self.time:
            return
        while True:
            due = [e.window.end for e in self.engines if e.window is not None and e.window.end <= t]
            if not due:
                break
            boundary = min(due)
            for engine in self.engines:
                self._collect(engine.tick(boundary))
        for engine in self.engines:
            self._collect(engine.tick(t))
        self.time = t

    def feed(self, sample: Sample) -> None:
        self.advance(sample.agent_time)
        for engine in self.engines:
            engine.ingest(sample)

    def snapshots(self) -> list[dict[str, Any]]:
        """The open windows' ``kpi`` payloads at the last sample's time (none without samples)."""
        if self.time is None:
            return []
        t = self.time
        return [contract.payload(engine.snapshot(t)) for engine in self.engines]

    def finish(self) -> None:
        """The end of the data: report the ended windows still waiting for counts."""
        if self.time is not None:
            for engine in self.engines:
                self._collect(engine.finish(self.time))

    def _collect(self, reports: Iterable[Report]) -> None:
        """Keep the final reports of closed shifts (not hours)."""
        self.closed.extend(
            contract.payload(r)
            for r in reports
            if isinstance(r, KpiReport) and r.closed and r.window.kind == SHIFT
        )


def replay(cfg: AgentConfig, stream: TextIO) -> ReplayResult:
    """Replay the CSV ``stream`` through ``cfg``'s lines. With bad rows, ``problems`` lists them
    all and the reports are left empty."""
    reader = SampleReader(stream)
    replayer = Replayer(cfg)
    result = ReplayResult()
    for sample in reader:
        result.samples += 1
        if not reader.problems:  # after a bad row only validate: the result will not be shown
            replayer.feed(sample)
    result.problems = reader.problems
    if not result.problems:
        replayer.finish()
        result.closed = replayer.closed
        result.open = replayer.snapshots()
    return result


def _ratio(value: Any) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


_TABLE_COLUMNS = (
    "LINE",
    "WINDOW",
    "START",
    "END",
    "STATUS",
    "A",
    "P",
    "Q",
    "OEE",
    "TOTAL",
    "GOOD",
    "REJECT",
    "COVERAGE",
)


def format_table(result: ReplayResult) -> str:
    """A human table of the reports: closed shifts first, then the open windows."""
    rows = []
    for status, payloads in (("closed", result.closed), ("open", result.open)):
        for p in payloads:
            w = p["window"]
            rows.append(
                (
                    p["line"],
                    w["name"],
                    w["start"],
                    w["end"],
                    status,
                    _ratio(p["availability"]),
                    _ratio(p["performance"]),
                    _ratio(p["quality"]),
                    _ratio(p["oee"]),
                    str(p["total_count"]),
                    str(p["good_count"]),
                    str(p["reject_count"]),
                    _ratio(p["data_coverage"]),
                )
            )
    columns = [(name, 0) for name in _TABLE_COLUMNS]
    return "\n".join(format_lines(columns, rows, align="lllll", sep="  ")) + "\n"


def replay_main(config_path: str, csv_path: str, fmt: str = "json") -> int:
    """The ``replay`` command: reports on stdout, problems on stderr; returns the exit code."""
    from edge_agent.config.loader import load_config  # noqa: PLC0415
    from edge_agent.errors import ConfigError  # noqa: PLC0415

    try:
        cfg = load_config(config_path, check_files=False)
    except ConfigError as exc:
        for issue in exc.issues:
            print(issue, file=sys.stderr)
        print(f"{len(exc.issues)} problem(s); nothing was replayed", file=sys.stderr)
        return EXIT_CONFIG
    except OSError as exc:
        print(f"{config_path}: cannot read: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        if csv_path == "-":
            result = replay(cfg, sys.stdin)
        else:
            with open(csv_path, encoding="utf-8-sig", newline="") as stream:
                result = replay(cfg, stream)
    except OSError as exc:
        print(f"{csv_path}: cannot read: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_NOINPUT
    except UnicodeDecodeError as exc:
        print(f"{csv_path}: not UTF-8 text: {exc}", file=sys.stderr)
        return EXIT_DATAERR
    if result.problems:
        for problem in result.problems[:MAX_PROBLEMS_SHOWN]:
            print(f"{csv_path}:{problem.line}: {problem.message}", file=sys.stderr)
        more = len(result.problems) - MAX_PROBLEMS_SHOWN
        if more > 0:
            print(f"... and {more} more bad row(s)", file=sys.stderr)
        print(
            f"{len(result.problems)} bad row(s) in {csv_path}; nothing was replayed",
            file=sys.stderr,
        )
        return EXIT_DATAERR
    if fmt == "table":
        sys.stdout.write(format_table(result))
    else:
        for payload in [*result.closed, *result.open]:
            print(json.dumps(payload, ensure_ascii=False))
    print(
        f"# replayed {result.samples} sample(s): {len(result.closed)} closed shift report(s), "
        f"{len(result.open)} open window(s)",
        file=sys.stderr,
    )
    return EXIT_OK
