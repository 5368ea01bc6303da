"""A roster of thousands in one pod: stored in linear work, with the same state as ever.

Each roster event used to re-fold its pod's whole roster from the table, inside a fold
that scanned every tenure per event: 1,000 roster.adds took 6.7 s to ingest and 3,000
more than a minute, so a peer could stall a node with a few thousand honest-looking
events. Naming a key is now applied as each roster.add is stored, and the tenures are
folded once per pod per batch. These tests count the folds (no timing) and hold the
result to a rebuild and to the same events ingested in another order.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from podlink.ledger import projections
from podlink.ledger.authoring import Author
from podlink.ledger.ledger import Ledger, Limits
from podlink.protocol import kinds
from podlink.protocol.envelope import Event
from podlink.protocol.keys import Keypair
from tests.ledger.helpers import World, count, statuses, stored_ids, wires


def offer() -> kinds.OfferOpened:
    return kinds.OfferOpened(title="soup", category="food", details="a pot", availability="x")


def many_organizers(n: int, *, chained: bool) -> tuple[World, bytes, list[Event]]:
    """A pod, ``n`` roster.adds (each by the pod's key, or each by the organizer added
    before it) and one offer by each of the last 20 organizers."""
    world = World()
    pod, events = world.pod()
    by = None
    orgs = []
    for i in range(n):
        world.tick()
        org, add = world.organizer(pod, f"organizer {i}", by=by)
        events.append(add)
        orgs.append(org)
        if chained:
            by = org
    for org in orgs[-20:]:
        world.tick()
        events.append(org.write(offer(), "network"))
    return world, pod.id, events


@pytest.mark.parametrize("chained", [False, True], ids=["by-the-pod-key", "each-by-the-last"])
async def test_thousands_of_roster_events_fold_the_roster_once_per_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chained: bool
) -> None:
    _, pod, events = many_organizers(1200, chained=chained)
    folds: list[bytes] = []
    real = projections.refold_roster

    async def counted(db, roster, pod_key, new=None):  # the real fold, counted
        folds.append(pod_key)
        return await real(db, roster, pod_key, new)

    monkeypatch.setattr(projections, "refold_roster", counted)
    ledger = await Ledger.open(tmp_path / "pod.db", limits=Limits(batch_size=300))
    try:
        await ledger.set_pod(pod)
        results = await ledger.ingest(wires(events))
        assert statuses(results) == ["stored"] * len(events)
        batches = -(-len(events) // 300)
        assert len(folds) <= batches, f"{len(folds)} roster folds for {batches} batches"
        assert await count(ledger, "roster") == 1200
        assert len(ledger.roster.active_keys(pod)) == 1200
        assert await count(ledger, "offers") == 20
        live = await ledger.dump()
        await ledger.rebuild()
        assert await ledger.dump() == live
    finally:
        await ledger.close()


async def test_a_chain_of_organizers_arriving_backwards_is_stored_as_each_is_named(
    tmp_path: Path,
) -> None:
    """Each organizer added by the one before, delivered newest first in small batches:
    each roster.add waits for its author's naming and is released, within the batch or
    from the pending table, the moment that naming is stored."""
    _, pod, events = many_organizers(400, chained=True)
    forward = await Ledger.open(tmp_path / "forward.db")
    backward = await Ledger.open(tmp_path / "backward.db", limits=Limits(batch_size=50))
    try:
        await forward.set_pod(pod)
        await backward.set_pod(pod)
        assert statuses(await forward.ingest(wires(events))) == ["stored"] * len(events)
        rng = random.Random(4)
        shuffled = events[1:]
        rng.shuffle(shuffled)
        # genesis last: until it comes, nothing of the pod is named but by its key
        for start in range(0, len(shuffled), 50):
            await backward.ingest(wires(shuffled[start : start + 50]))
        await backward.ingest(wires(events[:1]))
        assert await stored_ids(backward) == {e.id for e in events}
        assert await count(backward, "pending") == 0
        assert await backward.dump() == await forward.dump()
    finally:
        await forward.close()
        await backward.close()


def test_authorised_finds_the_covering_tenure_in_any_load_order() -> None:
    """Roster.authorised bisects a key's tenures by start: it must hold whatever order
    they come in (the roster table gives them by add id), empty tenures [T, T) included."""
    from podlink.ledger.state import Roster, Tenure

    pod, key = b"p" * 32, b"k" * 32
    spans = [(10, 20), (20, 20), (20, 35), (40, 40), (40, None)]
    tenures = [Tenure(pod, key, "x", a, bytes([i]) * 32, b) for i, (a, b) in enumerate(spans)]

    def brute(ts: int) -> bool:
        return any(t.covers(ts) for t in tenures)

    rng = random.Random(5)
    for _ in range(20):
        shuffled = tenures[:]
        rng.shuffle(shuffled)
        roster = Roster({pod: shuffled})
        assert [roster.authorised(pod, key, ts) for ts in range(0, 60)] == [
            brute(ts) for ts in range(0, 60)
        ]
        assert roster.authorised(pod, pod, 0)  # the pod's own key, always
        assert not roster.authorised(pod, b"o" * 32, 15)


@pytest.mark.parametrize("seed", range(12))
async def test_a_roster_folded_a_few_events_at_a_time_equals_one_fold(
    tmp_path: Path, seed: int
) -> None:
    """Roster events folded onto the tenures in memory (Roster.extend_pod, when they sort
    after the last folded) or from the table (when they do not) give the state one fold
    of them all gives: keys added, removed, re-added, by the pod's key and by organizers
    (some no longer in office), with offers in between, delivered in random small batches
    in random order, against the same events in one ingest and against a rebuild."""
    rng = random.Random(seed)
    world = World()
    pod, events = world.pod()
    keys = [Keypair.generate() for _ in range(5)]
    writers = {k.public: Author(k, pod.id, world.clock) for k in keys}
    for _ in range(80):
        world.tick(rng.choice([0, 1, 1, 2]))
        key = rng.choice(keys).public
        signer = rng.choice([pod.author, *writers.values()])
        action = rng.random()
        if action < 0.4:
            events.append(signer.write(kinds.OrganizerAdded(key=key, name="o"), "network"))
        elif action < 0.65:
            events.append(signer.write(kinds.OrganizerRemoved(key=key), "network"))
        else:
            events.append(writers[key].write(offer(), "network"))
    whole = await Ledger.open(tmp_path / "whole.db")
    parts = await Ledger.open(tmp_path / "parts.db")
    try:
        for led in (whole, parts):
            await led.set_pod(pod.id)
        await whole.ingest(wires(events))
        shuffled = events[:]  # in order (a stream), or nearly, or in any order
        if seed % 3 == 1:
            for i in rng.sample(range(len(shuffled) - 1), 10):
                shuffled[i], shuffled[i + 1] = shuffled[i + 1], shuffled[i]
        elif seed % 3 == 2:
            rng.shuffle(shuffled)
        start = 0
        while start < len(shuffled):
            size = rng.randint(1, 6)
            await parts.ingest(wires(shuffled[start : start + size]))
            start += size
        assert await stored_ids(parts) == await stored_ids(whole)
        live = await parts.dump()
        assert live == await whole.dump()
        await parts.rebuild()
        assert await parts.dump() == live
    finally:
        await whole.close()
        await parts.close()
