"""The common case of an ingest, written for it.

Most of what a node ingests is new requests, offers, shared resources and claims, each
next in its feed, by organizers in office, with whole bodies: a catch-up of a peer's
feeds, or a day of its own organizers' writing. The general path (ledger/ingest.py)
handles every case (pending, forks, refills, roster changes, answers before their claims,
followers before their anchors) and pays for it on every event: an EventView per event, a
fold per aggregate, and a claim on an older request re-reads and re-folds every event of
that request. ``bench/_lean.py`` measured what that generality costs: the same work written
for this case alone ran ~1.3 x the raw baseline where the ledger ran ~0.9.

Here a batch whose every event qualifies (:func:`qualifies`, in memory) is stored with its
rows written directly. A claim is folded onto its request's *row*, which is exact when the
request's stored followers are claims only and all sort before it: then nothing of the
fold's state (state.RequestFold: decisions, answers waiting for their claim, orphans)
lives outside the row, and the fold from the start would apply the same steps to the
same state. :func:`store` checks that, and every other fact it relies on, against the
store inside the transaction and writes nothing unless all hold; then the batch takes the
general path, in the same transaction. tests/ledger/test_fast.py holds both paths to the
same results, rows and caches, and the property test's batches take whichever applies.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from podlink.ledger import state as st
from podlink.ledger.projections import URGENCY_RANK, insert_sql
from podlink.ledger.store import chunks, ids_in, rows
from podlink.protocol import clock, kinds
from podlink.protocol.text import b64e

if TYPE_CHECKING:
    from podlink.ledger.ingest import Batch, Candidate

FAST_KINDS = frozenset({"request.open", "offer.open", "resource.share", "claim.make"})
_CLOSED = ("fulfilled", "cancelled")


def qualifies(batch: Batch, cands: list[Candidate]) -> bool:
    """Whether every event is a fast kind with its body, next in its feed (as the batch's
    loaded heads and the events before it say), by a key in office in its pod at its time,
    outside the pod lane, on a feed with nothing parked; and every claim names an event
    that is not a later one of this batch. Reads nothing from the store."""
    ledger = batch.ledger
    roster = ledger.roster
    pending = ledger.pending_feeds
    loaded = batch.heads
    heads: dict[tuple[bytes, str], tuple[int, bytes, int]] = {}
    later = {c.event.id for c in cands}
    for cand in cands:
        ev = cand.event
        h = ev.header
        later.discard(ev.id)
        if h.kind not in FAST_KINDS or cand.body is None or ev.body is None:
            return False
        if h.lane == "pod":  # members, and other pods' events refused here
            return False
        feed = (h.author, h.lane)
        if feed in pending:
            return False
        seq, prev, ts = heads.get(feed) or loaded.get(feed, (0, None, -1))
        if h.seq != seq + 1 or h.prev != prev or h.ts <= ts:
            return False
        if not roster.is_named(h.pod, h.author) or not roster.authorised(h.pod, h.author, h.ts):
            return False  # waits, or is stored and soft-failed by the folds: general
        if h.kind == "claim.make" and (not h.refs or h.refs[0] in later):
            return False
        heads[feed] = (h.seq, ev.id, h.ts)
    return True


@dataclass(slots=True)
class _Request:
    """A request's row as far as claims change it."""

    pos: int
    pod: bytes
    lane: str
    status: str
    accepted: bytes | None
    updated: int
    claims: int
    after: int  # the newest timestamp among its stored followers (claims must come later)
    status_was: str
    accepted_was: bytes | None
    changed: bool = False


