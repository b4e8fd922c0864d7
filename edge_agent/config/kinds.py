"""The kinds of value a configuration key holds, each written once: how it is read from a YAML
node (with the message a user sees when it is wrong), its JSON Schema, the words the key
reference uses for it, and how ``check-config --dump`` writes it back.

A key is declared on its dataclass field with :func:`key` (kind, description, default); the
loader, the editor schema, the dump and the reference in docs/config.md all read that one
declaration. A kind's :meth:`Kind.parse` returns the value or records an issue and returns
:data:`INVALID`; a dataclass is only built from values that all passed.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import zoneinfo
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, time
from enum import StrEnum
from typing import Any, Final, Generic, Protocol, TypeVar
from urllib.parse import urlsplit

import yaml
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from edge_agent.config.durations import NUMBER, UNITS, parse_duration
from edge_agent.config.files import FileKind
from edge_agent.config.issues import Issue, join_index, join_key
from edge_agent.errors import ConfigError
from edge_agent.secrets import resolve_path

T = TypeVar("T")
E = TypeVar("E", bound=StrEnum)

# Names become MQTT topic levels and metric label values: no '+', '#', '/', NUL, dots or spaces.
NAME_PATTERN: Final = re.compile(r"[A-Za-z0-9_-]{1,64}")
_TAG_PREFIX = "tag:yaml.org,2002:"
_MERGE_TAG = _TAG_PREFIX + "merge"
_SCALAR_KINDS = {"null", "bool", "int", "float", "str"}


class _Invalid:
    """Marker for a value that failed its check (the issue is already recorded)."""

    def __repr__(self) -> str:
        return "INVALID"


INVALID: Final = _Invalid()


@dataclass(slots=True)
class Ref:
    """A name of another part of the file (a ``SOURCE.TAG`` in a line signal, a line in a
    share), checked once the whole file is read (:mod:`edge_agent.config.references`)."""

    value: str
    node: Node
    path: str
    what: str = "tag"


class Ctx:
    """Issues and warnings found so far, and what the cross-reference rules need afterwards:
    every key's and item's node by YAML path (the FILE:LINE:COL index), the objects built, the
    tag references and the files to check."""

    def __init__(self, file: str, *, check_files: bool = False) -> None:
        self.file = file
        self.check_files = check_files
        self.files: list[tuple[Node, str, str, FileKind]] = []
        self.issues: list[Issue] = []
        self.warnings: list[Issue] = []
        # Relative file paths in the config are relative to it (or to systemd's credentials).
        self.base_dir = os.path.dirname(os.path.abspath(file)) if not file.startswith("<") else "."
        self.constructor = SafeConstructor()
        self.index: dict[str, Node] = {}
        self.built: list[tuple[str, Any]] = []
        self.refs: list[Ref] = []

    @property
    def count(self) -> int:
        return len(self.issues)

    def add(self, where: Node | yaml.Mark | None, path: str, message: str) -> None:
        mark = where.start_mark if isinstance(where, Node) else where
        line, column = (mark.line + 1, mark.column + 1) if mark is not None else (1, 1)
        self.issues.append(Issue(self.file, line, column, path, message))

    def warn(self, where: Node, path: str, message: str) -> None:
        mark = where.start_mark
        self.warnings.append(Issue(self.file, mark.line + 1, mark.column + 1, path, message))

    def warning_lines(self) -> list[str]:
        ordered = sorted(self.warnings, key=lambda i: (i.line, i.column))
        return list(dict.fromkeys(str(issue) for issue in ordered))

    def error(self) -> ConfigError:
        ordered = sorted(self.issues, key=lambda i: (i.line, i.column))
        # An alias can make one bad node appear in several places: report each message once.
        return ConfigError(list(dict.fromkeys(str(issue) for issue in ordered)))


# --- scalars ---------------------------------------------------------------------------------


def scalar(ctx: Ctx, node: ScalarNode) -> tuple[str, Any]:
    """The node's YAML type (``null``, ``bool``, ``int``, ``float``, ``str`` or another tag's
    short name) and its value (None for types we do not construct)."""
    tag = str(node.tag)
    kind = tag.removeprefix(_TAG_PREFIX) if tag.startswith(_TAG_PREFIX) else tag
    if kind not in _SCALAR_KINDS:
        return kind, None
    try:
        return kind, ctx.constructor.yaml_constructors[tag](ctx.constructor, node)
    # A malformed explicitly tagged scalar (`!!int abc`, `!!bool maybe`, an int of 10,000 digits)
    # fails in the constructor with ValueError, KeyError and the like: the text is the problem.
    except Exception:
        return "invalid " + kind, None


def raw(node: Node, limit: int = 40) -> str:
    """The scalar as written, shortened and with control characters escaped, so that every issue
    stays on one line."""
    value = node.value if isinstance(node.value, str) else ""
    text = value if len(value) <= limit else value[: limit - 3] + "..."
    return repr(text)[1:-1]


def describe(ctx: Ctx, node: Node) -> str:
    if isinstance(node, MappingNode):
        return "a mapping"
    if isinstance(node, SequenceNode):
        return "a list"
    assert isinstance(node, ScalarNode)
    kind, value = scalar(ctx, node)
    shown = raw(node)
    match kind:
        case "null":
            return "null (no value)"
        case "bool":
            return f"boolean {shown}"
        case "int":
            return f"integer {shown}"
        case "float":
            return f"number {shown}"
        case "str":
            return f"{value!r}" if len(value) <= 40 else f"{value[:37]!r}..."
        case "timestamp":
            return f"a date {shown}"
        case _ if kind.startswith("invalid "):
            return f"an {kind} {shown!r}"
        case _:
            return f"a value tagged {kind} ({shown!r})"


def is_null(ctx: Ctx, node: Node) -> bool:
    return isinstance(node, ScalarNode) and scalar(ctx, node)[0] == "null"


def plain_name(ctx: Ctx, node: Node | None) -> str | None:
    """The name in ``node`` if it is a valid one, else None; reports nothing."""
    if isinstance(node, ScalarNode) and scalar(ctx, node)[0] == "str":
        return node.value if NAME_PATTERN.fullmatch(node.value) else None
    return None


# --- kinds -----------------------------------------------------------------------------------


class Builder(Protocol):
    """What a kind's JSON Schema is built with (:mod:`edge_agent.config.json_schema`)."""

    def shared(self, name: str, schema: dict[str, Any]) -> dict[str, Any]: ...

    def ref(self, cls: type) -> dict[str, Any]: ...


