"""ledger/fast.py stores the common case as the general path would, and declines the rest.

Every test ingests the same batches into two ledgers, one with the fast path and one
without (``Ledger.fast_path``), and holds them to the same results, the same log (every
column but the time received), the same feed heads, pending events and projections; the
fast one must also equal its own rebuild. The tests also count the batches the fast path
stored, so that a fast path that never runs (or runs where it must not) fails them.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import tempfile
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from podlink.ledger import fast
from podlink.ledger.ledger import Ledger, Limits
from podlink.protocol import kinds
from podlink.protocol.envelope import Event
from tests.ledger.helpers import World, wires
from tests.ledger.scenario import Scenario, deliveries

_LOG = (
    "SELECT pos, id, pod, author, lane, seq, ts, kind, root, payload, sig, body, origin, "
    "dropped FROM events ORDER BY pos"
)


@contextlib.contextmanager
def counted() -> Iterator[list[bool]]:
    """Per call of ``fast.store`` while in the block (a batch that qualified): whether it
    stored the batch."""
    real = fast.store
    seen: list[bool] = []

    async def store(batch, cands):  # type: ignore[no-untyped-def]  # the real one, counted
        done = await real(batch, cands)
        seen.append(done)
        return done

    fast.store = store
    try:
        yield seen
    finally:
        fast.store = real


async def _state(ledger: Ledger) -> dict:
    db = ledger.db
    return {
        "log": await db.execute_fetchall(_LOG),
        "feeds": await db.execute_fetchall("SELECT * FROM feeds ORDER BY author, lane"),
        "pending": await db.execute_fetchall("SELECT id, why FROM pending ORDER BY id"),
        "projections": await ledger.dump(),
    }


@contextlib.asynccontextmanager
async def fast_and_general(
    root: Path, pod: bytes, batch_size: int = 1000
) -> AsyncIterator[tuple[list[Ledger], list[bool]]]:
    """Two ledgers of ``pod`` under ``root``, the fast path on and off, and the fast
    path's verdicts while in the block (``counted``)."""
    ledgers = []
    try:
        for name, on in (("fast", True), ("general", False)):
            ledger = await Ledger.open(root / f"{name}.db", limits=Limits(batch_size=batch_size))
            ledgers.append(ledger)
            ledger.fast_path = on
            await ledger.set_pod(pod)
        with counted() as seen:
            yield ledgers, seen
    finally:
        for ledger in ledgers:
            await ledger.close()


async def twins(
    root: Path, pod: bytes, batches: Sequence[Sequence[bytes]], batch_size: int = 1000
) -> list[int]:
    """Ingest ``batches`` with and without the fast path; assert the same outcome; return
    how many batches the fast path stored and declined."""
    async with fast_and_general(root, pod, batch_size) as (ledgers, seen):
        outcomes: list[list] = [[], []]
        for batch in batches:
            for i, ledger in enumerate(ledgers):
                outcomes[i].append(list(await ledger.ingest(batch)))
        assert outcomes[0] == outcomes[1]
        states = [await _state(ledger) for ledger in ledgers]
        for part in states[0]:
            assert states[0][part] == states[1][part], f"{part} differ"
        live = states[0]["projections"]
        await ledgers[0].rebuild()
        assert await ledgers[0].dump() == live
        assert ledgers[0].next_pos == ledgers[1].next_pos
        assert ledgers[0].heads == ledgers[1].heads
        return [seen.count(True), seen.count(False)]


def chunks(events: Sequence[Event], rng: random.Random) -> list[list[bytes]]:
    """The events in the order written, cut into batches of random sizes."""
    out, i = [], 0
    while i < len(events):
        size = rng.choice((1, 1, 2, 3, 5, 8, 40))
        out.append(wires(events[i : i + size]))
        i += size
    return out


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.randoms(use_true_random=False), steps=st.integers(5, 60),
       order=st.randoms(use_true_random=False))  # fmt: skip
