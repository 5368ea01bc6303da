"""A loopback TCP proxy that can cut, black-hole, slow down and restore one link.

``Proxy(target_port)`` listens on 127.0.0.1 on an ephemeral port and forwards every
connection to ``127.0.0.1:target_port``. Point a peer URL at ``proxy.url`` and the link
between two nodes goes through it:

* ``cut()`` — close every open connection (with a reset) and refuse new ones at once,
  like a cable pulled out or a host gone;
* ``drop()`` — a black hole: connections are accepted and stay open, but whatever is sent
  either way vanishes (a dead NAT, a partition where nothing answers: only timeouts and
  heartbeats notice);
* ``delay(seconds)`` — every chunk waits that long before it is passed on;
* ``restore()`` — back to normal; connections that lost bytes while dropped are closed
  (their streams are corrupt, as after a real outage), healthy ones carry on.

Everything is bounded: a proxy only ever talks to 127.0.0.1, and ``stop()`` closes it all.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field

CHUNK = 64 * 1024


@dataclass(eq=False)
class _Conn:
    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter | None = None
    dirty: bool = False  # bytes were dropped: the stream is corrupt
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def abort(self) -> None:
        """Reset both ends at once (what a cut does)."""
        for writer in (self.client, self.upstream):
            if writer is not None and not writer.is_closing():
                writer.transport.abort()

    def close(self) -> None:
        """Close both ends after what is buffered has gone out (a normal end)."""
        for writer in (self.client, self.upstream):
            if writer is not None and not writer.is_closing():
                writer.close()


class Proxy:
    """One direction of one link: connections to ``url`` reach ``target_port``."""

    def __init__(self, target_port: int, name: str = "") -> None:
        self.target_port = target_port
        self.name = name
        self.mode = "open"  # open | cut | drop
        self.lag = 0.0
        self.port = 0
        self.connections = 0  # accepted since start
        self.refused = 0  # refused while cut
        self._server: asyncio.Server | None = None
        self._conns: set[_Conn] = set()
        self._handlers: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __repr__(self) -> str:
        return f"Proxy({self.name} :{self.port}->:{self.target_port} {self.mode} lag={self.lag})"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for conn in list(self._conns):
            conn.abort()
        for task in list(self._handlers):
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        self._handlers.clear()
        self._conns.clear()

    # ------------------------------------------------------------ faults

    def cut(self) -> None:
        self.mode = "cut"
        for conn in list(self._conns):
            conn.abort()

    def drop(self) -> None:
        self.mode = "drop"

    def delay(self, seconds: float) -> None:
        self.lag = seconds

    def restore(self) -> None:
        self.mode = "open"
        self.lag = 0.0
        for conn in list(self._conns):
            if conn.dirty:
                conn.abort()

    # ------------------------------------------------------------ forwarding

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            await self._serve(reader, writer)
        except asyncio.CancelledError:
            pass  # stop(): a handler task must end quietly (asyncio logs cancelled ones)
        finally:
            self._handlers.discard(task)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.mode == "cut":
            self.refused += 1
            writer.transport.abort()
            return
        self.connections += 1
        conn = _Conn(writer)
        self._conns.add(conn)
        try:
            try:
                up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
            except OSError:
                return  # the node is down: the client sees its connection close
            conn.upstream = up_writer
            there = asyncio.ensure_future(self._pump(conn, reader, up_writer))
            back = asyncio.ensure_future(self._pump(conn, up_reader, writer))
            conn.tasks = [there, back]
            try:
                await asyncio.wait(conn.tasks, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in conn.tasks:
                    task.cancel()
                await asyncio.gather(*conn.tasks, return_exceptions=True)
        finally:
            self._conns.discard(conn)
            conn.close()

    async def _pump(
        self, conn: _Conn, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while True:
                data = await reader.read(CHUNK)
                if not data:
                    return  # one side closed: _serve closes the other after its buffer
                if self.lag:
                    await asyncio.sleep(self.lag)
                if self.mode != "open" or conn.dirty:
                    conn.dirty = True  # in the black hole (or a cut that raced us)
                    continue
                writer.write(data)
                await writer.drain()


class Link:
    """Both directions between two nodes: ``a_to_b`` reaches b, ``b_to_a`` reaches a."""

    def __init__(self, a_port: int, b_port: int, name: str) -> None:
        self.name = name
        self.a_to_b = Proxy(b_port, f"{name}>")
        self.b_to_a = Proxy(a_port, f"{name}<")
        self.state = "open"

    @property
    def proxies(self) -> tuple[Proxy, Proxy]:
        return self.a_to_b, self.b_to_a

    async def start(self) -> None:
        for p in self.proxies:
            await p.start()

    async def stop(self) -> None:
        for p in self.proxies:
            await p.stop()

    def cut(self) -> None:
        self.state = "cut"
        for p in self.proxies:
            p.cut()

    def drop(self) -> None:
        self.state = "drop"
        for p in self.proxies:
            p.drop()

    def delay(self, seconds: float) -> None:
        self.state = f"delay {seconds:.2f}"
        for p in self.proxies:
            p.delay(seconds)

    def restore(self) -> None:
        self.state = "open"
        for p in self.proxies:
            p.restore()
