"""The peer API: what a peered pod may pull, stream and repair — never the pod lane.

* ``GET /v1/peer/changes?since=N&limit=M`` — a msgpack :class:`Page` of events after store
  position N, in store order;
* ``GET /v1/peer/stream`` — a WebSocket: the peer sends a msgpack ``StreamHello`` (its
  cursor), then receives Pages as events are stored, from its cursor on, forever;
* ``GET /v1/peer/heads`` — every visible feed head (msgpack), to find gaps after a restore;
* ``GET /v1/peer/feed?author=K&lane=L&from=A&to=B`` — a range of one feed by seq;
* ``GET /v1/peer/forks?after=N&limit=M`` — a msgpack :class:`ForkPage` of fork evidence
  numbered after N (never about a pod-lane feed);
* ``POST /v1/peer/redeem`` — a joining node presents an invite's secret.

A peer sees every ``network`` event this node holds and this pod's ``peers`` lane.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time

import msgspec
from aiohttp import WSCloseCode, WSMsgType, web

from podlink.ledger import forks as fork_rows
from podlink.ledger import queries
from podlink.node import invites
from podlink.node.api_types import (
    MAX_POSITION,
    FeedHead,
    ForkPage,
    Info,
    Page,
    Peer,
    hello_decoder,
    json_encoder,
    msgpack_encoder,
    redeem_decoder,
)
from podlink.node.auth import SIGNER
from podlink.node.errors import APIError
from podlink.node.runtime import Node
from podlink.protocol.envelope import LANES, SUPPORTED_VERSIONS, encode_wire
from podlink.protocol.text import b64d, b64e

HEADS_LIMIT = 10_000  # the most feed heads one answer holds when a page is asked for
log = logging.getLogger("podlink.node")
NODE: web.AppKey[Node] = web.AppKey("node", Node)
STREAMS: web.AppKey[set[web.WebSocketResponse]] = web.AppKey("streams", set)
PEER_STREAMS: web.AppKey[dict[bytes, web.Request]] = web.AppKey("peer_streams", dict)
MSGPACK = "application/msgpack"
STREAM_IDLE_S = 25.0  # a ping at least this often keeps NATs and proxies from closing us
MAX_PAGE_BYTES = 4 * 1024 * 1024  # a page stops growing here; clients accept twice that
FEED_ROWS = 64  # events of a feed page read from SQLite at a time


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("podlink")
    except PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        return "0+unknown"


async def info(request: web.Request) -> web.Response:
    """Public: the pod key, name, zone and protocol versions of this node."""
    node = request.app[NODE]
    name, zone = await node.own_entry()
    body = Info(
        pod=b64e(node.pod), name=name, zone=zone,
        protocols=sorted(SUPPORTED_VERSIONS), version=version(),
    )  # fmt: skip
    return web.Response(body=json_encoder.encode(body), content_type="application/json")


def int_param(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    """A query parameter in plain ASCII digits (not int()'s "+5", "1_0" or other
    scripts' digits), within [low, high]: SQLite binds at most 2**63 - 1."""
    raw = request.query.get(name)
    if raw is None:
        return default
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 20):
        raise APIError("invalid", f"{name} must be a whole number, got {raw[:20]!r}")
    value = int(raw)
    if not low <= value <= high:
        raise APIError("invalid", f"{name} must be between {low} and {high}")
    return value


async def page_since(node: Node, peer: bytes, since: int, limit: int) -> Page:
    """The next page of what ``peer`` may see after ``since`` (at most MAX_PAGE_BYTES)."""
    found, cursor, head = await queries.select_visible(
        node.ledger.reader, since, limit, pod=node.pod, exclude_pod=peer
    )
    events: list[msgspec.Raw] = []
    size = 0
    for pos, payload, sig, body in found:
        wire = encode_wire(payload, sig, body)
        if events and size + len(wire) > MAX_PAGE_BYTES:
            cursor = pos - 1  # the rest comes in the next page
            break
        events.append(msgspec.Raw(wire))
        size += len(wire)
    newest = await fork_rows.newest_visible(node.ledger.reader, pod=node.pod, asker=peer)
    return Page(epoch=node.ledger.epoch, cursor=cursor, head=head, events=events, forks=newest)


async def changes(request: web.Request) -> web.Response:
    node = request.app[NODE]
    since = int_param(request, "since", 0, 0, MAX_POSITION)
    limit = int_param(request, "limit", node.config.page_events, 1, node.config.page_events)
    page = await page_since(node, request[SIGNER], since, limit)
    return web.Response(body=msgpack_encoder.encode(page), content_type=MSGPACK)