class Kind(Generic[T]):
    """One kind of value. ``text`` names it in the key reference."""

    text = "value"

    def parse(self, ctx: Ctx, node: Node, path: str) -> T | _Invalid:
        raise NotImplementedError

    def schema(self, b: Builder) -> dict[str, Any]:
        """The JSON Schema; ``b`` is the schema builder (:mod:`edge_agent.config.json_schema`)."""
        raise NotImplementedError

    def dump(self, value: Any) -> Any:
        return plain(value)

    def need(self, ctx: Ctx, node: Node, path: str, what: str) -> tuple[str, Any] | None:
        if not isinstance(node, ScalarNode):
            ctx.add(node, path, f"must be {what}, got {describe(ctx, node)}")
            return None
        return scalar(ctx, node)


def plain(value: Any) -> Any:
    """``value`` as plain YAML data (dump and defaults in the schema)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dump_object(value)
    if isinstance(value, StrEnum):
        return value.value
    if isinstance(value, time):
        return f"{value:%H:%M}"
    if isinstance(value, datetime):
        return f"{value:%Y-%m-%dT%H:%M}"
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, frozenset):
        return sorted(plain(v) for v in value)
    if isinstance(value, tuple | list):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    return value


class Str(Kind[str]):
    text = "string"

    def __init__(self, pattern: str = r"\S") -> None:
        self.pattern = pattern

    def parse(self, ctx: Ctx, node: Node, path: str) -> str | _Invalid:
        got = self.need(ctx, node, path, "a string")
        if got is None:
            return INVALID
        kind, value = got
        if kind != "str":
            hint = f' (quote it: "{raw(node)}")' if kind in {"int", "float", "bool"} else ""
            ctx.add(node, path, f"must be a string, got {describe(ctx, node)}{hint}")
            return INVALID
        if not value.strip():
            ctx.add(node, path, "must not be empty")
            return INVALID
        if "\0" in value:
            ctx.add(node, path, "must not contain a NUL character")
            return INVALID
        return self.check(ctx, node, path, value)

    def check(self, ctx: Ctx, node: Node, path: str, value: str) -> str | _Invalid:
        return value

    def schema(self, b: Builder) -> dict[str, Any]:
        return {"type": "string", "pattern": self.pattern}


class Text(Str):
    """A string that matches ``regex`` (the loader's and the schema's pattern); ``rule`` is the
    message's "must be ..." and the schema's description."""

    def __init__(self, regex: str, rule: str, text: str, schema_pattern: str = "") -> None:
        super().__init__(schema_pattern or f"^{regex}$")
        self.regex, self.rule, self.text = re.compile(regex, re.DOTALL), rule, text

    def check(self, ctx: Ctx, node: Node, path: str, value: str) -> str | _Invalid:
        if not self.regex.fullmatch(value):
            ctx.add(node, path, f"must be {self.rule}, got {value!r}")
            return INVALID
        return value

    def schema(self, b: Builder) -> dict[str, Any]:
        return {"type": "string", "pattern": self.pattern, "description": self.rule}


class Shared(Kind[T]):
    """A kind whose schema is one entry in ``$defs`` (``name``, ``duration``, ...)."""

    def __init__(self, inner: Kind[T], def_name: str) -> None:
        self.inner, self.def_name, self.text = inner, def_name, inner.text

    def parse(self, ctx: Ctx, node: Node, path: str) -> T | _Invalid:
        return self.inner.parse(ctx, node, path)

    def schema(self, b: Builder) -> dict[str, Any]:
        return b.shared(self.def_name, self.inner.schema(b))

    def dump(self, value: Any) -> Any:
        return self.inner.dump(value)


class Endpoint(Str):
    text = "`opc.tcp://HOST:PORT[/PATH]`"

    def check(self, ctx: Ctx, node: Node, path: str, value: str) -> str | _Invalid:
        if not value.startswith("opc.tcp://"):
            ctx.add(node, path, f"must be an opc.tcp:// URL, got {value!r}")
            return INVALID
        # The OPC UA client does not default the port: a URL without one is refused at connect.
        try:
            port = urlsplit(value).port
        except ValueError:
            ctx.add(node, path, f"port must be {PORT.bounds} in {value!r}")
            return INVALID
        if port is None:
            ctx.add(node, path, f"needs a port, e.g. 'opc.tcp://host:4840/', got {value!r}")
            return INVALID
        return value

    def schema(self, b: Builder) -> dict[str, Any]:
        return {"type": "string", "pattern": "^opc\\.tcp://.*:[0-9]+", "description": self.text}


class TopicPrefix(Str):
    text = "MQTT topic levels"
    RULE = "topic levels separated by '/', none empty, without '+', '#' or a leading '$'"

    def check(self, ctx: Ctx, node: Node, path: str, value: str) -> str | _Invalid:
        levels = value.split("/")
        if any(not level for level in levels) or any(c in value for c in "+#") or value[0] == "$":
            ctx.add(node, path, f"must be {self.RULE}; got {value!r}")
            return INVALID
        return value

    def schema(self, b: Builder) -> dict[str, Any]:
        return {
            "type": "string",
            "pattern": "^[^$/+#][^/+#]*(/[^/+#]+)*$",
            "description": self.RULE,
        }


class Checked(Str):
    """A string checked by ``problem`` (None: fine), e.g. the domain's Sparkplug id rule."""

    def __init__(self, problem: Callable[[str], str | None], text: str, pattern: str) -> None:
        super().__init__(pattern)
        self.problem, self.text = problem, text

    def check(self, ctx: Ctx, node: Node, path: str, value: str) -> str | _Invalid:
        problem = self.problem(value)
        if problem is not None:
            ctx.add(node, path, f"{problem}, got {value!r}")
            return INVALID
        return value

    def schema(self, b: Builder) -> dict[str, Any]:
        return {"type": "string", "pattern": self.pattern, "description": self.text}


