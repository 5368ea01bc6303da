"""A peer that serves garbage: forged, malformed, oversize, misplaced events, unreadable
pages. The node refuses every one, says so in the peer's status, and keeps working."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec

from podlink.ledger.authoring import Author
from podlink.node.api_types import FeedHead, msgpack_encoder
from podlink.protocol import clock, kinds
from podlink.protocol.envelope import MAX_EVENT, encode_wire
from podlink.protocol.keys import Keypair
from tests.node.helpers import FakePeer, PodNode, peer_line, wait_converged, wait_for


def garbage(fake: FakePeer) -> dict[str, bytes]:
    """Wire events a hostile or broken peer might send, by the reason we expect."""
    pod = Author(fake.keypair, fake.keypair.public)
    genesis = pod.write(kinds.PodFounded(name="Mallory"), "network")
    wrong_sig = encode_wire(genesis.payload, bytes(64), genesis.body)
    stranger = Keypair.generate()
    other = Author(stranger, stranger.public)
    private = other.write(kinds.RequestOpened(title="someone's secret", category="food"), "pod")
    future = Author(stranger, stranger.public).write(
        kinds.PodFounded(name="Tomorrow"),
        "network",
        ts=clock.HybridClock().now() + (3600 * 1000 << 16),
    )
    return {
        "forged": wrong_sig,
        "invalid": msgspec.msgpack.encode(b"\x00" * 40),
        "invalid-int": msgspec.msgpack.encode(5),
        "invalid-array": msgspec.msgpack.encode([b"x", b"y", b"z", b"w"]),
        "too-large": msgspec.msgpack.encode(b"\x01" * (MAX_EVENT + 10)),
        "unauthorised": private.to_wire(),
        "too-far-ahead": future.to_wire(),
    }


async def test_garbage_is_refused_recorded_and_harmless(network: Any) -> None:
    a, b = nodes = await network(2)
    await peer_line(nodes)
    fake = FakePeer()
    bad = garbage(fake)
    fake.events = list(bad.values())
    await fake.start()
    try:
        before = await a.event_count()
        await a.client.post("/v1/peers", {"url": fake.url, "key": fake.key, "name": "Mallory"})

        async def all_refused() -> bool:
            return (await a.peers())[fake.key]["refused"] >= len(bad)

        await wait_for(all_refused, what="every garbage event refused")
        status = (await a.peers())[fake.key]
        assert status["received"] == status["refused"] == len(bad)
        assert await a.event_count() == before
        text = a.node.metrics.render()
        for reason in ("forged", "invalid", "too-large", "unauthorised", "too-far-ahead"):
            assert f'podlink_events_refused_total{{reason="{reason}"}}' in text, reason
        # Every request the node sent the fake peer was signed by the node's own key.
        assert fake.calls and all(who == a.pod for _, _, who in fake.calls)

        # Then pages that are not msgpack at all.
        fake.raw_changes = b"\xc1 this is not a page"
        await a.client.post("/v1/sync")

        async def reported() -> bool:
            return "unreadable page" in (await a.peers())[fake.key]["last_error"]

        await wait_for(reported, what="the unreadable page in the peer's status")
        report = await a.client.post("/v1/sync")
        [mine] = [p for p in report["peers"] if p["pod"] == fake.key]
        assert mine["ok"] is False and "unreadable" in mine["error"]

        # A "restored" peer (new epoch) whose heads are garbage: repair fails, cleanly.
        fake.raw_changes = None
        fake.epoch = b"\x02" * 16
        fake.raw_heads = b"\xc1 not heads either"
        report = await a.client.post("/v1/sync")
        [mine] = [p for p in report["peers"] if p["pod"] == fake.key]
        assert mine["ok"] is False and "unreadable" in mine["error"], mine

        # Heads that promise an endless feed, whose every page is forged: one look suffices.
        fake.raw_heads = msgpack_encoder.encode(
            [FeedHead(Keypair.generate().public, "network", 10**12, bytes(32))]
        )
        fake.feed_events = [bad["forged"]]
        fake.epoch = b"\x03" * 16
        fake.calls.clear()
        report = await a.client.post("/v1/sync")
        [mine] = [p for p in report["peers"] if p["pod"] == fake.key]
        assert mine["ok"] is True, mine
        await asyncio.sleep(0.5)  # the gossip loop has its go at it too
        feeds = [path for _, path, _ in fake.calls if path.startswith("/v1/peer/feed")]
        assert 1 <= len(feeds) <= 5, len(feeds)

        # Meanwhile the node serves its organizers and replicates with its honest peer.
        await still_working(a, b)
    finally:
        await fake.stop()
    assert (await a.client.post("/v1/verify"))["ok"] is True


async def still_working(a: PodNode, b: PodNode) -> None:
    assert (await a.status())["name"] == "Alder"
    mine = await a.open_request("business as usual")
    theirs = await b.open_request("from the honest peer")

    async def exchanged() -> bool:
        return theirs.id_text in await a.event_ids() and mine.id_text in await b.event_ids()

    await wait_for(exchanged, what="the honest peers to exchange events")
    await wait_converged([a, b])


async def test_pages_before_an_unreadable_one_are_stored_then_the_rest_follow(
    network: Any,
) -> None:
    """Pages are fetched and checked two ahead of the one being stored: a page that
    cannot be read is reported only after every page before it is stored, and the next
    sync goes on from there."""
    [a] = await network(1)
    fake = FakePeer()
    pod = Author(fake.keypair, fake.keypair.public)
    events = [pod.write(kinds.PodFounded(name="Fir", zone="fir"), "network")]
    events += [
        pod.write(kinds.RequestOpened(title=f"need {i}", category="food"), "network")
        for i in range(9)
    ]
    fake.events = [e.to_wire() for e in events]
    fake.page_size = 2
    fake.unreadable_from = 6  # the fourth page
    await fake.start()
    try:
        before = await a.event_count()
        await a.client.post("/v1/peers", {"url": fake.url, "key": fake.key, "name": "Fir"})

        async def reported() -> bool:
            return "unreadable page" in ((await a.peers())[fake.key]["last_error"] or "")

        await wait_for(reported, what="the unreadable page in the peer's status")
        assert await a.event_count() == before + 6  # the three pages before it, whole
        fake.unreadable_from = None
        report = await a.client.post("/v1/sync")
        [mine] = [p for p in report["peers"] if p["pod"] == fake.key]
        assert mine["ok"] is True, mine
        assert await a.event_count() == before + 10
        changes = [path for _, path, _ in fake.calls if path.startswith("/v1/peer/changes")]
        assert any("since=6" in path for path in changes)
    finally:
        await fake.stop()
