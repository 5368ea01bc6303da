"""Review of ledger/fast.py: corners where the fast path must end where the general one does.

Each test feeds the same batches to a ledger with the fast path and one without, and holds
them to the same results, log (all but ``received``), feeds, pending, forks, projections,
in-memory caches (heads, next_pos, generation and recent, pending feeds, roster tenures),
and checks that every fold kept in either ledger's FoldCache equals a fold from the table
(the fast ledger drops folds the general one keeps: only a stale kept fold would matter);
the fast ledger must also equal its own rebuild. Each test also says which batches the
fast path stored, so that a pin of a fast case is one.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from pathlib import Path

from podlink.ledger import ingest as ingest_mod
from podlink.ledger import projections
from podlink.ledger import state as st
from podlink.ledger.ledger import Ledger
from podlink.protocol import kinds as k
from podlink.protocol.envelope import Event
from tests.ledger.helpers import World, bodiless, request_row, until_queued, wires
from tests.ledger.test_fast import _LOG, fast_and_general


async def _folds_exact(ledger: Ledger) -> None:
    """Every fold the ledger keeps (and would continue: same roster) equals a fold of the
    request's events from the table."""
    for root, kept in list(ledger.folds._kept.items()):
        if kept.roster_version != ledger.roster.version:
            continue  # never continued
        events = (await projections.load_roots(ledger.db, [root])).get(root, [])
        fresh = st.RequestFold.start(root, events, ledger.roster, history=False)
        assert fresh is not None, root
        assert kept.fold.req == fresh.req, root
        assert kept.fold.last == fresh.last, root
        assert kept.fold.claim_ids == fresh.claim_ids, root


async def _state(ledger: Ledger) -> dict:
    db = ledger.db
    return {
        "log": await db.execute_fetchall(_LOG),
        "feeds": await db.execute_fetchall("SELECT * FROM feeds ORDER BY author, lane"),
        "pending": await db.execute_fetchall("SELECT id, why, source FROM pending ORDER BY id"),
        "forks": await db.execute_fetchall(
            "SELECT author, lane, seq, kept_id, other_id FROM forks ORDER BY 1, 2, 3"),
        "projections": await ledger.dump(),
        "heads": dict(ledger.heads),
        "next_pos": ledger.next_pos,
        "generation": ledger.generation,
        "recent": list(ledger.recent),
        "pending_feeds": set(ledger.pending_feeds),
        "pending_roster": set(ledger.pending_roster),
        "pending_by_source": dict(ledger.pending_by_source),
        "tenures": {
            pod: sorted((t.key, t.from_ts, t.until_ts) for t in ts)
            for pod, ts in ledger.roster.tenures.items()
        },
        "named": {pod: set(keys) for pod, keys in ledger.roster.named.items()},
    }


class Twins:
    """A ledger with the fast path and one without, fed alike."""

    def __init__(self, fast_one: Ledger, general: Ledger, seen: list[bool]) -> None:
        self.ledgers = (fast_one, general)
        self.seen = seen

    @classmethod
    @contextlib.asynccontextmanager
    async def open(cls, root: Path, pod: bytes, batch_size: int = 1000):  # type: ignore[no-untyped-def]
        async with fast_and_general(root, pod, batch_size) as (ledgers, seen):
            yield cls(ledgers[0], ledgers[1], seen)

    async def feed(self, *batches: Sequence[bytes]) -> list:
        """Ingest each batch into both; the same results; the fast path's verdicts."""
        before = len(self.seen)
        out = []
        for batch in batches:
            got = [list(await ledger.ingest(list(batch))) for ledger in self.ledgers]
            assert got[0] == got[1]
            out.append(got[0])
            await self.same()
        self.verdicts = self.seen[before:]
        return out

    async def appends(self, submissions: Sequence[Sequence[bytes]]) -> list:
        """The submissions as local appends queued behind a held writer (one group commit
        each, if they fit), in both ledgers; the same results."""
        got = []
        for ledger in self.ledgers:
            async with ledger._write:
                tasks = [asyncio.create_task(ledger.append(list(s))) for s in submissions]
                await until_queued(ledger, len(submissions))
            got.append(await asyncio.gather(*tasks, return_exceptions=True))
        assert got[0] == got[1]
        await self.same()
        return got[0]

    async def failing(self, batch: Sequence[bytes]) -> None:
        """The batch fails in its transaction (a storage error while writing its events)
        in both ledgers, and is rolled back."""
        real = ingest_mod.Batch.write_events

        async def boom(self) -> None:  # type: ignore[no-untyped-def]
            raise OSError("disk gone")

        ingest_mod.Batch.write_events = boom  # type: ignore[method-assign]
        try:
            for ledger in self.ledgers:
                try:
                    await ledger.ingest(list(batch))
                except Exception:  # the rollback is the point
                    pass
                else:
                    raise AssertionError("the batch was meant to fail")
        finally:
            ingest_mod.Batch.write_events = real  # type: ignore[method-assign]
        await self.same()

    async def same(self) -> None:
        states = [await _state(ledger) for ledger in self.ledgers]
        for part in states[0]:
            assert states[0][part] == states[1][part], f"{part} differ"
        for ledger in self.ledgers:
            await _folds_exact(ledger)

    async def rebuild_equals_live(self) -> None:
        for ledger in self.ledgers:
            live = await ledger.dump()
            await ledger.rebuild()
            assert await ledger.dump() == live
        await self.same()