def normalize_fingerprint(text: str) -> str | None:
    """``text`` as :func:`fingerprint` writes it, accepting an optional ``sha256:`` prefix, any
    case, and ``:``, spaces or nothing between the pairs; None when it is not 32 bytes of hex."""
    body = text.strip()
    if body.lower().startswith("sha256:"):
        body = body[len("sha256:") :]
    digits = "".join(c for c in body if c not in ": ").upper()
    if len(digits) != 64 or any(c not in "0123456789ABCDEF" for c in digits):
        return None
    return ":".join(digits[i : i + 2] for i in range(0, 64, 2))


class Fingerprint(Str):
    text = "SHA-256 fingerprint"

    def check(self, ctx: Ctx, node: Node, path: str, value: str) -> str | _Invalid:
        normal = normalize_fingerprint(value)
        if normal is None:
            ctx.add(
                node,
                path,
                "must be a SHA-256 fingerprint: 64 hex digits, optionally in pairs separated by "
                f"':', got {raw(node)!r}",
            )
            return INVALID
        return normal


class TimeZone(Str):
    text = "IANA time zone"

    def check(self, ctx: Ctx, node: Node, path: str, value: str) -> str | _Invalid:
        try:
            zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
            message = f"unknown time zone {value!r} (an IANA name like 'Asia/Seoul' or 'UTC')"
            ctx.add(node, path, message)
            return INVALID
        return value

    def schema(self, b: Builder) -> dict[str, Any]:
        return {"type": "string", "description": "an IANA time zone, e.g. Asia/Seoul"}


class Upper(Str):
    """One of ``names``, in any case; read as upper case (log levels)."""

    def __init__(self, names: tuple[str, ...]) -> None:
        super().__init__()
        self.names = names
        self.text = " \\| ".join(f"`{n}`" for n in names)

    def check(self, ctx: Ctx, node: Node, path: str, value: str) -> str | _Invalid:
        if value.upper() not in self.names:
            ctx.add(node, path, f"must be one of: {', '.join(self.names)}; got {value!r}")
            return INVALID
        return value.upper()

    def schema(self, b: Builder) -> dict[str, Any]:
        return {"enum": [*self.names, *(v.lower() for v in self.names)]}


class TagRef(Str):
    """A ``SOURCE.TAG``; that the source and tag exist is a cross-reference rule."""

    text = "`SOURCE.TAG`"

    def check(self, ctx: Ctx, node: Node, path: str, value: str) -> str | _Invalid:
        source, dot, tag = value.partition(".")
        if not dot or not NAME_PATTERN.fullmatch(source) or not NAME_PATTERN.fullmatch(tag):
            ctx.add(node, path, f"must name a tag as SOURCE.TAG, got {value!r}")
            return INVALID
        ctx.refs.append(Ref(value, node, path))
        return value

    def schema(self, b: Builder) -> dict[str, Any]:
        part = NAME_PATTERN.pattern
        pattern = {"type": "string", "pattern": f"^{part}\\.{part}$"}
        return b.shared("tagRef", pattern | {"description": "a tag as SOURCE.TAG"})


class FilePath(Str):
    """A path the agent reads; a relative one is resolved by
    :func:`edge_agent.secrets.resolve_path` (credentials directory, else the config's). With a
    ``file_kind``, the file is checked as that once the structure is valid."""

    text = "path"

    def __init__(self, file_kind: FileKind | None = None, *, local: bool = False) -> None:
        super().__init__()
        self.file_kind, self.local = file_kind, local

    def check(self, ctx: Ctx, node: Node, path: str, value: str) -> str | _Invalid:
        if self.local:
            # A path the agent writes (storage.dir): against the configuration file's directory,
            # never the working directory or the read-only credentials.
            return os.path.normpath(os.path.join(os.path.abspath(ctx.base_dir), value))
        resolved = resolve_path(value, ctx.base_dir)
        if self.file_kind is not None:
            ctx.files.append((node, path, resolved, self.file_kind))
        return resolved


class Integer(Kind[int]):
    text = "integer"

    def __init__(self, low: int, high: int | None = None) -> None:
        self.low, self.high = low, high
        self.bounds = f"{low}..{high}" if high is not None else f">= {low}"
        self.text = f"integer {self.bounds}"

    def parse(self, ctx: Ctx, node: Node, path: str) -> int | _Invalid:
        got = self.need(ctx, node, path, "an integer")
        if got is None:
            return INVALID
        kind, value = got
        if kind != "int":
            ctx.add(node, path, f"must be an integer, got {describe(ctx, node)}")
            return INVALID
        if value < self.low or (self.high is not None and value > self.high):
            shown = value if abs(value) < 10**30 else raw(node, 30)
            ctx.add(node, path, f"must be {self.bounds}, got {shown}{self.hint(value)}")
            return INVALID
        return int(value)

    def hint(self, value: int) -> str:
        return ""

    def schema(self, b: Builder) -> dict[str, Any]:
        out: dict[str, Any] = {"type": "integer", "minimum": self.low}
        return out if self.high is None else out | {"maximum": self.high}


