"""Lanes: network events reach every pod, peers events go one hop, pod events never leave.

In lines and rings of real nodes, and through the eyes of a "recording peer": a pod of
our own making, peered with a node, that pulls everything the peer API will give it
(changes, the live stream, heads and every feed) and keeps every byte it was sent.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import aiohttp
import pytest
import yarl

from podlink.node.api_types import StreamHello, heads_decoder, msgpack_encoder, page_decoder
from podlink.protocol import boxes, kinds
from podlink.protocol.envelope import Event, decode_event
from podlink.protocol.http_auth import sign_request
from podlink.protocol.text import b64e
from tests.node.helpers import (
    FakePeer,
    PodNode,
    ledger_bytes,
    pairs_of_line,
    pairs_of_ring,
    peer_line,
    ring,
    wait_converged,
    wait_for,
)

LANES = ("network", "peers", "pod")


@pytest.mark.parametrize(("shape", "n"), [("line", 4), ("ring", 5)])
async def test_each_lane_reaches_exactly_its_pods(network: Any, shape: str, n: int) -> None:
    nodes = await network(n)
    if shape == "line":
        await peer_line(nodes)
        pairs = pairs_of_line(nodes)
    else:
        await ring(nodes)
        pairs = pairs_of_ring(nodes)
    neighbours = {node.name: {node.name} for node in nodes}
    for a, b in pairs:
        neighbours[a.name].add(b.name)
        neighbours[b.name].add(a.name)

    for node in nodes:
        for lane in LANES:
            await node.open_request(f"{lane}-{node.name}", lane)  # type: ignore[arg-type]
    # The network lane is how we know the others have had time to travel too.
    everyone = {f"network-{node.name}" for node in nodes}

    async def network_everywhere() -> bool:
        return all([everyone <= await node.titles() for node in nodes])

    await wait_for(network_everywhere, what="network requests at every pod")
    await wait_converged(nodes)

    for node in nodes:
        expected = everyone | {f"peers-{m}" for m in neighbours[node.name]} | {f"pod-{node.name}"}
        assert await node.titles() == expected, node.name
        pods = {n.key: n.name for n in nodes}
        for row in await node.log():
            author_pod = pods[row["pod"]]
            if row["lane"] == "pod":
                assert author_pod == node.name, (node.name, row)
            elif row["lane"] == "peers":
                assert author_pod in neighbours[node.name], (node.name, row)
        # Each node holds every pod's directory entry and roster (network lane).
        assert {p["name"] for p in await node.client.get("/v1/pods")} == set(neighbours)


# ---------------------------------------------------------------- the recording peer

#: Personal data each pod keeps about one member: (name, contact, a note).
SECRETS = {
    "Alder": ("Philippa Arkwright-Nnamdi", "+44 7700 900982, flat 3b", "knee surgery in May"),
    "Cedar": ("Tobiah Mwangi-Fairweather", "tobiah@example.org", "night shifts at the depot"),
}


class Recorder(FakePeer):
    """A peer that pulls from a node with its own signed requests and keeps every byte."""

    def __init__(self) -> None:
        super().__init__()
        self.received: list[bytes] = []
        self.streamed: list[Event] = []
        self.refusals: list[tuple[str, int]] = []

    async def get(
        self, session: aiohttp.ClientSession, node: PodNode, path: str, **query: object
    ) -> tuple[int, bytes]:
        url = yarl.URL(node.url + path)
        if query:
            url = url.with_query({k: str(v) for k, v in query.items()})
        headers = sign_request(self.keypair, "GET", url.raw_path_qs, pod=node.pod)
        async with session.get(url, headers=headers) as resp:
            data = await resp.read()
        self.received.append(data)
        if resp.status != 200:
            self.refusals.append((str(url.relative()), resp.status))
        return resp.status, data

    async def pull_all(self, session: aiohttp.ClientSession, node: PodNode) -> list[Event]:
        """Everything by cursor, then by heads and feed ranges; every event decoded."""
        events: list[Event] = []
        since = 0
        while True:
            status, data = await self.get(session, node, "/v1/peer/changes", since=since, limit=3)
            assert status == 200, data
            page = page_decoder.decode(data)
            events += [decode_event(bytes(raw)) for raw in page.events]
            if page.cursor >= page.head:
                break
            since = page.cursor
        status, data = await self.get(session, node, "/v1/peer/heads")
        assert status == 200
        authors = set()
        for head in heads_decoder.decode(data):
            assert head.lane != "pod"
            authors.add(head.author)
            status, data = await self.get(
                session,
                node,
                "/v1/peer/feed",
                author=b64e(head.author),
                lane=head.lane,
                **{"from": 1, "to": head.seq},
            )
            assert status == 200
            events += [decode_event(bytes(raw)) for raw in page_decoder.decode(data).events]
        for author in authors:  # asking for a pod lane by name gets nothing but a refusal
            for lane in ("pod", "peers"):
                status, data = await self.get(
                    session, node, "/v1/peer/feed", author=b64e(author), lane=lane
                )
                if status == 200:
                    events += [decode_event(bytes(r)) for r in page_decoder.decode(data).events]
                else:
                    assert status == 400 and lane == "pod"
        return events

    async def listen(self, session: aiohttp.ClientSession, node: PodNode) -> None:
        """Hold the node's live stream open from position 0, keeping every frame."""
        url = yarl.URL(node.url + "/v1/peer/stream")
        headers = sign_request(self.keypair, "GET", url.raw_path_qs, pod=node.pod)
        async with session.ws_connect(url, headers=headers) as ws:
            await ws.send_bytes(msgpack_encoder.encode(StreamHello(since=0)))
            async for msg in ws:
                self.received.append(
                    bytes(msg.data)
                    if msg.type == aiohttp.WSMsgType.BINARY
                    else str(msg.data).encode()
                )
                if msg.type == aiohttp.WSMsgType.BINARY:
                    page = page_decoder.decode(msg.data)
                    self.streamed += [decode_event(bytes(raw)) for raw in page.events]


