"""Rules across configuration objects, run once the whole file has been read: line signals name
configured tags, shares name configured lines, one source per serial port, one client id per
broker, order commands on the first sink only, shifts and breaks that do not overlap.

They work on what was read even when other parts of the file are broken, so that every problem
is reported in one pass; a broken source name does not also report every tag that refers to it.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from datetime import time

from yaml.nodes import MappingNode, Node, SequenceNode

from edge_agent.config.issues import join_index, join_key
from edge_agent.config.kinds import Ctx, name_node, pairs, plain_name
from edge_agent.config.schema import ModbusSourceConfig, ModbusTransport, MqttConfig, Shift


@dataclass(slots=True)
class _Source:
    tags: set[str] = field(default_factory=set)
    complete: bool = True  # False: some tag name failed, so unknown tags are not reported


def check(ctx: Ctx, root: MappingNode) -> None:
    found = {k: v for k, _, v in pairs(ctx, root, "", report=False) if isinstance(k, str)}
    if "sources" in found:  # none: replay names the CSV's tags (DESIGN §5)
        _tag_refs(ctx, found["sources"])
    _share_lines(ctx, found.get("lines"))
    _serial_ports(ctx)
    _sinks(ctx)
    _shifts(ctx)


def _sources(ctx: Ctx, node: Node) -> tuple[dict[str, _Source], bool]:
    """The tag names of each source as written, and whether every source name could be read."""
    sources: dict[str, _Source] = {}
    complete = isinstance(node, SequenceNode)
    for item in node.value if isinstance(node, SequenceNode) else ():
        if not isinstance(item, MappingNode):
            complete = False
            continue
        keys = {k: v for k, _, v in pairs(ctx, item, "", report=False) if isinstance(k, str)}
        name = plain_name(ctx, keys.get("name"))
        if name is None:
            complete = False
            continue
        info = sources.setdefault(name, _Source())  # a duplicate shares it (reported elsewhere)
        protocol = keys.get("protocol")
        tags = keys.get("tags")
        if protocol is None or protocol.value not in ("modbus", "opcua"):
            info.complete = False
        if not isinstance(tags, SequenceNode) or not tags.value:
            info.complete = info.complete and tags is None
            continue
        for tag in tags.value:
            tag_name = plain_name(ctx, name_node(ctx, tag, ""))
            if tag_name is None:
                info.complete = False
            else:
                info.tags.add(tag_name)
    return sources, complete


def _tag_refs(ctx: Ctx, node: Node) -> None:
    sources, complete = _sources(ctx, node)
    for ref in (r for r in ctx.refs if r.what == "tag"):
        source, _, tag = ref.value.partition(".")
        info = sources.get(source)
        if info is None:
            if complete:  # else a source name is broken and already reported: do not pile on
                close = difflib.get_close_matches(source, list(sources), n=1, cutoff=0.6)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                ctx.add(ref.node, ref.path, f"no source named {source!r}{hint}")
        elif tag not in info.tags and info.complete:
            close = difflib.get_close_matches(tag, sorted(info.tags), n=1, cutoff=0.6)
            hint = f" (did you mean '{source}.{close[0]}'?)" if close else ""
            ctx.add(ref.node, ref.path, f"source {source!r} has no tag {tag!r}{hint}")


def _share_lines(ctx: Ctx, node: Node | None) -> None:
    if not isinstance(node, SequenceNode):
        return  # the lines themselves are broken and reported
    names = [plain_name(ctx, name_node(ctx, item, "")) for item in node.value]
    if None in names:
        return
    known = sorted(str(n) for n in names)
    for ref in ctx.refs:
        if ref.what == "line" and ref.value not in known:
            close = difflib.get_close_matches(ref.value, known, n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            ctx.add(ref.node, ref.path, f"unknown line {ref.value!r}{hint}")


def _serial_ports(ctx: Ctx) -> None:
    """The port is opened exclusively: a second source on it could never connect."""
    first: dict[str, tuple[str, Node]] = {}
    for path, obj in ctx.built:
        if not isinstance(obj, ModbusSourceConfig) or obj.serial is None:
            continue
        if obj.transport is not ModbusTransport.RTU:
            continue
        port_path = join_key(join_key(path, "serial"), "port")
        node = ctx.index[port_path]
        name, earlier = first.setdefault(obj.serial.port, (obj.name, node))
        if earlier is not node:
            ctx.add(
                node,
                port_path,
                f"serial port {obj.serial.port!r} is already read by source {name!r} "
                f"(line {earlier.start_mark.line + 1}): one source reads a shared line; "
                "give its tags their own unit_id",
            )


def _sinks(ctx: Ctx) -> None:
    sinks = [(p, s) for p, s in ctx.built if isinstance(s, MqttConfig) and p.startswith("mqtt[")]
    listed = ctx.index.get("mqtt")
    if not isinstance(listed, SequenceNode) or len(listed.value) != len(sinks):
        return  # a single sink, or some are broken and reported
    if len({s.name for _, s in sinks}) < len(sinks):
        return
    # Two connections with one client id to one broker take the session from each other, on
    # every reconnect, forever.
    seen: dict[tuple[str, int, str | None], str] = {}
    for path, sink in sinks:
        ident = (sink.host, sink.port, sink.client_id)
        if ident in seen:
            ctx.add(
                ctx.index[path],
                path,
                f"sink {sink.name!r} connects to {sink.host}:{sink.port} with the same client id as"
                f" sink {seen[ident]!r}: set a distinct client_id",
            )
        seen.setdefault(ident, sink.name)
    # Order commands come from the plant's broker, the first sink, and their replies go there
    # only: a further sink (a sponsor's) must not be able to command the plant.
    for path, sink in sinks[1:]:
        if sink.commands:
            where = join_key(path, "commands")
            message = "order commands are taken from the first sink only (the plant's broker)"
            ctx.add(ctx.index.get(where, ctx.index[path]), where, message)


def _minute(value: time) -> int:
    return value.hour * 60 + value.minute


def _span(start: time, end: time) -> set[int]:
    """Minutes of the day covered from ``start`` to ``end``; crossing midnight when end <= start,
    the whole day when they are equal."""
    length = (_minute(end) - _minute(start)) % 1440 or 1440
    return {(_minute(start) + offset) % 1440 for offset in range(length)}


def _shifts(ctx: Ctx) -> None:
    covered: dict[str, list[tuple[str, set[int]]]] = {}
    for path, shift in ctx.built:
        if not isinstance(shift, Shift):
            continue
        _breaks(ctx, path, shift)
        # Minutes of the week: shifts on different weekdays may share their hours.
        start = _minute(shift.start)
        minutes = {
            (day * 1440 + start + (m - start) % 1440) % 10080
            for day in shift.days
            for m in _span(shift.start, shift.end)
        }
        others = covered.setdefault(path.rpartition("[")[0], [])
        for other_name, other in others:
            if minutes & other:
                ctx.add(
                    ctx.index[path], path, f"shift {shift.name!r} overlaps shift {other_name!r}"
                )
                break
        others.append((shift.name, minutes))


def _breaks(ctx: Ctx, path: str, shift: Shift) -> None:
    shift_minutes = _span(shift.start, shift.end)
    taken: set[int] = set()
    for index, item in enumerate(shift.breaks):
        item_path = join_index(join_key(path, "breaks"), index)
        where = ctx.index[item_path]
        shown = f"{item.start:%H:%M}-{item.end:%H:%M}"
        if item.start == item.end:
            ctx.add(where, item_path, f"break {shown} is empty (start == end)")
            continue
        minutes = _span(item.start, item.end)
        if not minutes <= shift_minutes:
            message = f"break {shown} is not inside the shift {shift.start:%H:%M}-{shift.end:%H:%M}"
            ctx.add(where, item_path, message)
        elif minutes & taken:
            ctx.add(where, item_path, f"break {shown} overlaps another break")
        taken |= minutes