PORT: Final = Integer(1, 65535)
REGISTER: Final = Integer(0, 65535)  # a 16-bit Modbus address or register count


class Const(Kind[T]):
    """The one value allowed. With ``base``, a value is first checked as that kind (its type
    and range messages), then ``says`` what else is wrong with it."""

    def __init__(
        self, value: T, why: str = "", says: str = "", base: Kind[T] | None = None
    ) -> None:
        self.value, self.text, self.base = value, f"`{value}`", base
        self.says = says or f"must be {value} ({why})"

    def parse(self, ctx: Ctx, node: Node, path: str) -> T | _Invalid:
        if self.base is not None:
            value = self.base.parse(ctx, node, path)
            if not isinstance(value, _Invalid) and value != self.value:
                ctx.add(node, path, f"{self.says}, got {value}")
                return INVALID
            return value
        got = self.need(ctx, node, path, str(self.value))
        if got is not None and got[1] == self.value and type(got[1]) is type(self.value):
            return self.value
        if got is not None:
            ctx.add(node, path, f"{self.says}, got {describe(ctx, node)}")
        return INVALID

    def schema(self, b: Builder) -> dict[str, Any]:
        return {"const": self.value}


class Number(Kind[float]):
    text = "number"

    def __init__(
        self, low: float | None = None, high: float | None = None, *, above: bool = False
    ) -> None:
        self.low, self.high, self.above = low, high, above
        if low is not None and high is not None:
            self.rule = f"between {low:g} and {high:g}"
        elif low is not None:
            self.rule = f"{'>' if above else '>='} {low:g}"
        self.text = (
            f"number {self.rule.replace('between ', '').replace(' and ', '..')}"
            if (low is not None)
            else "number"
        )

    def parse(self, ctx: Ctx, node: Node, path: str) -> float | _Invalid:
        got = self.need(ctx, node, path, "a number")
        if got is None:
            return INVALID
        kind, value = got
        if kind not in {"int", "float"}:
            ctx.add(node, path, f"must be a number, got {describe(ctx, node)}")
            return INVALID
        try:
            number = float(value)
        except OverflowError:
            number = math.inf
        if not math.isfinite(number):
            ctx.add(node, path, f"must be a finite number, got {raw(node)}")
            return INVALID
        low, high = self.low, self.high
        if (low is not None and (number < low or (self.above and number == low))) or (
            high is not None and number > high
        ):
            ctx.add(node, path, f"must be {self.rule}, got {raw(node)}")
            return INVALID
        return number

    def schema(self, b: Builder) -> dict[str, Any]:
        out: dict[str, Any] = {"type": "number"}
        if self.low is not None:
            out["exclusiveMinimum" if self.above else "minimum"] = self.low
        return out if self.high is None else out | {"maximum": self.high}


class Boolean(Kind[bool]):
    text = "boolean"

    def parse(self, ctx: Ctx, node: Node, path: str) -> bool | _Invalid:
        got = self.need(ctx, node, path, "true or false")
        if got is None:
            return INVALID
        if got[0] != "bool":
            ctx.add(node, path, f"must be true or false, got {describe(ctx, node)}")
            return INVALID
        return bool(got[1])

    def schema(self, b: Builder) -> dict[str, Any]:
        return {"type": "boolean"}


