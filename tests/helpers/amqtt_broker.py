"""An amqtt broker in a subprocess, with the interface of :class:`helpers.mosquitto.Mosquitto`,
so that end-to-end tests run against a second MQTT implementation."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

from .mosquitto import Mosquitto
from .net import free_port, port_open

HOST = "127.0.0.1"
_SCRIPT = Path(__file__).with_name("amqtt_process.py")
_START_TIMEOUT_S = 15.0  # importing amqtt takes a moment on a busy machine
_STOP_TIMEOUT_S = 5.0


class Amqtt:
    """One amqtt process. ``start()`` / ``stop()`` may be repeated on the same port; ``close()``
    kills it for good; ``pause()`` / ``resume()`` freeze and thaw it (SIGSTOP / SIGCONT)."""

    kind = "amqtt"

    def __init__(
        self,
        workdir: Path,
        *,
        subscribe_acl: list[str] | None = None,
        publish_acl: list[str] | None = None,
    ) -> None:
        """``subscribe_acl`` / ``publish_acl``: the topic filters anonymous clients may subscribe
        / publish to (amqtt's topic ACL plugin: a denied subscription gets SUBACK 0x80, a denied
        publish is acknowledged and dropped); ``None``: everything."""
        self.subscribe_acl = subscribe_acl
        self.publish_acl = publish_acl
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.host = HOST
        self.port = free_port(HOST)
        self.log_path = workdir / "amqtt.log"
        self._proc: subprocess.Popen[bytes] | None = None

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
            raise RuntimeError("amqtt is already running")
        for attempt in range(attempts):
            with self.log_path.open("ab") as log:
                self._proc = subprocess.Popen(
                    [sys.executable, str(_SCRIPT), self.host, str(self.port), self._acl()],
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
                self.port = free_port(self.host)
        raise RuntimeError(f"amqtt did not start on {self.host}:{self.port}:\n{self.log_tail()}")

    def _acl(self) -> str:
        acl: dict[str, list[str]] = {}
        if self.subscribe_acl is not None:
            acl["acl"] = self.subscribe_acl
        if self.publish_acl is not None:
            acl["publish_acl"] = self.publish_acl
        return json.dumps(acl)

    def stop(self) -> None:
        """Stop the broker (SIGTERM, SIGKILL if it does not exit) and wait for it."""
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGCONT)
        proc.terminate()
        try:
            proc.wait(timeout=_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=_STOP_TIMEOUT_S)

    def kill(self) -> None:
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        proc.kill()
        proc.wait(timeout=_STOP_TIMEOUT_S)

    def pause(self) -> None:
        if self._proc is not None and self.running:
            self._proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self._proc is not None and self.running:
            self._proc.send_signal(signal.SIGCONT)

    def close(self) -> None:
        self.kill()
        self._proc = None


AnyBroker = Mosquitto | Amqtt
"""The ``broker`` fixture's value: either implementation, one interface."""