async def store(batch: Batch, cands: list[Candidate]) -> bool:
    """Store and project a batch that :func:`qualifies`, in the caller's transaction.

    False, with nothing written and nothing changed, when the store holds what the fast
    path does not handle: an event naming one of the batch's as its aggregate (a follower
    that came before its anchor, an answer before its claim), a claim on anything but a
    request whose row exists and whose stored followers are all claims stamped before it."""
    ledger = batch.ledger
    db = ledger.db
    memo = ledger.fast_memo
    ids = [c.event.id for c in cands]
    for part in chunks(ids):
        sql = f"SELECT 1 FROM events WHERE {ids_in(len(part), 'root')} AND root != id LIMIT 1"
        if await rows(db, sql, [*part, *part]):
            return False
    opened = {c.event.id for c in cands if c.event.header.kind == "request.open"}
    named = {
        c.event.header.refs[0] for c in cands if c.event.header.kind == "claim.make"
    } - opened  # fmt: skip
    requests = {r: memo.rows[r] for r in named if r in memo.rows}
    if len(requests) < len(named):
        found = await _stored_requests(db, named - requests.keys())
        if found is None:
            return False
        requests.update(found)
    for req in requests.values():  # (kept from an earlier batch: as its row is now)
        req.status_was, req.accepted_was, req.changed = req.status, req.accepted, False
    first_claim: dict[bytes, int] = {}
    for cand in cands:
        h = cand.event.header
        if h.kind == "claim.make" and h.refs[0] in requests:
            first_claim[h.refs[0]] = min(first_claim.get(h.refs[0], h.ts), h.ts)
    if any(requests[r].after >= ts for r, ts in first_claim.items()):
        return False

    # Every check passed: from here on the batch is stored this way.
    from podlink.ledger.ingest import IngestResult  # (ingest imports this module)

    new_requests: list[tuple[int, Candidate]] = []
    offers: list[tuple] = []
    resources: list[tuple] = []
    claims: list[tuple[int, Candidate]] = []
    own = ledger.pod
    for cand in cands:
        ev, h = cand.event, cand.event.header
        pos = ledger.next_pos
        ledger.next_pos += 1
        kind, body, root = h.kind, cand.body, ev.id
        if kind == "request.open":
            assert isinstance(body, kinds.RequestOpened)
            requests[ev.id] = _Request(pos, h.pod, h.lane, "open", None, h.ts, 0, -1, "", None)
            new_requests.append((pos, cand))
        elif kind == "offer.open":
            assert isinstance(body, kinds.OfferOpened)
            offers.append((
                pos, ev.id, h.pod, h.author, h.lane, body.title, body.category, body.details,
                body.by_member, body.availability, body.capacity, "open", h.ts, None,
            ))  # fmt: skip
        elif kind == "resource.share":
            assert isinstance(body, kinds.ResourceShared)
            resources.append((
                pos, ev.id, h.pod, h.lane, body.name, body.category, body.what, body.where,
                body.when, body.contact, h.ts,
            ))  # fmt: skip
        else:
            root = h.refs[0]
            claims.append((pos, cand))
        batch.rows.append((
            pos, ev.id, h.pod, h.author, h.lane, h.seq, h.ts, kind, root, ev.payload, ev.sig,
            ev.body, batch.now, cand.origin,
        ))  # fmt: skip
        feed = (h.author, h.lane)
        batch.heads[feed] = (h.seq, ev.id, h.ts)
        batch.dirty_heads[feed] = h.pod
        batch.stored_ids[ev.id] = False
        batch.stored += 1
        batch.result(cand, IngestResult("stored", b64e(ev.id)))
        limit = clock.FUTURE_LIMIT_MS if h.pod == own else clock.OBSERVE_LIMIT_MS
        ledger.clock.observe(h.ts, limit)

    claim_rows = _fold_claims(requests, claims)
    for _, cand in claims:  # counted or not, each is a follower of its request now
        req = requests[cand.event.header.refs[0]]
        req.after = max(req.after, cand.event.header.ts)
    await batch.write_events()
    await db.executemany(await insert_sql(db, "requests"), [
        _request_row(pos, cand, requests[cand.event.id]) for pos, cand in new_requests
    ])  # fmt: skip
    await _update_requests(db, [r for id_, r in requests.items() if r.changed and id_ in named])
    for table, values in (("offers", offers), ("resources", resources), ("claims", claim_rows)):
        if values:
            await db.executemany(await insert_sql(db, table), values)
    for root in named:  # a fold kept of it has not seen these claims
        ledger.folds.drop(root)
    memo.keep(requests)
    return True


class Memo:
    """Request rows as the fast path left them, for the next batch's claims.

    Folding a claim onto its request needs the request's row and the newest of its
    followers: two reads per batch, ~2.4 us of SQLite per event at 100k events. What the
    fast path wrote last it knows already, as long as nothing else has written since:
    the ledger empties this before the general path stores a batch, before any other
    writer (``Ledger._before_writing``), and after a rollback (``forget_caches``). A row
    kept here is then the row on disk, and its followers are the claims this path
    stored. At most ``CAP`` rows, the oldest dropped first (claims mostly follow recent
    requests; a row not kept is read as before)."""

    CAP = 50_000  # ~17 MB (tracemalloc, 50,000 rows)

    def __init__(self) -> None:
        self.rows: dict[bytes, _Request] = {}

    def keep(self, requests: dict[bytes, _Request]) -> None:
        rows = self.rows
        for id_, req in requests.items():
            rows.pop(id_, None)
            rows[id_] = req  # (the newest last)
        for _ in range(len(rows) - self.CAP):
            del rows[next(iter(rows))]

    def clear(self) -> None:
        self.rows.clear()


