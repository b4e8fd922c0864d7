"""sd_notify over a real unix datagram socket, as systemd would receive it."""

from __future__ import annotations

import socket
from pathlib import Path

from edge_agent.systemd import Notifier


def test_notifier_sends_ready_watchdog_stopping(tmp_path: Path) -> None:
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(str(path))
        server.settimeout(5)
        n = Notifier({"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "20000000"})
        assert n.enabled and n.watchdog_interval_s == 20.0
        n.ready("2 sources")
        n.watchdog()
        n.stopping()
        got = [server.recv(4096).decode() for _ in range(3)]
    assert got == ["READY=1\nSTATUS=2 sources", "WATCHDOG=1", "STOPPING=1"]


def test_notifier_is_silent_without_systemd() -> None:
    n = Notifier({})
    assert not n.enabled and n.watchdog_interval_s is None
    n.ready()  # no socket: nothing happens, nothing raises


def test_notifier_survives_a_vanished_socket(tmp_path: Path) -> None:
    n = Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone.sock")})
    n.watchdog()
    n.watchdog()
