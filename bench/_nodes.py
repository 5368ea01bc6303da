"""Real podlink nodes for figures: in this process (aiohttp AppRunner on 127.0.0.1) or in a
child process (``python -m bench._child node``), and a loopback TCP proxy that counts bytes.

Bench nodes are ordinary homes made by ``init_pod`` with one change: the per-key request
rate limit is lifted (``rate_per_s``), because a figure submitting as fast as it can is not
the flood the limiter is there to stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from podlink.node.app import create_app
from podlink.node.client import NodeClient
from podlink.node.config import Config, load_config, save_config, with_overrides
from podlink.node.home import init_pod
from podlink.node.peer_api import NODE
from podlink.node.runtime import Node
from podlink.protocol.keys import Keypair, load_keypair
from podlink.protocol.text import b64e

BENCH_RATE = 1e6  # requests per second per key: no limit, for figures
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the repository


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def make_home(home: Path, name: str, **overrides: Any) -> Config:
    """A new pod home on a free loopback port, its rate limit lifted (plus ``overrides``)."""
    port = free_port()
    config = await init_pod(home, name=name, listen=f"127.0.0.1:{port}")
    config = with_overrides(config, rate_per_s=BENCH_RATE, log_level="WARNING", **overrides)
    save_config(config)
    return load_config(home, env={})


@dataclass
class LocalNode:
    """A node served by this process's event loop."""

    config: Config
    runner: web.AppRunner
    node: Node
    client: NodeClient  # signed as the home's first organizer
    pod_client: NodeClient  # signed as the pod key itself (may add organizers)
    node_key: Keypair
    extra: list[NodeClient] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.config.public_url

    @property
    def pod(self) -> bytes:
        return self.node.pod

    def client_for(self, keypair: Keypair) -> NodeClient:
        c = NodeClient(self.url, keypair)
        self.extra.append(c)
        return c

    async def close(self) -> None:
        for c in (self.client, self.pod_client, *self.extra):
            await c.close()
        await self.runner.cleanup()


async def start_local(home: Path, name: str, **overrides: Any) -> LocalNode:
    """Create a home and serve it here (``create_app`` + ``AppRunner`` + ``TCPSite``)."""
    config = await make_home(home, name, **overrides)
    app = await create_app(config)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, config.host, config.port)
    await site.start()
    node_key = load_keypair(config.node_key_path)
    return LocalNode(
        config=config,
        runner=runner,
        node=app[NODE],
        client=NodeClient(config.public_url, load_keypair(config.organizer_key_path)),
        pod_client=NodeClient(config.public_url, node_key),
        node_key=node_key,
    )


async def peer(
    a: LocalNode | ChildNode, b: LocalNode | ChildNode, *, a_url: str = "", b_url: str = ""
) -> None:
    """Make ``a`` and ``b`` peers: each adds the other (POST /v1/peers), ``a`` first, so
    ``b``'s first pull from ``a`` is already welcome. ``a_url`` is where ``b`` finds ``a``
    (default ``a.url``; a counting proxy, say), ``b_url`` where ``a`` finds ``b``."""
    await a.client.post("/v1/peers", {"key": b64e(b.pod), "url": b_url or b.url, "name": "b"})
    await b.client.post("/v1/peers", {"key": b64e(a.pod), "url": a_url or a.url, "name": "a"})


# ---------------------------------------------------------------- a node in a child process


class ChildNode:
    """A node in its own interpreter (``python -m bench._child node HOME``), so its work is
    off this process's core and GIL, and its peak RSS is its own. It reports on stdout (one
    JSON object a line): ready, the time it held ``expect`` more events, and at exit its
    sampled peak RSS and CPU seconds. Close its stdin to stop it."""

    def __init__(self, config: Config, proc: asyncio.subprocess.Process, log: Path) -> None:
        self.config = config
        self.proc = proc
        self.log = log
        self.client = NodeClient(config.public_url, load_keypair(config.organizer_key_path))
        self.pod = load_keypair(config.node_key_path).public
        self.ready: dict[str, Any] = {}
        self.final: dict[str, Any] = {}

    @property
    def url(self) -> str:
        return self.config.public_url

    @classmethod
    async def start(cls, config: Config, *, expect: int = 0) -> ChildNode:
        fd, log = tempfile.mkstemp(prefix="bench-node-", suffix=".log")
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, env.get("PYTHONPATH")]))
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bench._child", "node", str(config.home),
            "--expect", str(expect),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=fd, env=env,
        )  # fmt: skip
        os.close(fd)
        child = cls(config, proc, Path(log))
        child.ready = await child.message("ready", wait_s=60)
        return child

    async def message(self, key: str, wait_s: float) -> dict[str, Any]:
        """The next stdout message holding ``key`` (waiting up to ``wait_s`` seconds)."""
        assert self.proc.stdout is not None
        deadline = time.monotonic() + wait_s
        while True:
            left = deadline - time.monotonic()
            try:
                line = await asyncio.wait_for(self.proc.stdout.readline(), max(left, 0.001))
            except TimeoutError:
                raise TimeoutError(f"node child: no {key!r} in {wait_s} s; {self.tail()}") from None
            if not line:
                raise RuntimeError(f"node child exited before {key!r}; {self.tail()}")
            msg = json.loads(line)
            if key in msg:
                return msg

    def tail(self) -> str:
        return "log: " + _read_tail(self.log)

    async def stop(self) -> dict[str, Any]:
        await self.client.close()
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.final = await self.message("maxrss_mb", wait_s=30)
        except (TimeoutError, RuntimeError):
            self.proc.kill()
        await self.proc.wait()
        with contextlib.suppress(OSError):
            os.unlink(self.log)
        return self.final