def _world() -> tuple[World, dict]:
    world = World(1_750_000_000_000)
    elm, elm_setup = world.pod("Elm")
    oak, oak_setup = world.pod("Oak")
    world.tick()
    ana, add_ana = world.organizer(elm, "Ana")
    world.tick()
    bo, add_bo = world.organizer(elm, "Bo")
    world.tick()
    cy, add_cy = world.organizer(oak, "Cy")
    world.tick(10)
    setup = [*elm_setup, *oak_setup, add_ana, add_bo, add_cy]
    return world, {"elm": elm, "oak": oak, "ana": ana, "bo": bo, "cy": cy, "setup": setup}


def _need(author, lane: str = "network", title: str = "soup", **kw) -> Event:  # type: ignore[no-untyped-def]
    return author.write(k.RequestOpened(title=title, category="food", **kw), lane)


def _claim(author, target: bytes, lane: str = "network", **kw) -> Event:  # type: ignore[no-untyped-def]
    return author.write(k.ClaimMade(note="help"), lane, [target], **kw)


# --------------------------------------------------------------------------- pins


async def test_timestamp_ties_follow_ts_id_order(tmp_path: Path) -> None:
    """Claims tied on their timestamp: two own-pod claims on a new request in one batch
    (the smaller id is accepted, whatever the batch order), two claims on a stored request
    tied with each other (fast), an own-pod claim tied with them (declined: the fast path
    needs strictly later; the general path may accept it over the stored one, by id) and
    one a tick after it (fast again)."""
    world, w = _world()
    ana, bo, cy = w["ana"], w["bo"], w["cy"]
    need = _need(ana)
    world.tick(10)
    x = _claim(ana, need.id)
    y = _claim(bo, need.id, ts=x.header.ts)
    first, second = sorted((x, y), key=lambda e: e.id)
    stored = _need(ana, title="stored")
    world.tick(10)
    c1 = _claim(cy, stored.id)
    t2 = c1.header.ts
    c2 = _claim(bo, stored.id, ts=t2)
    tied = _claim(ana, stored.id, ts=t2)  # tied with the newest stored claims
    late = _claim(cy, stored.id, ts=t2 + 1)
    async with Twins.open(tmp_path, w["elm"].id) as tw:
        await tw.feed(wires(w["setup"]))
        await tw.feed(wires([need, second, first]), wires([stored]))
        assert tw.seen[-2:] == [True, True]
        row = await request_row(tw.ledgers[0], need.id)
        assert (row["status"], row["accepted_claim"], row["claims"]) == ("accepted", first.id, 2)
        await tw.feed(wires([c1, c2]), wires([tied]), wires([late]))
        assert tw.verdicts == [True, False, True]
        row = await request_row(tw.ledgers[0], stored.id)
        # Bo's and Ana's claims tie on (ts): the smaller id is the one accepted.
        assert (row["accepted_claim"], row["claims"]) == (min(c2.id, tied.id), 4)
        await tw.rebuild_equals_live()


