"""A real Mosquitto broker in a subprocess, on a free loopback port, for tests."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from .net import free_port, port_open

HOST = "127.0.0.1"
_START_TIMEOUT_S = 10.0
_STOP_TIMEOUT_S = 5.0


def find_mosquitto() -> str | None:
    """The mosquitto binary: on PATH, or in ``/usr/sbin`` (Debian's place, not on every PATH)."""
    found = shutil.which("mosquitto")
    if found:
        return found
    for candidate in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto"):
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def make_password_file(path: Path, username: str, password: str) -> Path:
    """A Mosquitto password file (hashed, as Mosquitto 2 requires) with one user."""
    tool = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
    subprocess.run([tool, "-b", "-c", str(path), username, password], check=True, timeout=10)
    return path


class Mosquitto:
    """One Mosquitto process. ``start()`` / ``stop()`` may be repeated (the port stays the same,
    for outage tests); ``close()`` kills it for good. ``extra_conf`` lines go into the config
    (e.g. ``allow_anonymous false`` and ``password_file ...``)."""

    def __init__(self, binary: str, workdir: Path, *, extra_conf: str = "") -> None:
        self.binary = binary
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.host = HOST
        self.port = free_port(HOST)
        self.extra_conf = extra_conf
        self.conf_path = workdir / "mosquitto.conf"
        self.log_path = workdir / "mosquitto.log"
        self._proc: subprocess.Popen[bytes] | None = None

    def _write_conf(self) -> None:
        anonymous = "" if "allow_anonymous" in self.extra_conf else "allow_anonymous true\n"
        self.conf_path.write_text(
            f"listener {self.port} {self.host}\n"
            f"{anonymous}"
            "persistence false\n"
            "log_dest stderr\n"
            "log_type error\nlog_type warning\nlog_type notice\nlog_type information\n"
            "connection_messages true\n"
            # Started as root, Mosquitto would switch to user 'mosquitto', which cannot read
            # the test's files; ignored when not root.
            "user root\n"
            f"{self.extra_conf}\n"
        )

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def start(self, *, attempts: int = 1) -> None:
        """Start (or restart) on ``self.port``; return once the port accepts connections."""
        if self.running:
            raise RuntimeError("mosquitto is already running")
        for attempt in range(attempts):
            self._write_conf()
            with self.log_path.open("ab") as log:
                self._proc = subprocess.Popen(
                    [self.binary, "-c", str(self.conf_path)],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            deadline = time.monotonic() + _START_TIMEOUT_S
            while time.monotonic() < deadline:
                if self._proc.poll() is not None:
                    break
                if port_open(self.host, self.port):
                    return
                time.sleep(0.02)
            self.kill()
            if attempt + 1 < attempts:
                self.port = free_port(self.host)  # the free port was taken meanwhile
        raise RuntimeError(
            f"mosquitto did not start on {self.host}:{self.port}:\n{self.log_tail()}"
        )

    def stop(self) -> None:
        """Stop the broker (SIGTERM, SIGKILL if it does not exit) and wait for it."""
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGCONT)  # a paused broker cannot act on SIGTERM
        proc.terminate()
        try:
            proc.wait(timeout=_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=_STOP_TIMEOUT_S)

    def kill(self) -> None:
        """Kill the broker at once (SIGKILL) and wait for it."""
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        proc.kill()
        proc.wait(timeout=_STOP_TIMEOUT_S)

    def pause(self) -> None:
        """Freeze the broker (SIGSTOP): connections stay open but nothing is answered."""
        if self._proc is not None and self.running:
            self._proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self._proc is not None and self.running:
            self._proc.send_signal(signal.SIGCONT)

    def close(self) -> None:
        self.kill()
        self._proc = None


MosquittoFactory = Callable[..., Mosquitto]
"""The ``mosquitto_factory`` fixture: ``factory(extra_conf="...") -> Mosquitto`` (started)."""
