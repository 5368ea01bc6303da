"""The state rules of DESIGN.md, driven by real signed events through a real ledger."""

from __future__ import annotations

import json

from podlink.ledger import queries
from podlink.protocol import kinds as k
from podlink.protocol.envelope import encode_wire
from tests.ledger.conftest import OpenLedger
from tests.ledger.helpers import (
    Scene,
    claim_status,
    count,
    one,
    query,
    request_row,
)


async def test_request_lifecycle_open_accepted_fulfilled(scene: Scene) -> None:
    s = scene
    req = s.need()
    await s.feed(req)
    row = await request_row(s.ledger, req.id)
    assert row is not None
    assert (row["status"], row["title"], row["pod"], row["author"], row["claims"]) == (
        "open", "Soup", s.elm.id, s.ana.keypair.public, 0,
    )  # fmt: skip
    claim = s.ben.write(k.ClaimMade(note="Oak can cook"), "network", [req.id])
    await s.feed(claim)
    assert await claim_status(s.ledger, claim.id) == "pending"  # another pod's: waits
    row = await request_row(s.ledger, req.id)
    assert row and (row["status"], row["claims"]) == ("open", 1)

    accept = s.ana.write(k.ClaimAccepted(), "network", [claim.id])
    await s.feed(accept)
    row = await request_row(s.ledger, req.id)
    assert row and (row["status"], row["accepted_claim"]) == ("accepted", claim.id)
    assert await claim_status(s.ledger, claim.id) == "accepted"

    ash, ash_setup = s.world.pod("Ash")
    late = ash.author.write(k.ClaimMade(), "network", [req.id])
    done = s.ana.write(k.RequestFulfilled(note="Delivered", hours=2.5), "network", [req.id])
    await s.feed(*ash_setup, late, done)
    row = await request_row(s.ledger, req.id)
    assert row and (row["status"], row["closed_ts"]) == ("fulfilled", done.ts)
    assert await query(s.ledger, "SELECT id, request, pod, note, hours, ts FROM fulfilments") == [
        (done.id, req.id, s.elm.id, "Delivered", 2.5, done.ts)
    ]
    assert await claim_status(s.ledger, claim.id) == "accepted"
    assert await claim_status(s.ledger, late.id) == "closed"  # still pending at the fulfilment
    await s.rebuild_equals_live()


async def test_pending_claims_close_with_their_request(scene: Scene) -> None:
    s = scene
    req = s.need()
    claim = s.ben.write(k.ClaimMade(), "network", [req.id])
    done = s.ana.write(k.RequestFulfilled(), "network", [req.id])
    after = s.ben.write(k.ClaimMade(note="still?"), "network", [req.id])
    await s.feed(req, claim, done, after)
    assert await claim_status(s.ledger, claim.id) == "closed"
    assert await claim_status(s.ledger, after.id) == "closed"
    # Fulfilled is final: a second fulfilment and a cancel change nothing.
    again = s.ana.write(k.RequestFulfilled(note="twice"), "network", [req.id])
    cancel = s.ana.write(k.RequestCancelled(), "network", [req.id])
    await s.feed(again, cancel)
    row = await request_row(s.ledger, req.id)
    assert row and (row["status"], row["closed_ts"]) == ("fulfilled", done.ts)
    assert await count(s.ledger, "fulfilments") == 1


async def test_cancel(scene: Scene) -> None:
    s = scene
    req = s.need()
    claim = s.ben.write(k.ClaimMade(), "network", [req.id])
    cancel = s.ana.write(k.RequestCancelled(reason="Family came"), "network", [req.id])
    accept = s.ana.write(k.ClaimAccepted(), "network", [claim.id])
    update = s.ana.write(k.RequestUpdated(title="Changed"), "network", [req.id])
    await s.feed(req, claim, cancel, accept, update)
    row = await request_row(s.ledger, req.id)
    assert row and (row["status"], row["closed_ts"], row["accepted_claim"], row["title"]) == (
        "cancelled", cancel.ts, None, "Soup",
    )  # fmt: skip
    assert await claim_status(s.ledger, claim.id) == "closed"
    await s.rebuild_equals_live()