async def test_claims_on_a_request_whose_row_reflects_roster_changes(tmp_path: Path) -> None:
    """Bo, removed, claims a request (stored, soft-failed: not on the row); Cy's and then
    Ana's claims after it go the fast way onto the row (Ana's accepted). A late re-add of
    Bo, stamped before his claim, makes it count (general path: it is accepted, Ana's
    falls back to pending); a claim after that goes the fast way onto the re-folded row."""
    world, w = _world()
    ana, bo, cy, elm = w["ana"], w["bo"], w["cy"], w["elm"]
    need = _need(ana)
    world.tick(10)
    removal = elm.author.write(k.OrganizerRemoved(key=bo.keypair.public, reason="away"), "network")
    readd_ts = removal.header.ts + 1
    world.tick(10)
    soft = _claim(bo, need.id)
    world.tick(10)
    by_cy = _claim(cy, need.id)
    world.tick(10)
    by_ana = _claim(ana, need.id)
    readd = elm.author.write(k.OrganizerAdded(key=bo.keypair.public, name="Bo"), "network",
                             ts=readd_ts)  # fmt: skip
    world.tick(10)
    more = _claim(cy, need.id, lane="peers")  # narrower than the request: not counted
    world.tick(10)
    last = _claim(cy, need.id)
    async with Twins.open(tmp_path, elm.id) as tw:
        await tw.feed(wires(w["setup"]), wires([need]), wires([removal]), wires([soft]))
        await tw.feed(wires([by_cy]), wires([by_ana]))
        assert tw.verdicts == [True, True]
        row = await request_row(tw.ledgers[0], need.id)
        assert (row["status"], row["accepted_claim"], row["claims"]) == ("accepted", by_ana.id, 2)
        await tw.feed(wires([readd]))
        row = await request_row(tw.ledgers[0], need.id)
        assert (row["accepted_claim"], row["claims"]) == (soft.id, 3)
        await tw.feed(wires([more]), wires([last]))
        assert tw.verdicts == [True, True]
        row = await request_row(tw.ledgers[0], need.id)
        assert (row["accepted_claim"], row["claims"], row["updated_ts"]) == (
            soft.id, 4, last.header.ts)  # fmt: skip
        await tw.rebuild_equals_live()


async def test_claims_across_pods_and_lanes_with_members(tmp_path: Path) -> None:
    """A pod-lane request of our pod (general), then in one fast batch: a claim on it by
    its own organizer in the peers lane (counted, accepted), a network request claimed
    first by its own pod in the peers lane (narrower: not counted, not accepted), then
    by Oak (pending), then by its own pod in the network lane (accepted); an Oak peers
    request claimed by Elm; with for_member / by_member set. Then the same shapes onto
    stored rows."""
    world, w = _world()
    ana, bo, cy = w["ana"], w["bo"], w["cy"]
    member = bytes(range(32))
    ours = _need(ana, lane="pod", for_member=member)
    net = _need(bo, title="lift", for_member=member)
    theirs = _need(cy, lane="peers", title="shelf")
    world.tick(5)
    a1 = ana.write(k.ClaimMade(note="me", by_member=member), "peers", [ours.id])
    world.tick(5)
    narrow = ana.write(k.ClaimMade(note="narrow"), "peers", [net.id])
    world.tick(5)
    oak_claim = cy.write(k.ClaimMade(note="oak", by_member=member), "network", [net.id])
    world.tick(5)
    own = bo.write(k.ClaimMade(note="own"), "network", [net.id])
    world.tick(5)
    elm_on_oak = bo.write(k.ClaimMade(note="elm helps"), "peers", [theirs.id])
    first = [net, theirs, a1, narrow, oak_claim, own, elm_on_oak]
    # Onto the stored rows: narrower own-pod and other-pod claims on each.
    world.tick(5)
    second = [
        bo.write(k.ClaimMade(note="again"), "peers", [ours.id]),
        ana.write(k.ClaimMade(note="narrow 2"), "peers", [net.id]),
        cy.write(k.ClaimMade(note="oak 2"), "peers", [theirs.id]),
        ana.write(k.ClaimMade(note="network on peers"), "network", [theirs.id]),
    ]
    async with Twins.open(tmp_path, w["elm"].id) as tw:
        await tw.feed(wires(w["setup"]), wires([ours]))  # pod lane: the general path
        await tw.feed(wires(first), wires(second))
        assert tw.verdicts == [True, True]
        row = await request_row(tw.ledgers[0], net.id)
        assert (row["status"], row["accepted_claim"], row["claims"]) == ("accepted", own.id, 2)
        row = await request_row(tw.ledgers[0], ours.id)
        assert (row["accepted_claim"], row["claims"], row["for_member"]) == (a1.id, 2, member)
        await tw.rebuild_equals_live()


