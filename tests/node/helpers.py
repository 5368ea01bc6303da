"""Real nodes on 127.0.0.1 for the node tests: start, stop, restart, peer, wait.

A :class:`PodNode` is one pod's home folder (made by ``init_pod``) served by its own
``web.AppRunner`` on a port of its own; ``client`` is a :class:`NodeClient` signing with the
pod's first organizer key. Nothing is mocked: keys, signatures, SQLite files and HTTP are
the real ones.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import shutil
import socket
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import yarl
from aiohttp import web

from podlink.ledger.authoring import Author
from podlink.ledger.ledger import Ledger
from podlink.node.api_types import FeedHead, ForkPage, Page, hello_decoder, msgpack_encoder
from podlink.node.app import create_app
from podlink.node.client import NodeClient
from podlink.node.config import Config, load_config, save_config, with_overrides
from podlink.node.home import init_pod
from podlink.node.peer_api import NODE
from podlink.node.runtime import Node
from podlink.protocol import kinds
from podlink.protocol.envelope import Event, Lane
from podlink.protocol.errors import ProtocolError
from podlink.protocol.http_auth import sign_request, verify_request
from podlink.protocol.keys import Keypair, load_keypair
from podlink.protocol.text import b64d, b64e

#: Settings that keep a test network quick: short backoff and timeouts.
FAST: dict[str, Any] = {"backoff_max_s": 0.4, "peer_timeout_s": 5.0, "log_level": "WARNING"}


def free_port() -> int:
    """A port nobody listens on right now (aiohttp binds it with SO_REUSEADDR)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stable_port() -> int:
    """A free port below Linux's ephemeral range (32768-60999): the port of a node that
    may be stopped and started again.

    While such a node is down, a port from the ephemeral range can become the local end
    of any outgoing connection on the machine (other tests run alongside), or of a peer's
    reconnect to that very port (a TCP self-connect), and the restart would fail with
    "address already in use". Never the same port twice in one test run: two nodes made
    before either starts would otherwise draw the same one now and then. Each
    pytest-xdist worker draws from its own share of the range (``_OWN_PORTS``): another
    worker's test could otherwise take the port of a node that is down for a restart."""
    for _ in range(200):
        port = _PORTS.choice(_OWN_PORTS)
        if port in _HANDED_OUT:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _HANDED_OUT.add(port)
        return port
    raise RuntimeError("no free port below the ephemeral range")


def _own_ports(low: int = 20_000, high: int = 32_000) -> range:
    """This test process's share of [low, high): the whole of it in a plain run, one
    slice per worker under pytest-xdist (PYTEST_XDIST_WORKER is gw0, gw1, ...)."""
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
    span = (high - low) // max(count, 1)
    return range(low + worker * span, low + (worker + 1) * span)


_HANDED_OUT: set[int] = set()
_OWN_PORTS = _own_ports()
_PORTS = random.SystemRandom()  # not the global one, which a test (or plugin) may seed