async def _stored_requests(db, ids: set[bytes]) -> dict[bytes, _Request] | None:
    """The rows of the requests ``ids`` with the newest timestamp among their followers;
    None if one has no row or has a follower other than a claim (an update, an answer, a
    close: fold state the row does not hold)."""
    found: dict[bytes, _Request] = {}
    listed = list(ids)
    for part in chunks(listed):
        sql = (
            "SELECT e.id, r.rowid, r.pod, r.lane, r.status, r.accepted_claim, r.updated_ts, "
            f"r.claims FROM events AS e JOIN requests AS r ON r.rowid = e.pos "
            f"WHERE {ids_in(len(part), 'e.id')}"
        )
        found_rows = await rows(db, sql, [*part, *part])
        for id_, pos, pod, lane, status, accepted, updated, n in found_rows:
            found[id_] = _Request(pos, pod, lane, status, accepted, updated, n, -1, status,
                                  accepted)  # fmt: skip
    if len(found) != len(ids):
        return None
    for part in chunks(listed):
        sql = (
            "SELECT root, max(ts), sum(kind != 'claim.make') FROM events "
            f"WHERE {ids_in(len(part), 'root')} AND root != id GROUP BY root"
        )
        for root, newest, others in await rows(db, sql, [*part, *part]):
            if others:
                return None
            found[root].after = newest
    return found


def _fold_claims(
    requests: dict[bytes, _Request], claims: list[tuple[int, Candidate]]
) -> list[tuple]:
    """Fold the batch's claims onto their requests, in the folds' order ((ts, id)), as
    state.RequestFold applies a claim.make; their claim rows."""
    out: list[tuple] = []
    for pos, cand in sorted(claims, key=lambda pc: (pc[1].event.header.ts, pc[1].event.id)):
        ev, h = cand.event, cand.event.header
        body = cand.body
        assert isinstance(body, kinds.ClaimMade)
        req = requests[h.refs[0]]
        if st.LANE_REACH.get(h.lane, 0) < st.LANE_REACH.get(req.lane, 0):
            continue  # shared less widely than its request: not counted (state._fold)
        status, decided = "pending", None
        if req.status in _CLOSED:
            status, decided = "closed", h.ts
        elif h.pod == req.pod and req.status == "open":  # the pod's own organizer
            status, decided = "accepted", h.ts
            req.status, req.accepted = "accepted", ev.id
        out.append((
            pos, ev.id, h.refs[0], h.pod, h.author, h.lane, body.by_member, body.note, status,
            h.ts, decided, "",
        ))  # fmt: skip
        req.updated = max(req.updated, h.ts)
        req.claims += 1
        req.changed = True
    return out


def _request_row(pos: int, cand: Candidate, req: _Request) -> tuple:
    """The row of a request opened in this batch, with its claims folded (as
    projections._request_row lays out a RequestState)."""
    ev, h, body = cand.event, cand.event.header, cand.body
    assert isinstance(body, kinds.RequestOpened)
    return (
        pos, ev.id, h.pod, h.author, h.lane, body.title, body.details, body.category,
        body.urgency, body.needed_by, body.area, body.for_member, req.status, req.accepted,
        h.ts, req.updated, None, req.claims, URGENCY_RANK.get(body.urgency, 9), "",
    )  # fmt: skip


async def _update_requests(db, changed: list[_Request]) -> None:
    """Write the columns claims changed; the status only where it changed (SQLite rewrites
    an index entry for every column SET, and ``requests_status`` leads with it)."""
    moved = [r for r in changed if (r.status, r.accepted) != (r.status_was, r.accepted_was)]
    same = [r for r in changed if (r.status, r.accepted) == (r.status_was, r.accepted_was)]
    if moved:
        await db.executemany(
            'UPDATE requests SET "status" = ?, "accepted_claim" = ?, "updated_ts" = ?, '
            '"claims" = ? WHERE rowid = ?',
            [(r.status, r.accepted, r.updated, r.claims, r.pos) for r in moved],
        )
    if same:
        await db.executemany(
            'UPDATE requests SET "updated_ts" = ?, "claims" = ? WHERE rowid = ?',
            [(r.updated, r.claims, r.pos) for r in same],
        )
