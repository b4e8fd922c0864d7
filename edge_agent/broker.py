"""Private MQTT brokers on loopback: the one launcher of Mosquitto for the demo, the tests and
the benchmarks, and the demo's broker.

:class:`Mosquitto` is one Mosquitto process on a free port, its configuration and log in a
directory of the caller's: started (and waited for until it accepts connections), stopped,
restarted on the same port, paused; from synchronous code (tests, the soak run) or from the
event loop. :class:`LocalBroker` runs Mosquitto when the binary is installed, otherwise an
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
import subprocess
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


def _user() -> str:
    # Started by root, Mosquitto would switch to its own user, which cannot read the caller's
    # files (and loses the parent-death signal); a non-root Mosquitto ignores the setting.
    return pwd.getpwuid(os.geteuid()).pw_name


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


class Mosquitto:
    """One Mosquitto process on ``host`` and a port that was free, configured in ``workdir``
    (``mosquitto.conf``, and ``mosquitto.log`` with everything it wrote).

    :meth:`start` / :meth:`stop` may be repeated: the port stays the same (for outage tests);
    :meth:`close` kills it for good. ``extra_conf`` lines go into the configuration (e.g.
    ``allow_anonymous false`` and ``password_file ...``). ``own_session``: the process gets a
    session of its own (a terminal's Ctrl-C reaches only us, and we stop it in order) and, on
    Linux, SIGTERM when we die, even by SIGKILL.

    :meth:`start` and :meth:`stop` block; :meth:`start_async` and :meth:`stop_async` are the same
    for the event loop."""

    def __init__(
        self,
        binary: str | None,
        workdir: Path,
        *,
        host: str = "127.0.0.1",
        extra_conf: str = "",
        own_session: bool = False,
        start_timeout_s: float = 10.0,
        stop_timeout_s: float = 5.0,
    ) -> None:
        found = binary or find_mosquitto()
        if found is None:
            raise BrokerStartError(
                "the mosquitto binary was not found; install it with `apt-get install mosquitto`"
            )
        self.binary = found
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.host = host
        self.port = _free_port(host)
        self.extra_conf = extra_conf
        self.conf_path = workdir / "mosquitto.conf"
        self.log_path = workdir / "mosquitto.log"
        self._own_session = own_session
        self._start_timeout_s = start_timeout_s
        self._stop_timeout_s = stop_timeout_s
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    def log_tail(self, lines: int = 30) -> str:
        return _tail(self.log_path, lines)

    # -- start -------------------------------------------------------------------------------

    def _spawn(self) -> None:
        if self.running:
            raise BrokerStartError("mosquitto is already running")
        anonymous = "" if "allow_anonymous" in self.extra_conf else "allow_anonymous true\n"
        self.conf_path.write_text(
            f"listener {self.port} {self.host}\n"
            f"{anonymous}"
            f"user {_user()}\n"
            "persistence false\n"
            "log_dest stderr\n"
            "log_type error\nlog_type warning\nlog_type notice\nlog_type information\n"
            "connection_messages true\n"
            f"{self.extra_conf}\n"
        )
        with self.log_path.open("ab") as log_file:
            self._proc = subprocess.Popen(
                [self.binary, "-c", str(self.conf_path)],
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=self._own_session,
                preexec_fn=_die_with_parent() if self._own_session else None,  # noqa: PLW1509
            )

    def _failed(self, attempt: int, attempts: int) -> None:
        """After a start that did not come up: kill it; a new port for the next attempt (the
        free port may have been taken meanwhile), or the error after the last one."""
        self.kill()
        if attempt + 1 < attempts:
            self.port = _free_port(self.host)
            return
        raise BrokerStartError(
            f"mosquitto did not start on {self.host}:{self.port}:\n{self.log_tail()}"
        )

    def start(self, *, attempts: int = 1) -> None:
        """Start (or restart) on ``self.port``; return once the port accepts connections.
        Raises :class:`BrokerStartError` when it did not, after ``attempts`` tries."""
        for attempt in range(attempts):
            self._spawn()
            assert self._proc is not None
            deadline = time.monotonic() + self._start_timeout_s
            while time.monotonic() < deadline and self._proc.poll() is None:
                if _port_open(self.host, self.port):
                    return
                # Poll, rather than wait for a log line: the log format is not an interface.
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self._proc.wait(0.02)
            self._failed(attempt, attempts)

    async def start_async(self, *, attempts: int = 1) -> None:
        """:meth:`start` on the event loop. If cancelled, the process is killed."""
        try:
            for attempt in range(attempts):
                self._spawn()
                assert self._proc is not None
                deadline = time.monotonic() + self._start_timeout_s
                while time.monotonic() < deadline and self._proc.poll() is None:
                    if await _port_accepts(self.host, self.port):
                        return
                    await asyncio.sleep(0.05)
                self._failed(attempt, attempts)
        except asyncio.CancelledError:
            self.kill()
            raise

    # -- stop --------------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop the broker (SIGTERM, SIGKILL if it does not exit in time) and wait for it."""
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGCONT)  # a paused broker cannot act on SIGTERM
        proc.terminate()
        try:
            proc.wait(timeout=self._stop_timeout_s)
        except subprocess.TimeoutExpired:
            log.warning("mosquitto did not stop within %.1f s: killing it", self._stop_timeout_s)
            self.kill()

    async def stop_async(self) -> None:
        """:meth:`stop` on the event loop. If cancelled, the process is killed."""
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGCONT)
        proc.terminate()
        try:
            deadline = time.monotonic() + self._stop_timeout_s
            while proc.poll() is None:
                if time.monotonic() >= deadline:
                    log.warning(
                        "mosquitto did not stop within %.1f s: killing it", self._stop_timeout_s
                    )
                    break
                await asyncio.sleep(0.02)
        finally:
            # Never leave the process behind, even when cancelled mid-shutdown.
            self.kill()

    def kill(self) -> None:
        """Kill the broker at once (SIGKILL) and wait for it."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=self._stop_timeout_s)

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
        self._mosquitto: Mosquitto | None = None
        self._amqtt: Any = None  # amqtt.broker.Broker; untyped: amqtt is an optional extra

    @property
    def pid(self) -> int | None:
        """The Mosquitto process id while it runs (``None`` for amqtt, which runs in-process)."""
        return self._mosquitto.pid if self._mosquitto is not None else None

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
        self._mosquitto = Mosquitto(
            binary,
            Path(self._tmp.name),
            host=self.host,
            own_session=True,
            start_timeout_s=self._start_timeout_s,
            stop_timeout_s=self._stop_timeout_s,
        )
        await self._mosquitto.start_async(attempts=_START_ATTEMPTS)
        self.port = self._mosquitto.port
        self.kind = "mosquitto"

    async def _start_amqtt(self, broker_cls: Any) -> None:
        for attempt in range(_START_ATTEMPTS):
            port = _free_port(self.host)
            config = {
                "listeners": {"default": {"type": "tcp", "bind": f"{self.host}:{port}"}},
                # Only anonymous auth: no $SYS publisher, no packet logging.
                "plugins": {
                    "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}
                },
            }
            broker = broker_cls(config)
            try:
                async with asyncio.timeout(self._start_timeout_s):
                    await broker.start()
            except Exception as exc:
                # amqtt wraps the OSError of a free port taken meanwhile: try another one.
                if attempt + 1 == _START_ATTEMPTS or not isinstance(exc.__cause__, OSError):
                    raise BrokerStartError(f"amqtt did not start: {exc}") from exc
                continue
            self._amqtt = broker
            self.port = port
            self.kind = "amqtt"
            return

    # -- stop --------------------------------------------------------------------------------

    async def _stop(self) -> None:
        try:
            if self._mosquitto is not None:
                mosquitto, self._mosquitto = self._mosquitto, None
                await mosquitto.stop_async()
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


def _tail(path: Path, lines: int = 20) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:]) or "(empty log)"
