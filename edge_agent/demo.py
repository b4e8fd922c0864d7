"""``edge-agent demo``: simulated PLCs, the agent and a broker in one command.

The demo starts the simulators (two lines, Modbus and OPC UA on free ports), a private broker (or
uses the one given with ``--mqtt-host``/``--mqtt-port``), runs the real agent on the demo
configuration pointed at them, and subscribes to the agent's topics to show what actually arrived
at the broker: a live table on a terminal, one line per KPI message otherwise. It stops on Ctrl-C,
SIGTERM or after ``--duration``, in order (agent first, so it publishes ``offline``; then broker and
simulators), and leaves no process or temporary file behind.

This module is a terminal front end: its output goes to stdout on purpose.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime
import logging
import os
import secrets
import signal
import sys
import tempfile
import time
import zoneinfo
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import time as dt_time
from pathlib import Path
from typing import TextIO

import edge_agent
from edge_agent.config.schema import (
    AgentConfig,
    LineConfig,
    ModbusSourceConfig,
    OpcuaSourceConfig,
    OperatorConfig,
    OperatorStation,
    Shift,
)
from edge_agent.console import (
    BrokerView,
    LineView,
    Screen,
    clock_now,
    fmt_int,
    follow,
    render_table,
)
from edge_agent.errors import ConfigError, EdgeAgentError
from edge_agent.exits import EXIT_CONFIG, EXIT_FAILURE, EXIT_INTERRUPTED

log = logging.getLogger(__name__)


_SUBSCRIBE_TIMEOUT_S = (
    10.0  # the broker is local or named by the user: it answers fast or not at all
)
_OFFLINE_WAIT_S = 5.0  # after the agent stops, how long to wait for its `offline` to come back
_REDRAW_INTERVAL_S = 1.0
_LOG_LINES = 6  # recent log records shown under the live table


def default_config_path() -> Path:
    """The repository's ``config/demo.yaml``, next to the ``edge_agent`` package."""
    return Path(edge_agent.__file__).resolve().parent.parent / "config" / "demo.yaml"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the demo's options to ``parser`` (the ``demo`` sub-command of ``edge-agent``)."""
    parser.add_argument(
        "--duration",
        type=float,
        default=None,
        metavar="SECONDS",
        help="stop after this many seconds (default: run until Ctrl-C or SIGTERM)",
    )
    parser.add_argument(
        "--mqtt-host", default=None, help="use this existing broker instead of starting one"
    )
    parser.add_argument(
        "--mqtt-port", type=int, default=None, help="port of the existing broker (default 1883)"
    )
    parser.add_argument(
        "--broker",
        choices=("auto", "mosquitto", "amqtt"),
        default="auto",
        help="which broker to start when no --mqtt-host is given: Mosquitto if installed, else "
        "the embedded amqtt (auto, the default), or that one",
    )
    parser.add_argument(
        "--state-dir",
        default=None,
        metavar="DIR",
        help="keep the outbox and engine state here, so a stopped demo resumes where it was "
        "(default: a temporary directory removed at the end)",
    )
    parser.add_argument(
        "-c",
        "--config",
        default=None,
        metavar="FILE",
        help=f"demo configuration (default: {default_config_path()})",
    )
    parser.add_argument(
        "--speed", type=float, default=1.0, help="simulated seconds per real second (default 1)"
    )
    parser.add_argument("--seed", type=int, default=1, help="simulator random seed (default 1)")
    parser.add_argument(
        "--shift-minutes",
        type=int,
        default=5,
        help="replace the config's shifts with clock-aligned shifts this many minutes long, so "
        "shift reports appear while you watch (default 5; 0 keeps the config's shifts)",
    )
    parser.add_argument(
        "--no-table",
        action="store_true",
        help="print one line per received message instead of the live table "
        "(automatic when stdout is not a terminal)",
    )


def display_zone(cfg: AgentConfig) -> tuple[datetime.tzinfo, str]:
    """The one time zone the demo shows every time in, and its name: the lines' zone when they
    share one (the payloads' ETAs and windows are in it), else UTC. Never the host's zone,
    which a payload never uses."""
    zones = {line.timezone for line in cfg.lines}
    if len(zones) == 1:
        (name,) = zones
        with contextlib.suppress(zoneinfo.ZoneInfoNotFoundError, ValueError):
            return zoneinfo.ZoneInfo(name), name
    return datetime.UTC, "UTC"