def duration_text(seconds: float) -> str:
    """``seconds`` in the loader's duration syntax, in the largest unit that keeps it exact
    (``30d``, ``5m``, ``1.5s``, ``250ms``); ``repr`` keeps every digit of an odd value."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and (seconds / size).is_integer():
            return f"{int(seconds // size)}{unit}"
    if seconds and seconds < 1 and (seconds * 1000).is_integer():
        return f"{int(seconds * 1000)}ms"
    return f"{int(seconds)}s" if seconds.is_integer() else f"{seconds!r}s"


class Duration(Kind[float]):
    """``500ms``, ``5s``, ``15m``, ``8h``, ``30d`` or plain seconds; > 0 unless ``zero``."""

    text = "duration"
    WHAT = "a duration like '5s' or '500ms'"

    def __init__(self, *, zero: bool = False, most: int | None = None, why: str = "") -> None:
        self.zero, self.most, self.why = zero, most, why
        if zero:
            self.text = "duration ≥ 0"
        elif most is not None:
            self.text = f"duration, at most {most} s"

    def parse(self, ctx: Ctx, node: Node, path: str) -> float | _Invalid:
        got = self.need(ctx, node, path, self.WHAT)
        if got is None:
            return INVALID
        kind, value = got
        if kind not in {"int", "float", "str"}:
            ctx.add(node, path, f"must be {self.WHAT}, got {describe(ctx, node)}")
            return INVALID
        try:
            seconds = parse_duration(value)
        except (ValueError, OverflowError) as exc:
            ctx.add(node, path, str(exc))
            return INVALID
        if not self.zero and seconds <= 0:
            ctx.add(node, path, f"must be a positive duration, got {raw(node)}")
            return INVALID
        if self.most is not None and seconds > self.most:
            ctx.add(node, path, f"must be at most {self.most} s ({self.why}), got {raw(node)}")
            return INVALID
        return seconds

    def schema(self, b: Builder) -> dict[str, Any]:
        number = {"type": "number", "minimum" if self.zero else "exclusiveMinimum": 0}
        if self.most is not None:
            number["maximum"] = self.most
        text = {
            "type": "string",
            "pattern": f"^\\s*({NUMBER})\\s*({UNITS})?\\s*$",
        }
        description = (
            "a duration: a number and a unit (ms, s, m, h, d), e.g. 500ms, 5s, 15m, 8h, 30d; "
            "a plain number is seconds"
        )
        return {"description": description, "oneOf": [number, text]}

    def dump(self, value: Any) -> Any:
        return duration_text(value)


_SIZE = re.compile(r"\s*(\d+)\s*(|B|kB|KB|KiB|MB|MiB|GB|GiB)\s*")
_SIZE_UNITS: Final[Mapping[str, int]] = {
    "": 1,
    "B": 1,
    "kB": 1000,
    "KB": 1000,
    "MB": 1000**2,
    "GB": 1000**3,
    "KiB": 1024,
    "MiB": 1024**2,
    "GiB": 1024**3,
}


class Size(Kind[int]):
    """A byte count: an integer, or a string with a unit (``500kB``, ``100MiB``, ``1GB``)."""

    text = "size"
    WHAT = "a size like 100MiB, 500kB or a number of bytes"

    def parse(self, ctx: Ctx, node: Node, path: str) -> int | _Invalid:
        got = self.need(ctx, node, path, self.WHAT)
        if got is None:
            return INVALID
        kind, value = got
        if kind == "int" and value >= 0:
            return int(value)
        match = _SIZE.fullmatch(value) if kind == "str" else None
        if match is None:
            ctx.add(node, path, f"must be {self.WHAT}, got {describe(ctx, node)}")
            return INVALID
        return int(match.group(1)) * _SIZE_UNITS[match.group(2)]

    def dump(self, value: Any) -> Any:
        for unit in ("GiB", "MiB", "KiB"):
            if value and value % _SIZE_UNITS[unit] == 0:
                return f"{value // _SIZE_UNITS[unit]}{unit}"
        return value

    def schema(self, b: Builder) -> dict[str, Any]:
        pattern = f"^{_SIZE.pattern}$"
        return {
            "description": "a size: a number of bytes, or a number and a unit (kB, KiB, MB, MiB, "
            "GB, GiB)",
            "oneOf": [{"type": "integer", "minimum": 0}, {"type": "string", "pattern": pattern}],
        }


class Choice(Kind[E]):
    def __init__(self, enum: type[E], *, exclude: Collection[E] = ()) -> None:
        self.allowed = [member for member in enum if member not in exclude]
        self.text = " \\| ".join(f"`{m.value}`" for m in self.allowed)

    def parse(self, ctx: Ctx, node: Node, path: str) -> E | _Invalid:
        got = self.need(ctx, node, path, "a string")
        if got is None:
            return INVALID
        for member in self.allowed:
            if got[0] == "str" and got[1] == member.value:
                return member
        names = ", ".join(member.value for member in self.allowed)
        ctx.add(node, path, f"must be one of: {names}; got {describe(ctx, node)}")
        return INVALID

    def schema(self, b: Builder) -> dict[str, Any]:
        return {"enum": [m.value for m in self.allowed]}


class Alias(Kind[E]):
    """An enum written in several ways (``protocol: 5``, ``"5.0"``, ``"3.1.1"``)."""

    def __init__(self, spellings: Mapping[str, E], what: str) -> None:
        self.spellings, self.what = spellings, what
        self.text = what.replace('"', "`").replace(" or ", " \\| ").replace("5", "`5`")

    def parse(self, ctx: Ctx, node: Node, path: str) -> E | _Invalid:
        got = self.need(ctx, node, path, self.what)
        if got is not None and got[0] in {"str", "int"} and str(got[1]) in self.spellings:
            return self.spellings[str(got[1])]
        if got is not None:
            ctx.add(node, path, f"must be {self.what}, got {describe(ctx, node)}")
        return INVALID

    def schema(self, b: Builder) -> dict[str, Any]:
        return {"enum": [*self.spellings, *(int(s) for s in self.spellings if s.isdigit())]}


class Pattern(Kind[T]):
    """A value read from the scalar's raw text (YAML 1.1 reads an unquoted 06:00 as the base-60
    integer 360 and 2026-12-01 as a date; the user meant the text)."""

    def __init__(
        self, regex: str, build: Callable[[re.Match[str]], T], what: str, text: str, doc: str = ""
    ) -> None:
        self.regex, self.build, self.what, self.text = re.compile(regex), build, what, text
        self.doc = doc

    def parse(self, ctx: Ctx, node: Node, path: str) -> T | _Invalid:
        match = self.regex.fullmatch(node.value) if isinstance(node, ScalarNode) else None
        try:
            if match is not None:
                return self.build(match)
        except ValueError:
            pass
        ctx.add(node, path, f"must be {self.what}, got {describe(ctx, node)}")
        return INVALID

    def schema(self, b: Builder) -> dict[str, Any]:
        out = {"type": "string", "pattern": f"^{self.regex.pattern}$"}
        return out | {"description": self.doc} if self.doc else out


class Weekday(Kind[int]):
    def __init__(self, names: tuple[str, ...]) -> None:
        self.names, self.text = names, "weekday (`mon` ... `sun`)"

    def parse(self, ctx: Ctx, node: Node, path: str) -> int | _Invalid:
        got = self.need(ctx, node, path, "a weekday")
        if got is None:
            return INVALID
        if got[0] == "str" and got[1].lower() in self.names:
            return self.names.index(got[1].lower())
        names = ", ".join(self.names)
        ctx.add(node, path, f"must be one of: {names}; got {describe(ctx, node)}")
        return INVALID

    def schema(self, b: Builder) -> dict[str, Any]:
        return {"enum": [*self.names, *(d.capitalize() for d in self.names), *self.upper()]}

    def upper(self) -> list[str]:
        return [d.upper() for d in self.names]

    def dump(self, value: Any) -> Any:
        return self.names[value]


class Opt(Kind[T | None]):
    """``inner``, except that null gives None."""

    def __init__(self, inner: Kind[T]) -> None:
        self.inner, self.text = inner, inner.text

    def parse(self, ctx: Ctx, node: Node, path: str) -> T | _Invalid | None:
        return None if is_null(ctx, node) else self.inner.parse(ctx, node, path)

    def schema(self, b: Builder) -> dict[str, Any]:
        return {"anyOf": [self.inner.schema(b), {"type": "null"}]}

    def dump(self, value: Any) -> Any:
        return self.inner.dump(value)


def items(ctx: Ctx, node: Node, path: str) -> list[tuple[Node, str]] | None:
    if not isinstance(node, SequenceNode):
        ctx.add(node, path, f"must be a list, got {describe(ctx, node)}")
        return None
    out = [(item, join_index(path, index)) for index, item in enumerate(node.value)]
    ctx.index.update((item_path, item) for item, item_path in out)
    return out


class ListOf(Kind[Any]):
    """A list of ``inner`` (a tuple; a frozenset with ``unique``). With ``names``, the items'
    ``name`` keys must be unique (reported at the second one)."""

    def __init__(
        self,
        inner: Kind[Any],
        *,
        least: int = 0,
        names: str | None = None,
        unique: bool = False,
        empty: str = "",
    ) -> None:
        self.inner, self.least, self.names, self.unique = inner, least, names, unique
        self.empty = empty or f"must list at least {least}"
        self.text = f"list of {inner.text}"

    def parse(self, ctx: Ctx, node: Node, path: str) -> Any:
        found = items(ctx, node, path)
        if found is None:
            return INVALID
        if len(found) < self.least:
            ctx.add(node, path, self.empty)
            return INVALID
        values = [self.inner.parse(ctx, item, item_path) for item, item_path in found]
        if self.names is not None:
            unique_names(ctx, found, self.names)
        if any(isinstance(v, _Invalid) for v in values):
            return INVALID
        return frozenset(values) if self.unique else tuple(values)

    def schema(self, b: Builder) -> dict[str, Any]:
        out: dict[str, Any] = {"type": "array", "items": self.inner.schema(b)}
        if self.least:
            out["minItems"] = self.least
        return out | {"uniqueItems": True} if self.unique else out

    def dump(self, value: Any) -> Any:
        return [self.inner.dump(v) for v in (sorted(value) if self.unique else value)]


def name_node(ctx: Ctx, node: Node, path: str) -> Node | None:
    """The value node of the item's ``name`` key, if it has one."""
    if isinstance(node, MappingNode):
        for name, _, value_node in pairs(ctx, node, path, report=False):
            if name == "name":
                return value_node
    return None


