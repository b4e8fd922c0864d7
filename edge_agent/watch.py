"""``edge-agent watch``: the subscriber's view of many suppliers' agents on one broker.

Subscribes to ``{prefix}/+/#`` (or one ``--site``) and shows a table with one row per site and
line: the agent's presence, the line's state, OEE and A/P/Q, throughput, data coverage, when its
latest ``kpi`` was produced, and the messages lost according to ``seq`` (docs/mqtt.md). A line is
marked ``stale`` when its latest ``kpi`` is older than ``--stale-after`` (default 3 × the
agent's default publish interval), and ``offline`` when its agent's retained status says so.

On a terminal the table is redrawn in place; otherwise it is printed every ``--refresh`` seconds.
``--once`` prints it once, after the retained messages arrived, and exits. The output goes to
stdout on purpose: this module is a terminal front end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import logging
import ssl
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from edge_agent.console import (
    BrokerView,
    Screen,
    clock_now,
    fmt_int,
    fmt_num,
    fmt_pct,
    follow,
    format_table,
)
from edge_agent.exits import EXIT_OK, EXIT_UNAVAILABLE, EXIT_USAGE

log = logging.getLogger(__name__)

EXIT_UNREACHABLE = EXIT_UNAVAILABLE  # the broker cannot be reached or refused us

DEFAULT_PUBLISH_INTERVAL_S = 5.0  # the agent's default mqtt.publish_interval
_QUIET_S = 0.5  # --once: retained messages come in one burst; this long without one ends it
_ONCE_MAX_S = 10.0

_COLUMNS = (
    ("SITE", 6),
    ("LINE", 6),
    ("AGENT", 7),
    ("STATE", 12),
    ("OEE", 6),
    ("A", 6),
    ("P", 6),
    ("Q", 6),
    ("GOOD/H", 7),
    ("KNOWN/H", 7),  # good parts per hour with data (GOOD/H: per hour of the shift so far)
    ("TOTAL/H", 7),
    ("COVER", 6),
    ("SEEN", 6),
    ("GAPS", 4),
    ("MARK", 4),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="broker host (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=None, help="broker port (1883, 8883 with TLS)")
    parser.add_argument(
        "--prefix", default="edge-agent", help="the agents' mqtt.topic_prefix (default edge-agent)"
    )
    parser.add_argument("--site", default=None, help="show this site only (default: every site)")
    parser.add_argument("--username", default=None)
    parser.add_argument("--password-file", default=None, metavar="PATH")
    parser.add_argument("--tls", action="store_true", help="connect with TLS (1.2 or newer)")
    parser.add_argument("--ca-file", default=None, metavar="PATH", help="implies --tls")
    parser.add_argument("--cert-file", default=None, metavar="PATH", help="client certificate")
    parser.add_argument("--key-file", default=None, metavar="PATH")
    parser.add_argument(
        "--insecure", action="store_true", help="skip the TLS host name check (chain still checked)"
    )
    parser.add_argument(
        "--stale-after",
        type=float,
        default=None,
        metavar="SECONDS",
        help="mark a line stale when its latest kpi is older than this "
        f"(default 3 × {DEFAULT_PUBLISH_INTERVAL_S:g} s, the agents' default publish interval)",
    )
    parser.add_argument(
        "--refresh", type=float, default=2.0, metavar="SECONDS", help="redraw interval (default 2)"
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--once", action="store_true", help="print the table once the retained messages arrived"
    )
    mode.add_argument(
        "--duration", type=float, default=None, metavar="SECONDS", help="stop after this long"
    )


# -- what came back from the broker ---------------------------------------------------------


@dataclass(slots=True)
class FleetView:
    """Everything received under ``{prefix}/``, folded per site (a :class:`BrokerView` each)."""

    prefix: str
    site: str | None = None  # None: every site
    sites: dict[str, BrokerView] = field(default_factory=dict)

    @property
    def topic_filter(self) -> str:
        return f"{self.prefix}/{self.site or '+'}/#"

    def receive(
        self, topic: str, payload: bytes, *, now: float, now_monotonic: float, retained: bool
    ) -> None:
        base = self.prefix + "/"
        if not topic.startswith(base):
            return
        site = topic[len(base) :].split("/", 1)[0]
        if not site or (self.site is not None and site != self.site):
            return
        view = self.sites.get(site)
        if view is None:
            view = self.sites[site] = BrokerView(prefix=self.prefix, site=site)
        view.receive(topic, payload, now_monotonic=now_monotonic, now=now, retained=retained)


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    if seconds < 172800:
        return f"{seconds / 3600:.0f}h"
    return f"{seconds / 86400:.0f}d"


def render_fleet(view: FleetView, now: float, stale_after_s: float) -> list[str]:
    """The table's text lines: a header, then one row per site and line, sorted; a site whose
    agent announced itself but no line yet gets one row with line ``-``."""
    rows: list[list[str]] = []
    for site in sorted(view.sites):
        sv = view.sites[site]
        agent = sv.status or "?"
        if not sv.lines:
            mark = "OFFLINE" if sv.status == "offline" else ""
            rows.append([site, "-", agent, *["-"] * 11, mark])
            continue
        for name in sorted(sv.lines):
            lv = sv.lines[name]
            k = lv.kpi or {}
            marks = []
            if sv.status == "offline":
                marks.append("OFFLINE")
            age = None if lv.last_kpi_time is None else max(0.0, now - lv.last_kpi_time)
            if age is None or age > stale_after_s:
                marks.append("STALE")
            rows.append(
                [
                    site,
                    name,
                    agent,
                    lv.state or "-",
                    fmt_pct(k.get("oee")),
                    fmt_pct(k.get("availability")),
                    fmt_pct(k.get("performance")),
                    fmt_pct(k.get("quality")),
                    fmt_num(k.get("throughput_good_per_h"), 0),
                    fmt_num(k.get("throughput_good_per_known_h"), 0),
                    fmt_num(k.get("throughput_total_per_h"), 0),
                    fmt_pct(k.get("data_coverage")),
                    "-" if age is None else _age(age),
                    fmt_int(lv.seq_gaps),
                    ",".join(marks),
                ]
            )
    return format_table(_COLUMNS, rows, align="llll" + "r" * 10 + "l")


# -- the command -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class WatchOptions:
    host: str
    port: int
    prefix: str
    site: str | None
    username: str | None
    password: str | None
    tls_context: ssl.SSLContext | None
    stale_after_s: float
    refresh_s: float
    once: bool
    duration_s: float | None


def _options(args: argparse.Namespace) -> WatchOptions:
    """Check the arguments; raises ValueError with a message for the user."""
    from edge_agent.sinks.mqtt_client import build_tls_context  # noqa: PLC0415

    tls = args.tls or bool(args.ca_file or args.cert_file)
    password = None
    if args.password_file:
        if not args.username:
            raise ValueError("--password-file needs --username")
        try:
            password = Path(args.password_file).read_text(encoding="utf-8").rstrip("\r\n")
        except OSError as exc:
            raise ValueError(f"cannot read --password-file: {exc.strerror or exc}") from None
    if args.key_file and not args.cert_file:
        raise ValueError("--key-file needs --cert-file")
    context = None
    if tls:
        try:
            context = build_tls_context(
                args.ca_file, args.cert_file, args.key_file, insecure=args.insecure
            )
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(f"TLS set-up failed: {exc}") from None
    for name in ("stale_after", "refresh", "duration"):
        value = getattr(args, name)
        if value is not None and value <= 0:
            raise ValueError(f"--{name.replace('_', '-')} must be > 0, got {value:g}")
    return WatchOptions(
        host=args.host,
        port=args.port or (8883 if tls else 1883),
        prefix=args.prefix.rstrip("/"),
        site=args.site,
        username=args.username,
        password=password,
        tls_context=context,
        stale_after_s=args.stale_after or 3 * DEFAULT_PUBLISH_INTERVAL_S,
        refresh_s=args.refresh,
        once=args.once,
        duration_s=args.duration,
    )


async def run_watch(args: argparse.Namespace, *, out: TextIO | None = None) -> int:
    """Run ``edge-agent watch``; returns the exit code (0, 64 bad options, 69 no broker)."""
    out = out or sys.stdout
    try:
        opts = _options(args)
    except ValueError as exc:
        sys.stderr.write(f"edge-agent watch: {exc}\n")
        return EXIT_USAGE
    from edge_agent.sinks.mqtt_client import MqttError  # noqa: PLC0415

    view = FleetView(prefix=opts.prefix, site=opts.site)
    screen = Screen(out)
    live = not opts.once and out.isatty()
    where = f"{opts.host}:{opts.port}"

    def table() -> list[str]:
        return render_fleet(view, time.time(), opts.stale_after_s)

    def header() -> str:
        return (
            f"edge-agent watch: {view.topic_filter} on {where}, "
            f"{len(view.sites)} site(s), stale after {opts.stale_after_s:g} s"
        )

    received = asyncio.Event()

    def on_message(topic: str, payload: bytes, retained: bool) -> None:
        view.receive(
            topic, payload, now=time.time(), now_monotonic=time.monotonic(), retained=retained
        )
        received.set()

    subscribed = asyncio.Event()

    async def quiet() -> None:
        # --once: retained messages arrive in one burst after SUBACK; stop once it is over.
        while True:
            received.clear()
            try:
                async with asyncio.timeout(_QUIET_S):
                    await received.wait()
            except TimeoutError:
                return

    async def redraw() -> None:
        while True:
            if live:
                screen.draw([header(), "", *table()])
            else:
                # UTC: the sites may lie in several zones, and the agents' status is in UTC.
                screen.say(f"{clock_now(datetime.UTC)} UTC {header()}")
                for text in table():
                    screen.say(text)
                screen.say("")
            await asyncio.sleep(opts.refresh_s)

    failure: list[MqttError] = []

    async def consume() -> None:
        try:
            await follow(
                opts.host,
                opts.port,
                view.topic_filter,
                on_message,
                # A random one: several people may watch the same broker.
                client_id=f"edge-agent-watch-{uuid.uuid4().hex[:12]}",
                username=opts.username,
                password=opts.password,
                tls_context=opts.tls_context,  # --insecure is applied in the context
                timeout_s=10.0,
                on_subscribed=subscribed.set,
            )
        except MqttError as exc:  # unreachable, refused, or the link lost later
            failure.append(exc)
        finally:
            subscribed.set()

    async with asyncio.TaskGroup() as tg:
        consumer = tg.create_task(consume(), name="watch-consume")
        await subscribed.wait()
        if not failure:
            if opts.once:
                # Live agents keep publishing: the burst is over at the latest after this.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(_ONCE_MAX_S):
                        await quiet()
            else:
                drawer = tg.create_task(redraw(), name="watch-redraw")
                # Until --duration, Ctrl-C or the end of the link.
                await asyncio.wait([consumer], timeout=opts.duration_s)
                drawer.cancel()
        consumer.cancel()
    if failure:
        sys.stderr.write(f"edge-agent watch: broker {where}: {failure[0]}\n")
        return EXIT_UNREACHABLE
    if opts.once:
        for text in table():
            screen.say(text)
        return EXIT_OK
    if live:
        screen.draw([header(), "", *table()])
    else:
        for text in table():
            screen.say(text)
    return EXIT_OK
