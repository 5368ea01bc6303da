"""A node served by a child process: it can be SIGKILLed, restarted and its memory measured.

``ServedNode(pod)`` takes a :class:`tests.node.helpers.PodNode` made by ``make_node`` (and
never started in this process) and runs ``run_node(load_config(home))`` for it with
``python -c``, exactly as ``podlink serve`` would. The handle's ``pod.client`` and
``pod.url`` work as for an in-process node; ``pod.node`` and ``pod.ledger`` do not (the
ledger lives in the child: open the file with ``Ledger.open`` while the child is down).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path

import aiohttp
import psutil

from tests.node.helpers import PodNode, stable_port

__all__ = ["SERVE", "ServedNode", "stable_port"]

SERVE = (
    "import sys; from pathlib import Path; from podlink.node.app import run_node; "
    "from podlink.node.config import load_config; run_node(load_config(Path(sys.argv[1])))"
)


class ServedNode:
    """One pod's node in a child process (start, kill -9, stop, RSS)."""

    def __init__(self, pod: PodNode) -> None:
        self.pod = pod
        self.proc: asyncio.subprocess.Process | None = None
        self.log_path = pod.home / "node.log"
        self.starts = 0

    @property
    def url(self) -> str:
        return self.pod.url

    @property
    def db(self) -> Path:
        return self.pod.config.ledger_path

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def spawn(self) -> None:
        """Start the child; do not wait for it to serve."""
        assert not self.running, "already running"
        env = {k: v for k, v in os.environ.items() if not k.startswith("PODLINK_")}
        with self.log_path.open("ab") as log:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-c", SERVE, str(self.pod.home),
                stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log, env=env,
            )  # fmt: skip
        self.starts += 1

    async def start(self, within: float = 30.0) -> None:
        await self.spawn()
        await self.wait_ready(within)

    async def wait_ready(self, within: float = 30.0) -> float:
        """Poll the public /v1/info until it answers; returns the seconds it took."""
        started = time.monotonic()
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
            while True:
                assert self.proc is not None
                if self.proc.returncode is not None:
                    raise AssertionError(
                        f"node exited with {self.proc.returncode}:\n{self.log_tail()}"
                    )
                try:
                    async with session.get(self.url + "/v1/info") as resp:
                        if resp.status == 200:
                            return time.monotonic() - started
                except (aiohttp.ClientError, TimeoutError):
                    pass
                if time.monotonic() - started > within:
                    raise AssertionError(f"node did not serve within {within} s\n{self.log_tail()}")
                await asyncio.sleep(0.02)

    async def kill(self) -> None:
        """SIGKILL: no cleanup of any kind runs in the child."""
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGKILL)
            await self.proc.wait()
            assert self.proc.returncode == -signal.SIGKILL, self.proc.returncode
        await self.pod.close_client()

    async def stop(self, within: float = 15.0) -> int | None:
        """SIGTERM and wait (SIGKILL if it hangs); returns the exit code."""
        await self.pod.close_client()
        if self.proc is None:
            return None
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), within)
            except TimeoutError:
                self.proc.send_signal(signal.SIGKILL)
                await self.proc.wait()
        return self.proc.returncode

    def rss(self) -> int:
        """Resident memory of the child, in bytes."""
        assert self.proc is not None and self.proc.returncode is None
        return psutil.Process(self.proc.pid).memory_info().rss

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except FileNotFoundError:
            return ""