def unique_names(ctx: Ctx, found: list[tuple[Node, str]], what: str) -> None:
    """Report each repeated name at its second occurrence."""
    first: dict[str, Node] = {}
    for item, item_path in found:
        node = name_node(ctx, item, item_path)
        name = plain_name(ctx, node)
        if name is None or node is None:
            continue
        if name in first:
            line = first[name].start_mark.line + 1
            message = f"duplicate {what} name {name!r} (first at line {line})"
            ctx.add(node, join_key(item_path, "name"), message)
        else:
            first[name] = node


class CodeMap(Kind[dict[int, Any]]):
    """A mapping of integer codes (PLC values) to ``inner`` values, at least one."""

    def __init__(self, inner: Kind[Any], what: str, code: str = "code") -> None:
        self.inner, self.what, self.code = inner, what, code
        self.text = f"mapping of integer codes to {inner.text}"

    def parse(self, ctx: Ctx, node: Node, path: str) -> dict[int, Any] | _Invalid:
        if not isinstance(node, MappingNode):
            message = f"must be a mapping of {self.code}s to {self.what}, got {describe(ctx, node)}"
            ctx.add(node, path, message)
            return INVALID
        before = ctx.count
        result: dict[int, Any] = {}
        for code, key_node, value_node in pairs(ctx, node, path):
            key_path = join_key(path, code)
            if isinstance(code, bool) or not isinstance(code, int):
                message = f"{self.code}s must be integers, got {describe(ctx, key_node)}"
                ctx.add(key_node, key_path, message)
                continue
            value = self.inner.parse(ctx, value_node, key_path)
            if not isinstance(value, _Invalid):
                result[code] = value
        if not node.value:
            ctx.add(node, path, f"must map at least one {self.code}")
        return INVALID if ctx.count > before else result

    def schema(self, b: Builder) -> dict[str, Any]:
        return {
            "type": "object",
            "description": f"PLC {self.code} (an integer) to {self.what}",
            "minProperties": 1,
            "propertyNames": {"pattern": "^[+-]?[0-9]+$"},
            "additionalProperties": self.inner.schema(b),
        }

    def dump(self, value: Any) -> Any:
        return {code: self.inner.dump(v) for code, v in value.items()}


class Names(Kind[frozenset[str]]):
    """A list of names drawn from ``known()`` (share topics and fields); None: checked by a
    cross-reference rule (share lines)."""

    def __init__(self, what: str, known: Callable[[], Collection[str]] | None = None) -> None:
        self.what, self.known = what, known
        self.text = f"list of {what}s"
        self.strings = ListOf(Str())

    def parse(self, ctx: Ctx, node: Node, path: str) -> frozenset[str] | _Invalid:
        values = self.strings.parse(ctx, node, path)
        if isinstance(values, _Invalid):
            return values
        known = self.known() if self.known is not None else None
        bad = False
        for value, (item, item_path) in zip(values, items(ctx, node, path) or [], strict=True):
            if known is None:
                ctx.refs.append(Ref(value, item, item_path, self.what))
            elif value not in known:
                close = difflib.get_close_matches(value, sorted(known), n=1, cutoff=0.6)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                ctx.add(item, item_path, f"unknown {self.what} {value!r}{hint}")
                bad = True
        return INVALID if bad else frozenset(values)

    def schema(self, b: Builder) -> dict[str, Any]:
        inner = {"enum": sorted(self.known())} if self.known else b.shared("name", NAME.schema(b))
        return {"type": "array", "uniqueItems": True, "items": inner}

    def dump(self, value: Any) -> Any:
        return sorted(value)