def test_both_paths_agree_on_random_histories(
    seed: random.Random, steps: int, order: random.Random
) -> None:
    """Random honest histories of 2-3 pods (claims across pods and lanes, answers, closes,
    removed organizers writing, members), delivered in the order written and in a
    shuffled order with copies and gaps."""
    scenario = Scenario.build(seed, steps=steps)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        pod = scenario.pods[0].id
        asyncio.run(twins(root / "a", pod, chunks(scenario.events, order)))
        asyncio.run(twins(root / "b", pod, deliveries(scenario.events, order), batch_size=7))


def _world(tmp: Path) -> tuple[World, dict]:
    world = World()
    elm, elm_setup = world.pod("Elm")
    oak, oak_setup = world.pod("Oak")
    ana, add_ana = world.organizer(elm, "Ana")
    bo, add_bo = world.organizer(elm, "Bo")
    cy, add_cy = world.organizer(oak, "Cy", by=oak.author)
    setup = [*elm_setup, *oak_setup, add_ana, add_bo, add_cy]
    return world, {"elm": elm, "oak": oak, "ana": ana, "bo": bo, "cy": cy, "setup": setup}


@pytest.mark.parametrize("cap", [fast.Memo.CAP, 3, 0])
async def test_a_day_of_new_things_and_claims_takes_the_fast_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cap: int
) -> None:
    """Requests, offers, resources and claims (own pod, other pod, narrower lane, on
    accepted requests, several on one request in a batch, out of (ts, id) order within
    it), in batches: all stored by the fast path, as the general path stores them.

    With request rows kept between batches (``fast.Memo``), a few, or none: a claim on a
    request the fast path wrote is folded onto the row it kept, or onto the row read."""
    monkeypatch.setattr(fast.Memo, "CAP", cap)
    real, reads = fast._stored_requests, []

    async def counted_reads(db, ids):  # type: ignore[no-untyped-def]
        reads.append(len(ids))
        return await real(db, ids)

    monkeypatch.setattr(fast, "_stored_requests", counted_reads)
    world, w = _world(tmp_path)
    rng = random.Random(7)
    writers = [w["ana"], w["bo"], w["cy"], w["elm"].author]
    events: list[Event] = []
    requests: list[Event] = []
    for i in range(400):
        world.tick(rng.randint(1, 5))
        author = rng.choice(writers)
        roll = rng.random()
        lane = rng.choice(("peers", "network"))
        if roll < 0.35 or not requests:
            body: kinds.Body = kinds.RequestOpened(title=f"need {i}", category="food",
                                                   urgency=rng.choice(kinds.URGENCIES))  # fmt: skip
            ev = author.write(body, lane)
            requests.append(ev)
        elif roll < 0.5:
            ev = author.write(kinds.OfferOpened(title=f"offer {i}", category="tools"), lane)
        elif roll < 0.6:
            ev = author.write(kinds.ResourceShared(name=f"bank {i}", category="food"), "network")
        else:
            target = rng.choice(requests[-30:] if rng.random() < 0.5 else requests)
            ev = author.write(kinds.ClaimMade(note=f"claim {i}"), lane, [target.id])
        events.append(ev)
    # Within a batch, two claims of the owning pod on one request, stamped out of their
    # batch order: the one stamped first is accepted.
    need = w["ana"].write(kinds.RequestOpened(title="shelf", category="repairs"), "network")
    world.tick(10)
    late = w["ana"].write(kinds.ClaimMade(note="later"), "network", [need.id])
    early = w["bo"].write(kinds.ClaimMade(note="earlier"), "network", [need.id],
                          ts=late.header.ts - 5)  # fmt: skip
    batches = [wires(w["setup"])]
    batches += [wires(events[i : i + 25]) for i in range(0, len(events), 25)]
    batches += [wires([need]), wires([late, early])]
    seen = await twins(tmp_path / "a", w["elm"].id, batches)
    assert seen == [len(batches) - 1, 0]
    if cap >= len(requests) + 1:  # every request kept: none read back
        assert reads == []
    else:
        assert sum(reads) > (50 if cap == 0 else 20)


