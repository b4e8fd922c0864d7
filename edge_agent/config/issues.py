"""Configuration problems with their position: ``FILE:LINE:COL: yaml.path: message``.

The loader collects every :class:`Issue` it finds and raises them together in one
:class:`edge_agent.errors.ConfigError`, so a user fixes a file in one pass.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

ROOT_PATH = "(root)"  # path shown for problems with the document as a whole

_PLAIN_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")


@dataclass(frozen=True, slots=True)
class Issue:
    """One problem. ``line`` and ``column`` are 1-based; ``path`` looks like
    ``sources[2].tags[0].address`` (empty for the document as a whole)."""

    file: str
    line: int
    column: int
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}: {self.path or ROOT_PATH}: {self.message}"


def join_key(path: str, key: object) -> str:
    """The path of mapping key ``key`` under ``path``: ``a.b``, or ``a[1]`` for keys that are not
    plain identifiers (integers in a state map, keys with spaces)."""
    if isinstance(key, str) and _PLAIN_KEY.fullmatch(key):
        return f"{path}.{key}" if path else key
    return f"{path}[{key!r}]"


def join_index(path: str, index: int) -> str:
    """The path of item ``index`` of the sequence at ``path``: ``sources[2]``."""
    return f"{path}[{index}]"


def plural(count: int, noun: str) -> str:
    """``1 problem``, ``3 problems``."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"