async def test_update_changes_only_the_given_fields(scene: Scene) -> None:
    s = scene
    req = s.ana.write(
        k.RequestOpened(title="Soup", category="food", details="Two bowls", area="north"),
        "network",
    )
    upd = s.ana.write(k.RequestUpdated(urgency="urgent", needed_by="2030-01-31"), "network",
                      [req.id])  # fmt: skip
    await s.feed(req, upd)
    row = await request_row(s.ledger, req.id)
    assert row is not None
    assert (row["title"], row["details"], row["area"], row["urgency"], row["needed_by"]) == (
        "Soup", "Two bowls", "north", "urgent", "2030-01-31",
    )  # fmt: skip
    assert row["updated_ts"] == upd.ts and row["opened_ts"] == req.ts


async def test_own_pod_claim_is_accepted_at_once(scene: Scene) -> None:
    s = scene
    req = s.need()
    mine = s.elm.author.write(k.ClaimMade(note="Our Bea drives"), "network", [req.id])
    theirs = s.ben.write(k.ClaimMade(), "network", [req.id])
    await s.feed(req, mine, theirs)
    row = await request_row(s.ledger, req.id)
    assert row and (row["status"], row["accepted_claim"]) == ("accepted", mine.id)
    assert await claim_status(s.ledger, mine.id) == "accepted"
    assert await claim_status(s.ledger, theirs.id) == "pending"


async def test_no_double_match(scene: Scene) -> None:
    s = scene
    ash, ash_setup = s.world.pod("Ash")
    req = s.need()
    c1 = s.ben.write(k.ClaimMade(), "network", [req.id])
    c2 = ash.author.write(k.ClaimMade(), "network", [req.id])
    a1 = s.ana.write(k.ClaimAccepted(), "network", [c1.id])
    a2 = s.elm.author.write(k.ClaimAccepted(), "network", [c2.id])  # a second organizer, late
    await s.feed(*ash_setup, req, c1, c2, a2, a1)  # arrival order does not matter
    row = await request_row(s.ledger, req.id)
    assert row and (row["status"], row["accepted_claim"]) == ("accepted", c1.id)
    assert await claim_status(s.ledger, c1.id) == "accepted"
    assert await claim_status(s.ledger, c2.id) == "pending"
    assert await count(s.ledger, "claims") == 2


async def test_declining_the_accepted_claim_reopens_the_request(scene: Scene) -> None:
    s = scene
    ash, ash_setup = s.world.pod("Ash")
    req = s.need()
    c1 = s.ben.write(k.ClaimMade(), "network", [req.id])
    c2 = ash.author.write(k.ClaimMade(), "network", [req.id])
    a1 = s.ana.write(k.ClaimAccepted(), "network", [c1.id])
    d1 = s.ana.write(k.ClaimDeclined(reason="fell through"), "network", [c1.id])
    await s.feed(*ash_setup, req, c1, c2, a1, d1)
    row = await request_row(s.ledger, req.id)
    assert row and (row["status"], row["accepted_claim"]) == ("open", None)
    assert await claim_status(s.ledger, c1.id) == "declined"
    assert await claim_status(s.ledger, c2.id) == "pending"
    again = s.ana.write(k.ClaimAccepted(), "network", [c1.id])  # a declined claim stays so
    a2 = s.ana.write(k.ClaimAccepted(), "network", [c2.id])
    await s.feed(again, a2)
    row = await request_row(s.ledger, req.id)
    assert row and (row["status"], row["accepted_claim"]) == ("accepted", c2.id)
    await s.rebuild_equals_live()


async def test_declining_a_pending_claim(scene: Scene) -> None:
    s = scene
    req = s.need()
    c1 = s.ben.write(k.ClaimMade(), "network", [req.id])
    d1 = s.ana.write(k.ClaimDeclined(), "network", [c1.id])
    await s.feed(req, c1, d1)
    assert await claim_status(s.ledger, c1.id) == "declined"
    row = await request_row(s.ledger, req.id)
    assert row and row["status"] == "open"


async def test_another_pod_cannot_change_a_request(scene: Scene) -> None:
    s = scene
    req = s.need()
    claim = s.ben.write(k.ClaimMade(), "network", [req.id])
    await s.feed(req, claim)
    before = await s.ledger.dump()
    meddling = [
        s.ben.write(k.ClaimAccepted(), "network", [claim.id]),
        s.ben.write(k.ClaimDeclined(), "network", [claim.id]),
        s.ben.write(k.RequestUpdated(title="Mine now"), "network", [req.id]),
        s.ben.write(k.RequestFulfilled(hours=9), "network", [req.id]),
        s.oak.author.write(k.RequestCancelled(), "network", [req.id]),
    ]
    await s.feed(*meddling)  # stored (they are well formed), never applied
    assert await s.ledger.dump() == before
    await s.rebuild_equals_live()


