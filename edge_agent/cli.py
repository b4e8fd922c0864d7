"""``edge-agent`` command line: run, check-config, calendar, config-schema, replay, history
export, certs, demo, watch, version."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from edge_agent import __version__
from edge_agent.errors import ConfigError
from edge_agent.exits import (
    EXIT_CANTCREAT,
    EXIT_CONFIG,
    EXIT_INTERRUPTED,
    EXIT_NOINPUT,
    EXIT_USAGE,
)

log = logging.getLogger("edge_agent")


def _logging_options(parser: argparse.ArgumentParser, default: Any) -> None:
    """``--log-level`` and ``--log-format``, accepted before and after the subcommand. The
    subcommand's copies default to SUPPRESS so they never overwrite a value given before it."""
    parser.add_argument(
        "--log-level", default=default, help="DEBUG, INFO, WARNING, ERROR (default: from config)"
    )
    parser.add_argument(
        "--log-format", choices=("text", "json"), default=default, help="default: from config"
    )


def _config_options(parser: argparse.ArgumentParser, *, positional: bool = True) -> None:
    """The configuration file, as ``-c FILE``, ``--config FILE`` or (``positional``) ``FILE``:
    every subcommand that reads a configuration accepts each form (:func:`_config_path`)."""
    parser.add_argument(
        "-c", "--config", dest="config_option", metavar="FILE", help="YAML configuration file"
    )
    if positional:
        parser.add_argument(
            "config_positional",
            nargs="?",
            metavar="FILE",
            help="YAML configuration file (the same as -c FILE)",
        )


def _config_path(parser: argparse.ArgumentParser, args: argparse.Namespace) -> str:
    """The one configuration file given, or a usage error (exit 2) saying how to give it."""
    option = getattr(args, "config_option", None)
    positional = getattr(args, "config_positional", None)
    if option is not None and positional is not None and option != positional:
        parser.error(f"two configuration files given ({positional} and -c {option}): give one")
    path: str | None = option if option is not None else positional
    if path is None:
        parser.error(f"{args.command}: give the configuration file: -c FILE (or FILE)")
    assert path is not None  # parser.error exits
    return path