class PodNode:
    """One running (or stopped) node, its organizer client and its files."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.home = config.home
        self.name = config.name
        self.keypair = load_keypair(config.node_key_path)
        self.organizer = load_keypair(config.organizer_key_path)
        self.app: web.Application | None = None
        self.runner: web.AppRunner | None = None
        self._client: NodeClient | None = None

    # ------------------------------------------------------------ identity

    @property
    def pod(self) -> bytes:
        return self.keypair.public

    @property
    def key(self) -> str:
        return b64e(self.pod)

    @property
    def url(self) -> str:
        return self.config.public_url

    @property
    def node(self) -> Node:
        assert self.app is not None, f"{self.name} is not running"
        return self.app[NODE]

    @property
    def ledger(self) -> Ledger:
        return self.node.ledger

    @property
    def client(self) -> NodeClient:
        if self._client is None:
            self._client = NodeClient(self.url, self.organizer, pod=self.pod, timeout=15)
        return self._client

    def client_for(self, keypair: Keypair) -> NodeClient:
        """Another signed client of this node (close it yourself)."""
        return NodeClient(self.url, keypair, pod=self.pod, timeout=15)

    def __repr__(self) -> str:
        return f"PodNode({self.name} {self.key[:8]} at {self.url})"

    # ------------------------------------------------------------ lifecycle

    @property
    def running(self) -> bool:
        return self.runner is not None

    async def start(self) -> None:
        assert self.runner is None, f"{self.name} already runs"
        self.app = await create_app(self.config)
        runner = web.AppRunner(self.app, shutdown_timeout=5)
        await runner.setup()
        try:
            await web.TCPSite(runner, self.config.host, self.config.port).start()
        except BaseException:
            await runner.cleanup()
            raise
        self.runner = runner

    async def stop(self) -> None:
        """Stop serving (streams closed, gossip cancelled, database closed)."""
        await self.close_client()
        if self.runner is not None:
            runner, self.runner = self.runner, None
            await runner.cleanup()
        self.app = None

    async def close_client(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    async def restart(self, **overrides: Any) -> None:
        """Stop, apply config overrides (written to config.toml), start again."""
        await self.stop()
        if overrides:
            self.reconfigure(**overrides)
        await self.start()

    def reconfigure(self, **overrides: Any) -> None:
        self.config = with_overrides(self.config, **overrides)
        save_config(self.config)
        self.config = load_config(self.home, env={})

    # ------------------------------------------------------------ reading

    async def status(self) -> dict[str, Any]:
        return await self.client.get("/v1/status")

    async def event_count(self) -> int:
        return (await self.status())["events"]

    async def log(self) -> list[dict[str, Any]]:
        return await self.client.get("/v1/log", limit=5000)

    async def event_ids(self) -> set[str]:
        return {row["id"] for row in await self.log()}

    async def peers(self) -> dict[str, dict[str, Any]]:
        """This node's peers by pod key (base64url)."""
        return {p["pod"]: p for p in await self.client.get("/v1/peers")}

    async def titles(self) -> set[str]:
        return {r["title"] for r in await self.client.get("/v1/requests")}

    # ------------------------------------------------------------ writing

    async def author(self) -> Author:
        return await self.client.author()

    async def write(
        self,
        body: msgspec.Struct,
        lane: Lane = "network",
        refs: Sequence[bytes] = (),
        *,
        as_key: Keypair | None = None,
    ) -> Event:
        """Sign one event with the organizer key (or ``as_key``, through a client of its
        own), chained on the node's heads, and submit it."""
        client = self.client if as_key is None else self.client_for(as_key)
        try:
            author = await client.author()
            event = author.write(body, lane, list(refs))
            results = await client.submit([event])
        finally:
            if as_key is not None:
                await client.close()
        assert results[0]["status"] == "stored", results
        return event

    async def open_request(self, title: str, lane: Lane = "network", **fields: Any) -> Event:
        fields.setdefault("category", "food")
        return await self.write(kinds.RequestOpened(title=title, **fields), lane)


async def make_node(home: Path, name: str, *, port: int | None = None, **overrides: Any) -> PodNode:
    """``init_pod`` a fresh home on a free port with test settings (not started)."""
    port = port or stable_port()
    config = await init_pod(home, name=name, listen=f"127.0.0.1:{port}")
    settings = {**FAST, **overrides}
    config = with_overrides(config, **settings)
    save_config(config)
    return PodNode(load_config(home, env={}))


# ---------------------------------------------------------------- peering


async def join(inviter: PodNode, joiner: PodNode) -> dict[str, Any]:
    """``joiner`` redeems a fresh invite of ``inviter``: both end up peered."""
    invite = await inviter.client.post("/v1/invites")
    return await joiner.client.post("/v1/peers/join", {"invite": invite["invite"]})


def pairs_of_line(nodes: Sequence[PodNode]) -> list[tuple[PodNode, PodNode]]:
    return list(itertools.pairwise(nodes))


def pairs_of_ring(nodes: Sequence[PodNode]) -> list[tuple[PodNode, PodNode]]:
    return [*pairs_of_line(nodes), (nodes[-1], nodes[0])]


async def peer_line(nodes: Sequence[PodNode], *, settle: bool = True) -> None:
    """Peer nodes[i] with nodes[i+1] by invite codes: a line."""
    for a, b in pairs_of_line(nodes):
        await join(a, b)
    if settle:
        await wait_linked(pairs_of_line(nodes))
        await wait_converged(nodes)


async def ring(nodes: Sequence[PodNode], *, settle: bool = True) -> None:
    """A line closed into a ring (the last node joins the first)."""
    assert len(nodes) >= 3
    for a, b in pairs_of_ring(nodes):
        await join(a, b)
    if settle:
        await wait_linked(pairs_of_ring(nodes))
        await wait_converged(nodes)