# --- mappings and models ---------------------------------------------------------------------


def pairs(
    ctx: Ctx, node: MappingNode, path: str, *, report: bool = True
) -> list[tuple[Any, Node, Node]]:
    """The mapping's (key, key node, value node) triples, with YAML merge keys (``<<: *x``)
    applied and duplicate keys reported (with ``report``) and dropped."""
    add = ctx.add if report else (lambda *_: None)
    explicit: list[tuple[Any, Node, Node]] = []
    merged: list[tuple[Any, Node, Node]] = []
    first: dict[tuple[str, Any], Node] = {}
    for key_node, value_node in node.value:
        if key_node.tag == _MERGE_TAG:
            sources = value_node.value if isinstance(value_node, SequenceNode) else [value_node]
            for source in sources:
                if isinstance(source, MappingNode):
                    merged.extend(pairs(ctx, source, path, report=report))
                else:
                    add(source, path, "a merge key (<<) needs a mapping or a list of mappings")
            continue
        if not isinstance(key_node, ScalarNode):
            add(key_node, path, f"keys must be plain values, got {describe(ctx, key_node)}")
            continue
        kind, key = scalar(ctx, key_node)
        if kind not in _SCALAR_KINDS:
            key = key_node.value
        if (kind, key) in first:
            earlier = first[kind, key].start_mark.line + 1
            add(key_node, join_key(path, key), f"duplicate key (first at line {earlier})")
            continue
        first[kind, key] = key_node
        explicit.append((key, key_node, value_node))
    seen = {key for key, _, _ in explicit}
    for key, key_node, value_node in merged:
        if key not in seen:  # explicit keys override merged ones; the first merge wins
            seen.add(key)
            explicit.append((key, key_node, value_node))
    return explicit


@dataclass(frozen=True, slots=True)
class Key:
    """The declaration of one configuration key (see :func:`key`)."""

    kind: Kind[Any]
    doc: str
    yaml: str | None
    required: bool | None
    shown: str | None
    applies: Callable[[Any], bool] | None


def key(
    kind: Kind[T],
    doc: str,
    default: Any = dataclasses.MISSING,
    *,
    factory: Callable[[], Any] | None = None,
    yaml: str | None = None,
    required: bool | None = None,
    shown: str | None = None,
    applies: Callable[[Any], bool] | None = None,
) -> T:
    """Declare a configuration key on a dataclass field: its ``kind`` (type, range or pattern,
    message), a one-line ``doc``, its ``default`` (none: required), its YAML name when it differs
    from the field's (``poll_interval`` for ``poll_interval_s``), ``required`` when that differs
    from having no default, ``shown``: the default in words when it is computed, and
    ``applies``: whether the key means anything for an object (the dump leaves it out if not)."""
    meta = {"key": Key(kind, doc, yaml, required, shown, applies)}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)  # type: ignore[no-any-return]
    return field(default=default, metadata=meta)  # type: ignore[no-any-return]


@dataclass(frozen=True, slots=True)
class Declared:
    name: str  # the dataclass field
    yaml: str  # the YAML key
    key: Key
    default: Any  # dataclasses.MISSING when required
    required: bool


def declared(cls: type) -> tuple[Declared, ...]:
    """The configuration keys of dataclass ``cls``, in field order."""
    if cls in _DECLARED:
        return _DECLARED[cls]
    out = []
    for f in dataclasses.fields(cls):
        if "key" not in f.metadata:
            continue
        decl: Key = f.metadata["key"]
        default = f.default
        if f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        required = decl.required if decl.required is not None else default is dataclasses.MISSING
        out.append(Declared(f.name, decl.yaml or f.name, decl, default, required))
    _DECLARED[cls] = tuple(out)
    return _DECLARED[cls]


_DECLARED: dict[type, tuple[Declared, ...]] = {}


@dataclass(slots=True)
class Parsed:
    """A checked mapping: values (or INVALID) and value nodes by YAML key, for the rules."""

    node: MappingNode
    path: str
    values: dict[str, Any]
    nodes: dict[str, Node]
    extra: dict[str, Any] = field(default_factory=dict)  # fields a rule sets (not YAML keys)

    def get(self, key: str, default: Any = None) -> Any:
        return self.values.get(key, default)

    def at(self, key: str) -> tuple[Node, str]:
        """Where to report about ``key``: its value, else the mapping."""
        return self.nodes.get(key, self.node), join_key(self.path, key)


Rule = Callable[[Ctx, Parsed], None]
# Rules about one object (its keys together), by class; see edge_agent.config.rules.
RULES: dict[type, tuple[Rule, bool]] = {}


def rule(cls: type, *, always: bool = False) -> Callable[[Rule], Rule]:
    """Register a rule for ``cls``; it runs when every key passed, or ``always``."""

    def register(fn: Rule) -> Rule:
        RULES[cls] = (fn, always)
        return fn

    return register


