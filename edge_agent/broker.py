"""A private MQTT broker on loopback, for the demo (and tests).

:class:`LocalBroker` runs Mosquitto as a subprocess when the binary is installed, otherwise an
embedded amqtt broker (the ``demo`` extra). Either way it listens on ``127.0.0.1`` on a free port,
allows anonymous clients, keeps nothing on disk, and leaves nothing behind when the context exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import logging
import os
import pwd
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

from edge_agent.errors import EdgeAgentError

log = logging.getLogger(__name__)

BrokerKind = Literal["mosquitto", "amqtt"]

_MOSQUITTO_FALLBACK_PATHS = ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto")
_START_ATTEMPTS = 3  # a free port can be taken between our probe and Mosquitto's bind


class BrokerStartError(EdgeAgentError):
    """No local broker could be started (none installed, or it failed at start)."""


def find_mosquitto() -> str | None:
    """Path of the ``mosquitto`` binary: on ``PATH``, or in the usual sbin directories."""
    found = shutil.which("mosquitto")
    if found:
        return found
    for candidate in _MOSQUITTO_FALLBACK_PATHS:
        if Path(candidate).is_file():
            return candidate
    return None


def _die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child get SIGTERM when we die, even by SIGKILL (Linux).

    The child runs in its own session (so a terminal's Ctrl-C reaches only us, and we stop it
    after the agent said goodbye); this is what still ties its life to ours.
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):
        return None
    pr_set_pdeathsig = 1

    def preexec() -> None:
        prctl(pr_set_pdeathsig, signal.SIGTERM)

    return preexec


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


async def _port_accepts(host: str, port: int, timeout_s: float = 0.5) -> bool:
    try:
        async with asyncio.timeout(timeout_s):
            _, writer = await asyncio.open_connection(host, port)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


class LocalBroker:
    """An MQTT broker on ``127.0.0.1`` for as long as the ``async with`` block runs.

    ``prefer`` picks the implementation: ``"auto"`` (Mosquitto if installed, else amqtt),
    ``"mosquitto"`` or ``"amqtt"`` (that one or :class:`BrokerStartError`). After ``__aenter__``
    returns, ``host``/``port`` accept MQTT connections and ``kind`` says which broker runs.
    On exit the broker is stopped (terminate, then kill after ``stop_timeout_s``) and its temporary
    directory removed, also when the block is left by an exception or a cancellation.
    """

    def __init__(
        self,
        *,
        prefer: Literal["auto", "mosquitto", "amqtt"] = "auto",
        host: str = "127.0.0.1",
        start_timeout_s: float = 10.0,
        stop_timeout_s: float = 5.0,
    ) -> None:
        self.host = host
        self.port: int = 0
        self.kind: BrokerKind | None = None
        self._prefer = prefer
        self._start_timeout_s = start_timeout_s
        self._stop_timeout_s = stop_timeout_s
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._amqtt: Any = None  # amqtt.broker.Broker; untyped: amqtt is an optional extra

    @property
    def pid(self) -> int | None:
        """The Mosquitto process id while it runs (``None`` for amqtt, which runs in-process)."""
        return self._proc.pid if self._proc is not None else None

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    async def __aenter__(self) -> LocalBroker:
        try:
            await self._start()
        except BaseException:
            await self._stop()
            raise
        log.info("local %s broker on %s:%d", self.kind, self.host, self.port)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._stop()

    # -- start -------------------------------------------------------------------------------

    async def _start(self) -> None:
        mosquitto = find_mosquitto() if self._prefer in ("auto", "mosquitto") else None
        if mosquitto is not None:
            await self._start_mosquitto(mosquitto)
            return
        if self._prefer == "mosquitto":
            raise BrokerStartError(
                "the mosquitto binary was not found; install it with `apt-get install mosquitto`"
            )
        try:
            # Lazy import: amqtt is the optional `demo` extra, and heavy.
            from amqtt.broker import Broker  # type: ignore[import-untyped,import-not-found,unused-ignore]  # noqa: PLC0415
        except ImportError as exc:
            raise BrokerStartError(
                "no MQTT broker available: install Mosquitto (`apt-get install mosquitto`) or "
                "the embedded fallback (`pip install 'edge-agent[demo]'`), or pass the address "
                "of an existing broker"
            ) from exc
        await self._start_amqtt(Broker)

    async def _start_mosquitto(self, binary: str) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="edge-agent-broker-")
        tmp = Path(self._tmp.name)
        conf = tmp / "mosquitto.conf"
        log_file = tmp / "mosquitto.log"
        # Run as ourselves: started by root, Mosquitto would otherwise switch to its own user,
        # which clears the parent-death signal and could not write our temporary directory.
        user = pwd.getpwuid(os.geteuid()).pw_name
        last_error = ""
        for _ in range(_START_ATTEMPTS):
            port = _free_port(self.host)
            conf.write_text(
                f"listener {port} {self.host}\n"
                "allow_anonymous true\n"
                f"user {user}\n"
                "persistence false\n"
                f"log_dest file {log_file}\n"
                "log_type error\nlog_type warning\nlog_type notice\nlog_type information\n"
            )
            log_file.write_text("")
            self._proc = await asyncio.create_subprocess_exec(
                binary,
                "-c",
                str(conf),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
                # Its own session: a Ctrl-C in the terminal reaches us, and we stop it in order.
                start_new_session=True,
                preexec_fn=_die_with_parent(),
            )
            if await self._wait_mosquitto_ready(port):
                self.port = port
                self.kind = "mosquitto"
                return
            last_error = _tail(log_file)
            await self._stop_process()
            if "in use" not in last_error:
                break
        raise BrokerStartError(f"mosquitto did not start:\n{last_error}")

    async def _wait_mosquitto_ready(self, port: int) -> bool:
        """True once the port accepts TCP; False if the process exits or the deadline passes."""
        assert self._proc is not None
        deadline = time.monotonic() + self._start_timeout_s
        while time.monotonic() < deadline:
            if self._proc.returncode is not None:
                return False
            if await _port_accepts(self.host, port):
                return True
            # Poll, rather than wait for a log line: the log format is not an interface.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.05):
                    await self._proc.wait()
        return False

    async def _start_amqtt(self, broker_cls: Any) -> None:
        config = {
            "listeners": {"default": {"type": "tcp", "bind": f"{self.host}:0"}},
            # Only anonymous auth: no $SYS publisher, no packet logging.
            "plugins": {
                "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}
            },
        }
        broker = broker_cls(config)
        async with asyncio.timeout(self._start_timeout_s):
            await broker.start()
        self._amqtt = broker
        # amqtt offers no accessor for the bound address; port 0 avoids racing for a free port.
        server = broker._servers["default"].instance
        self.port = int(server.sockets[0].getsockname()[1])
        self.kind = "amqtt"

    # -- stop --------------------------------------------------------------------------------

    async def _stop(self) -> None:
        try:
            await self._stop_process()
            if self._amqtt is not None:
                broker, self._amqtt = self._amqtt, None
                try:
                    async with asyncio.timeout(self._stop_timeout_s):
                        await broker.shutdown()
                except Exception:
                    log.warning("amqtt broker did not shut down cleanly", exc_info=True)
        finally:
            if self._tmp is not None:
                self._tmp.cleanup()
                self._tmp = None

    async def _stop_process(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.returncode is not None:
            return
        proc.terminate()
        try:
            async with asyncio.timeout(self._stop_timeout_s):
                await proc.wait()
        except TimeoutError:
            log.warning("mosquitto did not stop within %.1f s: killing it", self._stop_timeout_s)
            proc.kill()
            await proc.wait()
        except asyncio.CancelledError:
            # Never leave the process behind, even when cancelled mid-shutdown.
            proc.kill()
            raise


def _tail(path: Path, lines: int = 20) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:]) or "(empty log)"
