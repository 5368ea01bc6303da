"""Review probes of the state rules (DESIGN.md "State rules"): real signed events, real ledger."""

from __future__ import annotations

import random

from podlink.ledger import queries
from podlink.protocol import kinds as k
from tests.ledger.conftest import OpenLedger
from tests.ledger.helpers import Scene, World, claim_status, request_row, wires


async def test_checked_claim_lifecycle_and_queries_agree_with_fold(scene: Scene) -> None:
    s = scene
    req = s.need()
    await s.feed(req)
    cx = s.ben.write(k.ClaimMade(note="oak"), "network", [req.id])
    own = s.ana.write(k.ClaimMade(note="elm"), "network", [req.id])
    await s.feed(cx, own)
    assert await claim_status(s.ledger, cx.id) == "pending"
    assert await claim_status(s.ledger, own.id) == "accepted"
    db = s.ledger.db
    assert [r["id"] for r in await queries.list_requests(db, status="accepted")] == [req.id]
    assert [c["id"] for c in await queries.list_claims(db, status="pending")] == [cx.id]
    assert await queries.suggest_matches(db, s.elm.id) == []
    dec = s.ana.write(k.ClaimDeclined(), "network", [own.id])
    await s.feed(dec)
    row = await request_row(s.ledger, req.id)
    assert row and (row["status"], row["accepted_claim"]) == ("open", None)
    acc = s.ana.write(k.ClaimAccepted(), "network", [cx.id])
    acc2 = s.ana.write(k.ClaimAccepted(), "network", [own.id])
    await s.feed(acc, acc2)
    row = await request_row(s.ledger, req.id)
    assert row and (row["status"], row["accepted_claim"]) == ("accepted", cx.id)
    ful = s.ana.write(k.RequestFulfilled(note="done"), "network", [req.id])
    dec2 = s.ana.write(k.ClaimDeclined(), "network", [cx.id])
    late = s.ben.write(k.ClaimMade(note="late"), "network", [req.id])
    await s.feed(ful, dec2, late)
    row = await request_row(s.ledger, req.id)
    assert row and (row["status"], row["accepted_claim"]) == ("fulfilled", cx.id)
    assert await claim_status(s.ledger, cx.id) == "accepted"
    assert await claim_status(s.ledger, late.id) == "closed"
    got = await queries.get_request(db, req.id)
    assert {c["id"]: c["status"] for c in got["claims"]} == {
        cx.id: "accepted", own.id: "declined", late.id: "closed"}
    await s.rebuild_equals_live()


async def test_checked_other_pod_cannot_change_request_or_offer(scene: Scene) -> None:
    s = scene
    req = s.need()
    cx = s.ana.write(k.ClaimMade(), "network", [req.id])  # own: accepted
    await s.feed(req, cx)
    evs = [
        s.ben.write(k.RequestUpdated(title="Hijack"), "network", [req.id]),
        s.ben.write(k.ClaimDeclined(), "network", [cx.id]),
        s.ben.write(k.RequestCancelled(), "network", [req.id]),
        s.ben.write(k.RequestFulfilled(), "network", [req.id]),
        s.oak.author.write(k.ClaimDeclined(), "network", [cx.id]),
        s.oak.author.write(k.RequestCancelled(), "network", [req.id]),
    ]
    await s.feed(*evs)
    row = await request_row(s.ledger, req.id)
    assert row
    assert (row["status"], row["title"], row["accepted_claim"]) == ("accepted", "Soup", cx.id)
    off = s.ana.write(k.OfferOpened(title="Bread", category="food"), "network")
    await s.feed(off)
    await s.feed(s.ben.write(k.OfferWithdrawn(), "network", [off.id]))
    assert [o["id"] for o in await queries.list_offers(s.ledger.db)] == [off.id]
    await s.rebuild_equals_live()


async def test_checked_state_independent_of_arrival_order(
    make_ledger: OpenLedger, world: World
) -> None:
    elm, setup = world.pod("Elm")
    oak, oak_setup = world.pod("Oak")
    ana, add_ana = world.organizer(elm, "Ana")
    ben, add_ben = world.organizer(oak, "Ben")
    base = [*setup, *oak_setup, add_ana, add_ben]
    req = ana.write(k.RequestOpened(title="Soup", category="food"), "network")
    c1 = ben.write(k.ClaimMade(note="1"), "network", [req.id])
    a1 = ana.write(k.ClaimAccepted(), "network", [c1.id])
    c2 = ben.write(k.ClaimMade(note="2"), "network", [req.id])
    own = ana.write(k.ClaimMade(note="own"), "network", [req.id])
    d1 = ana.write(k.ClaimDeclined(), "network", [c1.id])
    a2 = ana.write(k.ClaimAccepted(), "network", [c2.id])
    up = ana.write(k.RequestUpdated(title="Hot soup"), "network", [req.id])
    off = ben.write(k.OfferOpened(title="Bread", category="food"), "network")
    wd = ben.write(k.OfferWithdrawn(), "network", [off.id])
    evs = [req, c1, a1, c2, own, d1, a2, up, off, wd]
    dumps = []
    rng = random.Random(7)
    for i in range(8):
        order = evs[:]
        rng.shuffle(order)
        led = await make_ledger(f"o{i}.db", pod=elm.id)
        await led.ingest(wires(base))
        for e in order:
            await led.ingest(wires([e]))
        dumps.append(await led.dump())
        await led.rebuild()
        assert await led.dump() == dumps[-1]
    for d in dumps[1:]:
        assert d == dumps[0]
    reqs = dumps[0]["requests"]
    assert len(reqs) == 1
