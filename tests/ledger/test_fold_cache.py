"""Requests folded batch after batch from where they stopped equal a fold from the start.

Each batch that brought an event of a stored request re-read and re-folded the request's
every event and re-read its claims' rows: claims arriving one per batch (a live stream
sends a page per event written) cost O(claims^2). Ledger.folds keeps the requests folded
last and continues them with the next events when those sort after all folded ones
(projections.FoldCache, state.RequestFold). These tests hold that to one ingest of all
the events, and to a rebuild, for random histories streamed in order (the case the
cache serves), nearly in order, and with duplicates, bodiless copies and gaps.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from podlink.ledger import projections
from podlink.ledger.ledger import Ledger
from podlink.protocol import kinds
from tests.ledger.helpers import World, bodiless, statuses, stored_ids, wires
from tests.ledger.scenario import Scenario, deliveries


def streamed(events: list, rng: random.Random, mode: str) -> list[list[bytes]]:
    """Batches of 1-4 wires: in order, nearly in order (a few neighbours swapped, some
    first without their body), or as ``deliveries`` sends them (any order)."""
    if mode == "any":
        return deliveries(events, rng)
    wires_ = [e.to_wire() for e in events]
    if mode == "nearly":
        for i in rng.sample(range(len(wires_) - 1), len(wires_) // 10):
            wires_[i], wires_[i + 1] = wires_[i + 1], wires_[i]
        for i in rng.sample(range(len(events)), len(events) // 20):
            wires_.insert(rng.randrange(len(wires_)), bodiless(events[i]))
    batches, i = [], 0
    while i < len(wires_):
        size = rng.randint(1, 4)
        batches.append(wires_[i : i + size])
        i += size
    return batches


@pytest.mark.parametrize("mode", ["in-order", "nearly", "any"])
@pytest.mark.parametrize("seed", range(6))
async def test_requests_continued_batch_by_batch_equal_one_fold(
    tmp_path: Path, seed: int, mode: str
) -> None:
    rng = random.Random(seed)
    scenario = Scenario.build(rng, pods=3, steps=150)
    whole = await Ledger.open(tmp_path / "whole.db")
    parts = await Ledger.open(tmp_path / "parts.db")
    try:
        for led in (whole, parts):
            await led.set_pod(scenario.pods[0].id)
        await whole.ingest(wires(scenario.events))
        for batch in streamed(scenario.events, rng, mode):
            await parts.ingest(batch)
        assert await stored_ids(parts) == await stored_ids(whole)
        live = await parts.dump()
        assert live == await whole.dump()
        await parts.rebuild()
        assert await parts.dump() == live
    finally:
        await whole.close()
        await parts.close()


async def test_claims_streamed_on_one_request_are_not_folded_again_from_the_table(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Accepts, declines, an update and a fulfilment among 200 claims, one event per
    batch: the request is read back from the table once, when the first answer comes (the
    claims before it are folded onto the request's row by ledger/fast.py; a request folded
    from memory, all its events new, is not kept), and the state is a fold's from the
    start."""
    world = World()
    elm, setup = world.pod("Elm")
    oak, oak_setup = world.pod("Oak")
    need = elm.author.write(kinds.RequestOpened(title="Soup", category="food"), "network")
    stream = []
    for i in range(200):
        world.tick()
        claim = oak.author.write(kinds.ClaimMade(note=f"{i}"), "network", [need.id])
        stream.append(claim)
        if i % 50 == 10:
            world.tick()
            stream.append(elm.author.write(kinds.ClaimAccepted(), "network", [claim.id, need.id]))
        if i % 50 == 20:
            world.tick()
            stream.append(elm.author.write(
                kinds.ClaimDeclined(reason="fell through"), "network", [stream[-12].id, need.id]))
        if i == 120:
            world.tick()
            stream.append(elm.author.write(kinds.RequestUpdated(urgency="urgent"), "network",
                                           [need.id]))  # fmt: skip
    world.tick()
    stream.append(elm.author.write(kinds.RequestFulfilled(note="done"), "network", [need.id]))
    read = [0]
    real = projections.load_roots

    async def counted(db, roots):  # the real read, counted
        grouped = await real(db, roots)
        read[0] += need.id in grouped
        return grouped

    ledger = await Ledger.open(tmp_path / "pod.db")
    whole = await Ledger.open(tmp_path / "whole.db")
    try:
        for led in (ledger, whole):
            await led.set_pod(elm.id)
        assert set(statuses(await ledger.ingest(wires([*setup, *oak_setup, need])))) == {"stored"}
        monkeypatch.setattr(projections, "load_roots", counted)
        for event in stream:
            assert statuses(await ledger.ingest(wires([event]))) == ["stored"]
        assert read[0] == 1, f"the request read back {read[0]} times"
        await whole.ingest(wires([*setup, *oak_setup, need, *stream]))
        live = await ledger.dump()
        assert live == await whole.dump()
        [row] = [r for r in live["requests"]]
        assert "fulfilled" in row
    finally:
        await ledger.close()
        await whole.close()