async def test_claims_naming_what_is_not_a_request(tmp_path: Path) -> None:
    """Claims naming an offer and a resource opened earlier in the same batch, a claim
    opened earlier in the same batch, a stored offer, a member, an unknown id, a request
    opened later in the batch, and a cancelled request: the fast path declines each, and
    the general path stores them as it would have."""
    world, w = _world()
    ana, bo, cy = w["ana"], w["bo"], w["cy"]
    offer = bo.write(k.OfferOpened(title="rides", category="transport"), "network")
    world.tick()
    on_offer = _claim(cy, offer.id)
    world.tick()
    res = bo.write(k.ResourceShared(name="bank", category="food"), "network")
    world.tick()
    on_res = _claim(cy, res.id)
    world.tick()
    need = _need(ana)
    world.tick()
    c1 = _claim(cy, need.id)
    world.tick()
    on_claim = _claim(bo, c1.id)
    world.tick()
    stored_offer = _claim(cy, offer.id)
    world.tick()
    joined = ana.write(k.MemberJoined(box=b"\x01" * 48), "pod")
    world.tick()
    on_member = _claim(bo, joined.id)
    world.tick()
    on_nothing = _claim(cy, b"\x07" * 32)
    # A claim before its request in one batch (different feeds).
    later_need = _need(bo, title="later")
    world.tick()
    early = _claim(cy, later_need.id)
    world.tick()
    gone = _need(ana, title="gone")
    world.tick()
    cancel = ana.write(k.RequestCancelled(reason="moot"), "network", [gone.id])
    world.tick()
    on_gone = _claim(cy, gone.id)
    async with Twins.open(tmp_path, w["elm"].id) as tw:
        await tw.feed(wires(w["setup"]))
        await tw.feed(
            wires([offer, on_offer]), wires([res, on_res]), wires([need, c1, on_claim]),
            wires([stored_offer]), wires([joined]), wires([on_member]), wires([on_nothing]),
        )
        assert tw.verdicts == [False] * 6  # (the member.join never qualifies)
        await tw.feed(wires([early, later_need]), wires([gone]), wires([cancel]),
                      wires([on_gone]))  # fmt: skip
        assert tw.verdicts == [True, False]  # the claim before its request never qualifies
        await tw.rebuild_equals_live()


async def test_copies_bodiless_copies_and_refills(tmp_path: Path) -> None:
    """A batch holding a bodiless copy of a request before its claim and the whole copy
    after it (fast: the body is taken from the later copy), copies of a claim; a claim
    that comes bodiless (stored, ignored by the folds), then its body with a new claim
    (a refill: general), then a later claim (fast onto the row the refill re-folded)."""
    world, w = _world()
    ana, bo, cy = w["ana"], w["bo"], w["cy"]
    need = _need(ana)
    world.tick()
    c1 = _claim(cy, need.id)
    world.tick()
    c2 = _claim(bo, need.id)
    world.tick()
    c3 = _claim(cy, need.id)
    world.tick()
    c4 = _claim(ana, need.id)
    async with Twins.open(tmp_path, w["elm"].id) as tw:
        await tw.feed(wires(w["setup"]))
        [out] = await tw.feed([bodiless(need), c1.to_wire(), need.to_wire(), c1.to_wire()])
        assert [r.status for r in out] == ["stored", "stored", "duplicate", "duplicate"]
        assert tw.verdicts == [True]
        await tw.feed([bodiless(c2)])  # bodiless alone: general
        row = await request_row(tw.ledgers[0], need.id)
        assert (row["status"], row["claims"]) == ("open", 1)
        await tw.feed([c2.to_wire(), c3.to_wire()], [bodiless(c4), c4.to_wire()])
        assert tw.verdicts == [True]  # the refill declines before fast.store; c4 is fast
        row = await request_row(tw.ledgers[0], need.id)
        assert (row["accepted_claim"], row["claims"]) == (c2.id, 4)
        await tw.rebuild_equals_live()