# ---------------------------------------------------------------- waiting


async def wait_for(
    check: Callable[[], Awaitable[Any]],
    *,
    within: float = 10.0,
    every: float = 0.05,
    what: str = "condition",
) -> Any:
    """Poll ``check`` until it returns something truthy; fail after ``within`` seconds."""
    deadline = time.monotonic() + within
    last: Any = None
    while True:
        last = await check()
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within} s waiting for {what} (last: {last!r})")
        await asyncio.sleep(every)


async def wait_linked(pairs: Iterable[tuple[PodNode, PodNode]], within: float = 10.0) -> None:
    """Wait until each pair has its live stream open in both directions."""
    for a, b in pairs:
        for x, y in ((a, b), (b, a)):

            async def live(x: PodNode = x, y: PodNode = y) -> bool:
                peer = (await x.peers()).get(y.key)
                return bool(peer and peer["connected"])

            await wait_for(live, within=within, what=f"{x.name} streaming from {y.name}")


async def caught_up(nodes: Sequence[PodNode]) -> bool:
    """True when every node's cursor into every running peer is at that peer's head."""
    by_key = {n.key: n for n in nodes if n.running}
    heads = {key: await n.event_count() for key, n in by_key.items()}
    for n in by_key.values():
        for key, peer in (await n.peers()).items():
            if key in heads and peer["cursor"] != heads[key]:
                return False
        if (await n.status())["pending"]:
            return False
    return True


async def wait_converged(nodes: Sequence[PodNode], within: float = 10.0) -> None:
    """Wait for quiescence: every cursor at its peer's head, twice in a row."""

    async def twice() -> bool:
        if not await caught_up(nodes):
            return False
        await asyncio.sleep(0.05)
        return await caught_up(nodes)

    await wait_for(twice, within=within, what="the network to converge")


async def wait_event(node: PodNode, event_id: str, within: float = 10.0) -> None:
    async def has() -> bool:
        return event_id in await node.event_ids()

    await wait_for(has, within=within, what=f"event {event_id[:8]} at {node.name}")


# ---------------------------------------------------------------- raw signed HTTP


async def pod_at(session: aiohttp.ClientSession, url: str) -> bytes:
    """The key of the pod whose node answers at ``url`` (its public GET /v1/info): what a
    signed request to it must name."""
    async with session.get(yarl.URL(url).origin() / "v1" / "info") as resp:
        return b64d((await resp.json())["pod"], length=32)


async def signed(
    session: aiohttp.ClientSession,
    keypair: Keypair | None,
    method: str,
    url: str,
    body: bytes = b"",
    *,
    when: int | None = None,
    headers: dict[str, str] | None = None,
    send_body: bytes | None = None,
    pod: bytes | None = None,
) -> tuple[int, bytes, dict[str, str]]:
    """One request, signed by ``keypair`` (None: unsigned) for ``pod`` (default: the pod
    the node at ``url`` says it is); ``send_body`` tampers the body.

    Returns (status, raw body, the headers sent), so a test can replay them."""
    target = yarl.URL(url)
    sent = dict(headers or {})
    if keypair is not None and headers is None:
        pod = await pod_at(session, url) if pod is None else pod
        sent = sign_request(keypair, method, target.raw_path_qs, body, pod=pod, when=when)
    if body or send_body:
        sent.setdefault("Content-Type", "application/json")
    payload = body if send_body is None else send_body
    async with session.request(method, target, data=payload or None, headers=sent) as resp:
        return resp.status, await resp.read(), sent


def ledger_bytes(home: Path) -> bytes:
    """Every byte of a node's SQLite files (database, WAL) as they are on disk now."""
    out = b""
    for suffix in ("", "-wal", "-journal"):
        path = home / f"ledger.db{suffix}"
        if path.exists():
            out += path.read_bytes()
    return out


# ---------------------------------------------------------------- a peer that is no node