async def stream(request: web.Request) -> web.WebSocketResponse:
    """Push pages to a peer from its cursor on, as events are stored."""
    node = request.app[NODE]
    peer = request[SIGNER]
    ws = web.WebSocketResponse(heartbeat=STREAM_IDLE_S, max_msg_size=64 * 1024)
    await ws.prepare(request)
    streams = request.app[STREAMS]
    streams.add(ws)  # closed by close_streams when the node stops
    # One live stream per peer: a newer one replaces the older (a reconnect after a blip),
    # so a peer cannot open streams by the hundred and make us buffer a page for each.
    by_peer = request.app[PEER_STREAMS]
    older = by_peer.get(peer)
    if older is not None and older.transport is not None:
        older.transport.abort()
    by_peer[peer] = request
    try:
        first = await ws.receive(timeout=node.config.peer_timeout_s)
        if first.type != WSMsgType.BINARY:
            await ws.close(code=4400, message=b"expected a msgpack hello")
            return ws
        try:
            hello = hello_decoder.decode(first.data)
        except (msgspec.MsgspecError, RecursionError):  # RecursionError: hostile nesting
            await ws.close(code=4400, message=b"malformed hello")
            return ws
        cursor = hello.since
        sent_forks = 0  # the newest evidence number sent: a page goes out when it moves
        limit = node.config.page_events
        reader = asyncio.create_task(_drain(ws))
        try:
            while not ws.closed and not reader.done():
                marker = node.change_marker()  # taken first: no store can slip past us
                page = await page_since(node, peer, cursor, limit)
                if peer not in node.peers:
                    break  # unpeered since the stream opened: not one more page
                if page.events or page.cursor != cursor or page.forks != sent_forks:
                    await ws.send_bytes(msgpack_encoder.encode(page))
                    cursor, sent_forks = page.cursor, page.forks
                if page.cursor >= page.head:  # all sent; a page cut at MAX_PAGE_BYTES is
                    await _wait_for_events_or_close(marker, reader)  # not: send on at once
        finally:
            reader.cancel()
    except (ConnectionResetError, asyncio.CancelledError, TimeoutError):
        pass
    finally:
        streams.discard(ws)
        if by_peer.get(peer) is request:
            del by_peer[peer]
        await ws.close()
    return ws


async def _wait_for_events_or_close(marker: asyncio.Event, reader: asyncio.Task[None]) -> None:
    """Wait for the next store, the peer hanging up (or the node closing us), or idleness."""
    waiter = asyncio.ensure_future(marker.wait())
    try:
        await asyncio.wait({waiter, reader}, timeout=STREAM_IDLE_S,
                           return_when=asyncio.FIRST_COMPLETED)  # fmt: skip
    finally:
        waiter.cancel()


async def close_streams(app: web.Application) -> None:
    """on_shutdown: close every live stream, so a stop never waits on an idle peer."""
    for ws in list(app[STREAMS]):
        await ws.close(code=WSCloseCode.GOING_AWAY, message=b"node stopping")


async def _drain(ws: web.WebSocketResponse) -> None:
    """Read (and ignore) what the peer sends, so pings and close frames are handled."""
    async for _ in ws:
        pass


async def heads(request: web.Request) -> web.Response:
    node = request.app[NODE]
    # The asking peer's own feeds are included: after restoring a backup it gets them back.
    # Paged when asked (``limit``, and the last feed of the page before): a network of
    # ~100,000 feeds made one answer larger than any client takes, and every repair failed.
    limit = int_param(request, "limit", 0, 1, HEADS_LIMIT) if "limit" in request.query else None
    after = None
    if "after_author" in request.query or "after_lane" in request.query:
        lane = request.query.get("after_lane", "")
        if lane not in LANES:
            raise APIError("invalid", "after_lane must be a lane: pod, peers or network")
        after = (b64d(request.query.get("after_author", ""), length=32, what="after_author"), lane)
    found = await queries.visible_heads(
        node.ledger.reader, pod=node.pod, own=request[SIGNER], after=after, limit=limit
    )
    body = [FeedHead(a, ln, s, i) for a, ln, s, i in found]
    return web.Response(body=msgpack_encoder.encode(body), content_type=MSGPACK)


async def feed(request: web.Request) -> web.Response:
    node = request.app[NODE]
    author = b64d(request.query.get("author", ""), length=32, what="author")
    lane = request.query.get("lane", "")
    if lane not in LANES or lane == "pod":
        raise APIError("invalid", "lane must be peers or network")
    start = int_param(request, "from", 1, 1, 2**53)
    end = int_param(request, "to", 2**53, start, 2**53)
    # A third pod's peers lane is one hop only: each event must be ours or the asker's.
    pods = (node.pod, request[SIGNER]) if lane == "peers" else None
    head = await queries.max_position(node.ledger.reader)
    events = await _feed_events(node, author, lane, start, end, pods)
    page = Page(epoch=node.ledger.epoch, cursor=0, head=head, events=events)
    return web.Response(body=msgpack_encoder.encode(page), content_type=MSGPACK)