async def write_private(node: PodNode) -> list[Event]:
    """A member with a name and contact, and pod-lane records that mention them in clear."""
    name, contact, note = SECRETS[node.name]
    key = boxes.new_member_key()
    details = kinds.MemberDetails(name=name, contact=contact, notes=note)
    author = await node.author()
    join = author.write(kinds.MemberJoined(box=boxes.lock(key, kinds.encode_body(details))), "pod")
    need = author.write(
        kinds.RequestOpened(
            title=f"Lifts for {name}", category="transport", details=f"call {contact}; {note}"
        ),
        "pod",
    )
    offer = author.write(
        kinds.OfferOpened(
            title="Spare wheelchair", category="tools", details=f"ask {name}", by_member=join.id
        ),
        "pod",
    )
    results = await node.client.submit([join, need, offer], member_keys={join.id: key})
    assert [r["status"] for r in results] == ["stored"] * 3
    return [join, need, offer]


async def test_recording_peer_never_sees_the_pod_lane(network: Any) -> None:
    a, b, c = nodes = await network(3)
    await peer_line(nodes)
    recorder = Recorder()
    await recorder.start()
    session = aiohttp.ClientSession()
    listener: asyncio.Task[None] | None = None
    try:
        await a.client.post(
            "/v1/peers", {"url": recorder.url, "key": recorder.key, "name": "recorder"}
        )
        private = await write_private(a)
        await a.open_request("Network ask from Alder")
        peers_only = await a.open_request("Peers ask from Alder", "peers")
        await b.open_request("Peers ask from Birch", "peers")  # one hop: A, never the recorder
        await write_private(c)
        far = await c.open_request("Network ask from Cedar")
        await wait_for(lambda: _has(a, far), what="Cedar's request at Alder")
        await wait_converged(nodes)

        listener = asyncio.create_task(recorder.listen(session, a))
        pulled = await recorder.pull_all(session, a)
        # Live: more private records and one network event after the stream is open.
        private += await write_private(a)
        late = await a.open_request("Late network ask")
        await wait_for(lambda: _streamed(recorder, late), what="the late event on the stream")

        seen = pulled + recorder.streamed
        ids = {e.id for e in seen}
        assert late.id in ids and far.id in ids and peers_only.id in ids
        assert {e.lane for e in seen} <= {"network", "peers"}
        assert not [e for e in seen if e.lane == "peers" and e.pod != a.pod]
        for e in seen:
            e.verify_signature()

        everything = b"".join(recorder.received)
        assert len(pulled) >= 10 and len(recorder.streamed) >= 10
        for secret in (*SECRETS["Alder"], *SECRETS["Cedar"]):
            assert secret.encode() not in everything, secret
        for event in private:
            assert event.payload not in everything
            assert event.body is not None and event.body not in everything
        # The only refusals were the pod lanes asked for by name.
        assert recorder.refusals
        assert all("lane=pod" in path and status == 400 for path, status in recorder.refusals)

        # No other node's files ever held a pod's personal data in the clear.
        await wait_converged(nodes)
        files = {n.name: ledger_bytes(n.home) for n in nodes}
        for owner, secrets in SECRETS.items():
            for holder, data in files.items():
                for secret in secrets:  # in the clear at home (the pod-lane request says it)
                    assert (secret.encode() in data) == (holder == owner), (owner, holder)
        assert (await a.peers())[recorder.key]["refused"] == 0
    finally:
        if listener is not None:
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError, aiohttp.ClientError):
                await listener
        await session.close()
        await recorder.stop()


async def _has(node: PodNode, event: Event) -> bool:
    return event.id_text in await node.event_ids()


async def _streamed(recorder: Recorder, event: Event) -> bool:
    return any(e.id == event.id for e in recorder.streamed)


async def test_peer_feed_of_another_pods_peers_lane_is_empty(network: Any) -> None:
    """B holds A's peers lane but must not pass it on, even when asked by feed range."""
    a, b, c = nodes = await network(3)
    await peer_line(nodes)
    event = await a.open_request("Only for Birch", "peers")
    await wait_for(lambda: _has(b, event), what="Alder's peers event at Birch")
    async with aiohttp.ClientSession() as session:
        url = yarl.URL(b.url + "/v1/peer/feed").with_query(
            {"author": b64e(event.author), "lane": "peers"}
        )
        headers = sign_request(c.keypair, "GET", url.raw_path_qs, pod=b.pod)
        async with session.get(url, headers=headers) as resp:
            assert resp.status == 200
            page = page_decoder.decode(await resp.read())
    assert page.events == []
    assert not await _has(c, event)