async def test_a_claim_answer_arriving_before_its_claim(scene: Scene) -> None:
    s = scene
    req = s.need()
    claim = s.ben.write(k.ClaimMade(), "network", [req.id])
    accept = s.ana.write(k.ClaimAccepted(), "network", [claim.id])
    await s.feed(req)
    await s.feed(accept)  # Ana's feed, ahead of Ben's claim: stored, parked on the claim
    assert await claim_status(s.ledger, claim.id) is None
    row = await request_row(s.ledger, req.id)
    assert row and row["status"] == "open"
    await s.feed(claim)
    assert await one(s.ledger, "SELECT root FROM events WHERE id = ?", (accept.id,)) == req.id
    row = await request_row(s.ledger, req.id)
    assert row and (row["status"], row["accepted_claim"]) == ("accepted", claim.id)
    await s.rebuild_equals_live()


async def test_a_claim_answer_before_its_claim_in_one_batch(scene: Scene) -> None:
    s = scene
    req = s.need()
    claim = s.ben.write(k.ClaimMade(), "network", [req.id])
    decline = s.ana.write(k.ClaimDeclined(), "network", [claim.id])
    await s.feed(decline, req, claim)
    assert await claim_status(s.ledger, claim.id) == "declined"
    await s.rebuild_equals_live()


async def test_a_claim_naming_a_claim_does_not_join_its_request(scene: Scene) -> None:
    """Only answers follow a claim to its request. A claim.make that names a claim (not a
    request) and comes just before that claim in one batch stays apart, as in a rebuild."""
    s = scene
    req = s.need()
    on_req = s.ben.write(k.ClaimMade(note="Oak can cook"), "network", [req.id])
    on_claim = s.elm.author.write(k.ClaimMade(note="a claim on a claim"), "network", [on_req.id])
    await s.feed(req, on_claim, on_req)
    row = await request_row(s.ledger, req.id)
    assert row and (row["status"], row["accepted_claim"], row["claims"]) == ("open", None, 1)
    assert await claim_status(s.ledger, on_req.id) == "pending"
    await s.rebuild_equals_live()


async def test_offers_open_and_withdraw(scene: Scene) -> None:
    s = scene
    offer = s.ana.write(
        k.OfferOpened(title="Rides", category="transport", availability="Tue", capacity=3),
        "network",
    )
    await s.feed(offer)
    sql = "SELECT id, pod, title, category, availability, capacity, status, closed_ts FROM offers"
    assert await query(s.ledger, sql) == [
        (offer.id, s.elm.id, "Rides", "transport", "Tue", 3, "open", None)
    ]
    meddle = s.ben.write(k.OfferWithdrawn(), "network", [offer.id])
    await s.feed(meddle)
    assert await one(s.ledger, "SELECT status FROM offers") == "open"
    withdraw = s.elm.author.write(k.OfferWithdrawn(reason="Car sold"), "network", [offer.id])
    await s.feed(withdraw)
    assert await one(s.ledger, "SELECT status, closed_ts FROM offers") == ("withdrawn", withdraw.ts)
    await s.rebuild_equals_live()


async def test_a_claim_on_an_offer_does_not_hide_it(scene: Scene) -> None:
    """Claims answer requests; one pointed at an offer (or a forget at a resource) must not
    make the offer (resource) vanish from every pod's tables."""
    s = scene
    offer = s.ana.write(k.OfferOpened(title="Rides", category="transport"), "network")
    res = s.ana.write(k.ResourceShared(name="Food bank", category="food"), "network")
    await s.feed(offer, res)
    before = await s.ledger.dump()
    await s.feed(
        s.ben.write(k.ClaimMade(note="we'll take it"), "network", [offer.id]),
        s.ben.write(k.RequestCancelled(), "network", [res.id]),
    )
    assert await s.ledger.dump() == before
    await s.rebuild_equals_live()


