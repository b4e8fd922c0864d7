"""``edge-agent run -c FILE`` as a child process, for tests needing real signals and exit codes."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path


class AgentProcess:
    """The agent as a child process; its log goes to a file next to the config. It starts in
    the config's directory unless ``cwd`` says another."""

    def __init__(
        self, config: Path, *, stop_timeout_s: float = 20.0, cwd: Path | None = None
    ) -> None:
        self.config = config
        self.cwd = cwd if cwd is not None else config.parent
        self.log = config.with_suffix(".log")
        self.stop_timeout_s = stop_timeout_s
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self, *extra_args: str) -> None:
        """Start ``edge-agent run -c CONFIG [extra_args]``."""
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        with self.log.open("ab") as out:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "edge_agent.cli",
                "run",
                "-c",
                str(self.config),
                *extra_args,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.cwd,
            )

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def stop(self, sig: int = signal.SIGTERM) -> int:
        """Send ``sig`` and return the exit code; fail with the agent's log if it hangs."""
        assert self.proc is not None
        if self.proc.returncode is None:
            self.proc.send_signal(sig)
        try:
            async with asyncio.timeout(self.stop_timeout_s):
                return await self.proc.wait()
        except TimeoutError:
            pass
        # Stuck: a second SIGTERM makes the agent log what its shutdown waits for.
        self.proc.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(5):
                await self.proc.wait()
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()
        raise AssertionError(
            f"agent did not stop within {self.stop_timeout_s:g} s:\n{self.output()[-6000:]}"
        )

    def output(self) -> str:
        return self.log.read_text(errors="replace")