class FakePeer:
    """A bare aiohttp server with a pod key of its own that a node can peer with.

    It checks the node's signed requests (recording who sent what) and serves
    ``self.events`` — any bytes a test puts there, forged or worse — as the pages of its
    /v1/peer/changes and its live stream; its heads and feeds are empty."""

    def __init__(self, keypair: Keypair | None = None) -> None:
        self.keypair = keypair or Keypair.generate()
        self.port = free_port()
        self.epoch = os.urandom(16)
        self.events: list[bytes] = []
        self.raw_changes: bytes | None = None  # served instead of a page when set
        self.page_size: int | None = None  # events per page of changes (None: all)
        self.unreadable_from: int | None = None  # pages from this cursor on are garbage
        self.raw_heads: bytes | None = None  # served instead of the (empty) heads when set
        self.heads: list[FeedHead] = []  # served paged as a node does, if raw_heads is None
        self.feed_events: list[bytes] = []  # what every /v1/peer/feed request gets
        self.feeds: dict[bytes, list[bytes]] = {}  # author -> its events, served instead
        self.refuse_feed_every = 0  # answer every Nth /v1/peer/feed with 429 (0: never)
        # Pieces of fork evidence (any bytes) served by /v1/peer/forks, numbered from 1;
        # its pages say how many there are (Page.forks).
        self.forks: list[bytes] = []
        self._feed_asked = 0
        self.calls: list[tuple[str, str, bytes | None]] = []  # (method, path, signer or None)
        self._sockets: set[web.WebSocketResponse] = set()
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def key(self) -> str:
        return self.keypair.public_text

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/v1/info", self._info)
        app.router.add_get("/v1/peer/changes", self._changes)
        app.router.add_get("/v1/peer/stream", self._stream)
        app.router.add_get("/v1/peer/heads", self._heads)
        app.router.add_get("/v1/peer/feed", self._feed)
        app.router.add_get("/v1/peer/forks", self._forks)
        app.on_shutdown.append(self._close_sockets)
        self._runner = web.AppRunner(app, shutdown_timeout=2)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def _close_sockets(self, app: web.Application) -> None:
        for ws in list(self._sockets):
            await ws.close()

    def _check(self, request: web.Request, body: bytes = b"") -> bytes | None:
        try:
            who = verify_request(
                request.headers, request.method, request.raw_path, body, pod=self.keypair.public
            ).key
        except ProtocolError:
            who = None
        self.calls.append((request.method, request.raw_path, who))
        return who

    def page(self, since: int) -> bytes:
        head = len(self.events)
        end = head if self.page_size is None else min(head, since + self.page_size)
        events = [msgspec.Raw(e) for e in self.events[since:end]]
        return msgpack_encoder.encode(
            Page(epoch=self.epoch, cursor=end, head=head, events=events, forks=len(self.forks))
        )

    async def _info(self, request: web.Request) -> web.Response:
        return web.json_response(
            {"pod": self.key, "name": "fake", "zone": "", "protocols": [1], "version": "0"}
        )

    async def _changes(self, request: web.Request) -> web.Response:
        if self._check(request) is None:
            return web.json_response({"error": "unauthorised", "message": "sign"}, status=401)
        since = int(request.query.get("since", "0"))
        body = self.raw_changes if self.raw_changes is not None else self.page(since)
        if self.unreadable_from is not None and since >= self.unreadable_from:
            body = b"\xc1 not a page"
        return web.Response(body=body, content_type="application/msgpack")

    async def _heads(self, request: web.Request) -> web.Response:
        self._check(request)
        if self.raw_heads is not None:
            return web.Response(body=self.raw_heads, content_type="application/msgpack")
        heads = sorted(self.heads, key=lambda h: (h.author, h.lane))
        if "after_author" in request.query:
            after = (b64d(request.query["after_author"]), request.query["after_lane"])
            heads = [h for h in heads if (h.author, h.lane) > after]
        if "limit" in request.query:
            heads = heads[: int(request.query["limit"])]
        return web.Response(body=msgpack_encoder.encode(heads), content_type="application/msgpack")

    async def _feed(self, request: web.Request) -> web.Response:
        self._check(request)
        self._feed_asked += 1
        if self.refuse_feed_every and self._feed_asked % self.refuse_feed_every == 0:
            return web.json_response(
                {"error": "rate-limited", "message": "too many requests"}, status=429
            )
        author = request.query.get("author", "")
        served = self.feeds.get(b64d(author), self.feed_events) if author else self.feed_events
        events = [msgspec.Raw(e) for e in served]
        page = Page(epoch=self.epoch, cursor=0, head=len(self.events), events=events)
        return web.Response(body=msgpack_encoder.encode(page), content_type="application/msgpack")

    async def _forks(self, request: web.Request) -> web.Response:
        self._check(request)
        after = int(request.query.get("after", "0"))
        limit = int(request.query.get("limit", "100"))
        pieces = [msgspec.Raw(f) for f in self.forks[after : after + limit]]
        cursor = min(after + limit, len(self.forks)) if pieces else max(after, len(self.forks))
        page = ForkPage(cursor=cursor, head=len(self.forks), forks=pieces)
        return web.Response(body=msgpack_encoder.encode(page), content_type="application/msgpack")

    async def _stream(self, request: web.Request) -> web.StreamResponse:
        if self._check(request) is None:
            return web.json_response({"error": "unauthorised", "message": "sign"}, status=401)
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self._sockets.add(ws)
        try:
            hello = await ws.receive(timeout=5)
            if hello.type == aiohttp.WSMsgType.BINARY:
                since = hello_decoder.decode(hello.data).since
                if since < len(self.events):
                    await ws.send_bytes(self.page(since))
                async for _ in ws:
                    pass
        finally:
            self._sockets.discard(ws)
        return ws