def _sub(
    sub: Any, name: str, help_text: str, description: str, *examples: str
) -> argparse.ArgumentParser:
    """A subcommand whose ``--help`` has a description and examples."""
    epilog = "examples:\n" + "\n".join(f"  edge-agent {example}" for example in examples)
    parser: argparse.ArgumentParser = sub.add_parser(
        name,
        help=help_text,
        description=description,
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _logging_options(parser, argparse.SUPPRESS)
    return parser


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edge-agent",
        description="Shop-floor edge agent: PLC tags (OPC UA, Modbus) to OEE KPIs over MQTT.",
        epilog="Each command has its own help with examples: edge-agent COMMAND --help",
    )
    parser.add_argument("--version", action="version", version=f"edge-agent {__version__}")
    _logging_options(parser, None)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p_run = _sub(
        sub,
        "run",
        "run the agent (the systemd service runs this)",
        "Run the agent: poll the PLCs, compute the KPIs, publish them over MQTT until SIGTERM. "
        "A bad configuration stops it before anything starts (exit 78).",
        "run -c /etc/edge-agent/agent.yaml",
        "run /etc/edge-agent/agent.yaml --log-level DEBUG",
        "run -c agent.yaml --once      # poll once, print samples and KPIs, exit",
    )
    _config_options(p_run)
    p_run.add_argument(
        "--once",
        action="store_true",
        help="poll each source once, print the samples and the KPIs it would publish, exit",
    )
    p_run.add_argument(
        "--event-loop",
        choices=("asyncio", "uvloop"),
        default="asyncio",
        help="uvloop: a faster event loop, 5-30%% less CPU (pip install 'edge-agent[uvloop]'; "
        "docs/performance.md)",
    )

    p_check = _sub(
        sub,
        "check-config",
        "validate a configuration file (exit 0 or 78)",
        "Validate a configuration file without touching the network: every problem is printed "
        "as FILE:LINE:COL: yaml.path: message (exit 78); the secret, key and certificate files "
        "it names must exist and parse. Warnings do not change the exit code.",
        "check-config /etc/edge-agent/agent.yaml",
        "check-config -c agent.yaml --dump",
    )
    _config_options(p_check)
    p_check.add_argument(
        "--dump",
        action="store_true",
        help="print the effective configuration (defaults filled in, paths resolved) as YAML; "
        "secrets are never in it, and usernames are redacted",
    )

    p_cal = _sub(
        sub,
        "calendar",
        "show each line's days off in a year (public holidays, site days, worked holidays)",
        "Show the days on which no shift starts for each line in a year: the country's public "
        "holidays (calendar.country, from the holidays package), the site's own holidays and "
        "substitute days, and the public holidays it works.",
        "calendar -c /etc/edge-agent/agent.yaml",
        "calendar -c agent.yaml --year 2026 --line press1",
    )
    _config_options(p_cal)
    p_cal.add_argument("--year", type=int, help="the year to show (default: this year)")
    p_cal.add_argument("--line", help="only this line")

    p_certs = _sub(
        sub,
        "certs",
        "create certificates",
        "Create certificates the agent needs.",
        "certs opcua --out /etc/edge-agent/opcua",
    )
    certs_sub = p_certs.add_subparsers(dest="certs_command", required=True, metavar="KIND")
    p_opcua = certs_sub.add_parser(
        "opcua", help="the agent's OPC UA application instance certificate and key"
    )
    p_opcua.add_argument("--out", required=True, help="directory to write them to")
    p_opcua.add_argument(
        "--application-uri",
        default="urn:edge-agent:client",
        help="ApplicationUri put in the subjectAltName (default: urn:edge-agent:client)",
    )
    p_opcua.add_argument(
        "--hostname",
        action="append",
        default=None,
        help="DNS name or IP in the subjectAltName; repeat for more (default: this host's name)",
    )
    p_opcua.add_argument("--days", type=int, default=3650, help="validity in days (3650)")
    p_opcua.add_argument("--force", action="store_true", help="replace existing files")
    p_fp = certs_sub.add_parser("fingerprint", help="a certificate file's subject and fingerprints")
    p_fp.add_argument("file", help="certificate, DER or PEM")
    p_show = certs_sub.add_parser(
        "show-server", help="the certificate an OPC UA server presents (GetEndpoints)"
    )
    p_show.add_argument("endpoint", help="e.g. opc.tcp://192.168.0.10:4840")
    p_show.add_argument("--timeout", type=float, default=10.0, help="seconds (10)")

    p_replay = _sub(
        sub,
        "replay",
        "recompute KPIs from recorded samples (CSV) with the live engine; exit 0, 65 or 78",
        "Feed recorded samples (CSV: timestamp,tag,value) through the live engine and print "
        "one kpi/shift payload per closed shift, then the open windows (docs/replay.md).",
        "replay -c agent.yaml samples.csv",
        "replay agent.yaml samples.csv --format table",
    )
    _config_options(p_replay, positional=False)
    p_replay.add_argument(
        "files",
        nargs="+",
        metavar="[FILE] SAMPLES",
        help="the configuration (unless -c FILE), then the CSV with header "
        "timestamp,tag,value ('-' for stdin)",
    )
    p_replay.add_argument(
        "--format",
        choices=("json", "table"),
        default="json",
        help="json: one kpi/shift payload per line, then the open windows (default); table",
    )

    p_history = _sub(
        sub,
        "history",
        "the recorded sample history",
        "The sample history the agent records (storage.history).",
        "history export -c agent.yaml --from 2026-03-02T06:00+09:00 -o samples.csv",
    )
    history_sub = p_history.add_subparsers(dest="history_command", required=True, metavar="ACTION")
    p_export = _sub(
        history_sub,
        "export",
        "write recorded samples as the CSV that replay reads",
        "Write the recorded samples as the CSV that replay reads.",
        "history export -c agent.yaml --from 2026-03-02T06:00+09:00 -o samples.csv",
        "history export agent.yaml --tag press1.total",
    )
    _config_options(p_export)
    p_export.add_argument(
        "--from",
        dest="start",
        help="ISO 8601 with offset; the export starts with every tag's last value before it",
    )
    p_export.add_argument("--to", dest="end", help="ISO 8601 with offset (exclusive)")
    p_export.add_argument(
        "--tag",
        action="append",
        default=[],
        metavar="SOURCE.TAG",
        help="only this tag (repeat for more); default: every tag",
    )
    p_export.add_argument("-o", "--output", help="output file (default: stdout)")

    _sub(
        sub,
        "config-schema",
        "print the JSON Schema of the configuration file (for editors; "
        "docs/schemas/config.schema.json)",
        "Print the JSON Schema of the configuration file, for editors' completion and checks.",
        "config-schema > config.schema.json",
    )

    p_demo = _sub(
        sub,
        "demo",
        "simulated PLCs + agent + broker in one command, with a live KPI table",
        "Start simulated PLCs, a broker and the agent, and show the KPIs live.",
        "demo",
        "demo --duration 60",
    )
    from edge_agent.demo import add_arguments  # noqa: PLC0415

    add_arguments(p_demo)

    p_watch = _sub(
        sub,
        "watch",
        "live table of the KPIs of every agent (site, line) on a broker",
        "Subscribe to a broker and show the KPIs of every agent (site, line) publishing to it.",
        "watch --host broker.plant.local",
        "watch --host broker.plant.local --tls --ca-file ca.pem --site plant1",
    )
    from edge_agent.watch import add_arguments as add_watch_arguments  # noqa: PLC0415

    add_watch_arguments(p_watch)
    return parser