async def test_resources(scene: Scene) -> None:
    s = scene
    res = s.ben.write(
        k.ResourceShared(name="Food bank", category="food", what="Bread", where="Mill Rd",
                         when="Sat", contact="555"),
        "network",
    )  # fmt: skip
    await s.feed(res)
    assert await query(s.ledger, "SELECT * FROM resources") == [
        (res.id, s.oak.id, "network", "Food bank", "food", "Bread", "Mill Rd", "Sat", "555",
         res.ts),
    ]  # fmt: skip


async def test_pods_directory_from_genesis_and_info(scene: Scene) -> None:
    s = scene
    rows = await query(s.ledger, "SELECT pod, name, founded_ts FROM pods ORDER BY name")
    assert [r[1] for r in rows] == ["Elm", "Oak"]
    info = s.ana.write(
        k.PodInfoChanged(name="Elm Street", zone="Elm 1-40", categories=["food", "tools"],
                         contact="elm@example.org"),
        "network",
    )  # fmt: skip
    await s.feed(info)
    row = await query(s.ledger, "SELECT name, zone, categories, contact, updated_ts "
                                "FROM pods WHERE pod = ?", (s.elm.id,))  # fmt: skip
    assert row == [("Elm Street", "Elm 1-40", json.dumps(["food", "tools"]), "elm@example.org",
                    info.ts)]  # fmt: skip
    # Nobody else speaks for Elm: Ben's info and a genesis by Ana are ignored.
    await s.feed(
        s.ben.write(k.PodInfoChanged(name="Hijacked"), "network"),
        s.ana.write(k.PodFounded(name="Refounded"), "network"),
    )
    assert await one(s.ledger, "SELECT name FROM pods WHERE pod = ?", (s.elm.id,)) == "Elm Street"
    await s.rebuild_equals_live()


async def test_roster_add_and_remove(scene: Scene) -> None:
    s = scene
    roster = await query(s.ledger, "SELECT pod, key, name, until_ts FROM roster ORDER BY name")
    assert roster == [(s.elm.id, s.ana.keypair.public, "Ana", None),
                      (s.oak.id, s.ben.keypair.public, "Ben", None)]  # fmt: skip
    cai, add = s.world.organizer(s.elm, "Cai")
    by_cai = cai.write(k.OrganizerRemoved(key=s.ana.keypair.public, reason="moved"), "network")
    await s.feed(add, by_cai)  # an organizer may remove another
    rows = await query(s.ledger, "SELECT key, from_ts, until_ts, add_id, remove_id FROM roster "
                                 "WHERE pod = ? ORDER BY from_ts", (s.elm.id,))  # fmt: skip
    ana_row = next(r for r in rows if r[0] == s.ana.keypair.public)
    assert ana_row[2:] == (by_cai.ts, ana_row[3], by_cai.id)
    assert (cai.keypair.public, add.ts, None, add.id, None) in rows
    # Ana, removed, is soft-failed from then on (stored, her chain intact, never applied);
    # re-added, she may act again.
    while_out = s.need()
    (res,) = await s.ledger.ingest([while_out.to_wire()])
    assert res.status == "stored"
    assert await request_row(s.ledger, while_out.id) is None
    readd = s.elm.author.write(k.OrganizerAdded(key=s.ana.keypair.public, name="Ana"), "network")
    again = s.ana.write(k.PodInfoChanged(name="Elm again"), "network")
    await s.feed(readd, again)
    assert await one(s.ledger, "SELECT name FROM pods WHERE pod = ?", (s.elm.id,)) == "Elm again"
    assert await count(s.ledger, "roster") == 4  # Ana twice, Ben, Cai
    await s.rebuild_equals_live()


