"""YAML configuration in, frozen :mod:`edge_agent.config.schema` dataclasses out.

Contract (DESIGN §2): :func:`load_config` either returns a complete, valid
:class:`~edge_agent.config.schema.AgentConfig` or raises one
:class:`~edge_agent.errors.ConfigError` whose ``issues`` list **every** problem found, each as
``FILE:LINE:COL: yaml.path: message`` (1-based line and column), sorted by position. It touches
no network and starts nothing, so a bad file fails before the agent does anything.

How: the file is composed into YAML nodes with the safe loader (nodes keep their line and column;
no Python object is ever constructed from a tag), then walked against the schema below. Each
check either returns a value or records an issue and returns :data:`INVALID`; a dataclass is only
built from values that all passed.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import sys
import zoneinfo
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, time
from enum import StrEnum
from typing import Any, Final, TypeVar
from urllib.parse import urlsplit

import yaml
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from edge_agent.config.durations import parse_duration
from edge_agent.config.files import FileKind, file_problem
from edge_agent.config.issues import Issue, join_index, join_key, plural
from edge_agent.config.schema import (
    WEEKDAY_NAMES,
    AgentConfig,
    Break,
    ByteOrder,
    Calendar,
    CounterSignal,
    DataType,
    EmissionFactor,
    EnergySignal,
    EnergyUnit,
    ExtraDay,
    HistoryConfig,
    LineConfig,
    LogFormat,
    LoggingConfig,
    MachineState,
    Maintenance,
    ModbusSourceConfig,
    ModbusTable,
    ModbusTag,
    ModbusTransport,
    MqttConfig,
    MqttEncoding,
    MqttProtocol,
    OnStartupError,
    OpcuaMode,
    OpcuaSecurityConfig,
    OpcuaSecurityMode,
    OpcuaSecurityPolicy,
    OpcuaSourceConfig,
    OpcuaTag,
    OrderSignal,
    OutboxConfig,
    Parity,
    Product,
    ProductSignal,
    PrometheusConfig,
    ReasonSignal,
    SerialConfig,
    ShareConfig,
    Shift,
    Signals,
    SourceConfig,
    SparkplugConfig,
    StateSignal,
    StorageConfig,
    TlsConfig,
)
from edge_agent.errors import ConfigError
from edge_agent.exits import EXIT_CONFIG
from edge_agent.secrets import loose_permissions, resolve_path
from edge_agent.sharing import LINE_TOPICS, PAYLOAD_FIELDS
from edge_agent.sinks import sparkplug

__all__ = [
    "EXIT_CONFIG",
    "MAX_ALIAS_NODES",
    "MAX_FILE_BYTES",
    "MAX_LINES_SUPPORTED",
    "check_config_main",
    "load_config",
    "load_config_text",
    "normalize_fingerprint",
    "permission_warnings",
    "secret_files",
]

MAX_FILE_BYTES: Final = 1 << 20  # a real plant's file is a few kB; refuse before parsing more
# Aliases let a small file describe a huge tree ("billion laughs"): they may add at most this many
# nodes to the file's own. Sharing a shift list among a hundred lines adds a few thousand.
MAX_ALIAS_NODES: Final = 100_000
# Lines one agent serves with its engine step well inside the 1 s tick on 2 cores (measured:
# docs/performance.md, supported size). More is valid, and warned about.
MAX_LINES_SUPPORTED: Final = 1000

# Names become MQTT topic levels and metric label values: no '+', '#', '/', NUL, dots or spaces.
NAME_PATTERN: Final = re.compile(r"[A-Za-z0-9_-]{1,64}")
_NAME_RULE = "must be 1 to 64 characters from A-Z a-z 0-9 _ - (it becomes an MQTT topic level)"
_CLOCK = re.compile(r"([01]?[0-9]|2[0-3]):([0-5][0-9])")
_DATE = re.compile(r"([0-9]{4})-([0-9]{2})-([0-9]{2})")
_DATETIME = re.compile(r"([0-9]{4})-([0-9]{2})-([0-9]{2})[T ]([01][0-9]|2[0-3]):([0-5][0-9])")
_NODE_ID = re.compile(r"(?:ns=[0-9]+;|nsu=[^;]+;)?[isgb]=.+", re.DOTALL)
_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

# YAML keys without a unit whose dataclass field carries one; every other key maps by name.
FIELD_NAMES: Final[Mapping[str, str]] = {
    "poll_interval": "poll_interval_s",
    "timeout": "timeout_s",
    "ideal_cycle_time": "ideal_cycle_time_s",
    "stop_after": "stop_after_s",
    "micro_stop_max": "micro_stop_max_s",
    "keepalive": "keepalive_s",
    "publish_interval": "publish_interval_s",
    "backoff_initial": "backoff_initial_s",
    "backoff_max": "backoff_max_s",
    "session_expiry": "session_expiry_s",
    "min": "min_value",
    "max": "max_value",
    "inter_request_gap": "inter_request_gap_s",
    "publishing_interval": "publishing_interval_s",
    "sampling_interval": "sampling_interval_s",
    "keyframe_interval": "keyframe_interval_s",
    "retention": "retention_s",
    "max_power": "max_power_kw",
}

_TAG_PREFIX = "tag:yaml.org,2002:"
_MERGE_TAG = _TAG_PREFIX + "merge"
_SCALAR_KINDS = {"null", "bool", "int", "float", "str"}


class _Invalid:
    """Marker for a value that failed its check (the issue is already recorded)."""

    def __repr__(self) -> str:
        return "INVALID"


INVALID: Final = _Invalid()

_T = TypeVar("_T")
_E = TypeVar("_E", bound=StrEnum)
Check = Callable[["_Ctx", Node, str], Any]


class _SafeNodeLoader(yaml.SafeLoader):
    """The safe loader, used only up to composing nodes (which carry start marks)."""


@dataclass(slots=True)
class _SourceInfo:
    tags: set[str] = field(default_factory=set)
    complete: bool = True  # False: some tag name failed, so unknown tags are not reported


class _Ctx:
    """Issues found so far, plus what line signals may refer to."""

    def __init__(self, file: str, *, check_files: bool = False) -> None:
        self.file = file
        # Files named by the configuration, checked once its structure is valid (_check_files).
        self.check_files = check_files
        self.files: list[tuple[Node, str, str, FileKind]] = []
        # Things that are valid but probably not meant: printed, never fatal.
        self.warnings: list[Issue] = []
        self.warnings_out: list[str] | None = None  # the caller's list, filled in at the end
        # Relative file paths in the config are relative to it (or to systemd's credentials).
        self.base_dir = os.path.dirname(os.path.abspath(file)) if not file.startswith("<") else "."
        self.issues: list[Issue] = []
        self.constructor = SafeConstructor()
        # None: no `sources` key, so any SOURCE.TAG is accepted (replay, DESIGN §5).
        self.sources: dict[str, _SourceInfo] | None = None
        self.sources_complete = True
        # Serial port of each RTU source so far: (source name, port node); one line, one source.
        self.serial_ports: dict[str, tuple[str | None, Node]] = {}

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
        unique = list(dict.fromkeys(str(issue) for issue in ordered))
        return ConfigError(unique)


# ---------------------------------------------------------------------------------------------
# Public API


def load_config(
    path: str | os.PathLike[str],
    *,
    check_files: bool = True,
    warnings: list[str] | None = None,
) -> AgentConfig:
    """Load and validate the configuration file at ``path``.

    Returns the frozen configuration with ``path`` set to the file's path. Raises
    :class:`ConfigError` listing every problem; a file that cannot be read gives the single issue
    ``FILE: cannot read: REASON``. Never raises anything else for any file content. With
    ``check_files`` (the default: ``run``, ``check-config``, a reload), every secret, key and
    certificate file it names must exist, be readable and parse (:mod:`edge_agent.config.files`);
    ``replay`` and ``history export`` connect to nothing and leave them out. ``warnings``, when
    given, receives what is valid but probably not meant (``FILE:LINE:COL: path: message``),
    also when the file has errors.
    """
    name = os.fspath(path)
    try:
        with open(name, "rb") as stream:
            data = stream.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise ConfigError([f"{name}: cannot read: {exc.strerror or exc}"]) from None
    ctx = _Ctx(name, check_files=check_files)
    ctx.warnings_out = warnings
    if len(data) > MAX_FILE_BYTES:
        ctx.add(None, "", f"file is larger than {MAX_FILE_BYTES} bytes: refusing to parse it")
        raise ctx.error()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        ctx.issues.append(Issue(name, line, column, "", f"file is not UTF-8: {exc.reason}"))
        raise ctx.error() from None
    return _load(ctx, text)


def load_config_text(
    text: str,
    path: str = "<string>",
    *,
    check_files: bool = False,
    warnings: list[str] | None = None,
) -> AgentConfig:
    """Like :func:`load_config`, for YAML already in memory; ``path`` is used in messages and
    stored in ``AgentConfig.path``. The files it names are checked only with ``check_files``."""
    ctx = _Ctx(path, check_files=check_files)
    ctx.warnings_out = warnings
    if len(text) > MAX_FILE_BYTES or len(text.encode("utf-8", "surrogatepass")) > MAX_FILE_BYTES:
        ctx.add(None, "", f"file is larger than {MAX_FILE_BYTES} bytes: refusing to parse it")
        raise ctx.error()
    return _load(ctx, text)


def check_config_main(path: str, *, dump: bool = False) -> int:
    """``edge-agent check-config``: validate ``path`` and report.

    Prints a one-line summary to stdout and returns 0 when the file is valid; otherwise prints
    each problem on its own line to stderr, then ``N problems``, and returns 78 (EX_CONFIG).
    A valid file's loose permissions (see :func:`edge_agent.secrets.loose_permissions`) are
    warnings on stderr that do not change the exit code. With ``dump``, the effective
    configuration follows as YAML, secrets redacted (:mod:`edge_agent.config.dump`).
    """
    warnings: list[str] = []
    try:
        cfg = load_config(path, warnings=warnings)
    except ConfigError as exc:
        # This is the command's own output, not logging.
        for issue in exc.issues:
            print(issue, file=sys.stderr)
        for warning in warnings:
            print(f"warning: {warning}", file=sys.stderr)
        print(plural(len(exc.issues), "problem"), file=sys.stderr)
        return EXIT_CONFIG
    for warning in warnings + permission_warnings(cfg):
        print(f"warning: {warning}", file=sys.stderr)
    tags = sum(len(source.tags) for source in cfg.sources)
    summary = (
        f"{path}: ok: site '{cfg.site}', {plural(len(cfg.sources), 'source')}, "
        f"{plural(len(cfg.lines), 'line')}, {plural(tags, 'tag')}"
    )
    if dump:
        from edge_agent.config.dump import dump_config  # noqa: PLC0415

        print(f"# {summary}")
        print(dump_config(cfg), end="")
    else:
        print(summary)
    return 0


def secret_files(cfg: AgentConfig) -> list[str]:
    """The configured files that hold secrets or private keys."""
    files: list[str | None] = [sink.password_file for sink in cfg.mqtt_sinks]
    files += [cfg.prometheus.password_file, cfg.prometheus.key_file]
    files += [sink.tls.key_file for sink in cfg.mqtt_sinks if sink.tls is not None]
    for source in cfg.sources:
        if isinstance(source, OpcuaSourceConfig):
            files += [source.password_file, source.security.key_file]
    return [f for f in files if f is not None]


def permission_warnings(cfg: AgentConfig) -> list[str]:
    """Loose permissions on the configuration file and the secret files it names."""
    config = cfg.path if not cfg.path.startswith("<") else None
    return loose_permissions(secret_files(cfg), config)


# ---------------------------------------------------------------------------------------------
# YAML text to nodes


def _load(ctx: _Ctx, text: str) -> AgentConfig:
    root = _compose(ctx, text)
    if ctx.issues:
        raise ctx.error()
    if root is None:
        ctx.add(None, "", "the file is empty: expected a mapping with version, site, lines, mqtt")
        raise ctx.error()
    sizes = _expanded_size(root, MAX_FILE_BYTES + MAX_ALIAS_NODES)
    if sizes is None:
        ctx.add(root, "", "a YAML alias refers to a node that contains it (recursive alias)")
        raise ctx.error()
    expanded, distinct = sizes
    if expanded > distinct + MAX_ALIAS_NODES:
        ctx.add(root, "", f"YAML aliases add more than {MAX_ALIAS_NODES} nodes to this file")
        raise ctx.error()
    cfg = _agent(ctx, root)
    if ctx.check_files:
        _check_files(ctx)
    if ctx.warnings_out is not None:
        ctx.warnings_out.extend(ctx.warning_lines())
    if ctx.issues or isinstance(cfg, _Invalid):
        raise ctx.error()
    return cfg


def _check_files(ctx: _Ctx) -> None:
    """One issue per named file that is missing, unreadable or does not parse; each file once."""
    seen: dict[tuple[str, FileKind], str | None] = {}
    for node, path, resolved, kind in ctx.files:
        if (resolved, kind) not in seen:
            seen[resolved, kind] = file_problem(resolved, kind)
        problem = seen[resolved, kind]
        if problem is not None:
            ctx.add(node, path, problem)


def _compose(ctx: _Ctx, text: str) -> Node | None:
    loader: _SafeNodeLoader | None = None
    try:
        # The reader checks every character as the loader is created: keep it inside the try.
        loader = _SafeNodeLoader(text)
        node: Node | None = loader.get_single_node()
    except yaml.MarkedYAMLError as exc:
        message = exc.problem or "invalid YAML"
        if exc.context:
            message = f"{exc.context}: {message}"
        ctx.add(exc.problem_mark or exc.context_mark, "", f"YAML syntax error: {message}")
        return None
    except yaml.reader.ReaderError as exc:
        line = text.count("\n", 0, exc.position) + 1
        column = exc.position - (text.rfind("\n", 0, exc.position) + 1) + 1
        code = exc.character if isinstance(exc.character, int) else ord(exc.character[:1] or "?")
        message = f"character {code:#06x} is not allowed in YAML ({exc.reason})"
        ctx.issues.append(Issue(ctx.file, line, column, "", message))
        return None
    except yaml.YAMLError as exc:
        ctx.add(None, "", f"YAML error: {exc}")
        return None
    except RecursionError:
        # The composer recurses once per nesting level; no configuration nests this deep.
        ctx.add(None, "", "YAML nesting is too deep")
        return None
    finally:
        if loader is not None:
            loader.dispose()
    return node


def _children(node: Node) -> list[Node]:
    if isinstance(node, MappingNode):
        return [item for pair in node.value for item in pair]
    if isinstance(node, SequenceNode):
        return list(node.value)
    return []


def _expanded_size(root: Node, limit: int) -> tuple[int, int] | None:
    """The number of nodes the tree has once aliases are expanded (capped at ``limit + 1``) and
    the number of distinct nodes, or None when an alias makes it cyclic. Linear in the number of
    distinct nodes."""
    sizes: dict[int, int] = {}
    on_path: set[int] = set()
    stack: list[tuple[Node, bool]] = [(root, False)]
    while stack:
        node, finished = stack.pop()
        key = id(node)
        if finished:
            on_path.discard(key)
            total = 1 + sum(sizes[id(child)] for child in _children(node))
            sizes[key] = min(total, limit + 1)
            continue
        if key in sizes:
            continue
        if key in on_path:
            return None
        on_path.add(key)
        stack.append((node, True))
        for child in _children(node):
            if id(child) in on_path:
                return None
            if id(child) not in sizes:
                stack.append((child, False))
    return sizes[id(root)], len(sizes)


# ---------------------------------------------------------------------------------------------
# Scalars and generic checks


def _scalar(ctx: _Ctx, node: ScalarNode) -> tuple[str, Any]:
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


def _raw(node: Node, limit: int = 40) -> str:
    """The scalar as written, shortened and with control characters escaped, so that every issue
    stays on one line."""
    value = node.value if isinstance(node.value, str) else ""
    text = value if len(value) <= limit else value[: limit - 3] + "..."
    return repr(text)[1:-1]


def _describe(ctx: _Ctx, node: Node) -> str:
    if isinstance(node, MappingNode):
        return "a mapping"
    if isinstance(node, SequenceNode):
        return "a list"
    assert isinstance(node, ScalarNode)
    kind, value = _scalar(ctx, node)
    shown = _raw(node)
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


def _need_scalar(ctx: _Ctx, node: Node, path: str, what: str) -> tuple[str, Any] | None:
    if not isinstance(node, ScalarNode):
        ctx.add(node, path, f"must be {what}, got {_describe(ctx, node)}")
        return None
    return _scalar(ctx, node)


def _string(*, empty: bool = False) -> Check:
    def check(ctx: _Ctx, node: Node, path: str) -> Any:
        got = _need_scalar(ctx, node, path, "a string")
        if got is None:
            return INVALID
        kind, value = got
        if kind != "str":
            hint = f' (quote it: "{_raw(node)}")' if kind in {"int", "float", "bool"} else ""
            ctx.add(node, path, f"must be a string, got {_describe(ctx, node)}{hint}")
            return INVALID
        if not empty and not value.strip():
            ctx.add(node, path, "must not be empty")
            return INVALID
        if "\0" in value:
            ctx.add(node, path, "must not contain a NUL character")
            return INVALID
        return value

    return check


def _path(ctx: _Ctx, node: Node, path: str) -> Any:
    """A file or directory path; a relative one is resolved by
    :func:`edge_agent.secrets.resolve_path` (credentials directory, else the config's)."""
    value = _string()(ctx, node, path)
    if not isinstance(value, str):
        return INVALID
    return resolve_path(value, ctx.base_dir)


def _file(kind: FileKind) -> Check:
    """A file the agent reads (:func:`_path`), checked as ``kind`` once the structure is valid."""

    def check(ctx: _Ctx, node: Node, path: str) -> Any:
        value = _path(ctx, node, path)
        if isinstance(value, str):
            ctx.files.append((node, path, value, kind))
        return value

    return check


def _local_path(ctx: _Ctx, node: Node, path: str) -> Any:
    """A path the agent writes (``storage.dir``): a relative one is resolved against the
    configuration file's directory, never the working directory, so the state is the same
    whichever directory the agent starts from (and never in the read-only credentials)."""
    value = _string()(ctx, node, path)
    if not isinstance(value, str):
        return INVALID
    return os.path.normpath(os.path.join(os.path.abspath(ctx.base_dir), value))


def _name(ctx: _Ctx, node: Node, path: str) -> Any:
    value = _string()(ctx, node, path)
    if isinstance(value, str) and not NAME_PATTERN.fullmatch(value):
        ctx.add(node, path, f"{_NAME_RULE}, got {value!r}")
        return INVALID
    return value


def _integer(low: int, high: int | None = None) -> Check:
    def check(ctx: _Ctx, node: Node, path: str) -> Any:
        got = _need_scalar(ctx, node, path, "an integer")
        if got is None:
            return INVALID
        kind, value = got
        if kind != "int":
            ctx.add(node, path, f"must be an integer, got {_describe(ctx, node)}")
            return INVALID
        if value < low or (high is not None and value > high):
            bounds = f"{low}..{high}" if high is not None else f">= {low}"
            shown = value if abs(value) < 10**30 else _raw(node, 30)
            ctx.add(node, path, f"must be {bounds}, got {shown}")
            return INVALID
        return value

    return check


def _number(ctx: _Ctx, node: Node, path: str) -> Any:
    got = _need_scalar(ctx, node, path, "a number")
    if got is None:
        return INVALID
    kind, value = got
    if kind not in {"int", "float"}:
        ctx.add(node, path, f"must be a number, got {_describe(ctx, node)}")
        return INVALID
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        ctx.add(node, path, f"must be a finite number, got {_raw(node)}")
        return INVALID
    return number


def _boolean(ctx: _Ctx, node: Node, path: str) -> Any:
    got = _need_scalar(ctx, node, path, "true or false")
    if got is None:
        return INVALID
    kind, value = got
    if kind != "bool":
        ctx.add(node, path, f"must be true or false, got {_describe(ctx, node)}")
        return INVALID
    return value


def _duration(*, positive: bool = True) -> Check:
    def check(ctx: _Ctx, node: Node, path: str) -> Any:
        what = "a duration like '5s' or '500ms'"
        got = _need_scalar(ctx, node, path, what)
        if got is None:
            return INVALID
        kind, value = got
        if kind not in {"int", "float", "str"}:
            ctx.add(node, path, f"must be {what}, got {_describe(ctx, node)}")
            return INVALID
        try:
            seconds = parse_duration(value)
        except (ValueError, OverflowError) as exc:
            ctx.add(node, path, str(exc))
            return INVALID
        if positive and seconds <= 0:
            ctx.add(node, path, f"must be a positive duration, got {_raw(node)}")
            return INVALID
        return seconds

    return check


def _choice(enum: type[_E], *, exclude: Collection[_E] = ()) -> Check:
    allowed = [member for member in enum if member not in exclude]

    def check(ctx: _Ctx, node: Node, path: str) -> Any:
        got = _need_scalar(ctx, node, path, "a string")
        if got is None:
            return INVALID
        kind, value = got
        for member in allowed:
            if kind == "str" and value == member.value:
                return member
        names = ", ".join(member.value for member in allowed)
        ctx.add(node, path, f"must be one of: {names}; got {_describe(ctx, node)}")
        return INVALID

    return check


def _optional(check: Check) -> Check:
    """``check``, except that null gives None."""

    def optional(ctx: _Ctx, node: Node, path: str) -> Any:
        if isinstance(node, ScalarNode) and _scalar(ctx, node)[0] == "null":
            return None
        return check(ctx, node, path)

    return optional


def _items(ctx: _Ctx, node: Node, path: str) -> list[tuple[Node, str]] | None:
    if not isinstance(node, SequenceNode):
        ctx.add(node, path, f"must be a list, got {_describe(ctx, node)}")
        return None
    return [(item, join_index(path, index)) for index, item in enumerate(node.value)]


def _list_of(check: Check, *, min_items: int = 0) -> Check:
    def checked(ctx: _Ctx, node: Node, path: str) -> Any:
        items = _items(ctx, node, path)
        if items is None:
            return INVALID
        if len(items) < min_items:
            ctx.add(node, path, f"must list at least {min_items}")
            return INVALID
        values = [check(ctx, item, item_path) for item, item_path in items]
        return INVALID if any(isinstance(v, _Invalid) for v in values) else tuple(values)

    return checked


# ---------------------------------------------------------------------------------------------
# Mappings


@dataclass(slots=True)
class _Parsed:
    """A checked mapping: values (or INVALID) and value nodes by YAML key."""

    node: MappingNode
    path: str
    values: dict[str, Any]
    nodes: dict[str, Node]

    def get(self, key: str, default: Any = None) -> Any:
        return self.values.get(key, default)

    def fields(self) -> dict[str, Any]:
        """Values by dataclass field name."""
        return {FIELD_NAMES.get(key, key): value for key, value in self.values.items()}


def _pairs(ctx: _Ctx, node: MappingNode, path: str) -> list[tuple[Any, Node, Node]]:
    """The mapping's (key, key node, value node) triples, with YAML merge keys (``<<: *x``)
    applied and duplicate keys reported and dropped. Keys are constructed scalars."""
    explicit: list[tuple[Any, Node, Node]] = []
    merged: list[tuple[Any, Node, Node]] = []
    first: dict[tuple[str, Any], Node] = {}
    for key_node, value_node in node.value:
        if key_node.tag == _MERGE_TAG:
            sources = value_node.value if isinstance(value_node, SequenceNode) else [value_node]
            for source in sources:
                if isinstance(source, MappingNode):
                    merged.extend(_pairs(ctx, source, path))
                else:
                    ctx.add(source, path, "a merge key (<<) needs a mapping or a list of mappings")
            continue
        if not isinstance(key_node, ScalarNode):
            ctx.add(key_node, path, f"keys must be plain values, got {_describe(ctx, key_node)}")
            continue
        kind, key = _scalar(ctx, key_node)
        if kind not in _SCALAR_KINDS:
            key = key_node.value
        identity = (kind, key)
        if identity in first:
            earlier = first[identity].start_mark.line + 1
            ctx.add(key_node, join_key(path, key), f"duplicate key (first at line {earlier})")
            continue
        first[identity] = key_node
        explicit.append((key, key_node, value_node))
    seen = {key for key, _, _ in explicit}
    for key, key_node, value_node in merged:
        if key not in seen:  # explicit keys override merged ones; the first merge wins
            seen.add(key)
            explicit.append((key, key_node, value_node))
    return explicit


def _mapping(
    ctx: _Ctx,
    node: Node,
    path: str,
    fields: Mapping[str, Check],
    required: Collection[str] = (),
    *,
    elsewhere: Mapping[str, str] | None = None,
    extensions: bool = False,
) -> _Parsed | None:
    """Check a mapping against ``fields`` (YAML key → check). Unknown keys, duplicate keys and
    missing ``required`` keys are reported; ``elsewhere`` gives a better message than "unknown
    key" for keys that belong to another kind of item; with ``extensions``, keys starting with
    ``x-`` are ignored (a home for YAML anchors). None when ``node`` is not a mapping."""
    if not isinstance(node, MappingNode):
        ctx.add(node, path, f"must be a mapping, got {_describe(ctx, node)}")
        return None
    parsed = _Parsed(node, path, {}, {})
    for key, key_node, value_node in _pairs(ctx, node, path):
        key_path = join_key(path, key)
        if isinstance(key, str) and key in fields:
            parsed.nodes[key] = value_node
            parsed.values[key] = fields[key](ctx, value_node, key_path)
        elif key == "password":
            ctx.add(key_node, key_path, "inline secrets are not accepted: use password_file")
        elif elsewhere and key in elsewhere:
            ctx.add(key_node, key_path, elsewhere[key])
        elif extensions and isinstance(key, str) and key.startswith("x-"):
            pass  # a place for YAML anchors (`x-shifts: &shifts [...]`), ignored like in Compose
        else:
            close = difflib.get_close_matches(str(key), list(fields), n=1, cutoff=0.6)
            # Abbreviations (`ca` for `ca_file`) are too short for difflib's ratio.
            close = close or [f for f in fields if len(str(key)) >= 2 and f.startswith(str(key))]
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            ctx.add(key_node, key_path, f"unknown key{hint}")
    for key in required:
        if key not in parsed.nodes:
            ctx.add(node, join_key(path, key), "required key missing")
    return parsed


def _check_unique(
    ctx: _Ctx, named: list[tuple[Any, Node | None, str]], what: str, path_key: str = "name"
) -> None:
    """Report each repeated name (value, its node, its item path) at its second occurrence."""
    first: dict[str, Node | None] = {}
    for name, node, item_path in named:
        if not isinstance(name, str):
            continue
        if name in first:
            earlier = first[name]
            where = f" (first at line {earlier.start_mark.line + 1})" if earlier else ""
            ctx.add(node, join_key(item_path, path_key), f"duplicate {what} name {name!r}{where}")
        else:
            first[name] = node


def _check_backoff(ctx: _Ctx, parsed: _Parsed, defaults: Any) -> None:
    """backoff_max >= backoff_initial, either given or taken from ``defaults`` (a dataclass)."""
    # Slotted dataclasses keep defaults only in their fields, not as class attributes.
    default = {f.name: f.default for f in dataclasses.fields(defaults)}
    initial = parsed.get("backoff_initial", default["backoff_initial_s"])
    maximum = parsed.get("backoff_max", default["backoff_max_s"])
    if isinstance(initial, float) and isinstance(maximum, float) and maximum < initial:
        ctx.add(
            parsed.nodes["backoff_max"],
            join_key(parsed.path, "backoff_max"),
            f"must be >= backoff_initial ({initial:g} s), got {maximum:g} s",
        )


# ---------------------------------------------------------------------------------------------
# The schema


def _agent(ctx: _Ctx, node: Node) -> AgentConfig | _Invalid:
    def keep(_ctx: _Ctx, value_node: Node, _path: str) -> Any:
        return value_node  # lines are checked after sources, whatever their order in the file

    before = ctx.count
    parsed = _mapping(
        ctx,
        node,
        "",
        {
            "version": _version,
            "site": _name,
            "sources": _sources,
            "lines": keep,
            "mqtt": keep,  # checked after lines: a share names lines
            "prometheus": _prometheus,
            "storage": _storage,
            "logging": _logging,
        },
        required=("version", "site", "lines", "mqtt"),
        extensions=True,
    )
    if parsed is None:
        return INVALID
    if "lines" in parsed.nodes:
        parsed.values["lines"] = _lines(ctx, parsed.nodes["lines"], "lines")
    extra: Any = ()
    if "mqtt" in parsed.nodes:
        lines = parsed.values.get("lines")
        line_names = {line.name for line in lines} if isinstance(lines, tuple) else None
        sinks = _mqtt_sinks(ctx, parsed.nodes["mqtt"], "mqtt", line_names)
        if isinstance(sinks, tuple):
            parsed.values["mqtt"], extra = sinks[0], sinks[1:]
    if ctx.count > before:
        return INVALID
    return AgentConfig(**parsed.fields(), mqtt_extra=extra, path=ctx.file)


def _version(ctx: _Ctx, node: Node, path: str) -> Any:
    got = _need_scalar(ctx, node, path, "1")
    if got is None:
        return INVALID
    kind, value = got
    if kind != "int" or value != 1:
        ctx.add(
            node, path, f"must be 1 (the only version this agent reads), got {_describe(ctx, node)}"
        )
        return INVALID
    return value


# --- sources ---------------------------------------------------------------------------------


def _sources(ctx: _Ctx, node: Node, path: str) -> Any:
    ctx.sources = {}
    items = _items(ctx, node, path)
    if items is None:
        ctx.sources_complete = False
        return INVALID
    before = ctx.count
    built: list[SourceConfig | _Invalid] = []
    named: list[tuple[Any, Node | None, str]] = []
    for item, item_path in items:
        source, name, name_node = _source(ctx, item, item_path)
        built.append(source)
        named.append((name, name_node, item_path))
    _check_unique(ctx, named, "source")
    if ctx.count > before:
        return INVALID
    return tuple(built)


_SOURCE_COMMON: dict[str, Check] = {
    "name": _name,
    "protocol": lambda ctx, node, path: node.value,  # already checked by _source
    "poll_interval": _duration(),
    "timeout": _duration(),
    "backoff_initial": _duration(),
    "backoff_max": _duration(),
    "on_startup_error": _choice(OnStartupError),
}
_MODBUS_ONLY = (
    "host",
    "port",
    "unit_id",
    "max_gap",
    "transport",
    "serial",
    "inter_request_gap",
)
_OPCUA_ONLY = (
    "endpoint",
    "username",
    "password_file",
    "security",
    "mode",
    "publishing_interval",
    "sampling_interval",
    "deadband",
)
_PROTOCOLS = ("modbus", "opcua")
_MODBUS_TAG_ONLY = ("table", "address", "type", "order", "length", "scale", "offset", "unit_id")


def _source(ctx: _Ctx, node: Node, path: str) -> tuple[SourceConfig | _Invalid, Any, Node | None]:
    """One source; also returns its name and name node (for duplicate checks), and records its
    tag names in ``ctx.sources`` for the line signals."""
    assert ctx.sources is not None
    if not isinstance(node, MappingNode):
        ctx.add(node, path, f"must be a mapping, got {_describe(ctx, node)}")
        ctx.sources_complete = False
        return INVALID, None, None
    pairs = {key: value for key, _, value in _pairs(ctx, node, path) if isinstance(key, str)}
    protocol_node = pairs.get("protocol")
    protocol_path = join_key(path, "protocol")
    protocol: str | None = None
    if protocol_node is None:
        ctx.add(node, protocol_path, "required key missing (modbus or opcua)")
    elif isinstance(protocol_node, ScalarNode) and protocol_node.value in _PROTOCOLS:
        protocol = protocol_node.value
    else:
        ctx.add(
            protocol_node,
            protocol_path,
            f"must be one of: modbus, opcua; got {_describe(ctx, protocol_node)}",
        )
    name_node = pairs.get("name")
    name = _plain_name(ctx, name_node)
    info = _SourceInfo()
    if name is not None:
        info = ctx.sources.setdefault(name, info)  # a duplicate shares it: reported by the caller
    else:
        ctx.sources_complete = False
    if protocol is None:
        # Without a protocol the other keys cannot be checked; the name still can.
        info.complete = False
        if name_node is None:
            ctx.add(node, join_key(path, "name"), "required key missing")
        else:
            _name(ctx, name_node, join_key(path, "name"))
        return INVALID, name, name_node

    before = ctx.count
    fields = dict(_SOURCE_COMMON)
    if protocol == "modbus":
        fields |= {
            "transport": _choice(ModbusTransport),
            "host": _string(),
            "port": _integer(1, 65535),
            "serial": _serial,
            "unit_id": _integer(0, 247),
            "max_gap": _integer(0, 65535),
            "inter_request_gap": _duration(positive=False),
            "tags": _source_tags(_modbus_tag, info),
        }
        elsewhere = dict.fromkeys(_OPCUA_ONLY, f"applies to opcua sources, not {protocol}")
        required: tuple[str, ...] = ("name", "tags")
    else:
        fields |= {
            "endpoint": _endpoint,
            "username": _optional(_string()),
            "password_file": _optional(_file(FileKind.SECRET)),
            "security": _opcua_security,
            "mode": _choice(OpcuaMode),
            "publishing_interval": _duration(),
            "sampling_interval": _duration(),
            "deadband": _deadband,
            "tags": _source_tags(_opcua_tag, info),
        }
        elsewhere = dict.fromkeys(_MODBUS_ONLY, f"applies to modbus sources, not {protocol}")
        required = ("name", "endpoint", "tags")
    parsed = _mapping(ctx, node, path, fields, required, elsewhere=elsewhere)
    assert parsed is not None
    if protocol == "modbus":
        _check_modbus_transport(ctx, parsed, name)
    cls = ModbusSourceConfig if protocol == "modbus" else OpcuaSourceConfig
    _check_backoff(ctx, parsed, cls)
    if ctx.count > before:
        return INVALID, name, name_node
    return cls(**parsed.fields()), name, name_node


_SERVER_TRUST = ("server_cert_file", "server_fingerprint", "trust_dir")


def _opcua_security(ctx: _Ctx, node: Node, path: str) -> Any:
    before = ctx.count
    parsed = _mapping(
        ctx,
        node,
        path,
        {
            "policy": _choice(OpcuaSecurityPolicy),
            "mode": _choice(OpcuaSecurityMode),
            "cert_file": _file(FileKind.CERT),
            "key_file": _file(FileKind.KEY),
            "server_cert_file": _file(FileKind.CERT),
            "server_fingerprint": _fingerprint,
            "trust_dir": _file(FileKind.DIR),
        },
        required=("policy",),
    )
    if parsed is None or ctx.count > before:
        return INVALID
    given = [key for key in parsed.nodes if key != "policy"]
    if parsed.values["policy"] is OpcuaSecurityPolicy.NONE:
        for key in given:
            ctx.add(parsed.nodes[key], join_key(path, key), "applies only when policy is not None")
        return INVALID if ctx.count > before else OpcuaSecurityConfig()
    for key in ("cert_file", "key_file"):
        if key not in parsed.nodes:
            ctx.add(
                node,
                join_key(path, key),
                "required key missing (create one with: edge-agent certs opcua --out DIR)",
            )
    trust = [key for key in _SERVER_TRUST if key in parsed.nodes]
    if not trust:
        ctx.add(
            node,
            path,
            "give server_cert_file, server_fingerprint or trust_dir: the server's certificate "
            "is never trusted on first use",
        )
    for key in trust[1:]:
        ctx.add(parsed.nodes[key], join_key(path, key), f"give only one of {', '.join(trust)}")
    if ctx.count > before:
        return INVALID
    return OpcuaSecurityConfig(**parsed.fields())


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


def _fingerprint(ctx: _Ctx, node: Node, path: str) -> Any:
    value = _string()(ctx, node, path)
    if not isinstance(value, str):
        return INVALID
    normal = normalize_fingerprint(value)
    if normal is None:
        ctx.add(
            node,
            path,
            "must be a SHA-256 fingerprint: 64 hex digits, optionally in pairs separated by ':'"
            f", got {_raw(node)!r}",
        )
        return INVALID
    return normal


def _check_modbus_transport(ctx: _Ctx, parsed: _Parsed, name: str | None) -> None:
    """host/port for the TCP transports, serial for rtu; one source per serial port."""
    transport = parsed.get("transport", ModbusTransport.TCP)
    if isinstance(transport, _Invalid):
        return
    path = parsed.path
    if transport is ModbusTransport.RTU:
        if "serial" not in parsed.nodes:
            ctx.add(parsed.node, join_key(path, "serial"), "required key missing (transport rtu)")
        for key in ("host", "port"):
            if key in parsed.nodes:
                ctx.add(
                    parsed.nodes[key],
                    join_key(path, key),
                    "applies to transports tcp and rtu_over_tcp, not rtu (use serial.port)",
                )
        serial = parsed.get("serial")
        serial_node = parsed.nodes.get("serial")
        if isinstance(serial, SerialConfig) and isinstance(serial_node, MappingNode):
            port_node = next(v for k, _, v in _pairs(ctx, serial_node, path) if k == "port")
            first = ctx.serial_ports.setdefault(serial.port, (name, port_node))
            if first[1] is not port_node:
                # The port is opened exclusively: a second source could never connect.
                ctx.add(
                    port_node,
                    join_key(join_key(path, "serial"), "port"),
                    f"serial port {serial.port!r} is already read by source {first[0]!r} "
                    f"(line {first[1].start_mark.line + 1}): one source reads a shared line; "
                    "give its tags their own unit_id",
                )
        return
    if "host" not in parsed.nodes:
        ctx.add(parsed.node, join_key(path, "host"), "required key missing")
    if "serial" in parsed.nodes:
        ctx.add(
            parsed.nodes["serial"],
            join_key(path, "serial"),
            f"applies to transport rtu, not {transport.value}",
        )


def _serial(ctx: _Ctx, node: Node, path: str) -> Any:
    before = ctx.count
    parsed = _mapping(
        ctx,
        node,
        path,
        {
            "port": _string(),
            "baudrate": _integer(50, 4_000_000),
            "parity": _choice(Parity),
            "stopbits": _integer(1, 2),
            "bytesize": _integer(5, 8),
        },
        required=("port",),
    )
    if parsed is None:
        return INVALID
    bytesize = parsed.get("bytesize", 8)
    if isinstance(bytesize, int) and bytesize != 8:
        ctx.add(
            parsed.nodes["bytesize"],
            join_key(path, "bytesize"),
            f"Modbus RTU needs 8 data bits, got {bytesize}",
        )
    if ctx.count > before:
        return INVALID
    return SerialConfig(**parsed.fields())


def _deadband(ctx: _Ctx, node: Node, path: str) -> Any:
    value = _number(ctx, node, path)
    if isinstance(value, float) and value < 0:
        ctx.add(node, path, f"must be >= 0, got {_raw(node)}")
        return INVALID
    return value


def _endpoint(ctx: _Ctx, node: Node, path: str) -> Any:
    value = _string()(ctx, node, path)
    if isinstance(value, str) and not value.startswith("opc.tcp://"):
        ctx.add(node, path, f"must be an opc.tcp:// URL, got {value!r}")
        return INVALID
    if isinstance(value, str):
        # The OPC UA client does not default the port: a URL without one is refused at connect.
        try:
            port = urlsplit(value).port
        except ValueError:
            ctx.add(node, path, f"port must be 1..65535 in {value!r}")
            return INVALID
        if port is None:
            ctx.add(node, path, f"needs a port, e.g. 'opc.tcp://host:4840/', got {value!r}")
            return INVALID
    return value


def _source_tags(check: Callable[[_Ctx, Node, str], Any], info: _SourceInfo) -> Check:
    def tags(ctx: _Ctx, node: Node, path: str) -> Any:
        items = _items(ctx, node, path)
        if items is None:
            info.complete = False
            return INVALID
        if not items:
            info.complete = False  # references to its tags are not the problem
            ctx.add(node, path, "must list at least one tag")
            return INVALID
        before = ctx.count
        built: list[Any] = []
        named: list[tuple[Any, Node | None, str]] = []
        for item, item_path in items:
            name_node = _name_node(ctx, item, item_path)
            name = _plain_name(ctx, name_node)
            if name is not None:
                info.tags.add(name)
            else:
                info.complete = False
            named.append((name, name_node, item_path))
            built.append(check(ctx, item, item_path))
        _check_unique(ctx, named, "tag")
        return INVALID if ctx.count > before else tuple(built)

    return tags


def _name_node(ctx: _Ctx, node: Node, path: str) -> Node | None:
    """The value node of the item's ``name`` key, if it has one."""
    if isinstance(node, MappingNode):
        for key, _, value_node in _pairs(ctx, node, path):
            if key == "name":
                return value_node
    return None


def _plain_name(ctx: _Ctx, node: Node | None) -> str | None:
    """The name in ``node`` if it is a valid one, else None; reports nothing (the item's own
    check does)."""
    if isinstance(node, ScalarNode) and _scalar(ctx, node)[0] == "str":
        return node.value if NAME_PATTERN.fullmatch(node.value) else None
    return None


_REGISTERS = {
    DataType.BOOL: 1,
    DataType.INT16: 1,
    DataType.UINT16: 1,
    DataType.INT32: 2,
    DataType.UINT32: 2,
    DataType.FLOAT32: 2,
    DataType.INT64: 4,
    DataType.UINT64: 4,
    DataType.FLOAT64: 4,
}
_BIT_TABLES = (ModbusTable.COIL, ModbusTable.DISCRETE)


_MODICON: Final = (
    # (first digit, table): 1xxxx discrete inputs, 3xxxx input registers, 4xxxx holding registers.
    # 0xxxx (coils) cannot be told apart: YAML reads 00003 as the integer 3.
    (1, ModbusTable.DISCRETE),
    (3, ModbusTable.INPUT),
    (4, ModbusTable.HOLDING),
)
_TABLE_WORDS: Final = {
    ModbusTable.HOLDING: "holding register",
    ModbusTable.INPUT: "input register",
    ModbusTable.COIL: "coil",
    ModbusTable.DISCRETE: "discrete input",
}


def modicon(address: int) -> tuple[ModbusTable, int] | None:
    """The table and 1-based register number that ``address`` names in Modicon notation
    (40003, 400003: holding register 3; 30001: input register 1; 10001: discrete input 1),
    or None when it does not look like it."""
    for digit, table in _MODICON:
        for width in (10_000, 100_000):  # 5-digit (x0001-x9999) and 6-digit (x00001-x65536)
            number = address - digit * width
            if 1 <= number <= (9999 if width == 10_000 else 65536):
                return table, number
    return None


def _modicon_hint(address: int) -> str | None:
    found = modicon(address)
    if found is None:
        return None
    table, number = found
    return (
        f"address {address} looks like Modicon notation for {_TABLE_WORDS[table]} {number} "
        f"(protocol address {number - 1}); write table: {table.value}, address: {number - 1}"
    )


def _modbus_address(ctx: _Ctx, node: Node, path: str) -> Any:
    if isinstance(node, ScalarNode):
        kind, value = _scalar(ctx, node)
        if kind == "int" and value > 65535 and (hint := _modicon_hint(value)) is not None:
            ctx.add(node, path, f"must be 0..65535, got {value}: {hint}")
            return INVALID
    return _integer(0, 65535)(ctx, node, path)


def _modbus_tag(ctx: _Ctx, node: Node, path: str) -> Any:
    before = ctx.count
    parsed = _mapping(
        ctx,
        node,
        path,
        {
            "name": _name,
            "table": _choice(ModbusTable),
            "address": _modbus_address,
            "type": _choice(DataType),
            "order": _choice(ByteOrder),
            "length": _integer(0, 125),  # one read request holds at most 125 registers
            "scale": _number,
            "offset": _number,
            "unit_id": _optional(_integer(0, 247)),
            "min": _number,
            "max": _number,
        },
        required=("name", "address"),
        elsewhere={"node": "applies to opcua tags, not modbus"},
    )
    if parsed is None or ctx.count > before:
        return INVALID
    _check_range(ctx, parsed)
    table = parsed.get("table", ModbusTable.HOLDING)
    if table in _BIT_TABLES:
        parsed.values.setdefault("type", DataType.BOOL)  # a coil can only be a bit
    kind = parsed.values.get("type", DataType.UINT16)

    def at(key: str) -> tuple[Node, str]:
        return parsed.nodes.get(key, parsed.node), join_key(path, key)

    if table in _BIT_TABLES and kind != DataType.BOOL:
        ctx.add(*at("type"), f"table {table.value} holds bits: type must be bool, got {kind}")
    length = parsed.get("length", 0)
    if kind == DataType.STRING and length <= 0:
        ctx.add(*at("length"), "must be > 0 for type string (registers, 2 characters each)")
    elif kind != DataType.STRING and "length" in parsed.nodes:
        ctx.add(*at("length"), "applies to type string only")
    if kind in (DataType.BOOL, DataType.STRING):
        for key in ("scale", "offset", "min", "max"):
            if key in parsed.nodes:
                ctx.add(*at(key), f"applies to numeric types only, not {kind}")
    elif parsed.get("scale") == 0.0:
        ctx.add(*at("scale"), "must not be 0 (every value would read 0)")
    if table not in _BIT_TABLES:
        width = length if kind == DataType.STRING else _REGISTERS[kind]
        last = parsed.values["address"] + width - 1
        if width > 0 and last > 65535:
            ctx.add(*at("address"), f"{kind} spans registers up to {last}, past 65535")
    address = parsed.values["address"]
    if ctx.count == before and (hint := _modicon_hint(address)) is not None:
        # Not an error: a large PLC may really have register 40003 (0-based).
        ctx.warn(
            *at("address"),
            f"{hint} (if the PLC's manual lists 0-based protocol addresses, {address} is "
            "right: ignore this)",
        )
    if ctx.count > before:
        return INVALID
    return ModbusTag(**parsed.fields())


def _opcua_tag(ctx: _Ctx, node: Node, path: str) -> Any:
    before = ctx.count
    parsed = _mapping(
        ctx,
        node,
        path,
        {"name": _name, "node": _node_id, "min": _number, "max": _number},
        required=("name", "node"),
        elsewhere=dict.fromkeys(_MODBUS_TAG_ONLY, "applies to modbus tags, not opcua"),
    )
    if parsed is None or ctx.count > before:
        return INVALID
    _check_range(ctx, parsed)
    if ctx.count > before:
        return INVALID
    return OpcuaTag(**parsed.fields())


def _check_range(ctx: _Ctx, parsed: _Parsed) -> None:
    low, high = parsed.get("min"), parsed.get("max")
    if isinstance(low, float) and isinstance(high, float) and high < low:
        ctx.add(parsed.nodes["max"], join_key(parsed.path, "max"), f"must be >= min ({low:g})")


def _node_id(ctx: _Ctx, node: Node, path: str) -> Any:
    value = _string()(ctx, node, path)
    if isinstance(value, str) and not _NODE_ID.fullmatch(value):
        ctx.add(node, path, f"must be an OPC UA node id like 'ns=2;s=Line1.State', got {value!r}")
        return INVALID
    return value


# --- lines -----------------------------------------------------------------------------------


def _lines(ctx: _Ctx, node: Node, path: str) -> Any:
    items = _items(ctx, node, path)
    if items is None:
        return INVALID
    if not items:
        ctx.add(node, path, "must list at least one line")
        return INVALID
    if len(items) > MAX_LINES_SUPPORTED:
        ctx.warn(
            node,
            path,
            f"{len(items)} lines: more than the {MAX_LINES_SUPPORTED} one agent is measured to "
            "serve (docs/performance.md, supported size); the engine's step grows with every "
            "line (about 1 s per tick for 10000 on 2 cores) and ticks are skipped: split the "
            "plant over several agents",
        )
    before = ctx.count
    built = []
    named: list[tuple[Any, Node | None, str]] = []
    for item, item_path in items:
        built.append(_line(ctx, item, item_path))
        name_node = _name_node(ctx, item, item_path)
        named.append((_plain_name(ctx, name_node), name_node, item_path))
    _check_unique(ctx, named, "line")
    return INVALID if ctx.count > before else tuple(built)


def _line(ctx: _Ctx, node: Node, path: str) -> Any:
    before = ctx.count
    parsed = _mapping(
        ctx,
        node,
        path,
        {
            "name": _name,
            "timezone": _timezone,
            "ideal_cycle_time": _duration(),
            "stop_after": _optional(_duration()),
            "micro_stop_max": _optional(_duration()),
            "min_data_coverage": _fraction,
            "planned_states": _planned_states,
            "shifts": _shifts,
            "calendar": _calendar,
            "signals": _signals,
            "emission_factor": _optional(_emission_factor),
        },
        required=("name", "ideal_cycle_time", "signals"),
    )
    if parsed is None or ctx.count > before:
        return INVALID
    return LineConfig(**parsed.fields())


def _fraction(ctx: _Ctx, node: Node, path: str) -> Any:
    value = _number(ctx, node, path)
    if isinstance(value, float) and not 0.0 <= value <= 1.0:
        ctx.add(node, path, f"must be between 0 and 1, got {_raw(node)}")
        return INVALID
    return value


def _date(ctx: _Ctx, node: Node, path: str) -> Any:
    # The raw text: YAML 1.1 would construct an unquoted 2026-12-01 as a date object already,
    # and a quoted one as a string; both mean the same to the user.
    match = _DATE.fullmatch(node.value) if isinstance(node, ScalarNode) else None
    try:
        if match is not None:
            return date(int(match[1]), int(match[2]), int(match[3]))
    except ValueError:
        pass
    ctx.add(node, path, f'must be a date "YYYY-MM-DD", got {_describe(ctx, node)}')
    return INVALID


def _local_datetime(ctx: _Ctx, node: Node, path: str) -> Any:
    match = _DATETIME.fullmatch(node.value) if isinstance(node, ScalarNode) else None
    try:
        if match is not None:
            y, mo, d, h, mi = (int(match[i]) for i in range(1, 6))
            return datetime(y, mo, d, h, mi)
    except ValueError:
        pass
    ctx.add(
        node,
        path,
        f'must be a local date and time "YYYY-MM-DDTHH:MM", got {_describe(ctx, node)}',
    )
    return INVALID


def _weekday(ctx: _Ctx, node: Node, path: str) -> Any:
    got = _need_scalar(ctx, node, path, "a weekday")
    if got is None:
        return INVALID
    kind, value = got
    if kind == "str" and value.lower() in WEEKDAY_NAMES:
        return WEEKDAY_NAMES.index(value.lower())
    names = ", ".join(WEEKDAY_NAMES)
    ctx.add(node, path, f"must be one of: {names}; got {_describe(ctx, node)}")
    return INVALID


def _days(ctx: _Ctx, node: Node, path: str) -> Any:
    days = _list_of(_weekday, min_items=1)(ctx, node, path)
    return days if isinstance(days, _Invalid) else frozenset(days)


def _calendar(ctx: _Ctx, node: Node, path: str) -> Any:
    before = ctx.count
    parsed = _mapping(
        ctx,
        node,
        path,
        {
            "holidays": _list_of(_date),
            "extra_days": _list_of(_extra_day),
            "maintenance": _list_of(_maintenance),
        },
    )
    if parsed is None or ctx.count > before:
        return INVALID
    cal = Calendar(**parsed.fields())
    holidays = set(cal.holidays)
    extra_node = parsed.nodes.get("extra_days")
    for index, extra in enumerate(cal.extra_days):
        if extra.date in holidays:
            where = extra_node.value[index] if isinstance(extra_node, SequenceNode) else node
            ctx.add(
                where,
                join_index(join_key(path, "extra_days"), index),
                f"{extra.date.isoformat()} is also listed as a holiday",
            )
    return INVALID if ctx.count > before else cal


def _extra_day(ctx: _Ctx, node: Node, path: str) -> Any:
    if isinstance(node, ScalarNode):
        day = _date(ctx, node, path)
        return day if isinstance(day, _Invalid) else ExtraDay(date=day)
    before = ctx.count
    parsed = _mapping(ctx, node, path, {"date": _date, "like": _weekday}, ("date",))
    if parsed is None or ctx.count > before:
        return INVALID
    return ExtraDay(**parsed.fields())


def _maintenance(ctx: _Ctx, node: Node, path: str) -> Any:
    before = ctx.count
    parsed = _mapping(
        ctx,
        node,
        path,
        {"start": _local_datetime, "end": _local_datetime, "reason": _string()},
        ("start", "end"),
    )
    if parsed is None or ctx.count > before:
        return INVALID
    window = Maintenance(**parsed.fields())
    if window.end <= window.start:
        ctx.add(
            parsed.nodes["end"],
            join_key(path, "end"),
            f"must be after start ({window.start:%Y-%m-%dT%H:%M})",
        )
        return INVALID
    return window


def _timezone(ctx: _Ctx, node: Node, path: str) -> Any:
    value = _string()(ctx, node, path)
    if not isinstance(value, str):
        return INVALID
    try:
        zoneinfo.ZoneInfo(value)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
        ctx.add(
            node, path, f"unknown time zone {value!r} (an IANA name like 'Asia/Seoul' or 'UTC')"
        )
        return INVALID
    return value


def _planned_states(ctx: _Ctx, node: Node, path: str) -> Any:
    states = _list_of(_choice(MachineState, exclude=(MachineState.UNKNOWN, MachineState.RUNNING)))(
        ctx, node, path
    )
    return states if isinstance(states, _Invalid) else frozenset(states)


def _clock(ctx: _Ctx, node: Node, path: str) -> Any:
    # The raw text, not the resolved value: YAML 1.1 reads an unquoted 06:00 as the
    # base-60 integer 360, and the user meant six o'clock.
    match = _CLOCK.fullmatch(node.value) if isinstance(node, ScalarNode) else None
    if match is None:
        ctx.add(node, path, f'must be a time of day "HH:MM", got {_describe(ctx, node)}')
        return INVALID
    return time(int(match[1]), int(match[2]))


def _minute(value: time) -> int:
    return value.hour * 60 + value.minute


def _span(start: time, end: time) -> set[int]:
    """Minutes of the day covered from ``start`` to ``end``; crossing midnight when end <= start,
    the whole day when they are equal."""
    length = (_minute(end) - _minute(start)) % 1440 or 1440
    return {(_minute(start) + offset) % 1440 for offset in range(length)}


def _shifts(ctx: _Ctx, node: Node, path: str) -> Any:
    items = _items(ctx, node, path)
    if items is None:
        return INVALID
    before = ctx.count
    built: list[Shift] = []
    named: list[tuple[Any, Node | None, str]] = []
    covered: list[tuple[str, set[int]]] = []
    for item, item_path in items:
        shift = _shift(ctx, item, item_path)
        name_node = _name_node(ctx, item, item_path)
        named.append((_plain_name(ctx, name_node), name_node, item_path))
        if isinstance(shift, Shift):
            built.append(shift)
            # Minutes of the week: shifts on different weekdays may share their hours.
            day_minutes = _span(shift.start, shift.end)
            minutes = {
                (day * 1440 + _minute(shift.start) + (m - _minute(shift.start)) % 1440) % 10080
                for day in shift.days
                for m in day_minutes
            }
            for other_name, other in covered:
                if minutes & other:
                    ctx.add(item, item_path, f"shift {shift.name!r} overlaps shift {other_name!r}")
                    break
            covered.append((shift.name, minutes))
    _check_unique(ctx, named, "shift")
    return INVALID if ctx.count > before else tuple(built)


def _shift(ctx: _Ctx, node: Node, path: str) -> Any:
    before = ctx.count
    parsed = _mapping(
        ctx,
        node,
        path,
        {
            "name": _name,
            "start": _clock,
            "end": _clock,
            "breaks": _list_of(_break),
            "days": _days,
        },
        required=("name", "start", "end"),
    )
    if parsed is None or ctx.count > before:
        return INVALID
    shift = Shift(**parsed.fields())
    shift_minutes = _span(shift.start, shift.end)
    taken: set[int] = set()
    breaks_node = parsed.nodes.get("breaks")
    for index, item in enumerate(shift.breaks):
        where = breaks_node.value[index] if isinstance(breaks_node, SequenceNode) else node
        item_path = join_index(join_key(path, "breaks"), index)
        shown = f"{item.start:%H:%M}-{item.end:%H:%M}"
        if item.start == item.end:
            ctx.add(where, item_path, f"break {shown} is empty (start == end)")
            continue
        minutes = _span(item.start, item.end)
        if not minutes <= shift_minutes:
            ctx.add(
                where,
                item_path,
                f"break {shown} is not inside the shift {shift.start:%H:%M}-{shift.end:%H:%M}",
            )
        elif minutes & taken:
            ctx.add(where, item_path, f"break {shown} overlaps another break")
        taken |= minutes
    return INVALID if ctx.count > before else shift


def _break(ctx: _Ctx, node: Node, path: str) -> Any:
    before = ctx.count
    parsed = _mapping(ctx, node, path, {"start": _clock, "end": _clock}, ("start", "end"))
    if parsed is None or ctx.count > before:
        return INVALID
    return Break(**parsed.fields())


def _signals(ctx: _Ctx, node: Node, path: str) -> Any:
    before = ctx.count
    parsed = _mapping(
        ctx,
        node,
        path,
        {
            "state": _state_signal,
            "running": _tag_ref,
            "total_count": _counter,
            "reject_count": _counter,
            "good_count": _counter,
            "reason": _reason_signal,
            "product": _product_signal,
            "energy": _energy_signal,
            "power": _tag_ref,
            "order": _order_signal,
        },
        required=("total_count",),
    )
    if parsed is None:
        return INVALID
    for first, second in (("state", "running"), ("reject_count", "good_count")):
        if first in parsed.nodes and second in parsed.nodes:
            ctx.add(
                parsed.nodes[second],
                join_key(path, second),
                f"give {first} or {second}, not both",
            )
    if ctx.count > before:
        return INVALID
    return Signals(**parsed.fields())


def _tag_ref(ctx: _Ctx, node: Node, path: str) -> Any:
    """A ``SOURCE.TAG`` reference; checked against the configured sources when there are any."""
    value = _string()(ctx, node, path)
    if not isinstance(value, str):
        return INVALID
    source, dot, tag = value.partition(".")
    if not dot or not NAME_PATTERN.fullmatch(source) or not NAME_PATTERN.fullmatch(tag):
        ctx.add(node, path, f"must name a tag as SOURCE.TAG, got {value!r}")
        return INVALID
    if ctx.sources is None:
        return value  # no sources: replay names the CSV's tags (DESIGN §5)
    info = ctx.sources.get(source)
    if info is None:
        if not ctx.sources_complete:
            return value  # a source name is broken and already reported: do not pile on
        close = difflib.get_close_matches(source, list(ctx.sources), n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        ctx.add(node, path, f"no source named {source!r}{hint}")
        return INVALID
    if tag not in info.tags and info.complete:
        close = difflib.get_close_matches(tag, sorted(info.tags), n=1, cutoff=0.6)
        hint = f" (did you mean '{source}.{close[0]}'?)" if close else ""
        ctx.add(node, path, f"source {source!r} has no tag {tag!r}{hint}")
        return INVALID
    return value


def _counter(ctx: _Ctx, node: Node, path: str) -> Any:
    if isinstance(node, ScalarNode):
        tag = _tag_ref(ctx, node, path)
        return tag if isinstance(tag, _Invalid) else CounterSignal(tag=tag)
    before = ctx.count
    parsed = _mapping(
        ctx,
        node,
        path,
        {"tag": _tag_ref, "rollover": _optional(_integer(2))},
        required=("tag",),
    )
    if parsed is None or ctx.count > before:
        return INVALID
    return CounterSignal(**parsed.fields())


def _state_signal(ctx: _Ctx, node: Node, path: str) -> Any:
    before = ctx.count
    parsed = _mapping(ctx, node, path, {"tag": _tag_ref, "map": _state_map}, ("tag", "map"))
    if parsed is None or ctx.count > before:
        return INVALID
    return StateSignal(**parsed.fields())


def _state_map(ctx: _Ctx, node: Node, path: str) -> Any:
    if not isinstance(node, MappingNode):
        ctx.add(
            node, path, f"must be a mapping of state codes to states, got {_describe(ctx, node)}"
        )
        return INVALID
    before = ctx.count
    state = _choice(MachineState, exclude=(MachineState.UNKNOWN,))
    result: dict[int, MachineState] = {}
    for key, key_node, value_node in _pairs(ctx, node, path):
        key_path = join_key(path, key)
        if isinstance(key, bool) or not isinstance(key, int):
            ctx.add(
                key_node, key_path, f"state codes must be integers, got {_describe(ctx, key_node)}"
            )
            continue
        value = state(ctx, value_node, key_path)
        if isinstance(value, MachineState):
            result[key] = value
    if not node.value:
        ctx.add(node, path, "must map at least one state code")
    return INVALID if ctx.count > before else result


def _code_map(value_check: Check, what: str) -> Check:
    """A mapping of integer codes to ``value_check`` values (at least one)."""

    def check(ctx: _Ctx, node: Node, path: str) -> Any:
        if not isinstance(node, MappingNode):
            ctx.add(node, path, f"must be a mapping of codes to {what}, got {_describe(ctx, node)}")
            return INVALID
        before = ctx.count
        result: dict[int, Any] = {}
        for key, key_node, value_node in _pairs(ctx, node, path):
            key_path = join_key(path, key)
            if isinstance(key, bool) or not isinstance(key, int):
                ctx.add(
                    key_node, key_path, f"codes must be integers, got {_describe(ctx, key_node)}"
                )
                continue
            value = value_check(ctx, value_node, key_path)
            if not isinstance(value, _Invalid):
                result[key] = value
        if not node.value:
            ctx.add(node, path, "must map at least one code")
        return INVALID if ctx.count > before else result

    return check


def _reason_signal(ctx: _Ctx, node: Node, path: str) -> Any:
    before = ctx.count
    parsed = _mapping(
        ctx, node, path, {"tag": _tag_ref, "map": _code_map(_string(), "reason names")}, ("tag",)
    )
    if parsed is None or ctx.count > before:
        return INVALID
    return ReasonSignal(tag=parsed.get("tag"), map=parsed.get("map") or {})


def _product(ctx: _Ctx, node: Node, path: str) -> Any:
    before = ctx.count
    parsed = _mapping(
        ctx,
        node,
        path,
        {"name": _string(), "ideal_cycle_time": _duration()},
        ("name", "ideal_cycle_time"),
    )
    if parsed is None or ctx.count > before:
        return INVALID
    return Product(**parsed.fields())


def _product_signal(ctx: _Ctx, node: Node, path: str) -> Any:
    before = ctx.count
    parsed = _mapping(
        ctx, node, path, {"tag": _tag_ref, "map": _code_map(_product, "products")}, ("tag", "map")
    )
    if parsed is None or ctx.count > before:
        return INVALID
    return ProductSignal(**parsed.fields())


def _positive(ctx: _Ctx, node: Node, path: str) -> Any:
    value = _number(ctx, node, path)
    if isinstance(value, float) and value <= 0:
        ctx.add(node, path, f"must be > 0, got {_raw(node)}")
        return INVALID
    return value


def _energy_signal(ctx: _Ctx, node: Node, path: str) -> Any:
    if isinstance(node, ScalarNode):
        tag = _tag_ref(ctx, node, path)
        return tag if isinstance(tag, _Invalid) else EnergySignal(tag=tag)
    before = ctx.count
    parsed = _mapping(
        ctx,
        node,
        path,
        {
            "tag": _tag_ref,
            "unit": _choice(EnergyUnit),
            "rollover": _optional(_positive),
            "max_power": _optional(_positive),
        },
        required=("tag",),
    )
    if parsed is None or ctx.count > before:
        return INVALID
    return EnergySignal(**parsed.fields())


def _order_signal(ctx: _Ctx, node: Node, path: str) -> Any:
    before = ctx.count
    parsed = _mapping(
        ctx, node, path, {"id": _tag_ref, "target": _tag_ref, "product": _tag_ref}, ("id",)
    )
    if parsed is None or ctx.count > before:
        return INVALID
    return OrderSignal(**parsed.fields())


def _emission_factor(ctx: _Ctx, node: Node, path: str) -> Any:
    before = ctx.count
    parsed = _mapping(
        ctx,
        node,
        path,
        {"kg_co2e_per_kwh": _number, "source": _string()},
        ("kg_co2e_per_kwh", "source"),
    )
    if parsed is None or ctx.count > before:
        return INVALID
    factor = parsed.get("kg_co2e_per_kwh")
    if factor < 0:
        key = join_key(path, "kg_co2e_per_kwh")
        ctx.add(parsed.nodes["kg_co2e_per_kwh"], key, f"must be >= 0, got {factor:g}")
        return INVALID
    return EmissionFactor(**parsed.fields())


# --- mqtt, prometheus, storage, logging ------------------------------------------------------


def _mqtt_sinks(ctx: _Ctx, node: Node, path: str, line_names: set[str] | None) -> Any:
    """``mqtt``: one sink as a mapping (as ever), or a list of named sinks, the first being
    the primary. Returns a non-empty tuple of :class:`MqttConfig`, or INVALID."""
    if not isinstance(node, SequenceNode):
        sink = _mqtt(ctx, node, path, line_names, named=False)
        return INVALID if isinstance(sink, _Invalid) else (sink,)
    items = _items(ctx, node, path)
    if items is None:
        return INVALID
    if not items:
        ctx.add(node, path, "must list at least one sink (or be a mapping for a single one)")
        return INVALID
    before = ctx.count
    sinks = []
    named: list[tuple[Any, Node | None, str]] = []
    for item, item_path in items:
        sinks.append(_mqtt(ctx, item, item_path, line_names, named=True))
        name_node = _name_node(ctx, item, item_path)
        named.append((_plain_name(ctx, name_node), name_node, item_path))
    _check_unique(ctx, named, "sink")
    if ctx.count > before:
        return INVALID
    # Two connections with one client id to one broker take the session from each other, on
    # every reconnect, forever.
    seen: dict[tuple[str, int, str | None], str] = {}
    for sink, (item, item_path) in zip(sinks, items, strict=True):
        key = (sink.host, sink.port, sink.client_id)
        if key in seen:
            ctx.add(
                item,
                item_path,
                f"sink {sink.name!r} connects to {sink.host}:{sink.port} with the same client id as"
                f" sink {seen[key]!r}: set a distinct client_id",
            )
        seen.setdefault(key, sink.name)
    # Order commands come from the plant's broker, the first sink, and their replies go there
    # only: a further sink (a sponsor's) must not be able to command the plant.
    for sink, (item, item_path) in list(zip(sinks, items, strict=True))[1:]:
        if sink.commands and isinstance(item, MappingNode):
            node_at = next((v for k, v in item.value if k.value == "commands"), item)
            ctx.add(
                node_at,
                join_key(item_path, "commands"),
                "order commands are taken from the first sink only (the plant's broker)",
            )
    return INVALID if ctx.count > before else tuple(sinks)


def _share(line_names: set[str] | None) -> Check:
    def names(known: Collection[str], what: str) -> Check:
        def check(ctx: _Ctx, node: Node, path: str) -> Any:
            values = _list_of(_string())(ctx, node, path)
            if isinstance(values, _Invalid):
                return INVALID
            items = _items(ctx, node, path) or []
            bad = False
            for value, (item, item_path) in zip(values, items, strict=True):
                if value not in known:
                    close = difflib.get_close_matches(value, sorted(known), n=1, cutoff=0.6)
                    hint = f" (did you mean {close[0]!r}?)" if close else ""
                    ctx.add(item, item_path, f"unknown {what} {value!r}{hint}")
                    bad = True
            return INVALID if bad else frozenset(values)

        return check

    def lines(ctx: _Ctx, node: Node, path: str) -> Any:
        if line_names is None:  # the lines themselves are broken and reported
            values = _list_of(_string())(ctx, node, path)
            return INVALID if isinstance(values, _Invalid) else frozenset(values)
        return names(line_names, "line")(ctx, node, path)

    def share(ctx: _Ctx, node: Node, path: str) -> Any:
        before = ctx.count
        parsed = _mapping(
            ctx,
            node,
            path,
            {
                "lines": lines,
                "topics": names(LINE_TOPICS, "topic"),
                "fields": names(PAYLOAD_FIELDS, "payload field"),
            },
        )
        if parsed is None or ctx.count > before:
            return INVALID
        return ShareConfig(**parsed.fields())

    return share


def _mqtt(
    ctx: _Ctx, node: Node, path: str, line_names: set[str] | None = None, *, named: bool = False
) -> Any:
    before = ctx.count
    parsed = _mapping(
        ctx,
        node,
        path,
        {
            "name": _name,
            "share": _share(line_names),
            "host": _string(),
            "port": _integer(1, 65535),
            "client_id": _optional(_string()),
            "username": _optional(_string()),
            "password_file": _optional(_file(FileKind.SECRET)),
            "tls": _tls,
            "topic_prefix": _topic_prefix,
            "keepalive": _keepalive,
            "protocol": _mqtt_protocol,
            "qos": _integer(0, 2),
            "publish_interval": _duration(),
            "timeout": _duration(),
            "backoff_initial": _duration(),
            "backoff_max": _duration(),
            "clean_session": _boolean,
            "session_expiry": _session_expiry,
            # paho's message ids are 16-bit, and the sink hands paho up to twice this many.
            "max_inflight": _integer(1, 32767),
            "commands": _boolean,
            "encoding": _choice(MqttEncoding),
            "sparkplug": _sparkplug,
        },
        required=("name", "host") if named else ("host",),
    )
    if parsed is None:
        return INVALID
    _check_backoff(ctx, parsed, MqttConfig)
    _check_encoding(ctx, parsed, path)
    if ctx.count > before:
        return INVALID
    return MqttConfig(**parsed.fields())


def _check_encoding(ctx: _Ctx, parsed: _Parsed, path: str) -> None:
    """``encoding: sparkplug_b`` needs protobuf (checked here, before anything starts),
    excludes order commands (Sparkplug has its own command topics) and a persistent session
    (Sparkplug 3.0: MQTT 3.1.1 Clean Session true, MQTT 5 Clean Start true with Session Expiry
    0; the sink sends a session expiry only with ``clean_session: false``, so that flag covers
    both). ``sparkplug`` is ignored with ``encoding: json`` (so that switching encodings is a
    one-line change)."""
    if parsed.get("encoding") is MqttEncoding.SPARKPLUG_B:
        if parsed.get("clean_session") is False:
            ctx.add(
                parsed.nodes["clean_session"],
                join_key(path, "clean_session"),
                "sparkplug_b needs a clean session (Sparkplug 3.0: Clean Session true, or "
                "Clean Start true with Session Expiry 0 on MQTT 5): remove it or set it to true",
            )
        if sparkplug.protobuf_missing():
            ctx.add(
                parsed.nodes["encoding"],
                join_key(path, "encoding"),
                "sparkplug_b needs the protobuf package, which is not installed: "
                + sparkplug.INSTALL_HINT,
            )
        if parsed.get("commands"):
            ctx.add(
                parsed.nodes["commands"],
                join_key(path, "commands"),
                "order commands need encoding: json (a sparkplug_b sink publishes Sparkplug "
                "topics only)",
            )


def _sparkplug_id(ctx: _Ctx, node: Node, path: str) -> Any:
    value = _string()(ctx, node, path)
    if not isinstance(value, str):
        return INVALID
    problem = sparkplug.id_problem(value)
    if problem is not None:
        ctx.add(node, path, f"{problem}, got {value!r}")
        return INVALID
    return value


def _sparkplug(ctx: _Ctx, node: Node, path: str) -> Any:
    before = ctx.count
    parsed = _mapping(
        ctx, node, path, {"group_id": _optional(_sparkplug_id), "edge_node_id": _sparkplug_id}
    )
    if parsed is None or ctx.count > before:
        return INVALID
    return SparkplugConfig(**parsed.fields())


def _tls(ctx: _Ctx, node: Node, path: str) -> Any:
    if isinstance(node, ScalarNode):
        kind, value = _scalar(ctx, node)
        if kind == "bool":
            return TlsConfig() if value else None
        ctx.add(node, path, f"must be a mapping, true or false; got {_describe(ctx, node)}")
        return INVALID
    before = ctx.count
    parsed = _mapping(
        ctx,
        node,
        path,
        {
            "ca_file": _optional(_file(FileKind.CA)),
            "cert_file": _optional(_file(FileKind.CERT)),
            "key_file": _optional(_file(FileKind.KEY)),
            "insecure": _boolean,
        },
    )
    if parsed is None or ctx.count > before:
        return INVALID
    if parsed.get("key_file") and not parsed.get("cert_file"):
        ctx.add(parsed.nodes["key_file"], join_key(path, "key_file"), "needs cert_file as well")
        return INVALID
    return TlsConfig(**parsed.fields())


def _topic_prefix(ctx: _Ctx, node: Node, path: str) -> Any:
    value = _string()(ctx, node, path)
    if not isinstance(value, str):
        return INVALID
    levels = value.split("/")
    if any(not level for level in levels) or any(c in value for c in "+#") or value[0] == "$":
        ctx.add(
            node,
            path,
            "must be topic levels separated by '/', none empty, without '+', '#' or a leading "
            f"'$'; got {value!r}",
        )
        return INVALID
    return value


def _keepalive(ctx: _Ctx, node: Node, path: str) -> Any:
    seconds = _duration()(ctx, node, path)
    if isinstance(seconds, float) and seconds > 65535:
        ctx.add(node, path, f"must be at most 65535 s (an MQTT limit), got {_raw(node)}")
        return INVALID
    return seconds


def _session_expiry(ctx: _Ctx, node: Node, path: str) -> Any:
    seconds = _duration()(ctx, node, path)
    if isinstance(seconds, float) and seconds > 0xFFFFFFFF:
        ctx.add(node, path, f"must be at most 4294967295 s (an MQTT 5 limit), got {_raw(node)}")
        return INVALID
    return seconds


def _mqtt_protocol(ctx: _Ctx, node: Node, path: str) -> Any:
    got = _need_scalar(ctx, node, path, '"3.1.1" or 5')
    if got is None:
        return INVALID
    kind, value = got
    if kind in {"str", "int"}:
        text = str(value)
        if text in {"3.1.1", "311"}:
            return MqttProtocol.V311
        if text in {"5", "5.0"}:
            return MqttProtocol.V5
    ctx.add(node, path, f'must be "3.1.1" or 5, got {_describe(ctx, node)}')
    return INVALID


def _prometheus(ctx: _Ctx, node: Node, path: str) -> Any:
    before = ctx.count
    parsed = _mapping(
        ctx,
        node,
        path,
        {
            "enabled": _boolean,
            "host": _string(),
            "port": _integer(1, 65535),
            "cert_file": _optional(_file(FileKind.CERT)),
            "key_file": _optional(_file(FileKind.KEY)),
            "username": _optional(_string()),
            "password_file": _optional(_file(FileKind.SECRET)),
        },
    )
    if parsed is None or ctx.count > before:
        return INVALID
    for first, second in (("cert_file", "key_file"), ("username", "password_file")):
        for key, other in ((first, second), (second, first)):
            if parsed.get(key) is not None and parsed.get(other) is None:
                ctx.add(parsed.nodes[key], join_key(path, key), f"needs {other} as well")
    if ctx.count > before:
        return INVALID
    return PrometheusConfig(**parsed.fields())


def _storage(ctx: _Ctx, node: Node, path: str) -> Any:
    before = ctx.count
    parsed = _mapping(
        ctx,
        node,
        path,
        {"dir": _optional(_local_path), "outbox": _outbox, "history": _history},
    )
    if parsed is None or ctx.count > before:
        return INVALID
    return StorageConfig(**parsed.fields())


_SIZE = re.compile(r"\s*(\d+)\s*(|B|kB|KB|KiB|MB|MiB|GB|GiB)\s*")
_SIZE_UNITS: Final[Mapping[str, int]] = {
    "": 1,
    "B": 1,
    "kB": 1000,
    "KB": 1000,
    "KiB": 1024,
    "MB": 1000**2,
    "MiB": 1024**2,
    "GB": 1000**3,
    "GiB": 1024**3,
}


def _size(ctx: _Ctx, node: Node, path: str) -> Any:
    """A byte count: an integer, or a string with a unit (``500kB``, ``100MiB``, ``1GB``)."""
    what = "a size like 100MiB, 500kB or a number of bytes"
    got = _need_scalar(ctx, node, path, what)
    if got is None:
        return INVALID
    kind, value = got
    if kind == "int" and value >= 0:
        return value
    match = _SIZE.fullmatch(value) if kind == "str" else None
    if match is None:
        ctx.add(node, path, f"must be {what}, got {_describe(ctx, node)}")
        return INVALID
    return int(match.group(1)) * _SIZE_UNITS[match.group(2)]


def _outbox(ctx: _Ctx, node: Node, path: str) -> Any:
    before = ctx.count
    parsed = _mapping(
        ctx,
        node,
        path,
        {
            "max_messages": _integer(0),
            "max_bytes": _size,
            "hard_max_messages": _integer(0),
            "hard_max_bytes": _size,
        },
    )
    if parsed is None or ctx.count > before:
        return INVALID
    default = {f.name: f.default for f in dataclasses.fields(OutboxConfig)}
    for soft, hard in (("max_messages", "hard_max_messages"), ("max_bytes", "hard_max_bytes")):
        low = parsed.get(soft, default[soft])
        high = parsed.get(hard, default[hard])
        if low and high and high < low:
            key = hard if hard in parsed.nodes else soft
            ctx.add(
                parsed.nodes[key],
                join_key(path, key),
                f"{hard} ({high}) must be >= {soft} ({low}), or 0 for no limit",
            )
    if ctx.count > before:
        return INVALID
    return OutboxConfig(**parsed.fields())


def _history(ctx: _Ctx, node: Node, path: str) -> Any:
    """A mapping, or ``true`` / ``false`` as a short form of ``{enabled: ...}``."""
    if isinstance(node, ScalarNode):
        kind, value = _scalar(ctx, node)
        if kind == "bool":
            return HistoryConfig(enabled=value)
        ctx.add(node, path, f"must be a mapping, true or false; got {_describe(ctx, node)}")
        return INVALID
    before = ctx.count
    parsed = _mapping(
        ctx,
        node,
        path,
        {"enabled": _boolean, "keyframe_interval": _duration(), "retention": _duration()},
    )
    if parsed is None or ctx.count > before:
        return INVALID
    return HistoryConfig(**parsed.fields())


def _log_level(ctx: _Ctx, node: Node, path: str) -> Any:
    value = _string()(ctx, node, path)
    if not isinstance(value, str):
        return INVALID
    if value.upper() not in _LOG_LEVELS:
        ctx.add(node, path, f"must be one of: {', '.join(_LOG_LEVELS)}; got {value!r}")
        return INVALID
    return value.upper()


def _logging(ctx: _Ctx, node: Node, path: str) -> Any:
    before = ctx.count
    parsed = _mapping(ctx, node, path, {"level": _log_level, "format": _choice(LogFormat)})
    if parsed is None or ctx.count > before:
        return INVALID
    return LoggingConfig(**parsed.fields())
