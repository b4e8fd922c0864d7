"""A real systemd in a container, for testing the shipped unit: a Debian root file system made by
``debootstrap`` (cached between runs), booted with ``systemd-nspawn``, entered with ``nsenter``.

The host needs no systemd of its own: the container is started with ``--register=no
--keep-unit`` (no machined, no system bus) and entered through its PID 1's namespaces, since
there is no ``machinectl`` to do it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

SUITE = "bookworm"
MIRROR = os.environ.get("EDGE_AGENT_TEST_DEBIAN_MIRROR", "http://deb.debian.org/debian")
# What the agent's install needs (python3, python3-venv), a broker for it (mosquitto) and a
# client to read what it published (mosquitto-clients), on systemd as PID 1.
PACKAGES = (
    "systemd",
    "systemd-sysv",
    "dbus",
    "python3",
    "python3-venv",
    "mosquitto",
    "mosquitto-clients",
)
# Change this when the way the root file system is made changes, so that caches are rebuilt.
RECIPE = "1"
CACHE_DIR = Path(os.environ.get("EDGE_AGENT_TEST_CACHE", "/var/cache/edge-agent-tests"))
_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_DEBOOTSTRAP_TIMEOUT_S = 900.0
_BOOT_TIMEOUT_S = 120.0
_POWEROFF_TIMEOUT_S = 60.0


class ContainerError(RuntimeError):
    """The container could not be made, booted or entered; the message says which step."""


def unavailable() -> str | None:
    """Why a container cannot run here (not root, a tool missing), or ``None``."""
    if os.geteuid() != 0:
        return "needs root (debootstrap and systemd-nspawn)"
    missing = [t for t in ("debootstrap", "systemd-nspawn", "nsenter") if not _which(t)]
    if missing:
        tools = ", ".join(missing)
        return f"not installed: {tools} (apt-get install debootstrap systemd-container)"
    return None


def _which(tool: str) -> str | None:
    return shutil.which(tool, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")


def rootfs_key() -> str:
    """A hash of everything that goes into the cached root file system."""
    text = "\n".join([RECIPE, SUITE, MIRROR, *sorted(PACKAGES)])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def cached_rootfs(log: Path) -> Path:
    """The root file system for :data:`PACKAGES`, made by ``debootstrap`` on first use and kept in
    :data:`CACHE_DIR` under a hash of its recipe. A failed attempt is retried once; a mirror that
    cannot be reached is reported as such."""
    root = CACHE_DIR / f"rootfs-{SUITE}-{rootfs_key()}"
    if (root / ".complete").exists():
        return root
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    partial = root.with_name(f"{root.name}.partial-{os.getpid()}")  # runs may race to make it
    tool = _which("debootstrap") or "debootstrap"
    cmd = [
        tool,
        "--variant=minbase",
        f"--include={','.join(PACKAGES)}",
        SUITE,
        str(partial),
        MIRROR,
    ]
    for attempt in (1, 2):
        shutil.rmtree(partial, ignore_errors=True)
        with log.open("ab") as out:
            out.write(f"\n$ {' '.join(cmd)}  (attempt {attempt})\n".encode())
            out.flush()
            try:
                result = subprocess.run(
                    cmd,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    timeout=_DEBOOTSTRAP_TIMEOUT_S,
                    check=False,
                )
            except subprocess.TimeoutExpired:
                result = None
        if result is not None and result.returncode == 0:
            (partial / ".complete").write_text(" ".join(cmd) + "\n")
            try:
                partial.rename(root)
            except OSError:  # another run made it first (or a stale one without .complete)
                if not (root / ".complete").exists():
                    shutil.rmtree(root, ignore_errors=True)
                    partial.rename(root)
                else:
                    shutil.rmtree(partial, ignore_errors=True)
            return root
    shutil.rmtree(partial, ignore_errors=True)
    tail = log.read_text(errors="replace").splitlines()[-15:]
    unreachable = any(
        "Failed getting release file" in line or "Could not resolve" in line or "unable to" in line
        for line in tail
    )
    what = (
        f"Debian's mirror {MIRROR} cannot be reached"
        if unreachable
        else f"debootstrap {SUITE} failed twice"
    )
    raise ContainerError(
        f"cannot make the test root file system: {what} (set EDGE_AGENT_TEST_DEBIAN_MIRROR "
        f"to another mirror); the last lines of {log}:\n" + "\n".join(tail)
    )


class Container:
    """One booted container over a private copy of a root file system. ``run()`` executes a
    command inside it as root; ``close()`` powers it off (and kills it if that fails)."""

    def __init__(self, rootfs: Path, workdir: Path) -> None:
        self.root = workdir / "root"
        self.console = workdir / "console.log"
        subprocess.run(
            ["cp", "-a", "--reflink=auto", str(rootfs), str(self.root)], check=True, timeout=300
        )
        self._proc: subprocess.Popen[bytes] | None = None
        self.pid1 = 0

    def boot(self) -> None:
        with self.console.open("wb") as out:
            self._proc = subprocess.Popen(
                [
                    _which("systemd-nspawn") or "systemd-nspawn",
                    "--directory",
                    str(self.root),
                    "--boot",
                    "--private-network",
                    "--register=no",
                    "--keep-unit",
                    "--quiet",
                ],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + _BOOT_TIMEOUT_S
        while not self.pid1:
            if self._proc.poll() is not None:
                raise ContainerError(
                    f"systemd-nspawn exited with {self._proc.returncode}: "
                    + self.console.read_text(errors="replace")[-2000:]
                )
            if time.monotonic() > deadline:
                raise ContainerError("the container's systemd did not start")
            self.pid1 = self._init_pid()
            time.sleep(0.1)  # polling /proc: no event tells when nspawn has forked init
        # Until its systemd listens on its private socket, systemctl cannot connect to it.
        state = ""
        while state not in {"running", "degraded"}:
            if time.monotonic() > deadline:
                raise ContainerError(f"the container did not finish booting: {state!r}")
            if state:
                time.sleep(0.1)
            result = self.run("systemctl is-system-running --wait", check=False)
            state = result.stdout.strip() or result.stderr.strip()

    def _init_pid(self) -> int:
        assert self._proc is not None
        pid = self._proc.pid
        try:
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except OSError:
            return 0
        for child in children:
            try:
                if Path(f"/proc/{child}/comm").read_text().strip() == "systemd":
                    return int(child)
            except OSError:
                continue
        return 0

    def run(
        self, script: str, *, check: bool = True, timeout_s: float = 120.0, stdin: str = ""
    ) -> subprocess.CompletedProcess[str]:
        """``sh -c script`` inside the container (all its namespaces, root's clean environment)."""
        cmd = [
            _which("nsenter") or "nsenter",
            "-t",
            str(self.pid1),
            "-m",
            "-u",
            "-i",
            "-n",
            "-p",
            "-r",
            "-w",
            "--",
            "/usr/bin/env",
            "-i",
            f"PATH={_PATH}",
            "HOME=/root",
            "LANG=C.UTF-8",
            "SYSTEMD_PAGER=",
            "/bin/sh",
            "-c",
            script,
        ]
        result = subprocess.run(
            cmd, input=stdin, capture_output=True, text=True, timeout=timeout_s, check=False
        )
        if check and result.returncode != 0:
            raise ContainerError(
                f"in the container, `{script}` exited with {result.returncode}:\n"
                f"{result.stdout}{result.stderr}"
            )
        return result

    def close(self) -> None:
        """Power the container off (SIGTERM to nspawn halts its systemd); kill it if it hangs."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            self._power_off(proc)
        if proc is None or proc.poll() is not None:
            shutil.rmtree(self.root, ignore_errors=True)  # a copy: ~300 MB per run

    def _power_off(self, proc: subprocess.Popen[bytes]) -> None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=_POWEROFF_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            if self.pid1:
                # Killing PID 1 of a PID namespace kills every process in it.
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid1, signal.SIGKILL)
            proc.kill()
            proc.wait(timeout=30)
