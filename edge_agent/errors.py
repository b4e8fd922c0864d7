"""The agent's exception family. Library errors are translated into these at the boundary."""

from __future__ import annotations


class EdgeAgentError(Exception):
    """Base of every error the agent raises on purpose."""


class ConfigError(EdgeAgentError):
    """The configuration is invalid. ``issues`` holds every problem found, already formatted
    as ``FILE:LINE:COL: yaml.path: message``."""

    def __init__(self, issues: list[str]) -> None:
        self.issues = list(issues)
        super().__init__("\n".join(self.issues) if self.issues else "invalid configuration")


class SourceError(EdgeAgentError):
    """A source failed in a way that does not need a new connection (e.g. a Modbus exception)."""


class NotConnectedError(SourceError):
    """The source's connection is gone or could not be made: the supervisor reconnects it."""


class DecodeError(SourceError):
    """Raw protocol data could not be turned into a value (wrong length, invalid encoding)."""


class SinkError(EdgeAgentError):
    """A sink could not deliver; the message stays in the outbox."""


class BrokerRefusedError(SinkError):
    """The MQTT broker refused the connection (bad credentials, not authorised, bad TLS)."""


class StorageError(EdgeAgentError):
    """The state directory or a database in it cannot be used (permissions, full disk).

    ``reason`` says which, for the one log line that names it: ``disk_full``, ``read_only``,
    ``corrupt`` or ``other``."""

    def __init__(self, message: str, *, reason: str = "other") -> None:
        super().__init__(message)
        self.reason = reason