class Model(Kind[T]):
    """A mapping read into dataclass ``cls`` from its declared keys. Unknown keys, duplicate
    keys and missing required keys are reported; ``elsewhere`` gives a better message than
    "unknown key" for keys that belong to another kind of item; with ``extensions``, keys
    starting with ``x-`` are ignored (a home for YAML anchors)."""

    def __init__(
        self,
        cls: type[T],
        *,
        elsewhere: Callable[[], Mapping[str, str]] | None = None,
        extensions: bool = False,
        text: str = "mapping",
    ) -> None:
        self.cls, self.elsewhere, self.extensions, self.text = cls, elsewhere, extensions, text

    def parse(self, ctx: Ctx, node: Node, path: str) -> T | _Invalid:
        if not isinstance(node, MappingNode):
            ctx.add(node, path, f"must be a mapping, got {describe(ctx, node)}")
            return INVALID
        keys = {d.yaml: d for d in declared(self.cls)}
        elsewhere = self.elsewhere() if self.elsewhere else {}
        before = ctx.count
        parsed = Parsed(node, path, {}, {})
        for name, key_node, value_node in pairs(ctx, node, path):
            key_path = join_key(path, name)
            if isinstance(name, str) and name in keys:
                ctx.index[key_path] = parsed.nodes[name] = value_node
                parsed.values[name] = keys[name].key.kind.parse(ctx, value_node, key_path)
            elif name == "password":
                ctx.add(key_node, key_path, "inline secrets are not accepted: use password_file")
            elif name in elsewhere:
                ctx.add(key_node, key_path, elsewhere[name])
            elif self.extensions and isinstance(name, str) and name.startswith("x-"):
                pass  # a place for YAML anchors (`x-shifts: &shifts [...]`), ignored like Compose
            else:
                close = difflib.get_close_matches(str(name), list(keys), n=1, cutoff=0.6)
                # Abbreviations (`ca` for `ca_file`) are too short for difflib's ratio.
                close = close or [
                    k for k in keys if len(str(name)) >= 2 and k.startswith(str(name))
                ]
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                ctx.add(key_node, key_path, f"unknown key{hint}")
        for d in keys.values():
            if d.required and d.yaml not in parsed.nodes:
                ctx.add(node, join_key(path, d.yaml), "required key missing")
        check, always = RULES.get(self.cls, (None, False))
        if check is not None and (always or ctx.count == before):
            check(ctx, parsed)
        if ctx.count > before:
            return INVALID
        fields = {d.name: parsed.values[d.yaml] for d in keys.values() if d.yaml in parsed.values}
        obj = self.cls(**fields, **parsed.extra)
        ctx.built.append((path, obj))
        return obj

    def schema(self, b: Builder) -> dict[str, Any]:
        return b.ref(self.cls)

    def dump(self, value: Any) -> Any:
        return dump_object(value)


class Either(Kind[Any]):
    """A scalar short form or the full mapping: ``tls: true``, ``total_count: plc1.total``."""

    def __init__(
        self, short: Kind[Any], build: Callable[[Any], Any], full: Model[Any], what: str = ""
    ) -> None:
        self.short, self.build, self.full, self.what = short, build, full, what
        self.text = f"{short.text} or mapping"

    def parse(self, ctx: Ctx, node: Node, path: str) -> Any:
        if not isinstance(node, ScalarNode):
            return self.full.parse(ctx, node, path)
        if self.what and scalar(ctx, node)[0] != "bool":
            ctx.add(node, path, f"must be {self.what}; got {describe(ctx, node)}")
            return INVALID
        value = self.short.parse(ctx, node, path)
        return value if isinstance(value, _Invalid) else self.build(value)

    def schema(self, b: Builder) -> dict[str, Any]:
        return {"oneOf": [self.short.schema(b), self.full.schema(b)]}


def dump_object(obj: Any) -> dict[str, Any]:
    """A configuration object as plain YAML data: every declared key that is set and applies."""
    out: dict[str, Any] = {}
    for d in declared(type(obj)):
        value = getattr(obj, d.name)
        if value is None or (d.key.applies is not None and not d.key.applies(obj)):
            continue
        out[d.yaml] = d.key.kind.dump(value)
    return out


NAME: Final = Shared(
    Text(
        NAME_PATTERN.pattern,
        "1 to 64 characters from A-Z a-z 0-9 _ - (it becomes an MQTT topic level)",
        "name",
    ),
    "name",
)


class OneOf(Kind[Any]):
    """A mapping whose ``tag`` key (``protocol``) selects its model."""

    def __init__(self, tag: str, models: Mapping[str, Model[Any]]) -> None:
        self.tag, self.models, self.text = tag, models, "mapping"

    def parse(self, ctx: Ctx, node: Node, path: str) -> Any:
        if not isinstance(node, MappingNode):
            ctx.add(node, path, f"must be a mapping, got {describe(ctx, node)}")
            return INVALID
        found = {k: v for k, _, v in pairs(ctx, node, path, report=False) if isinstance(k, str)}
        names = ", ".join(self.models)
        tag_node, tag_path = found.get(self.tag), join_key(path, self.tag)
        if tag_node is None:
            ctx.add(node, tag_path, f"required key missing ({names.replace(', ', ' or ')})")
        elif isinstance(tag_node, ScalarNode) and tag_node.value in self.models:
            return self.models[tag_node.value].parse(ctx, node, path)
        else:
            ctx.add(tag_node, tag_path, f"must be one of: {names}; got {describe(ctx, tag_node)}")
        # Without it the other keys cannot be checked; the name still can.
        if "name" not in found:
            ctx.add(node, join_key(path, "name"), "required key missing")
        else:
            NAME.parse(ctx, found["name"], join_key(path, "name"))
        return INVALID

    def schema(self, b: Builder) -> dict[str, Any]:
        return {"oneOf": [model.schema(b) for model in self.models.values()]}

    def dump(self, value: Any) -> Any:
        return dump_object(value)


def only_in(other: type, this: type, words: str) -> Callable[[], dict[str, str]]:
    """The keys of ``other`` that ``this`` lacks, each with the message "applies to WORDS"."""

    def keys() -> dict[str, str]:
        mine = {d.yaml for d in declared(this)}
        return {d.yaml: f"applies to {words}" for d in declared(other) if d.yaml not in mine}

    return keys