async def test_gaps_pending_and_events_released_from_pending(tmp_path: Path) -> None:
    """Cy's second claim comes before his first (parked); the first then releases it
    (general: a parked successor). A request parked behind a gap in Bo's feed, released
    with the event that fills it, is then claimed the fast way from another feed; an
    event parked for its author's roster entry is released by a roster.add."""
    world, w = _world()
    ana, bo, cy, elm = w["ana"], w["bo"], w["cy"], w["elm"]
    need = _need(ana)
    world.tick()
    c1 = _claim(cy, need.id)
    world.tick()
    c2 = _claim(cy, need.id)
    world.tick()
    o1 = bo.write(k.OfferOpened(title="tools", category="tools"), "network")
    world.tick()
    parked_need = _need(bo, title="parked")
    world.tick()
    claim_parked = _claim(ana, parked_need.id)
    dee, add_dee = world.organizer(elm, "Dee")
    world.tick()
    by_dee = _need(dee, title="by dee")
    world.tick()
    on_dee = _claim(ana, by_dee.id)
    async with Twins.open(tmp_path, elm.id) as tw:
        await tw.feed(wires(w["setup"]), wires([need]))
        await tw.feed(wires([c2]), wires([c1]))
        assert tw.verdicts == []  # c1's feed has a parked successor: never qualifies
        await tw.feed(wires([parked_need]), wires([o1]), wires([claim_parked]))
        assert tw.verdicts == [True]  # only the last: a fast claim on a released request
        await tw.feed(wires([by_dee]), wires([add_dee]), wires([on_dee]))
        assert tw.verdicts == [True]
        await tw.rebuild_equals_live()


async def test_group_commit_and_a_rollback_between_fast_batches(tmp_path: Path) -> None:
    """Local appends queued behind the writer go in one transaction the fast way (a
    request and claims on it across submissions); a batch then fails and is rolled back
    (caches reloaded); the batches after it, fast again, agree on positions, heads,
    generations and rows."""
    world, w = _world()
    ana, bo, cy = w["ana"], w["bo"], w["cy"]
    need = _need(ana)
    world.tick()
    c1 = _claim(bo, need.id)
    world.tick()
    c2 = _claim(cy, need.id)
    world.tick()
    offer = ana.write(k.OfferOpened(title="jars", category="food"), "network")
    world.tick()
    lost = _claim(cy, need.id)  # in the batch that fails, then sent again
    world.tick()
    other = _need(bo, title="other")
    world.tick()
    after = _claim(cy, other.id)
    async with Twins.open(tmp_path, w["elm"].id) as tw:
        await tw.feed(wires(w["setup"]))
        out = await tw.appends([wires([need]), wires([c1]), wires([c2, offer])])
        assert [[r.status for r in o] for o in out] == [["stored"], ["stored"], ["stored"] * 2]
        assert tw.seen == [True]  # one group, one transaction, the fast way
        await tw.failing(wires([lost, other]))
        await tw.feed(wires([lost, other]), wires([after]))
        assert tw.verdicts == [True, True]
        await tw.rebuild_equals_live()


async def test_kept_folds_around_fast_claims(tmp_path: Path) -> None:
    """A request re-folded by the general path (a soft-failed claim) is kept in both
    FoldCaches; fast claims then drop it in the fast ledger while the general one
    continues it; an accept, an update and a decline after that (general) continue the
    kept fold in one ledger and fold from the table in the other, to the same rows."""
    world, w = _world()
    ana, bo, cy, elm = w["ana"], w["bo"], w["cy"], w["elm"]
    need = _need(ana)
    world.tick()
    removal = elm.author.write(k.OrganizerRemoved(key=bo.keypair.public), "network")
    world.tick()
    soft = _claim(bo, need.id)
    world.tick()
    c1 = _claim(cy, need.id)
    world.tick()
    c2 = _claim(cy, need.id, lane="peers")
    world.tick()
    accept = ana.write(k.ClaimAccepted(), "network", [c1.id, need.id])
    world.tick()
    update = ana.write(k.RequestUpdated(urgency="urgent"), "network", [need.id])
    world.tick()
    decline = ana.write(k.ClaimDeclined(reason="fell through"), "network", [c1.id, need.id])
    world.tick()
    c3 = _claim(cy, need.id)
    async with Twins.open(tmp_path, elm.id) as tw:
        await tw.feed(wires(w["setup"]), wires([need]), wires([removal]), wires([soft]))
        assert need.id in tw.ledgers[0].folds._kept and need.id in tw.ledgers[1].folds._kept
        await tw.feed(wires([c1]), wires([c2]))
        assert tw.verdicts == [True, True]
        assert need.id not in tw.ledgers[0].folds._kept
        assert need.id in tw.ledgers[1].folds._kept
        await tw.feed(wires([accept]), wires([update]), wires([decline]), wires([c3]))
        assert tw.verdicts == [False]  # c3: the request has non-claim followers
        row = await request_row(tw.ledgers[0], need.id)
        assert (row["status"], row["accepted_claim"], row["urgency"]) == ("open", None, "urgent")
        await tw.rebuild_equals_live()