DB_FILES = ("ledger.db", "ledger.db-wal", "ledger.db-shm")


def copy_db(home: Path, to: Path) -> None:
    """Copy a stopped node's database files (a backup)."""
    to.mkdir(parents=True, exist_ok=True)
    for name in DB_FILES:
        if (home / name).exists():
            shutil.copy2(home / name, to / name)


def restore_db(backup: Path, home: Path) -> None:
    """Put a backup made by copy_db back in place of a node's database files."""
    for name in DB_FILES:
        (home / name).unlink(missing_ok=True)
        if (backup / name).exists():
            shutil.copy2(backup / name, home / name)


# A ledger file taken back to what schema V9 held: no fork evidence waiting for its feed
# (V10's table), no maker of an invite (V11's column); for tests of the V10 migration.
BACK_TO_V9 = """
    DROP TABLE forks_waiting;
    ALTER TABLE invites DROP COLUMN made_by;
    ALTER TABLE invites DROP COLUMN made_in;
    PRAGMA user_version = 9;
"""
# A ledger file taken back to what schema V7 held for fork evidence (one header per row,
# no numbers, no peers cursor): for tests of the V8 migration.
BACK_TO_V7 = """
    DROP TABLE forks_waiting;
    ALTER TABLE invites DROP COLUMN made_by;
    ALTER TABLE invites DROP COLUMN made_in;
    CREATE TABLE v7 AS SELECT author, lane, seq, kept_id, other_id, other_payload,
        other_sig, source, received FROM forks;
    DROP TABLE forks;
    CREATE TABLE forks (
        author BLOB NOT NULL, lane TEXT NOT NULL, seq INTEGER NOT NULL,
        kept_id BLOB NOT NULL, other_id BLOB NOT NULL, other_payload BLOB NOT NULL,
        other_sig BLOB NOT NULL, source TEXT NOT NULL, received INTEGER NOT NULL,
        PRIMARY KEY (author, lane, seq, other_id)
    ) STRICT, WITHOUT ROWID;
    INSERT INTO forks SELECT * FROM v7;
    DROP TABLE v7;
    ALTER TABLE peers DROP COLUMN forks_cursor;
    PRAGMA user_version = 7;
"""


async def forks_by(node: PodNode, keypair: Keypair, n: int) -> list[Event]:
    """``keypair`` signs ``n`` events in its network feed, on the node's heads of that
    key, and, for each, another at the same place (a second laptop): the ledger stores
    the first ones and refuses each twin as a fork. Returns the twins."""
    client = node.client_for(keypair)
    try:
        author = await client.author()
    finally:
        await client.close()
    twin = Author(keypair, node.pod, author.clock)
    kept, others = [], []
    for i in range(n):
        seq, prev = author.heads.get("network", (0, None))
        kept.append(author.write(kinds.PodInfoChanged(name=f"kept {i}"), "network"))
        twin.set_head("network", seq, prev)
        others.append(twin.write(kinds.PodInfoChanged(name=f"other {i}"), "network"))
    stored = await node.ledger.ingest([e.to_wire() for e in kept], source="laptop")
    assert {r.status for r in stored} == {"stored"}
    refused = await node.ledger.ingest([e.to_wire() for e in others], source="laptop")
    assert {r.reason for r in refused} == {"fork"}
    return others
