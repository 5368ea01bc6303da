"""Review: hostile or broken peers and clients against real nodes on 127.0.0.1.

Each test but the last two failed because of a bug its docstring describes (fixed with
it); the last two pin corners that were probed and found correct.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Any

import aiohttp
import msgspec
import pytest
import yarl
from aiohttp import web

from podlink.ledger.authoring import Author
from podlink.node import invites
from podlink.node.gossip import MAX_RESPONSE_BYTES
from podlink.protocol import boxes, kinds
from podlink.protocol.envelope import sign_event
from podlink.protocol.http_auth import sign_request
from podlink.protocol.keys import Keypair
from podlink.protocol.text import b64e
from tests.node.helpers import FakePeer, PodNode, free_port, signed, wait_for


def error_of(status: int, raw: bytes) -> str:
    """The reason word of a refusal, checking the one JSON error shape (never a 5xx)."""
    assert status < 500, (status, raw[:300])
    body = msgspec.json.decode(raw)
    assert isinstance(body, dict) and body.get("error") and body.get("message"), body
    return body["error"]


def tracebacks(caplog: pytest.LogCaptureFixture) -> list[str]:
    """Unexpected exceptions the node logged with a traceback."""
    return [
        f"{r.name}: {r.getMessage()}"
        for r in caplog.records
        if r.levelno >= logging.ERROR and r.exc_info is not None
    ]


async def add_peer_key(node: PodNode) -> Keypair:
    """A pod key ``node`` peers with (at an address where nothing listens)."""
    peer = Keypair.generate()
    await node.client.post(
        "/v1/peers", {"url": f"http://127.0.0.1:{free_port()}", "key": peer.public_text}
    )
    return peer


async def serve(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app, shutdown_timeout=1)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, f"http://127.0.0.1:{port}"


# ---------------------------------------------------------------- (a) 5xx and tracebacks


async def test_log_since_beyond_sqlite_integers_is_400_not_500(
    network: Any, session: aiohttp.ClientSession
) -> None:
    """GET /v1/log?since=10**20: since is checked for >= 0 only; SQLite cannot bind it
    (OverflowError) and the organizer gets 500 "internal" instead of 400 "invalid"."""
    [node] = await network(1)
    for query in (f"since={10**20}", f"since={10**20}&order=newest"):
        status, raw, _ = await signed(session, node.organizer, "GET",
                                      f"{node.url}/v1/log?{query}")  # fmt: skip
        assert (status, error_of(status, raw)) == (400, "invalid"), (query, raw)


async def test_stream_hello_cursor_beyond_sqlite_integers_is_refused_cleanly(
    network: Any, session: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    """A peer's stream hello with since = 2**64 - 1 (a valid msgpack uint64): the node
    binds it into SQL unchecked, raises OverflowError inside the handler, logs a traceback
    and counts a 500 for /v1/peer/stream. It should close with 4400 like a malformed hello
    (the cursor is bounded on /v1/peer/changes: 0..2**62)."""
    [node] = await network(1)
    peer = await add_peer_key(node)
    url = yarl.URL(node.url + "/v1/peer/stream")
    headers = sign_request(peer, "GET", url.raw_path_qs, pod=node.pod)
    async with session.ws_connect(url, headers=headers) as ws:
        await ws.send_bytes(msgspec.msgpack.encode([2**64 - 1, None]))
        msg = await ws.receive(timeout=3)
    assert msg.type == aiohttp.WSMsgType.CLOSE
    await asyncio.sleep(0.1)
    assert not tracebacks(caplog), tracebacks(caplog)
    text = node.node.metrics.render()
    assert 'route="/v1/peer/stream",status="500"' not in text, text
    assert ws.close_code == 4400, (ws.close_code, msg)


class CursorPeer(FakePeer):
    """A peer whose pages claim a cursor (and head) SQLite cannot store."""

    cursor = 2**63

    def page(self, since: int) -> bytes:
        return msgspec.msgpack.encode([self.epoch, self.cursor, self.cursor, []])


async def test_a_peers_out_of_range_cursor_does_not_500_sync(
    network: Any, session: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    """A peer answers /v1/peer/changes with a page whose cursor is 2**63 (msgpack uint64,
    accepted by Page). gossip._take saves it (runtime.save_cursor): OverflowError, which
    neither PeerLink.run (logs "unexpected error" with a traceback) nor sync_all catches,
    so the organizer's POST /v1/sync answers 500. It should be 200 with ok: false for
    that peer (an unreadable page is the peer's fault)."""
    [node] = await network(1)
    fake = CursorPeer()
    await fake.start()
    try:
        await node.client.post("/v1/peers", {"url": fake.url, "key": fake.key})
        status, raw, _ = await signed(session, node.organizer, "POST", node.url + "/v1/sync",
                                      b"{}")  # fmt: skip
        assert status == 200, raw
        [mine] = msgspec.json.decode(raw)["peers"]
        assert mine["ok"] is False, mine
        assert not tracebacks(caplog), tracebacks(caplog)
    finally:
        await fake.stop()


async def test_join_with_an_invite_whose_url_does_not_parse_is_400_not_500(
    network: Any, session: aiohttp.ClientSession
) -> None:
    """An invite code (made by a hostile or broken pod) whose URL matches ^https?:// but
    does not parse ("http://[::1": yarl raises ValueError in invites.redeem): POST
    /v1/peers/join answers 500 "internal". It should be 400 "invalid" (or 424)."""
    [node] = await network(1)
    for url in ("http://[::1", "http://example.org:99999"):
        code = invites.encode(url, Keypair.generate().public, "s" * 32, 2**40)
        status, raw, _ = await signed(session, node.organizer, "POST",
                                      node.url + "/v1/peers/join",
                                      msgspec.json.encode({"invite": code}))  # fmt: skip
        assert status < 500 and error_of(status, raw) in ("invalid", "unavailable"), (url, raw)


# ---------------------------------------------------------------- (b) stored data altered


async def test_a_duplicate_member_join_does_not_replace_the_member_key(network: Any) -> None:
    """POST /v1/events with a member.join already stored (answered "duplicate") and
    another member key: submit_events treats duplicate as ok and put_member_key does
    INSERT OR REPLACE, so the key that opens the stored box is overwritten (and, with
    secure_delete, gone): the member's details become "(no key)" for good."""
    [node] = await network(1)
    key = boxes.new_member_key()
    details = kinds.MemberDetails(name="Winifred", contact="+44 7700 900461")
    author = await node.author()
    join = author.write(kinds.MemberJoined(box=boxes.lock(key, kinds.encode_body(details))), "pod")
    assert (await node.client.submit([join], member_keys={join.id: key}))[0]["status"] == "stored"

    # The same event again (a client's retry, a second organizer's tool) with another key.
    again = await node.client.submit([join], member_keys={join.id: boxes.new_member_key()})
    assert again[0]["status"] == "duplicate"
    [member] = await node.client.get("/v1/members")
    assert member["name"] == "Winifred", member
    assert (await node.client.get(f"/v1/members/{join.id_text}/key"))["key"] == b64e(key)


async def test_a_one_time_invite_admits_one_pod_even_when_redeemed_concurrently(
    network: Any, session: aiohttp.ClientSession
) -> None:
    """Four keys present the same invite secret at once to POST /v1/peer/redeem: all four
    get 200 and become peers. peer_api.redeem reads used_by on the reader, then does an
    unconditional UPDATE: check-then-act across awaits. One pod should be admitted."""
    [node] = await network(1)
    code = invites.decode((await node.client.post("/v1/invites"))["invite"])
    joiners = [Keypair.generate() for _ in range(4)]

    async def redeem(key: Keypair) -> int:
        body = msgspec.json.encode(
            {"secret": code.secret, "url": f"http://127.0.0.1:{free_port()}"}
        )
        return (await signed(session, key, "POST", node.url + "/v1/peer/redeem", body))[0]

    statuses = await asyncio.gather(*(redeem(k) for k in joiners))
    admitted = [k for k in joiners if k.public in node.node.peers]
    assert len(admitted) <= 1, (statuses, len(admitted))
    assert statuses.count(200) <= 1, statuses


# ---------------------------------------------------------------- (d) unbounded growth


async def test_fork_evidence_from_one_peer_is_bounded(network: Any) -> None:
    """A peer serves 600 different genuinely signed events at one feed position (its own
    pod key's network seq 1). The first is stored; every other one adds a row to `forks`
    (~2 KB each, payload and signature), with no bound per position, per author or per
    source (unlike the pending area), plus a WARNING line each. Evidence of equivocation
    needs one other header per position."""
    [node] = await network(1)
    fake = FakePeer()
    fake.events = [
        Author(fake.keypair, fake.keypair.public)
        .write(kinds.PodFounded(name=f"v{i}"), "network")
        .to_wire()
        for i in range(600)
    ]
    await fake.start()
    try:
        await node.client.post("/v1/peers", {"url": fake.url, "key": fake.key})

        async def received() -> bool:
            return (await node.peers())[fake.key]["received"] >= len(fake.events)

        await wait_for(received, what="the equivocating page to be ingested")
        forks = (await node.status())["forks"]
        assert forks <= 16, f"{forks} fork rows for one feed position"
    finally:
        await fake.stop()


async def test_feed_pages_respect_the_page_size_cap(
    network: Any, session: aiohttp.ClientSession
) -> None:
    """GET /v1/peer/feed returns up to page_events (1000) events with no byte cap
    (changes and the stream stop at MAX_PAGE_BYTES, 4 MiB). With 140 events of 60 KB the
    answer is over 8 MiB: more than gossip's MAX_RESPONSE_BYTES, so an honest node's repair
    of that feed fails forever; at 1000 events it is ~67 MB built in memory per request."""
    [node] = await network(1)
    peer = await add_peer_key(node)
    author = await node.author()
    events = []
    for _ in range(140):
        seq, prev = author.heads.get("network", (0, None))
        event = sign_event(
            author.keypair, pod=author.pod, lane="network", seq=seq + 1, prev=prev,
            ts=author.clock.now(), kind="x.attachment", body=os.urandom(60_000),
        )  # fmt: skip
        author.heads["network"] = (seq + 1, event.id)
        events.append(event)
    for i in range(0, len(events), 10):
        results = await node.client.submit(events[i : i + 10])
        assert all(r["status"] == "stored" for r in results), results[:1]
    path = f"/v1/peer/feed?author={b64e(node.organizer.public)}&lane=network&from=1"
    status, raw, _ = await signed(session, peer, "GET", node.url + path)
    assert status == 200, raw[:200]
    assert len(raw) <= MAX_RESPONSE_BYTES, f"a {len(raw)}-byte feed page"


async def test_join_reads_the_inviters_answer_with_a_cap(
    network: Any, session: aiohttp.ClientSession
) -> None:
    """The pod named in an invite answers POST /v1/peer/redeem with an endless body:
    invites.redeem does `await resp.read()` with no limit, so the node buffers all of it
    (64 MiB here, or until memory runs out) before failing with a misleading
    400 "request body is not valid JSON". Gossip caps peers' answers at 8 MiB; this
    answer should be cut off likewise."""
    [node] = await network(1)
    sent = 0

    async def endless(request: web.Request) -> web.StreamResponse:
        nonlocal sent
        await request.read()
        resp = web.StreamResponse()
        resp.content_type = "application/json"
        await resp.prepare(request)
        try:
            for _ in range(64):
                await resp.write(b" " * (1024 * 1024))
                sent += 1024 * 1024
            await resp.write_eof()
        except (ConnectionResetError, aiohttp.ClientConnectionResetError):
            pass
        return resp

    app = web.Application()
    app.router.add_post("/v1/peer/redeem", endless)
    runner, url = await serve(app)
    try:
        code = invites.encode(url, Keypair.generate().public, "s" * 32, 2**40)
        status, raw, _ = await signed(session, node.organizer, "POST",
                                      node.url + "/v1/peers/join",
                                      msgspec.json.encode({"invite": code}))  # fmt: skip
        assert status < 500, raw
        assert sent <= 16 * 1024 * 1024, f"the node read {sent} bytes of the inviter's answer"
    finally:
        await runner.cleanup()


# ---------------------------------------------------------------- (e) replays


async def test_replays_do_not_spend_the_victims_rate_limit(
    network: Any, session: aiohttp.ClientSession
) -> None:
    """Someone on the path replays one captured organizer request: each replay is refused
    ("replayed") but only after RateLimiter.allow has taken a token from the organizer's
    bucket (auth.py checks the rate before the nonce), so a dozen replays lock the
    organizer out (429) — and the 429'd request's nonce is never remembered, so it can be
    captured and replayed in turn. A replay should cost its victim nothing."""
    [node] = await network(1, rate_per_s=2.0)  # bursts of 10 requests
    status, raw, captured = await signed(session, node.organizer, "GET", node.url + "/v1/status")
    assert status == 200, raw
    for _ in range(12):
        status, raw, _ = await signed(session, None, "GET", node.url + "/v1/status",
                                      headers=captured)  # fmt: skip
        assert status == 401 or status == 429, raw
    status, raw, _ = await signed(session, node.organizer, "GET", node.url + "/v1/status")
    assert status == 200, raw


# ---------------------------------------------------------------- corners found correct


async def test_checked_path_tricks_do_not_cross_roles(
    network: Any, session: aiohttp.ClientSession
) -> None:
    """(Passes.) Dot segments, encoded slashes and doubled slashes never let a peer key reach
    an organizer route: role_for and the router read the same un-normalised path."""
    [node] = await network(1)
    peer = await add_peer_key(node)
    tricks = [
        "/v1/peer/../members", "/v1/peer/%2e%2e/members", "/v1/peer/..%2Fmembers",
        "/v1/peer/changes/../../members", "/v1/peer//../members", "/v1/peer/./../status",
        "/v1/peer/heads/..;/..;/members", "//v1/members", "/v1/./members", "/V1/members",
    ]  # fmt: skip
    for path in tricks:
        url = yarl.URL(node.url + path, encoded=True)
        headers = sign_request(peer, "GET", url.raw_path_qs, pod=node.pod)
        async with session.get(url, headers=headers) as resp:
            status, raw = resp.status, await resp.read()
        assert error_of(status, raw) in ("not-found", "forbidden"), (path, status, raw)


async def test_checked_auth_header_and_body_corners(
    network: Any, session: aiohttp.ClientSession
) -> None:
    """(Passes.) A chunked body over the limit is 413 too-large; a header repeated in
    another case, a Content-Encoding, a HEAD sent with a GET's signature and a time 305 s
    ahead are refused with 4xx JSON."""
    [node] = await network(1, max_request_bytes=4096)
    peer = await add_peer_key(node)
    port = node.config.port

    async def raw_http(head: str, body: bytes = b"") -> tuple[int, bytes]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(head.encode() + b"\r\n" + body)
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), 3)
        writer.close()
        top, _, payload = data.partition(b"\r\n\r\n")
        return int(top.split(b" ")[1]), payload

    def lines(headers: dict[str, str]) -> str:
        return "".join(f"{k}: {v}\r\n" for k, v in headers.items())

    start = "GET /v1/peer/changes HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
    chunks = b"".join(b"3e8\r\n" + b"x" * 1000 + b"\r\n" for _ in range(10)) + b"0\r\n\r\n"
    h = sign_request(peer, "GET", "/v1/peer/changes", b"x" * 10_000, pod=node.pod)
    status, raw = await raw_http(start + "Transfer-Encoding: chunked\r\n" + lines(h), chunks)
    assert (status, error_of(status, raw)) == (413, "too-large")

    h = sign_request(peer, "GET", "/v1/peer/changes", pod=node.pod)
    status, raw = await raw_http(start + lines(h) + f"podlink-nonce: {h['Podlink-Nonce']}\r\n")
    assert (status, error_of(status, raw)) == (400, "invalid")
    h = sign_request(peer, "GET", "/v1/peer/changes", pod=node.pod)
    status, raw = await raw_http(start + "Content-Encoding: gzip\r\n" + lines(h))
    assert (status, error_of(status, raw)) == (400, "invalid")
    # Past the 300 s window by 5 s, not 1: the node reads its (float) clock a moment after
    # we read ours in whole seconds, and a second boundary crossed in between would put
    # "301 s ahead" back inside the window (a few runs in 1,000).
    h = sign_request(peer, "GET", "/v1/peer/changes", when=int(time.time()) + 305, pod=node.pod)
    status, raw = await raw_http(start + lines(h))
    assert (status, error_of(status, raw)) == (401, "stale")
    h = sign_request(peer, "GET", "/v1/peer/changes", pod=node.pod)
    status, _ = await raw_http(start.replace("GET", "HEAD", 1) + lines(h))
    assert status == 401  # forged (a HEAD answer has no body to check)
