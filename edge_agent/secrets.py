"""Secrets: where they live, how they are read, and who else can read them.

A secret is never inline in the configuration (DESIGN §2): ``password_file:`` and ``key_file:``
name files. A relative path in any file key is resolved by the loader (:func:`resolve_path`)
against ``$CREDENTIALS_DIRECTORY`` when that variable is set, that is under systemd with
``LoadCredential=`` (the secret's source file can then stay readable by root only), and against
the configuration file's directory otherwise. Naming each credential after its file in
``/etc/edge-agent`` (``LoadCredential=mqtt.password:/etc/edge-agent/mqtt.password``) makes both
resolve to the same content, so ``check-config`` run by hand checks what the service will read.

Secrets are read at every connect, so a rotated file is picked up by the next reconnect.
:func:`loose_permissions` finds secret and key files that group or others may read; the agent
logs each at start and ``check-config`` prints them.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from pathlib import Path

from edge_agent.errors import EdgeAgentError

__all__ = ["CREDENTIALS_ENV", "SecretError", "loose_permissions", "read_secret", "resolve_path"]

CREDENTIALS_ENV = "CREDENTIALS_DIRECTORY"


class SecretError(EdgeAgentError):
    """A configured secret cannot be read."""


def resolve_path(value: str, config_dir: str) -> str:
    """``value`` if absolute; else joined to ``$CREDENTIALS_DIRECTORY`` when set, else to
    ``config_dir``. ``~`` is not expanded: a service has no home."""
    if os.path.isabs(value):
        return value
    base = os.environ.get(CREDENTIALS_ENV) or config_dir
    return os.path.normpath(os.path.join(base, value))


def read_secret(path: str) -> str:
    """The secret's text without one trailing newline (``\\n`` or ``\\r\\n``). Raises
    :class:`SecretError` naming the file when it cannot be read; the message never contains
    the secret."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        raise SecretError(f"cannot read secret file {path}: {reason}") from None
    if text.endswith("\r\n"):
        return text[:-2]
    if text.endswith("\n"):
        return text[:-1]
    return text


def loose_permissions(
    secrets: Iterable[str | os.PathLike[str] | None],
    config: str | os.PathLike[str] | None = None,
) -> list[str]:
    """One warning per existing file that others may misuse: a secret or private key that group
    or others may read or write, and a configuration file that group or others may write (it
    decides where the data goes). Reading the configuration reveals no secret, and a service
    running as systemd's dynamic user can only read it as "others", so that is not flagged.
    Missing files and None are skipped: their absence is reported elsewhere."""
    warnings: list[str] = []
    checks: list[tuple[str, int, str]] = []
    if config is not None:
        checks.append((os.fspath(config), stat.S_IWGRP | stat.S_IWOTH, "writable"))
    for path in secrets:
        if path is not None:
            checks.append((os.fspath(path), stat.S_IRWXG | stat.S_IRWXO, "readable"))
    seen: set[str] = set()
    for path, mask, what in checks:
        if path in seen:
            continue
        seen.add(path)
        try:
            mode = os.stat(path).st_mode
        except OSError:
            continue
        if stat.S_ISREG(mode) and mode & mask:
            warnings.append(
                f"{path} is {what} by group or others (mode {stat.S_IMODE(mode):04o}); "
                f"run: chmod {'600' if what == 'readable' else 'go-w'} {path}"
            )
    return warnings