async def compare_with_one_ingest(tmp_path: Path, pod: bytes, batches: list[list]) -> dict:
    """Ingest ``batches`` one by one, and all their events at once into another ledger;
    the two dumps must be equal. Returns the dump."""
    parts = await Ledger.open(tmp_path / "parts.db")
    whole = await Ledger.open(tmp_path / "whole.db")
    try:
        for led in (parts, whole):
            await led.set_pod(pod)
        for batch in batches:
            await parts.ingest(wires(batch))
        await whole.ingest(wires([e for batch in batches for e in batch]))
        live = await parts.dump()
        assert live == await whole.dump()
        return live
    finally:
        await parts.close()
        await whole.close()


async def test_answers_moved_to_a_kept_request_fold_it_from_the_table(tmp_path: Path) -> None:
    """An accept naming only its claim (as older podlink wrote it) comes before the claim
    and is filed under the claim; the claim's batch moves it to the request, which must
    then count it, not continue its kept fold with the claim alone."""
    world = World()
    elm, setup = world.pod("Elm")
    oak, oak_setup = world.pod("Oak")
    need = elm.author.write(kinds.RequestOpened(title="Soup", category="food"), "network")
    world.tick()
    claim = oak.author.write(kinds.ClaimMade(note="me"), "network", [need.id])
    world.tick()
    accept = elm.author.write(kinds.ClaimAccepted(), "network", [claim.id])  # one ref
    live = await compare_with_one_ingest(
        tmp_path, elm.id, [[*setup, *oak_setup, need], [accept], [claim]]
    )
    assert any("accepted" in row for row in live["claims"]), live["claims"]


async def test_a_late_roster_change_folds_a_kept_request_from_the_table(tmp_path: Path) -> None:
    """Ana's removal, stamped before the request she opened, arrives after it was folded
    (and kept) with a new claim on it: the request no longer counts (soft-failed), which
    a fold continued under the old roster would miss."""
    world = World()
    elm, setup = world.pod("Elm")
    oak, oak_setup = world.pod("Oak")
    ana, add_ana = world.organizer(elm, "Ana")
    world.tick()
    removal = elm.author.write(kinds.OrganizerRemoved(key=ana.keypair.public), "network")
    world.tick()
    need = ana.write(kinds.RequestOpened(title="Soup", category="food"), "network")
    world.tick()
    first = oak.author.write(kinds.ClaimMade(note="me"), "network", [need.id])
    world.tick()
    second = oak.author.write(kinds.ClaimMade(note="me too"), "network", [need.id])
    live = await compare_with_one_ingest(
        tmp_path, elm.id, [[*setup, *oak_setup, add_ana, need], [first], [removal, second]]
    )
    assert live["requests"] == [] and live["claims"] == []
