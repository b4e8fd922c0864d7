"""A real Mosquitto broker in a subprocess, on a free loopback port, for tests: the agent's own
launcher (:class:`edge_agent.broker.Mosquitto`), shared with the demo and the benchmarks."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

from edge_agent.broker import Mosquitto, find_mosquitto

__all__ = ["HOST", "Mosquitto", "MosquittoFactory", "find_mosquitto", "make_password_file"]

HOST = "127.0.0.1"


def make_password_file(path: Path, username: str, password: str) -> Path:
    """A Mosquitto password file (hashed, as Mosquitto 2 requires) with one user."""
    tool = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
    subprocess.run([tool, "-b", "-c", str(path), username, password], check=True, timeout=10)
    return path


MosquittoFactory = Callable[..., Mosquitto]
"""The ``mosquitto_factory`` fixture: ``factory(extra_conf="...") -> Mosquitto`` (started)."""