async def test_soft_fail_when_a_removal_arrives_late(scene: Scene) -> None:
    """Ana was removed at t2, but her events stamped after t2 reached us before the
    removal did: they stay in the log, verified, and stop counting once it arrives."""
    s = scene
    pods_need = s.elm.author.write(k.RequestOpened(title="Pod's", category="food"), "network")
    t2 = s.world.clock.now()  # the removal's moment, written down now, delivered late
    hers = s.need(title="Hers")
    bump = s.ana.write(k.RequestUpdated(urgency="urgent"), "network", [pods_need.id])
    offer = s.ana.write(k.OfferOpened(title="Rides", category="transport"), "network")
    info = s.ana.write(k.PodInfoChanged(name="Ana's Elm"), "network")
    await s.feed(pods_need, hers, bump, offer, info)
    assert await request_row(s.ledger, hers.id) is not None
    assert (await request_row(s.ledger, pods_need.id) or {})["urgency"] == "urgent"
    assert await count(s.ledger, "offers") == 1
    assert await one(s.ledger, "SELECT name FROM pods WHERE pod = ?", (s.elm.id,)) == "Ana's Elm"

    removal = s.elm.author.write(k.OrganizerRemoved(key=s.ana.keypair.public), "network", ts=t2)
    events_before = await count(s.ledger, "events")
    await s.feed(removal)
    assert await count(s.ledger, "events") == events_before + 1  # nothing is deleted
    assert await request_row(s.ledger, hers.id) is None
    assert (await request_row(s.ledger, pods_need.id) or {})["urgency"] == "normal"
    assert await count(s.ledger, "offers") == 0
    assert await one(s.ledger, "SELECT name FROM pods WHERE pod = ?", (s.elm.id,)) == "Elm"
    assert (await s.ledger.verify()).ok
    await s.rebuild_equals_live()


async def test_claims_are_listed_by_request_and_go_with_a_soft_failed_one(
    scene: Scene,
) -> None:
    """Claim rows are found through their events (no index of claims by request), and a
    request that stops counting takes its claim rows along, live as after a rebuild."""
    s = scene
    pods_need = s.elm.author.write(k.RequestOpened(title="Pod's", category="food"), "network")
    t2 = s.world.clock.now()  # Ana's removal, delivered late
    hers = s.need(title="Hers")
    on_hers = [s.ben.write(k.ClaimMade(note=f"Oak {i}"), "network", [hers.id]) for i in (1, 2)]
    on_pods = s.ben.write(k.ClaimMade(note="Oak for the pod"), "network", [pods_need.id])
    await s.feed(hers, pods_need, *on_hers, on_pods)
    listed = await queries.list_claims(s.ledger.reader, request=hers.id)
    assert [c["id"] for c in listed] == [c.id for c in on_hers]
    assert [c["note"] for c in listed] == ["Oak 1", "Oak 2"]
    for_pod = await queries.list_claims(s.ledger.reader, request=pods_need.id)
    assert [c["id"] for c in for_pod] == [on_pods.id]
    assert await queries.list_claims(s.ledger.reader, request=on_pods.id) == []  # not a request

    removal = s.elm.author.write(k.OrganizerRemoved(key=s.ana.keypair.public), "network", ts=t2)
    await s.feed(removal)
    assert await request_row(s.ledger, hers.id) is None
    assert await queries.list_claims(s.ledger.reader, request=hers.id) == []
    assert await count(s.ledger, "claims") == 1  # the pod's own request keeps its claim
    assert [c["id"] for c in await queries.list_claims(s.ledger.reader)] == [on_pods.id]
    await s.rebuild_equals_live()


async def test_a_removal_undone_by_an_earlier_removal_of_the_remover(
    scene: Scene, make_ledger: OpenLedger
) -> None:
    """Ana removes Cai, but Ana herself had been removed before that (the pod's removal of
    Ana reaches us last). Cai's event, soft-failed while Ana's removal of Cai seemed valid,
    counts once the roster settles: the same state as a ledger that got it all in order."""
    s = scene
    cai, add_cai = s.world.organizer(s.elm, "Cai")
    t3 = s.world.clock.now()
    ana_removes_cai = s.ana.write(k.OrganizerRemoved(key=cai.keypair.public), "network")
    hers = s.need(cai, "Cai's")
    await s.feed(add_cai, ana_removes_cai)
    (res,) = await s.ledger.ingest([hers.to_wire()])
    assert res.status == "stored"  # Cai is named by a roster.add: kept, soft-failed
    assert await request_row(s.ledger, hers.id) is None
    pod_removes_ana = s.elm.author.write(
        k.OrganizerRemoved(key=s.ana.keypair.public), "network", ts=t3
    )
    await s.feed(pod_removes_ana)
    row = await request_row(s.ledger, hers.id)
    assert row and row["title"] == "Cai's"
    assert await count(s.ledger, "pending") == 0
    await s.rebuild_equals_live()

    straight = await make_ledger("straight.db", pod=s.elm.id)
    events = await query(s.ledger, "SELECT payload, sig, body FROM events ORDER BY pos")
    await straight.ingest([encode_wire(*e) for e in reversed(events)])
    assert await straight.dump() == await s.ledger.dump()