def _setup_logging(args: argparse.Namespace, level: str = "INFO", fmt: str = "text") -> None:
    from edge_agent.logs import setup_logging  # noqa: PLC0415

    setup_logging(args.log_level or level, args.log_format or fmt)


def main(argv: Sequence[str] | None = None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    if args.command == "replay":
        files = list(args.files)
        if args.config_option is None and len(files) == 2:
            args.config_positional = files.pop(0)
        if len(files) != 1:
            parser.error("replay: give the configuration and one CSV: replay -c FILE SAMPLES")
        args.samples = files[0]
    if args.command in ("run", "check-config", "calendar", "replay") or (
        args.command == "history" and args.history_command == "export"
    ):
        args.config = _config_path(parser, args)
    if args.command == "check-config":
        from edge_agent.config.loader import check_config_main  # noqa: PLC0415

        return check_config_main(args.config, dump=args.dump)
    if args.command == "calendar":
        return _calendar(args)
    if args.command == "certs":
        return _certs(args)
    if args.command == "config-schema":
        from edge_agent.config.json_schema import config_schema_text  # noqa: PLC0415

        sys.stdout.write(config_schema_text())
        return 0
    if args.command == "demo":
        from edge_agent.demo import run_demo  # noqa: PLC0415

        _setup_logging(args, "WARNING")
        try:
            return asyncio.run(run_demo(args))
        except KeyboardInterrupt:
            return EXIT_INTERRUPTED
    if args.command == "run":
        return _run(args)
    if args.command == "replay":
        from edge_agent.replay import replay_main  # noqa: PLC0415

        return replay_main(args.config, args.samples, args.format)
    if args.command == "history":
        return _history_export(args)
    if args.command == "watch":
        from edge_agent.watch import run_watch  # noqa: PLC0415

        _setup_logging(args, "WARNING")
        try:
            return asyncio.run(run_watch(args))
        except KeyboardInterrupt:
            return EXIT_INTERRUPTED
    raise AssertionError(args.command)


def _calendar(args: argparse.Namespace) -> int:
    """``edge-agent calendar``: the resolved days of each line's calendar in a year."""
    from datetime import date  # noqa: PLC0415

    from edge_agent import calendars  # noqa: PLC0415
    from edge_agent.config.loader import load_config  # noqa: PLC0415

    try:
        cfg = load_config(args.config, check_files=False)
    except ConfigError as exc:
        for issue in exc.issues:
            print(issue, file=sys.stderr)
        return EXIT_CONFIG
    year = args.year if args.year is not None else date.today().year
    lines = [line for line in cfg.lines if args.line is None or line.name == args.line]
    if not lines:
        names = ", ".join(line.name for line in cfg.lines)
        print(f"{args.config}: no line named {args.line!r} (lines: {names})", file=sys.stderr)
        return EXIT_USAGE
    for index, line in enumerate(lines):
        cal = line.calendar
        source = (
            f"public holidays of {cal.country} (holidays {calendars.package_version()})"
            if cal.country
            else "no country calendar"
        )
        if index:
            print()
        print(f"{line.name} ({line.timezone}), {year}: {source}")
        days = calendars.resolve(
            cal.country,
            cal.holidays,
            cal.worked_holidays,
            [(s.date, s.instead_of) for s in cal.substitute_days],
            year,
        )
        for day in days:
            print(f"  {day.date.isoformat()} {day.date:%a}  {day.kind:<10}  {day.name}")
        off = sum(1 for day in days if day.off)
        print(f"  {off} days off")
    return 0


def _certs(args: argparse.Namespace) -> int:
    if args.certs_command != "opcua":
        from edge_agent.certs import show_main  # noqa: PLC0415

        return show_main(args.certs_command, args)
    import socket  # noqa: PLC0415
    from pathlib import Path  # noqa: PLC0415

    from edge_agent.certs import make_opcua_certificate  # noqa: PLC0415

    hostnames = args.hostname or [socket.gethostname()]
    try:
        made = make_opcua_certificate(
            Path(args.out),
            application_uri=args.application_uri,
            hostnames=hostnames,
            days=args.days,
            overwrite=args.force,
        )
    except (OSError, ValueError) as exc:
        print(f"edge-agent certs opcua: {exc}", file=sys.stderr)
        return 1
    print(f"certificate      {made.cert_file}  (give this to the PLC to trust)")
    print(f"private key      {made.key_file}  (mode 0600; keep it on this machine)")
    print(f"application uri  {made.application_uri}")
    print(f"sha256           {made.fingerprint}")
    return 0


def _history_export(args: argparse.Namespace) -> int:
    from edge_agent.app import state_dir_for  # noqa: PLC0415
    from edge_agent.config.loader import load_config  # noqa: PLC0415
    from edge_agent.errors import StorageError  # noqa: PLC0415
    from edge_agent.samplecsv import parse_time  # noqa: PLC0415
    from edge_agent.sinks.history import FILE_NAME, export_csv  # noqa: PLC0415

    try:
        cfg = load_config(args.config, check_files=False)  # it reads the history only
    except ConfigError as exc:
        for issue in exc.issues:
            print(issue, file=sys.stderr)
        return EXIT_CONFIG
    except OSError as exc:
        print(f"{args.config}: cannot read: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_CONFIG
    bounds: list[float | None] = []
    for name, text in (("--from", args.start), ("--to", args.end)):
        try:
            bounds.append(None if text is None else parse_time(text))
        except ValueError as exc:
            print(f"{name}: {exc}", file=sys.stderr)
            return EXIT_USAGE
    start, end = bounds
    path = state_dir_for(cfg) / FILE_NAME
    try:
        if args.output:
            with open(args.output, "w", encoding="utf-8", newline="") as out:
                result = export_csv(path, out, start=start, end=end, tags=args.tag)
        else:
            result = export_csv(path, sys.stdout, start=start, end=end, tags=args.tag)
    except StorageError as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_NOINPUT
    except OSError as exc:
        print(f"{args.output}: cannot write: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_CANTCREAT
    for tag in result.unknown_tags:
        print(f"# tag {tag} was never recorded", file=sys.stderr)
    if result.skipped_text:
        print(
            f"# {result.skipped_text} text sample(s) left out: the CSV carries numbers and "
            "booleans only",
            file=sys.stderr,
        )
    print(f"# {result.rows} row(s) exported from {path}", file=sys.stderr)
    return 0


def _run(args: argparse.Namespace) -> int:
    from edge_agent.config.loader import load_config  # noqa: PLC0415

    warnings: list[str] = []
    try:
        cfg = load_config(args.config, warnings=warnings)
    except ConfigError as exc:
        for issue in exc.issues:
            print(issue, file=sys.stderr)
        print(f"{len(exc.issues)} problem(s); nothing was started", file=sys.stderr)
        return EXIT_CONFIG
    except OSError as exc:
        print(f"{args.config}: cannot read: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_CONFIG
    loop_factory = _loop_factory(args.event_loop)
    if isinstance(loop_factory, str):
        print(loop_factory, file=sys.stderr)
        return EXIT_CONFIG
    _setup_logging(args, cfg.logging.level, cfg.logging.format.value)
    from edge_agent.config.loader import permission_warnings  # noqa: PLC0415

    for warning in warnings + permission_warnings(cfg):
        log.warning("%s", warning)
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        if args.once:
            return runner.run(_run_once(cfg))
        from edge_agent.app import Agent, run_until_signalled, state_dir_for  # noqa: PLC0415

        log.info("state directory %s (outbox, engine state, history)", state_dir_for(cfg))
        if loop_factory is not None:
            log.info("event loop: %s", args.event_loop)
        try:
            return runner.run(run_until_signalled(Agent(cfg)))
        except KeyboardInterrupt:
            return EXIT_INTERRUPTED


def _loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop] | str | None:
    """The event loop factory for ``--event-loop`` (``None``: asyncio's own), or why not."""
    if name == "asyncio":
        return None
    try:
        import uvloop  # noqa: PLC0415
    except ImportError:
        return "--event-loop uvloop: uvloop is not installed (pip install 'edge-agent[uvloop]')"
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


async def _run_once(cfg: Any) -> int:
    """Poll every source once, print its samples, then the KPI snapshot each line would publish."""
    from edge_agent import contract  # noqa: PLC0415
    from edge_agent.engine.line import LineEngine  # noqa: PLC0415
    from edge_agent.sources import create_source  # noqa: PLC0415

    engines = [LineEngine(line, site=cfg.site) for line in cfg.lines]
    failed = 0
    for sc in cfg.sources:
        source = create_source(sc)
        try:
            async with asyncio.timeout(sc.timeout_s * 2):
                await source.connect()
            async with asyncio.timeout(sc.timeout_s * 4):
                samples = await source.read()
        except Exception as exc:
            failed += 1
            print(f"# source {sc.name}: {exc}", file=sys.stderr)
            for engine in engines:
                engine.source_available(sc.name, False, time.time())
            continue
        finally:
            try:
                async with asyncio.timeout(sc.timeout_s):
                    await source.close()
            except Exception:  # the report above already says what failed
                log.debug("closing %s failed", sc.name, exc_info=True)
        print(f"# source {sc.name}: {len(samples)} sample(s)")
        for s in samples:
            print(f"{s.key}\t{s.value!r}\t{s.quality.value}")
        for engine in engines:
            for s in samples:
                engine.ingest(s)
    now = time.time()
    for engine in engines:
        engine.tick(now)
        print(json.dumps(contract.payload(engine.snapshot(now)), ensure_ascii=False))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
