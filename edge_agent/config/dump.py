"""The effective configuration as YAML (``edge-agent check-config --dump``).

Defaults are filled in, relative paths resolved, durations written as seconds (``1.5s``), and
the result loads again with :func:`edge_agent.config.loader.load_config_text` into an equal
configuration. Secrets are never in a configuration (only the paths of the files that hold
them), and any key that names a secret itself (``password``, ``secret``, ``token``, ...) is
redacted all the same, so a future key cannot leak through a dump.
"""

from __future__ import annotations

import dataclasses
import enum
from datetime import time
from typing import Any

import yaml

from edge_agent.config.loader import FIELD_NAMES
from edge_agent.config.schema import (
    AgentConfig,
    DataType,
    ModbusTag,
    OpcuaSecurityConfig,
    OpcuaSecurityPolicy,
)

__all__ = ["REDACTED", "dump_config", "redact"]

REDACTED = "<redacted>"
_SECRET_WORDS = ("password", "secret", "token", "passphrase", "private_key")
_KEYS = {field_name: key for key, field_name in FIELD_NAMES.items()}


def _is_secret_key(key: str) -> bool:
    # "password_file" names a file and is kept; "password" or "api_token" would be the secret.
    return not key.endswith(("_file", "_dir")) and any(w in key for w in _SECRET_WORDS)


def redact(value: Any) -> Any:
    """``value`` (plain data: dicts, lists, scalars) with every secret-named key's value
    replaced by :data:`REDACTED`."""
    if isinstance(value, dict):
        return {
            k: REDACTED if isinstance(k, str) and _is_secret_key(k) else redact(v)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [redact(v) for v in value]
    return value


def _plain(value: Any, field_name: str = "") -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out: dict[str, Any] = {}
        for f in dataclasses.fields(value):
            item = getattr(value, f.name)
            if f.name == "path" or item is None or _not_applicable(value, f.name):
                continue
            out[_KEYS.get(f.name, f.name)] = _plain(item, f.name)
        return out
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, time):
        return f"{value:%H:%M}"
    if isinstance(value, frozenset):
        return sorted(_plain(v) for v in value)
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, float) and field_name.endswith("_s") and field_name in _KEYS:
        return duration_text(value)
    return value


def duration_text(seconds: float) -> str:
    """``seconds`` in the loader's duration syntax, in the largest unit that keeps it exact
    (``30d``, ``5m``, ``1.5s``, ``250ms``); ``repr`` keeps every digit of an odd value."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and (seconds / size).is_integer():
            return f"{int(seconds // size)}{unit}"
    if seconds and seconds < 1 and (seconds * 1000).is_integer():
        return f"{int(seconds * 1000)}ms"
    return f"{int(seconds)}s" if seconds.is_integer() else f"{seconds!r}s"


def _not_applicable(obj: Any, field_name: str) -> bool:
    """Defaults the loader refuses when written out (they apply to other tag types)."""
    if isinstance(obj, ModbusTag):
        if field_name == "length":
            return obj.type is not DataType.STRING
        if field_name in ("scale", "offset"):
            return obj.type in (DataType.BOOL, DataType.STRING)
    if isinstance(obj, OpcuaSecurityConfig):
        return field_name == "mode" and obj.policy is OpcuaSecurityPolicy.NONE
    return False


def dump_config(cfg: AgentConfig) -> str:
    """The configuration as YAML text, secrets redacted (see the module docstring)."""
    data = _plain(cfg)
    extra = data.pop("mqtt_extra", [])
    if extra:  # the list form of `mqtt`: the primary sink first
        data["mqtt"] = [data["mqtt"], *extra]
    data = redact(data)
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True, default_flow_style=False)