def _zoned(formatter: logging.Formatter, tz: datetime.tzinfo) -> None:
    """Make ``formatter``'s ``%(asctime)s`` show the time in ``tz``."""

    def converter(seconds: float | None) -> time.struct_time:
        return datetime.datetime.fromtimestamp(seconds or 0.0, tz).timetuple()

    formatter.converter = converter


@contextlib.contextmanager
def _logs_in_zone(tz: datetime.tzinfo) -> Iterator[None]:
    """While the demo runs, log lines on stderr show their time in the screen's zone."""
    changed = []
    for handler in logging.getLogger().handlers:
        formatter = handler.formatter
        if formatter is not None and type(formatter) is logging.Formatter:
            changed.append((formatter, formatter.converter))
            _zoned(formatter, tz)
    try:
        yield
    finally:
        for formatter, converter in changed:
            formatter.converter = converter


class _Recent(logging.Handler):
    """Keeps the last log records for display under the live table."""

    def __init__(self, tz: datetime.tzinfo | None = None) -> None:
        super().__init__(logging.NOTSET)
        self.records: deque[str] = deque(maxlen=_LOG_LINES)
        formatter = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S")
        if tz is not None:
            _zoned(formatter, tz)
        self.setFormatter(formatter)

    def emit(self, record: logging.LogRecord) -> None:
        with contextlib.suppress(Exception):
            self.records.append(self.format(record).splitlines()[0])


@contextlib.contextmanager
def _capture_logs(enabled: bool, tz: datetime.tzinfo) -> Iterator[_Recent | None]:
    """While the live table owns the terminal, log records go under it instead of across it;
    their times are in ``tz``, the screen's zone."""
    if not enabled:
        with _logs_in_zone(tz):
            yield None
        return
    root = logging.getLogger()
    saved = root.handlers[:]
    recent = _Recent(tz)
    root.handlers[:] = [recent]
    try:
        yield recent
    finally:
        root.handlers[:] = saved
        for text in recent.records:  # what the user would otherwise have missed
            sys.stderr.write(text + "\n")


# -- the demo --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class DemoEndpoints:
    modbus_host: str
    modbus_port: int
    opcua_endpoint: str
    mqtt_host: str
    mqtt_port: int
    state_dir: str
    speed: float = 1.0
    shift_minutes: int = 0  # > 0: replace the lines' shifts with clock-aligned windows this long


