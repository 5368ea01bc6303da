"""Review: events released from pending (Batch.ready, _take_successors, Candidate.parked,
_release_roster_waiters) and the paged repair walk of node/gossip.py.

Real SQLite files under tmp_path, real Ed25519 signatures, real aiohttp servers on
127.0.0.1; nothing of the storage, network or crypto is faked.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from podlink.ledger.authoring import Author
from podlink.ledger.ledger import Ledger, Limits
from podlink.node import gossip
from podlink.node.api_types import FeedHead
from podlink.protocol import kinds
from podlink.protocol.envelope import Event, sign_event
from podlink.protocol.keys import Keypair
from podlink.protocol.text import b64d
from tests.ledger.helpers import World, query, statuses, wires
from tests.node.helpers import FakePeer

# ---------------------------------------------------------------- helpers


@pytest.fixture
def world() -> World:
    return World()


@pytest.fixture
async def ledgers() -> AsyncIterator[list[Ledger]]:
    opened: list[Ledger] = []
    yield opened
    for ledger in opened:
        await ledger.close()


async def open_at(opened: list[Ledger], path: Path, *, limits: Limits | None = None) -> Ledger:
    ledger = await Ledger.open(path, limits=limits)
    opened.append(ledger)
    return ledger


async def table_counts(ledger: Ledger) -> dict[str, int]:
    return dict(await query(ledger, "SELECT source, count(*) FROM pending GROUP BY 1"))


def need(author: Author, title: str = "Soup") -> Event:
    return author.write(kinds.RequestOpened(title=title, category="food"), "network")


def fork_at(key: Keypair, pod: bytes, seq: int, prev: bytes | None, ts: int, title: str) -> Event:
    """An event at a chosen feed position (several of them make a fork there)."""
    return sign_event(
        key, pod=pod, lane="network", seq=seq, prev=prev, ts=ts, kind="request.open",
        body=kinds.encode_body(kinds.RequestOpened(title=title, category="food")),
    )  # fmt: skip


# ---------------------------------------------------------------- pending bound


async def test_released_events_that_wait_again_leave_no_room_for_new_ones(
    tmp_path: Path, world: World, ledgers: list[Ledger]
) -> None:
    """BUG: a source's released events that wait again are re-parked AFTER the room for
    new events was computed from a count that no longer includes them (_candidates
    decrements it when they are taken): the source ends with limit + N parked, the bound
    broken for NEW events."""
    elm, elm_setup = world.pod("Elm")
    oak, oak_setup = world.pod("Oak")
    key = Keypair.generate()
    for_elm = Author(key, elm.id, world.clock)
    add = elm.author.write(kinds.OrganizerAdded(key=key.public), "network")
    e1 = need(for_elm)  # Elm's event: its key is named in Elm
    # Three events at seq 2 of the same feed, for Oak, where the key is not named.
    world.tick()
    forks = [fork_at(key, oak.id, 2, e1.id, world.clock.now(), f"oak {i}") for i in range(3)]
    limit = 3
    ledger = await open_at(ledgers, tmp_path / "pod.db", limits=Limits(pending_per_source=limit))
    assert statuses(await ledger.ingest(wires([*elm_setup, *oak_setup, add]))) == ["stored"] * 3
    assert statuses(await ledger.ingest(wires(forks), source="peer-s")) == ["pending"] * 3
    assert ledger.pending_count("peer-s") == limit
    # New gaps from the same source: each waits for a seq 1 that never comes.
    gaps = []
    for _ in range(3):
        a = Author(Keypair.generate(), elm.id, world.clock)
        need(a)
        gaps.append(need(a))  # seq 2, its seq 1 never sent
    results = await ledger.ingest(wires([e1, *gaps]), source="peer-s")
    assert results[0].status == "stored"
    on_file = await table_counts(ledger)
    assert on_file == dict(ledger.pending_by_source)
    assert on_file["peer-s"] <= limit, (on_file, statuses(results))


async def test_a_released_event_waiting_again_in_a_local_append_stays_under_its_source(
    tmp_path: Path, world: World, ledgers: list[Ledger]
) -> None:
    """(passes: pins 52031b0, untested) One key organizes pods A (ours) and B. Its B
    event came from a peer ahead of its A predecessor; the local append of that
    predecessor releases it, and it waits again (the key is not named in B yet): it goes
    back under the peer's source and time, counted there, never refused for the append;
    B naming the key then stores it, to the state of a ledger fed everything at once."""
    elm, elm_setup = world.pod("Elm")
    oak, oak_setup = world.pod("Oak")
    key = Keypair.generate()
    for_elm = Author(key, elm.id, world.clock)
    for_oak = Author(key, oak.id, world.clock, heads=for_elm.heads)  # one feed
    add_elm = elm.author.write(kinds.OrganizerAdded(key=key.public), "network")
    e1 = need(for_elm, "Elm's")
    e2 = need(for_oak, "Oak's")
    add_oak = oak.author.write(kinds.OrganizerAdded(key=key.public), "network")
    ledger = await open_at(ledgers, tmp_path / "pod.db")
    await ledger.set_pod(elm.id)
    assert statuses(await ledger.append(wires([*elm_setup, add_elm]))) == ["stored"] * 2
    assert statuses(await ledger.ingest([e2.to_wire()], source="peer-b")) == ["pending"]
    before = await query(ledger, "SELECT id, source, received, why FROM pending")
    assert statuses(await ledger.append([e1.to_wire()])) == ["stored"]
    after = await query(ledger, "SELECT id, source, received, why FROM pending")
    assert [r[:3] for r in after] == [r[:3] for r in before] and after[0][3] == "roster"
    assert dict(ledger.pending_by_source) == await table_counts(ledger) == {"peer-b": 1}
    assert statuses(await ledger.ingest(wires([*oak_setup, add_oak]), source="peer-c")) == [
        "stored", "stored"]  # fmt: skip
    assert await table_counts(ledger) == {} and not ledger.pending_by_source
    ref = await open_at(ledgers, tmp_path / "ref.db")
    await ref.set_pod(elm.id)
    everything = [*elm_setup, add_elm, e1, e2, *oak_setup, add_oak]
    assert statuses(await ref.ingest(wires(everything))) == ["stored"] * len(everything)
    assert await ledger.dump() == await ref.dump()


# ---------------------------------------------------------------- the repair walk


async def test_a_walk_completed_later_in_the_same_pull_is_not_reported_as_stopped(
    network: Any,
) -> None:
    """BUG: a repair started by a page with a new epoch (``_take``) is cut short by one
    429 and records ``_repair_error``; the same pull then repairs again (record.repair)
    and that walk completes, every event stored. ``_pull`` still raises the first walk's
    stale error ("repair stopped: ... HTTP 429"): `podlink sync` says the peer failed,
    received 0, and the link backs off instead of going live, though nothing is left."""
    [node] = await network(1)
    peer = FakePeer()
    await peer.start()
    try:
        await node.client.post("/v1/peers", {"url": peer.url, "key": peer.key})
        first = (await node.client.post("/v1/sync"))["peers"]  # epoch and cursor saved
        assert first[0]["ok"] is True, first
        pod = Author(peer.keypair, peer.keypair.public)
        feed = [pod.write(kinds.PodFounded(name="Fake"), "network"), need(pod, "lost")]
        peer.heads = [FeedHead(pod.keypair.public, "network", 2, feed[-1].id)]
        peer.feeds = {pod.keypair.public: [e.to_wire() for e in feed]}
        peer.epoch = os.urandom(16)  # the peer's store was restored from a backup
        peer.refuse_feed_every, peer._feed_asked = 2, 1  # the next feed request gets 429
        report = (await node.client.post("/v1/sync"))["peers"]
        held = await node.event_ids()
        assert {e.id_text for e in feed} <= held  # the second walk stored them all
        assert report[0]["ok"] is True, report
    finally:
        await peer.stop()


class DroppingPeer(FakePeer):
    """A FakePeer that resets the connection on any /v1/peer/feed request for ``broken``
    (a peer that crashes, or a middlebox that cuts, on that one feed)."""

    def __init__(self, keypair: Keypair, broken: bytes) -> None:
        super().__init__(keypair)
        self.broken = broken

    async def _feed(self, request: web.Request) -> web.Response:
        if b64d(request.query.get("author", "")) == self.broken:
            assert request.transport is not None
            request.transport.abort()
        return await super()._feed(request)


def sorted_keys(n: int) -> list[Keypair]:
    return sorted((Keypair.generate() for _ in range(n)), key=lambda k: k.public)


async def test_a_feed_whose_request_resets_the_connection_does_not_stop_every_walk(
    network: Any,
) -> None:
    """BUG: ``repair`` records where a walk stopped only for a PeerError. A connection
    reset (aiohttp.ClientError) or a read timeout on one feed's request propagates out of
    the walk with ``_walk_from`` unchanged, so every later walk stops at that same feed
    and the feeds after it are never reached (what 429s did before b001691). Worse,
    here the repair runs from ``_take`` (the peer's epoch changed): the error also ends
    the pull before the page's cursor is saved, so each sync repairs from the same place
    and fails the same way, for good."""
    [node] = await network(1)
    key, other = sorted_keys(2)  # the peer's own feed sorts before the other pod's
    peer = DroppingPeer(key, key.public)
    await peer.start()
    try:
        await node.client.post("/v1/peers", {"url": peer.url, "key": peer.key})
        first = (await node.client.post("/v1/sync"))["peers"]  # epoch and cursor saved
        assert first[0]["ok"] is True, first
        mine = Author(key, key.public)
        theirs = Author(other, other.public, mine.clock)
        broken = [mine.write(kinds.PodFounded(name="Fake"), "network")]
        fine = [theirs.write(kinds.PodFounded(name="Other"), "network"), need(theirs, "x")]
        peer.heads = [FeedHead(key.public, "network", 1, broken[0].id),
                      FeedHead(other.public, "network", 2, fine[-1].id)]  # fmt: skip
        peer.feeds = {other.public: [e.to_wire() for e in fine]}
        peer.epoch = os.urandom(16)  # the peer's store was restored from a backup
        reports = [(await node.client.post("/v1/sync"))["peers"][0] for _ in range(3)]
        held = await node.event_ids()
        assert {e.id_text for e in fine} <= held, [r["error"] for r in reports]
    finally:
        await peer.stop()


async def test_walks_cut_by_429s_go_round_the_heads_once_from_the_refused_feed(
    network: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """(passes: pins b001691) Five feeds in pages of two, every third feed request
    refused with 429: each walk starts again at the refused feed and wraps round, so
    every feed is fetched, none more than twice (once refused, once served), and the
    repair ends once a walk finds nothing more."""
    monkeypatch.setattr(gossip, "HEADS_PAGE", 2)
    [node] = await network(1)
    keys = sorted_keys(6)
    peer = FakePeer(keys[0])
    await peer.start()
    try:
        await node.client.post("/v1/peers", {"url": peer.url, "key": peer.key})
        first = (await node.client.post("/v1/sync"))["peers"]
        assert first[0]["ok"] is True, first
        genesis = {k.public: Author(k, k.public).write(kinds.PodFounded(name="p"), "network")
                   for k in keys[1:]}  # fmt: skip
        peer.heads = [FeedHead(a, "network", 1, e.id) for a, e in genesis.items()]
        peer.feeds = {a: [e.to_wire()] for a, e in genesis.items()}
        peer.epoch = os.urandom(16)
        peer.refuse_feed_every = 3
        for _ in range(6):
            await node.client.post("/v1/sync")
            if not node.node.peers[peer.keypair.public].repair:
                break
        assert {e.id_text for e in genesis.values()} <= await node.event_ids()
        assert not node.node.peers[peer.keypair.public].repair
        asked: dict[str, int] = {}
        for _, path, _ in peer.calls:
            if path.startswith("/v1/peer/feed"):
                author = path.split("author=")[1].split("&")[0]
                asked[author] = asked.get(author, 0) + 1
        assert len(asked) == 5 and max(asked.values()) <= 2, asked
    finally:
        await peer.stop()