def _read_tail(path: Path, size: int = 2000) -> str:
    try:
        return path.read_text(errors="replace")[-size:]
    except OSError:
        return ""


# ---------------------------------------------------------------- a byte-counting proxy


class CountingProxy:
    """Forwards loopback TCP connections to ``target`` and counts the bytes each way."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.up = 0  # client -> target (requests)
        self.down = 0  # target -> client (responses)
        self.server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def total(self) -> int:
        return self.up + self.down

    @property
    def url(self) -> str:
        assert self.server is not None
        host, port = self.server.sockets[0].getsockname()[:2]
        return f"http://{host}:{port}"

    async def start(self) -> CountingProxy:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)  # type: ignore[arg-type]
        try:
            await asyncio.gather(
                self._pipe(reader, up_writer, "up"), self._pipe(up_reader, writer, "down")
            )
        finally:
            self._tasks.discard(task)  # type: ignore[arg-type]
            for w in (writer, up_writer):
                w.close()

    async def _pipe(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, way: str) -> None:
        try:
            while data := await src.read(256 * 1024):
                if way == "up":
                    self.up += len(data)
                else:
                    self.down += len(data)
                dst.write(data)
                await dst.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            with contextlib.suppress(OSError, RuntimeError):
                dst.write_eof()

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            for task in list(self._tasks):
                task.cancel()
            with contextlib.suppress(Exception):
                await self.server.wait_closed()


# ---------------------------------------------------------------- one fresh node pulling


async def pull_into_fresh_node(
    a: ChildNode, home: Path, expect: int, *, a_url: str = "", wait_s: float = 600.0
) -> dict[str, Any]:
    """Start a fresh node B (child process) on ``home``, peer it with ``a`` (``a`` adds B
    first, then B adds ``a`` at ``a_url``, default ``a.url``) and wait until B's ledger holds
    ``expect`` more events. Returns the elapsed seconds from B's POST /v1/peers to its
    last store, B itself (still running) and its config; B is stopped and ``a``
    forgets it once :func:`finish_fresh_node` is called (measure what you need first)."""
    b_config = await make_home(home, home.name)
    b = await ChildNode.start(b_config, expect=expect)
    try:
        await a.client.post("/v1/peers", {"key": b64e(b.pod), "url": b.url, "name": home.name})
        t0 = time.monotonic()
        await b.client.post("/v1/peers", {"key": b64e(a.pod), "url": a_url or a.url,
                                          "name": "A"})  # fmt: skip
        reached = await b.message("reached", wait_s=wait_s)
        out: dict[str, Any] = {"elapsed": reached["t"] - t0, "b": b, "b_config": b_config}
        return out
    except BaseException:
        await b.stop()
        raise


async def finish_fresh_node(a: ChildNode, pulled: dict[str, Any]) -> dict[str, Any]:
    """Stop B of :func:`pull_into_fresh_node` and make ``a`` forget it; B's final report."""
    b: ChildNode = pulled["b"]
    with contextlib.suppress(Exception):
        await a.client.request("DELETE", f"/v1/peers/{b64e(b.pod)}")
    final = await b.stop()
    # Sampled, not ru_maxrss: a child's ru_maxrss starts at its parent's RSS (fork).
    pulled["rss_peak_mb"] = final.get("rss_peak_mb", float("nan"))
    pulled["workers"] = final.get("workers", 0)
    pulled["workers_rss_peak_mb"] = final.get("workers_rss_peak_mb", 0.0)
    pulled["cpu_s"] = final.get("cpu_s", float("nan")) - b.ready.get("cpu_s", 0.0)
    return pulled
