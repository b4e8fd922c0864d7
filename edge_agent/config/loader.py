"""YAML configuration in, frozen :mod:`edge_agent.config.schema` dataclasses out.

Contract (DESIGN §2): :func:`load_config` either returns a complete, valid
:class:`~edge_agent.config.schema.AgentConfig` or raises one
:class:`~edge_agent.errors.ConfigError` whose ``issues`` list **every** problem found, each as
``FILE:LINE:COL: yaml.path: message`` (1-based line and column), sorted by position. It touches
no network and starts nothing, so a bad file fails before the agent does anything.

How: the file is composed into YAML nodes with the safe loader (nodes keep their line and column;
no Python object is ever constructed from a tag), guarded here (size, UTF-8, alias expansion),
then read against the key declarations of :mod:`edge_agent.config.schema` by the kinds of
:mod:`edge_agent.config.kinds` (each value checked with its message, every key and item node kept
by YAML path), the rules of :mod:`edge_agent.config.rules` per object, and last the rules across
objects of :mod:`edge_agent.config.references`.
"""

from __future__ import annotations

import os
import sys
from typing import Final

import yaml
from yaml.nodes import MappingNode, Node, SequenceNode

from edge_agent.config import rules  # noqa: F401 (registers the rules of each object)
from edge_agent.config.files import FileKind, file_problem
from edge_agent.config.issues import Issue, plural
from edge_agent.config.kinds import Ctx, normalize_fingerprint
from edge_agent.config.references import check as check_references
from edge_agent.config.rules import MAX_LINES_SUPPORTED
from edge_agent.config.schema import ROOT, AgentConfig, OpcuaSourceConfig, modicon
from edge_agent.errors import ConfigError
from edge_agent.exits import EXIT_CONFIG
from edge_agent.secrets import loose_permissions

__all__ = [
    "EXIT_CONFIG",
    "MAX_ALIAS_NODES",
    "MAX_FILE_BYTES",
    "MAX_LINES_SUPPORTED",
    "check_config_main",
    "load_config",
    "load_config_text",
    "modicon",
    "normalize_fingerprint",
    "permission_warnings",
    "secret_files",
]


class _SafeNodeLoader(yaml.SafeLoader):
    """The safe loader, used only up to composing nodes (which carry start marks)."""


MAX_FILE_BYTES: Final = 1 << 20  # a real plant's file is a few kB; refuse before parsing more
# Aliases let a small file describe a huge tree ("billion laughs"): they may add at most this many
# nodes to the file's own. Sharing a shift list among a hundred lines adds a few thousand.
MAX_ALIAS_NODES: Final = 100_000
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
    ctx = Ctx(name, check_files=check_files)
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
    return _load(ctx, text, warnings)


def load_config_text(
    text: str,
    path: str = "<string>",
    *,
    check_files: bool = False,
    warnings: list[str] | None = None,
) -> AgentConfig:
    """Like :func:`load_config`, for YAML already in memory; ``path`` is used in messages and
    stored in ``AgentConfig.path``. The files it names are checked only with ``check_files``."""
    ctx = Ctx(path, check_files=check_files)
    if len(text) > MAX_FILE_BYTES or len(text.encode("utf-8", "surrogatepass")) > MAX_FILE_BYTES:
        ctx.add(None, "", f"file is larger than {MAX_FILE_BYTES} bytes: refusing to parse it")
        raise ctx.error()
    return _load(ctx, text, warnings)


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


def _load(ctx: Ctx, text: str, warnings: list[str] | None) -> AgentConfig:
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
    cfg = ROOT.parse(ctx, root, "")
    if isinstance(root, MappingNode):
        check_references(ctx, root)
    if ctx.check_files and not ctx.issues:
        _check_files(ctx)
    if warnings is not None:
        warnings.extend(ctx.warning_lines())
    if ctx.issues or not isinstance(cfg, AgentConfig):
        raise ctx.error()
    return cfg


def _check_files(ctx: Ctx) -> None:
    """One issue per named file that is missing, unreadable or does not parse; each file once."""
    seen: dict[tuple[str, FileKind], str | None] = {}
    for node, path, resolved, kind in ctx.files:
        if (resolved, kind) not in seen:
            seen[resolved, kind] = file_problem(resolved, kind)
        problem = seen[resolved, kind]
        if problem is not None:
            ctx.add(node, path, problem)


def _compose(ctx: Ctx, text: str) -> Node | None:
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
