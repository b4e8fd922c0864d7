"""What a subscriber sees, for the terminal front ends (``demo``, ``watch``, ``replay --format
table``): the view folded from the agents' messages on a broker, the value formatters, one table
renderer, the screen that redraws in place, and the subscription that feeds a view.

Output of these commands goes to stdout on purpose: they are terminal front ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

# -- what came back from the broker ---------------------------------------------------------


@dataclass(slots=True)
class LineView:
    """What the subscriber has seen of one line."""

    name: str
    kpi: dict[str, Any] | None = None
    energy: dict[str, Any] | None = None
    order: dict[str, Any] | None = None
    state: str | None = None
    kpi_messages: int = 0
    messages: int = 0
    last_seq: int | None = None
    seq_gaps: int = 0  # messages lost between two seen ones (DESIGN §4: seq has no gaps)
    seq_backwards: int = 0  # a seq not above the last one (a redelivery, or a retained leftover)
    last_message_monotonic: float | None = None
    # POSIX time the latest kpi refers to: its arrival, or for a retained one (which may be a
    # leftover of an agent long gone) the time in its payload.
    last_kpi_time: float | None = None


@dataclass(slots=True)
class BrokerView:
    """Everything received on ``{prefix}/{site}/#``, folded per line."""

    prefix: str
    site: str
    # The one time zone every time on the screen is shown in (display_zone); None: as written.
    tz: datetime.tzinfo | None = None
    lines: dict[str, LineView] = field(default_factory=dict)
    status: str | None = None
    connected: bool = False
    subscribed: asyncio.Event = field(default_factory=asyncio.Event)
    offline: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def topic_filter(self) -> str:
        return f"{self.prefix}/{self.site}/#"

    def line(self, name: str) -> LineView:
        view = self.lines.get(name)
        if view is None:
            view = self.lines[name] = LineView(name)
        return view

    def receive(
        self,
        topic: str,
        payload: bytes,
        *,
        now_monotonic: float,
        now: float | None = None,
        retained: bool = False,
    ) -> str | None:
        """Fold one message in. Returns a one-line description of it for the plain output
        (``None`` for messages not worth a line). ``now`` (POSIX time) and ``retained`` date
        the line's latest kpi (``LineView.last_kpi_time``)."""
        base = f"{self.prefix}/{self.site}/"
        if not topic.startswith(base):
            return None
        rest = topic[len(base) :]
        try:
            data = json.loads(payload)
        except (UnicodeDecodeError, json.JSONDecodeError):
            return f"{rest}: not JSON ({len(payload)} bytes)"
        if not isinstance(data, dict):
            return f"{rest}: unexpected payload {data!r}"
        if rest == "status":
            self.status = str(data.get("status"))
            if self.status == "offline":
                self.offline.set()
            else:
                self.offline.clear()
            return f"agent {self.status}"
        line_name, _, suffix = rest.partition("/")
        view = self.line(line_name)
        view.messages += 1
        view.last_message_monotonic = now_monotonic
        seq = data.get("seq")
        if isinstance(seq, int):
            if view.last_seq is not None:
                if seq <= view.last_seq:
                    view.seq_backwards += 1
                elif seq > view.last_seq + 1:
                    view.seq_gaps += seq - view.last_seq - 1
            view.last_seq = seq if view.last_seq is None else max(seq, view.last_seq)
        if suffix == "kpi":
            view.kpi = data
            view.kpi_messages += 1
            if now is not None:
                stamped = _posix(data.get("ts")) if retained else None
                view.last_kpi_time = min(stamped, now) if stamped is not None else now
            view.state = str(data.get("state") or view.state)
            return _kpi_line(line_name, data)
        if suffix == "state":
            view.state = str(data.get("state"))
            return f"{line_name} state {view.state} (was {data.get('previous_state')}) seq={seq}"
        if suffix == "kpi/shift":
            window = data.get("window") or {}
            return (
                f"{line_name} shift '{window.get('name')}' closed: oee={fmt_num(data.get('oee'))}"
            )
        if suffix == "kpi/hour":
            window = data.get("window") or {}
            return f"{line_name} hour {window.get('name')} closed: oee={fmt_num(data.get('oee'))}"
        if suffix == "energy":
            view.energy = data
            return _energy_line(line_name, data)
        if suffix == "order":
            view.order = data
            return _order_line(line_name, data, self.tz)
        if suffix == "order/closed":
            return (
                f"{line_name} order {data.get('order_id')} closed ({data.get('reason')}): "
                f"good={fmt_int(data.get('good_count'))}/{fmt_int(data.get('target_quantity'))} "
                f"energy={fmt_num(data.get('energy_kwh'), 4)} kWh "
                f"kWh/part={fmt_num(data.get('energy_per_good_part_kwh'), 5)}"
            )
        return f"{line_name} {suffix} seq={seq}"