def demo_shifts(minutes: int) -> tuple[Shift, ...]:
    """Back-to-back shifts of ``minutes`` covering the day, aligned to the clock (named by their
    start, e.g. ``"14:35"``), so that a short demo shows shifts closing and ``kpi/shift`` reports.
    They do not depend on when the demo starts, so a resumed demo keeps the same calendar."""
    if minutes <= 0 or 1440 % minutes:
        raise ValueError(f"shift minutes must divide a day (1440), got {minutes}")
    out = []
    for start in range(0, 1440, minutes):
        end = (start + minutes) % 1440
        out.append(
            Shift(
                name=f"{start // 60:02d}:{start % 60:02d}",
                start=dt_time(start // 60, start % 60),
                end=dt_time(end // 60, end % 60),
            )
        )
    return tuple(out)


def _absolute(path: str) -> str:
    # The agent may resolve a relative storage dir against another cwd; the banner shows this one.
    return str(Path(path).absolute())


def _scaled(line: LineConfig, speed: float) -> LineConfig:
    """``line`` with its durations divided by the simulator's ``speed``."""

    def scale(seconds: float | None) -> float | None:
        return None if seconds is None else seconds / speed

    signals = line.signals
    if signals.product is not None:
        products = {
            code: dataclasses.replace(p, ideal_cycle_time_s=p.ideal_cycle_time_s / speed)
            for code, p in signals.product.map.items()
        }
        signals = dataclasses.replace(
            signals, product=dataclasses.replace(signals.product, map=products)
        )
    if signals.energy is not None and signals.energy.max_power_kw is not None:
        # The simulated meter runs `speed` times faster too.
        energy = dataclasses.replace(
            signals.energy, max_power_kw=signals.energy.max_power_kw * speed
        )
        signals = dataclasses.replace(signals, energy=energy)
    return dataclasses.replace(
        line,
        ideal_cycle_time_s=line.ideal_cycle_time_s / speed,
        stop_after_s=scale(line.stop_after_s),
        micro_stop_max_s=scale(line.micro_stop_max_s),
        signals=signals,
    )


def demo_config(cfg: AgentConfig, ep: DemoEndpoints) -> AgentConfig:
    """``cfg`` pointed at the simulators and the broker: every Modbus source at the Modbus
    simulator, every OPC UA source at the OPC UA one, metrics on a free port, state in
    ``ep.state_dir``. With a simulator ``speed`` other than 1 the lines' ideal cycle times (and
    stop timeouts) are scaled to match, so the KPIs stay meaningful."""
    sources = tuple(
        dataclasses.replace(s, host=ep.modbus_host, port=ep.modbus_port)
        if isinstance(s, ModbusSourceConfig)
        else dataclasses.replace(s, endpoint=ep.opcua_endpoint)
        if isinstance(s, OpcuaSourceConfig)
        else s
        for s in cfg.sources
    )
    shifts = demo_shifts(ep.shift_minutes) if ep.shift_minutes > 0 else None
    lines = tuple(
        _scaled(line if shifts is None else dataclasses.replace(line, shifts=shifts), ep.speed)
        for line in cfg.lines
    )
    return dataclasses.replace(
        cfg,
        sources=sources,
        lines=lines,
        mqtt=dataclasses.replace(cfg.mqtt, host=ep.mqtt_host, port=ep.mqtt_port),
        prometheus=dataclasses.replace(cfg.prometheus, port=0),
        storage=dataclasses.replace(cfg.storage, dir=ep.state_dir),
        operator=_demo_operator(cfg, ep),
    )


DEMO_STATION = "demo"


def _demo_operator(cfg: AgentConfig, ep: DemoEndpoints) -> OperatorConfig:
    """The operator page on a free loopback port, one station for every line, with a fresh
    random PIN in the state directory (``operator-pin``)."""
    pin_file = Path(ep.state_dir) / "operator-pin"
    pin_file.parent.mkdir(parents=True, exist_ok=True)
    pin_file.write_text(f"{secrets.randbelow(10**6):06d}\n")
    pin_file.chmod(0o600)
    station = OperatorStation(
        name=DEMO_STATION, lines=frozenset(line.name for line in cfg.lines), pin_file=str(pin_file)
    )
    return dataclasses.replace(
        cfg.operator, enabled=True, host="127.0.0.1", port=0, stations=(station,)
    )


async def _subscribe(view: BrokerView, host: str, port: int, screen: Screen, table: bool) -> None:
    """Follow the agent's topics until cancelled, reconnecting if the broker goes away."""
    from edge_agent.sinks.mqtt_client import MqttError  # noqa: PLC0415

    identifier = f"edge-agent-demo-view-{os.getpid()}"
    reported = False

    def on_message(topic: str, payload: bytes, retained: bool) -> None:
        text = view.receive(topic, payload, now_monotonic=time.monotonic())
        if text is not None and not table:
            screen.say(f"{clock_now(view.tz)} {text}")

    def on_subscribed() -> None:
        nonlocal reported
        view.connected = True
        view.subscribed.set()
        if reported:
            log.warning("demo subscriber reconnected to %s:%d", host, port)
            reported = False

    while True:
        try:
            await follow(
                host,
                port,
                view.topic_filter,
                on_message,
                client_id=identifier,
                timeout_s=5.0,
                on_subscribed=on_subscribed,
            )
        except MqttError as exc:
            view.connected = False
            if not reported:
                log.warning("demo subscriber lost %s:%d: %s; retrying", host, port, exc)
                reported = True
            await asyncio.sleep(1.0)


async def _show(
    view: BrokerView,
    screen: Screen,
    line_names: list[str],
    header: list[str],
    recent: _Recent | None,
) -> None:
    """Redraw the live table every second until cancelled."""
    started = time.monotonic()
    while True:
        now = time.monotonic()
        lines = [
            *header,
            f"agent: {view.status or '?'}   subscriber: "
            f"{'connected' if view.connected else 'disconnected'}   running {now - started:.0f}s"
            "   (Ctrl-C to stop)",
            "",
            *render_table(view, line_names, now),
        ]
        if recent is not None and recent.records:
            lines += ["", *recent.records]
        screen.draw(lines)
        await asyncio.sleep(_REDRAW_INTERVAL_S)


async def run_demo(args: argparse.Namespace, *, out: TextIO | None = None) -> int:
    """Run the demo with the options of :func:`add_arguments`; returns the exit code.

    Stops on SIGINT/SIGTERM (a second one cancels a shutdown that hangs) or after
    ``args.duration``. Everything it started is stopped before it returns, also on an exception.
    """
    out = out or sys.stdout
    config_path = Path(args.config) if args.config else default_config_path()
    if not config_path.is_file():
        sys.stderr.write(f"demo configuration not found: {config_path} (pass --config PATH)\n")
        return EXIT_CONFIG
    from edge_agent.config.loader import load_config  # noqa: PLC0415

    try:
        base_cfg = load_config(str(config_path))
    except ConfigError as exc:
        for issue in exc.issues:
            sys.stderr.write(issue + "\n")
        return EXIT_CONFIG
    if args.speed <= 0:
        sys.stderr.write(f"--speed must be > 0, got {args.speed}\n")
        return EXIT_CONFIG
    table = not args.no_table and out.isatty()
    screen = Screen(out)

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    main_task = asyncio.current_task()

    forced = False

    def on_signal() -> None:
        nonlocal forced
        if stop.is_set() and main_task is not None:
            forced = True
            main_task.cancel()  # second Ctrl-C: do not wait for a shutdown that hangs
        stop.set()

    handled: list[signal.Signals] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, on_signal)
            handled.append(sig)
    timer = loop.call_later(args.duration, stop.set) if args.duration is not None else None
    code = EXIT_FAILURE
    try:
        try:
            code = await _run(args, base_cfg, stop, screen, table)
        except* EdgeAgentError as group:
            # Expected failures (a broker that cannot be reached, ...) get a line, not a traceback.
            for err in group.exceptions:
                sys.stderr.write(f"demo failed: {err}\n")
    except asyncio.CancelledError:
        # Everything was stopped on the way out. A cancellation we asked for ourselves (the
        # user insisted) becomes the usual exit code of an interrupt; any other propagates.
        if not forced or main_task is None:
            raise
        main_task.uncancel()
        sys.stderr.write("demo interrupted before a clean shutdown\n")
        code = EXIT_INTERRUPTED
    finally:
        if timer is not None:
            timer.cancel()
        for sig in handled:
            loop.remove_signal_handler(sig)
    return code


async def _run(
    args: argparse.Namespace,
    base_cfg: AgentConfig,
    stop: asyncio.Event,
    screen: Screen,
    table: bool,
) -> int:
    # Imported here: the OPC UA stack is heavy, and `edge-agent --help` should not pay for it.
    from edge_agent.app import Agent  # noqa: PLC0415
    from edge_agent.broker import LocalBroker  # noqa: PLC0415
    from edge_agent.metrics import Metrics  # noqa: PLC0415
    from simulators.runner import Simulation  # noqa: PLC0415

    async with contextlib.AsyncExitStack() as stack:
        sim = await stack.enter_async_context(
            Simulation(lines=2, seed=args.seed, speed=args.speed, host="127.0.0.1")
        )
        if sim.modbus_port is None or sim.opcua_endpoint is None:
            raise EdgeAgentError("the simulators did not start both servers")

        if args.mqtt_host or args.mqtt_port:
            mqtt_host = args.mqtt_host or "127.0.0.1"
            mqtt_port = args.mqtt_port or 1883
            broker_desc = f"existing broker at {mqtt_host}:{mqtt_port}"
        else:
            broker = await stack.enter_async_context(LocalBroker(prefer=args.broker))
            mqtt_host, mqtt_port = broker.host, broker.port
            broker_desc = f"{broker.kind} at {mqtt_host}:{mqtt_port} (started for this demo)"

        if args.state_dir:
            state_dir = _absolute(args.state_dir)
            state_desc = f"{state_dir} (kept: a restarted demo resumes from it)"
        else:
            state_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="edge-agent-demo-"))
            state_desc = f"{state_dir} (temporary)"

        cfg = demo_config(
            base_cfg,
            DemoEndpoints(
                modbus_host="127.0.0.1",
                modbus_port=sim.modbus_port,
                opcua_endpoint=sim.opcua_endpoint,
                mqtt_host=mqtt_host,
                mqtt_port=mqtt_port,
                state_dir=state_dir,
                speed=args.speed,
                shift_minutes=args.shift_minutes,
            ),
        )
        shifts_desc = (
            f"{args.shift_minutes}-minute shifts aligned to the clock (--shift-minutes)"
            if args.shift_minutes > 0
            else "as configured"
        )
        line_names = [line.name for line in cfg.lines]
        tz, zone_name = display_zone(cfg)
        view = BrokerView(prefix=cfg.mqtt.topic_prefix, site=cfg.site, tz=tz)

        async with asyncio.TaskGroup() as tg:
            subscriber = tg.create_task(
                _subscribe(view, mqtt_host, mqtt_port, screen, table), name="demo-subscriber"
            )
            try:
                async with asyncio.timeout(_SUBSCRIBE_TIMEOUT_S):
                    await view.subscribed.wait()
            except TimeoutError:
                subscriber.cancel()
                raise EdgeAgentError(
                    f"cannot reach the MQTT broker at {mqtt_host}:{mqtt_port}"
                ) from None

            agent = Agent(cfg, metrics=Metrics())
            agent_task = tg.create_task(agent.run(stop), name="demo-agent")
            # The metrics URL is known once the agent has started (or has failed to).
            ready = tg.create_task(agent.ready.wait(), name="demo-agent-ready")
            await asyncio.wait(
                [agent_task, ready], timeout=10.0, return_when=asyncio.FIRST_COMPLETED
            )
            ready.cancel()
            metrics_desc = (
                f"http://{cfg.prometheus.host}:{agent.metrics_port}/metrics"
                if agent.metrics_port
                else "disabled"
            )
            operator_desc = "disabled"
            if agent.operator is not None and agent.operator.port:
                pin = agent.operator.stations[DEMO_STATION].pin
                operator_desc = f"http://127.0.0.1:{agent.operator.port}/  (PIN {pin})"
            header = [
                f"edge-agent demo: site '{cfg.site}', lines {', '.join(line_names)}",
                f"  simulators  modbus 127.0.0.1:{sim.modbus_port}   opcua {sim.opcua_endpoint}",
                f"  broker      {broker_desc}",
                f"  metrics     {metrics_desc}",
                f"  operator    {operator_desc}",
                f"  state       {state_desc}",
                f"  shifts      {shifts_desc}",
                f"  times       {zone_name}: every time on this screen (logs, ETAs) is in it",
                f"  watch       mosquitto_sub -h {mqtt_host} -p {mqtt_port} -t '#' -v",
            ]
            with _capture_logs(table and sys.stderr.isatty(), tz) as recent:
                if table:
                    display = tg.create_task(
                        _show(view, screen, line_names, header, recent), name="demo-table"
                    )
                else:
                    for text in header:
                        screen.say(text)
                    display = None
                try:
                    code = await agent_task
                    # The agent published `offline` as its last act; let it arrive.
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(_OFFLINE_WAIT_S):
                            await view.offline.wait()
                finally:
                    subscriber.cancel()
                    if display is not None:
                        display.cancel()
                        await asyncio.wait([display])
                        screen.draw(
                            [
                                *header,
                                f"agent: {view.status or '?'}",
                                "",
                                *render_table(view, line_names, time.monotonic()),
                            ]
                        )

    # Reported once the broker and the simulators are down too: nothing is left running.
    screen.say("")
    screen.say(f"summary (agent exit code {code}, agent {view.status or 'status unknown'}):")
    for name in line_names:
        lv = view.lines.get(name) or LineView(name)
        screen.say(
            f"  {name}: {lv.messages} message(s), {lv.kpi_messages} kpi, last seq "
            f"{fmt_int(lv.last_seq)}, {lv.seq_gaps} lost, {lv.seq_backwards} out of order"
        )
    return code