async def _feed_events(
    node: Node, author: bytes, lane: str, start: int, end: int, pods: tuple[bytes, ...] | None
) -> list[msgspec.Raw]:
    """Up to ``page_events`` events of a feed from ``start``, stopping at MAX_PAGE_BYTES
    like every page (at least one event), read a few rows at a time: 1,000 events of
    64 kB would be a 67 MB answer, more than any client takes, built in memory."""
    events: list[msgspec.Raw] = []
    size = 0
    while len(events) < node.config.page_events and start <= end:
        want = min(FEED_ROWS, node.config.page_events - len(events))
        found = await queries.feed_range(
            node.ledger.reader, author, lane, start, end, want, pods=pods
        )
        for seq, payload, sig, body in found:
            wire = encode_wire(payload, sig, body)
            if events and size + len(wire) > MAX_PAGE_BYTES:
                return events
            events.append(msgspec.Raw(wire))
            size += len(wire)
            start = seq + 1
        if len(found) < want:
            break
    return events


async def fork_evidence(request: web.Request) -> web.Response:
    """Fork evidence the asking peer may see, numbered after ``after`` (ledger/forks.py)."""
    node = request.app[NODE]
    after = int_param(request, "after", 0, 0, MAX_POSITION)
    limit = int_param(request, "limit", fork_rows.FORKS_PAGE, 1, fork_rows.FORKS_PAGE)
    pieces, cursor, head = await fork_rows.visible_after(
        node.ledger.reader, after, limit, pod=node.pod, asker=request[SIGNER]
    )
    raw = [msgspec.Raw(msgpack_encoder.encode(p)) for p in pieces]
    page = ForkPage(cursor=cursor, head=head, forks=raw)
    return web.Response(body=msgpack_encoder.encode(page), content_type=MSGPACK)


def secret_hash(secret: str) -> bytes:
    return hashlib.blake2b(secret.encode(), digest_size=32, person=b"podlink-invite").digest()


async def redeem(request: web.Request) -> web.Response:
    """A node that was given our invite asks to peer; the invite is used up."""
    node = request.app[NODE]
    body = redeem_decoder.decode(await request.read())
    joiner = request[SIGNER]
    h = secret_hash(body.secret)
    found = await queries.rows(
        node.ledger.reader,
        "SELECT expires, used_by, made_by, made_in FROM invites WHERE secret_hash = ?",
        (h,),
    )
    if not found:
        raise APIError("unauthorised", "this invite is not known here")
    expires, used_by, made_by, made_in = found[0]
    if used_by is None and not invites.alive(node, made_by, made_in):
        # Removing an organizer takes back the codes they made and nobody used yet.
        raise APIError("unauthorised", "the organizer who made this invite has been removed "
                       "since; ask the pod for a new invite")  # fmt: skip
    if used_by is not None and used_by != joiner:
        raise APIError("unauthorised", "this invite was already used")
    if used_by is not None and joiner not in node.peers:
        # Presenting it again is a harmless retry only while the peering it made stands:
        # a pod removed since must not undo its removal with its old invite.
        raise APIError("unauthorised", "this invite was already used")
    if expires < time.time():
        raise APIError("unauthorised", "this invite has expired; ask for a new one")
    # Claimed in one statement: the checks above read the invite before other requests
    # presenting it (concurrently, with other keys) could claim it; only one pod gets in.
    claimed = await node.ledger.write(
        "UPDATE invites SET used_by = ?, used_at = strftime('%s','now') WHERE secret_hash = ? "
        "AND (used_by IS NULL OR used_by = ?) AND expires >= ?",
        (joiner, h, joiner, int(time.time())),
    )
    if not claimed:
        raise APIError("unauthorised", "this invite was already used")
    await node.add_peer(joiner, body.url, body.name)
    # (Peer names and URLs are read up to 200 and 500 characters, as in Redeem.)
    name, _ = await node.own_entry()
    me = Peer(pod=b64e(node.pod), name=name[:200], url=node.config.public_url)
    return web.Response(body=json_encoder.encode(me), content_type="application/json")


def setup_routes(app: web.Application) -> None:
    app[STREAMS] = set()
    app[PEER_STREAMS] = {}
    app.on_shutdown.append(close_streams)
    app.router.add_get("/v1/info", info)
    app.router.add_get("/v1/peer/changes", changes)
    app.router.add_get("/v1/peer/stream", stream)
    app.router.add_get("/v1/peer/heads", heads)
    app.router.add_get("/v1/peer/feed", feed)
    app.router.add_get("/v1/peer/forks", fork_evidence)
    app.router.add_post("/v1/peer/redeem", redeem)


__all__ = ["NODE", "setup_routes"]