def _posix(value: Any) -> float | None:
    """An ISO 8601 time with offset (the payloads' ``ts``) as POSIX time; None if it is not one."""
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed.timestamp() if parsed.tzinfo is not None else None


def fmt_num(value: Any, digits: int = 3) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "-"
    return f"{value:.{digits}f}"


def fmt_pct(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "-"
    return f"{100.0 * value:.1f}%"


def fmt_int(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "-"
    return str(int(value))


def _kpi_line(line: str, data: dict[str, Any]) -> str:
    return (
        f"{line} kpi seq={data.get('seq')} state={data.get('state')} "
        f"oee={fmt_num(data.get('oee'))} "
        f"A={fmt_num(data.get('availability'))} P={fmt_num(data.get('performance'))} "
        f"Q={fmt_num(data.get('quality'))} total={fmt_int(data.get('total_count'))} "
        f"good={fmt_int(data.get('good_count'))} reject={fmt_int(data.get('reject_count'))} "
        f"good/h={fmt_num(data.get('throughput_good_per_h'), 0)} "
        f"good/known_h={fmt_num(data.get('throughput_good_per_known_h'), 0)} "
        f"coverage={fmt_num(data.get('data_coverage'), 2)}"
    )


def clock_now(tz: datetime.tzinfo | None) -> str:
    """``HH:MM:SS`` now, in ``tz`` (None: the host's zone)."""
    return datetime.datetime.now(tz).strftime("%H:%M:%S")


def clock_of(iso_time: Any, tz: datetime.tzinfo | None = None) -> str:
    """``HH:MM:SS`` of an ISO 8601 time, converted to ``tz`` (None: as written, which is the
    line's local time), ``-`` for none."""
    if not isinstance(iso_time, str) or "T" not in iso_time:
        return "-"
    if tz is not None:
        with contextlib.suppress(ValueError):
            parsed = datetime.datetime.fromisoformat(iso_time)
            if parsed.tzinfo is not None:
                return parsed.astimezone(tz).strftime("%H:%M:%S")
    return iso_time.split("T", 1)[1][:8]


def _energy_line(line: str, data: dict[str, Any]) -> str:
    by_state = data.get("energy_by_state_kwh") or {}
    split = ", ".join(f"{k} {fmt_num(v, 4)}" for k, v in sorted(by_state.items()))
    return (
        f"{line} energy {fmt_num(data.get('energy_kwh'), 4)} kWh ({split or 'none yet'}) "
        f"kWh/part={fmt_num(data.get('energy_per_good_part_kwh'), 5)} "
        f"CO2e/part={fmt_num(data.get('co2e_per_good_part_kg'), 5)} kg "
        f"power={fmt_num(data.get('power_kw'), 1)} kW"
    )


def _order_line(line: str, data: dict[str, Any], tz: datetime.tzinfo | None = None) -> str:
    if data.get("order_id") is None:
        return f"{line} order: none"
    return (
        f"{line} order {data.get('order_id')} {data.get('status')}: "
        f"good={fmt_int(data.get('good_count'))}/{fmt_int(data.get('target_quantity'))} "
        f"remaining={fmt_int(data.get('remaining_quantity'))} "
        f"ETA {clock_of(data.get('eta_current'), tz)} (current rate), "
        f"{clock_of(data.get('eta_shift_average'), tz)} (shift average)"
    )


_COLUMNS = (
    ("LINE", 8),
    ("STATE", 12),
    ("OEE", 7),
    ("A", 7),
    ("P", 7),
    ("Q", 7),
    ("TOTAL", 7),
    ("GOOD", 7),
    ("REJECT", 7),
    ("GOOD/H", 7),
    ("KNOWN/H", 7),  # good parts per hour with data (GOOD/H: per hour of the shift so far)
    ("COVER", 7),
    ("KWH/PART", 8),
    ("ORDER", 9),
    ("LEFT", 5),
    ("ETA", 8),
    ("SEQ", 6),
    ("AGE", 6),
)


def render_table(view: BrokerView, line_names: list[str], now_monotonic: float) -> list[str]:
    """The table's text lines: a header, then one row per configured line."""

    rows = [[name for name, _ in _COLUMNS]]
    for name in line_names:
        lv = view.lines.get(name) or LineView(name)
        k = lv.kpi or {}
        order = lv.order or {}
        age = (
            f"{now_monotonic - lv.last_message_monotonic:.0f}s"
            if lv.last_message_monotonic is not None
            else "-"
        )
        rows.append(
            [
                name,
                lv.state or "-",
                fmt_pct(k.get("oee")),
                fmt_pct(k.get("availability")),
                fmt_pct(k.get("performance")),
                fmt_pct(k.get("quality")),
                fmt_int(k.get("total_count")),
                fmt_int(k.get("good_count")),
                fmt_int(k.get("reject_count")),
                fmt_num(k.get("throughput_good_per_h"), 0),
                fmt_num(k.get("throughput_good_per_known_h"), 0),
                fmt_pct(k.get("data_coverage")),
                fmt_num(k.get("energy_per_good_part_kwh"), 4),
                str(order.get("order_id") or "-"),
                fmt_int(order.get("remaining_quantity")),
                clock_of(order.get("eta_current"), view.tz),
                fmt_int(lv.last_seq),
                age,
            ]
        )
    return format_table(_COLUMNS, rows[1:], align="ll")


def format_table(
    columns: Sequence[tuple[str, int]],
    rows: Sequence[Sequence[str]],
    *,
    align: str,
    sep: str = " ",
) -> list[str]:
    """Header and rows as aligned text lines, joined by ``sep``: ``columns`` are (title, minimum
    width); column i is left-aligned where ``align[i]`` is ``l``, right-aligned (numbers)
    otherwise."""
    table = [[name for name, _ in columns], *rows]
    # Columns grow to fit (a seq can be long), so rows stay aligned with the header.
    widths = [
        max(min_width, *(len(r[i]) for r in table)) for i, (_, min_width) in enumerate(columns)
    ]
    return [
        sep.join(
            cell.ljust(width) if align[i : i + 1] == "l" else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(r, widths, strict=True))
        ).rstrip()
        for r in table
    ]


class Screen:
    """Redraws a block of lines in place (ANSI cursor movement), or prints plain lines."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self._drawn = 0

    def say(self, text: str) -> None:
        self.out.write(text + "\n")
        self.out.flush()

    def draw(self, lines: list[str]) -> None:
        buf = []
        if self._drawn:
            buf.append(f"\x1b[{self._drawn}F")  # to the start of the block drawn last time
        buf.append("\x1b[J")  # clear from there to the end of the screen
        buf.extend(line + "\n" for line in lines)
        self.out.write("".join(buf))
        self.out.flush()
        self._drawn = len(lines)


# -- the broker connection -------------------------------------------------------------------


async def follow(
    host: str,
    port: int,
    topic_filter: str,
    on_message: Callable[[str, bytes, bool], None],
    *,
    client_id: str,
    username: str | None = None,
    password: str | None = None,
    tls_context: ssl.SSLContext | None = None,
    timeout_s: float = 10.0,
    on_subscribed: Callable[[], None] | None = None,
) -> None:
    """Subscribe to ``topic_filter`` (QoS 1) and hand every message to ``on_message(topic,
    payload, retained)`` until cancelled. Raises :class:`~edge_agent.sinks.mqtt_client.MqttError`
    when the broker cannot be reached, refuses us or the link is lost; the caller decides
    whether to retry. ``tls_context`` carries any ``--insecure`` choice itself."""
    # Imported here: the CLI imports the front ends to build its parser, paho is for running.
    from edge_agent.sinks.mqtt_client import MqttClient  # noqa: PLC0415

    client = MqttClient(
        host,
        port,
        client_id=client_id,
        username=username,
        password=password,
        tls_context=tls_context,
        connect_timeout_s=timeout_s,
        on_message=on_message,
    )
    try:
        await client.connect(timeout_s)
        await client.subscribe(topic_filter, qos=1, timeout_s=timeout_s)
        if on_subscribed is not None:
            on_subscribed()
        raise await client.lost
    finally:
        with contextlib.suppress(Exception):
            if client.is_connected:
                await client.disconnect(timeout_s)
        client.drop()