async def test_what_the_fast_path_declines_is_stored_the_general_way(tmp_path: Path) -> None:
    """Each case below is stored by the general path (the fast path checks the store and
    declines it), to the same outcome as without the fast path."""
    world, w = _world(tmp_path)
    ana, bo, cy, elm = w["ana"], w["bo"], w["cy"], w["elm"]
    need = ana.write(kinds.RequestOpened(title="soup", category="food"), "network")
    world.tick(10)
    first = cy.write(kinds.ClaimMade(note="first"), "network", [need.id])
    # A claim stamped before the request's newest claim: it sorts before it.
    before = bo.write(kinds.ClaimMade(note="stamped earlier"), "network", [need.id],
                      ts=first.header.ts - 3)  # fmt: skip
    # A claim after that (fast again) on the request the general path just folded and
    # kept (projections.FoldCache): the kept fold must not be continued without it.
    world.tick(10)
    more = cy.write(kinds.ClaimMade(note="more"), "network", [need.id])
    world.tick(10)
    accept = ana.write(kinds.ClaimAccepted(), "network", [first.id, need.id])
    world.tick(10)
    after_answer = bo.write(kinds.ClaimMade(note="after an accept"), "network", [need.id])
    # A claim stored before its request (different feeds).
    world.tick(10)
    pot = bo.write(kinds.RequestOpened(title="pot", category="tools"), "peers")
    world.tick(10)
    early_claim = cy.write(kinds.ClaimMade(note="before its request"), "peers", [pot.id])
    # An answer naming only its claim, stored before the claim.
    world.tick(10)
    lift = ana.write(kinds.RequestOpened(title="lift", category="transport"), "network")
    world.tick(10)
    claim = cy.write(kinds.ClaimMade(note="a lift"), "network", [lift.id])
    world.tick(10)
    answer = ana.write(kinds.ClaimDeclined(reason="sorted"), "network", [claim.id])
    # A claim naming an offer.
    world.tick(10)
    offer = bo.write(kinds.OfferOpened(title="rides", category="transport"), "network")
    world.tick(10)
    odd = cy.write(kinds.ClaimMade(note="on an offer"), "network", [offer.id])
    # A claim by an organizer removed from office.
    world.tick(10)
    removal = kinds.OrganizerRemoved(key=bo.keypair.public, reason="moved")
    gone = elm.author.write(removal, "network")
    world.tick(10)
    out = bo.write(kinds.ClaimMade(note="out of office"), "network", [lift.id])
    batches = [
        wires(w["setup"]), wires([need]), wires([first]), wires([before]),
        wires([more]), wires([accept]), wires([after_answer]),
        wires([early_claim]), wires([pot]),
        wires([lift]), wires([answer]), wires([claim]),
        wires([offer]), wires([odd]),
        wires([gone]), wires([out]),
    ]  # fmt: skip
    seen = await twins(tmp_path / "a", elm.id, batches)
    # Fast: need, first, more, lift, offer. Declined in the store: before (stamped before a
    # stored claim), after_answer (an accept among the request's followers), early_claim
    # (its request unknown), pot (a claim names it already), claim (an answer names it
    # already), odd (names an offer). The accept, answer, removal and the removed
    # organizer's claim never qualify.
    assert seen == [5, 6]


async def test_a_feed_whose_gap_was_filled_takes_the_fast_path_again(tmp_path: Path) -> None:
    """A claim that comes before its feed predecessor waits; once that one releases it,
    nothing waits on the feed, and its next event is stored the fast way (the set of
    feeds with parked events used to keep every feed that ever had one)."""
    world, w = _world(tmp_path)
    ana, cy = w["ana"], w["cy"]
    need = ana.write(kinds.RequestOpened(title="soup", category="food"), "network")
    claims = []
    for note in ("one", "two", "three"):
        world.tick(10)
        claims.append(cy.write(kinds.ClaimMade(note=note), "network", [need.id]))
    c1, c2, c3 = claims
    batches = [wires(w["setup"]), wires([need]), wires([c2]), wires([c1]), wires([c3])]
    seen = await twins(tmp_path / "a", w["elm"].id, batches)
    # need and c3 the fast way; c2 (not next in its feed) and c1 (its successor parked)
    # never qualify.
    assert seen == [2, 0]
