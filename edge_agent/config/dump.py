"""The effective configuration as YAML (``edge-agent check-config --dump``).

Defaults are filled in, relative paths resolved, durations written as seconds (``1.5s``), every
key as its declaration writes it (:func:`edge_agent.config.kinds.dump_object`), and the result
loads again with :func:`edge_agent.config.loader.load_config_text` into an equal configuration.
Secrets are never in a configuration (only the paths of the files that hold them), and any key
that names a secret itself (``password``, ``secret``, ``token``, ...) is redacted all the same,
so a future key cannot leak through a dump.
"""

from __future__ import annotations

from typing import Any

import yaml

from edge_agent.config.kinds import dump_object
from edge_agent.config.schema import AgentConfig

__all__ = ["REDACTED", "dump_config", "redact"]

REDACTED = "<redacted>"
_SECRET_WORDS = ("password", "secret", "token", "passphrase", "private_key")


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


def dump_config(cfg: AgentConfig) -> str:
    """The configuration as YAML text, secrets redacted (see the module docstring)."""
    data = dump_object(cfg)
    if cfg.mqtt_extra:  # the list form of `mqtt`: the primary sink first
        data["mqtt"] = [dump_object(sink) for sink in cfg.mqtt_sinks]
    return yaml.safe_dump(
        redact(data), sort_keys=False, allow_unicode=True, default_flow_style=False
    )
