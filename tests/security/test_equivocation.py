"""Equivocation through peers: one key signs two different events at the same position of
its feed, and peers serve them. The node keeps one, refuses the other as a ``fork``, keeps
both signed headers as evidence anyone can check, shows them to its organizers
(GET /v1/forks), and goes on replicating everything else from the same peers.

(tests/ledger/test_forks.py covers the ledger's side with events handed in directly.)
"""

from __future__ import annotations

from typing import Any

from podlink.ledger.authoring import Author
from podlink.ledger.store import rows
from podlink.protocol import kinds
from podlink.protocol.envelope import SIGN_PREFIX, Event, blake2b256
from podlink.protocol.keys import Keypair, verify_signature
from podlink.protocol.text import b64e
from tests.node.helpers import FakePeer, PodNode, wait_for


def two_branches(key: Keypair) -> tuple[Event, list[Event], list[Event]]:
    """A genesis, then two different continuations of the same feed (seq 2 and 3)."""
    pod = Author(key, key.public)
    genesis = pod.write(kinds.PodFounded(name="Janus"), "network")
    twin = Author(key, key.public, pod.clock, dict(pod.heads))
    left = [pod.write(kinds.RequestOpened(title=f"left {i}", category="food"), "network")
            for i in range(2)]  # fmt: skip
    right = [twin.write(kinds.RequestOpened(title=f"right {i}", category="food"), "network")
             for i in range(2)]  # fmt: skip
    assert [e.seq for e in left] == [e.seq for e in right] == [2, 3]
    return genesis, left, right


async def peer_with(node: PodNode, fake: FakePeer) -> None:
    await fake.start()
    await node.client.post("/v1/peers", {"url": fake.url, "key": fake.key})


async def holds(node: PodNode, events: list[Event]) -> bool:
    ids = await node.event_ids()
    return all(e.id_text in ids for e in events)


async def check_evidence(node: PodNode, kept: list[Event], other: list[Event]) -> None:
    """GET /v1/forks shows each clash, and the stored evidence verifies on its own."""
    shown = await node.client.get("/v1/forks")
    assert {(f["seq"], f["kept_id"], f["other_id"]) for f in shown} == {
        (k.seq, k.id_text, o.id_text) for k, o in zip(kept, other, strict=True)
    }
    assert all(f["author"] == b64e(kept[0].author) for f in shown)
    assert (await node.status())["forks"] == len(kept)
    evidence = await rows(
        node.ledger.reader,
        "SELECT f.author, f.other_id, f.other_payload, f.other_sig, e.payload, e.sig "
        "FROM forks f JOIN events e ON e.id = f.kept_id",
    )
    assert len(evidence) == len(kept)
    for author, other_id, other_payload, other_sig, kept_payload, kept_sig in evidence:
        # Two headers, both signed by the same key, for the same (author, lane, seq):
        # proof of equivocation that any third party can check with the key alone.
        assert verify_signature(author, SIGN_PREFIX + other_payload, other_sig)
        assert verify_signature(author, SIGN_PREFIX + kept_payload, kept_sig)
        assert blake2b256(other_payload) == other_id != blake2b256(kept_payload)
    assert (await node.client.post("/v1/verify"))["ok"] is True


async def test_two_peers_serving_two_branches(network: Any) -> None:
    [node] = await network(1)
    janus = Keypair.generate()
    genesis, left, right = two_branches(janus)
    first, second = FakePeer(), FakePeer()
    first.events = [genesis.to_wire(), *(e.to_wire() for e in left)]
    # The second peer also relays an honest pod's events: those must still come in.
    key = Keypair.generate()
    honest = Author(key, key.public)
    fine = [
        honest.write(kinds.PodFounded(name="Honest"), "network"),
        honest.write(kinds.ResourceShared(name="Food bank", category="food"), "network"),
    ]
    second.events = [genesis.to_wire(), *(e.to_wire() for e in right),
                     *(e.to_wire() for e in fine)]  # fmt: skip
    try:
        await peer_with(node, first)
        await wait_for(lambda: holds(node, [genesis, *left]), what="the left branch")
        await peer_with(node, second)
        await wait_for(lambda: holds(node, fine), what="the honest events via the second peer")

        async def both_forks() -> bool:
            return (await node.status())["forks"] == 2

        await wait_for(both_forks, what="both clashes recorded")
        assert not {e.id_text for e in right} & await node.event_ids()
        await check_evidence(node, left, right)
        [fork] = [f for f in await node.client.get("/v1/forks") if f["seq"] == 2]
        assert fork["source"] == second.key  # who served the other branch
        status = (await node.peers())[second.key]
        assert status["refused"] == 2 and status["last_error"] == "", status
        text = node.node.metrics.render()
        assert 'podlink_events_refused_total{reason="fork"} 2' in text
    finally:
        await first.stop()
        await second.stop()


async def test_one_peer_serving_both_branches(network: Any) -> None:
    [node] = await network(1)
    genesis, left, right = two_branches(Keypair.generate())
    fake = FakePeer()
    fake.events = [genesis.to_wire(), left[0].to_wire(), right[0].to_wire()]
    try:
        await peer_with(node, fake)

        async def recorded() -> bool:
            return (await node.status())["forks"] == 1

        await wait_for(recorded, what="the fork recorded")
        await check_evidence(node, left[:1], right[:1])
        # More of the kept branch still comes in; more of the other is refused as a fork.
        fake.events += [left[1].to_wire(), right[1].to_wire()]
        await node.client.post("/v1/sync")
        assert await holds(node, [left[1]])
        await check_evidence(node, left, right)
    finally:
        await fake.stop()


async def test_same_evidence_whichever_branch_arrives_first(network: Any) -> None:
    """Which branch a node keeps depends on arrival order (documented); the evidence it
    holds does not: both nodes name the same two events at each clashing position."""
    a, b = await network(2)
    genesis, left, right = two_branches(Keypair.generate())
    fakes = [FakePeer(), FakePeer()]
    fakes[0].events = [w.to_wire() for w in (genesis, *left, *right)]
    fakes[1].events = [w.to_wire() for w in (genesis, *right, *left)]
    try:
        for node, fake in zip((a, b), fakes, strict=True):
            await peer_with(node, fake)

            async def recorded(node: PodNode = node) -> bool:
                return (await node.status())["forks"] == 2

            await wait_for(recorded, what=f"the forks at {node.name}")
        pairs = []
        for node in (a, b):
            shown = await node.client.get("/v1/forks")
            pairs.append({(f["seq"], frozenset((f["kept_id"], f["other_id"]))) for f in shown})
        assert pairs[0] == pairs[1]
        kept_a = {f["kept_id"] for f in await a.client.get("/v1/forks")}
        kept_b = {f["kept_id"] for f in await b.client.get("/v1/forks")}
        assert kept_a == {e.id_text for e in left} and kept_b == {e.id_text for e in right}
    finally:
        for fake in fakes:
            await fake.stop()
