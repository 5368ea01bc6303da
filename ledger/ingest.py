"""The ingest pipeline: verify → dedupe → chain → authorise → store → project.

:func:`prepare` runs the stateless checks of a batch (decode, signature, body hash, kind
rules) with no lock held, off the event loop: signatures of a large batch in worker
processes (ledger/verifier.py), the rest on the verify threads. One call of :func:`commit`
is then one SQLite transaction, running the stateful checks in store order. Per event it
returns a result: ``stored``, ``duplicate``, ``pending`` (waiting for a feed predecessor or
for its author's roster entry) or ``refused`` with a reason word.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import msgspec

from podlink.ledger import fast, projections
from podlink.ledger import state as st
from podlink.ledger.store import (
    chunks,
    id_is,
    ids_in,
    ids_joined,
    marks,
    rows,
    transaction,
    twice,
)  # fmt: skip
from podlink.ledger.verifier import PROCESS_MIN, check_signed
from podlink.protocol import clock, kinds
from podlink.protocol.envelope import Event, decode_event, decode_header
from podlink.protocol.errors import ProtocolError, Reason
from podlink.protocol.text import b64e, key_or_none

if TYPE_CHECKING:
    from podlink.ledger.ledger import Ledger
    from podlink.ledger.writer import Streak

log = logging.getLogger("podlink.ledger")

Status = Literal["stored", "duplicate", "pending", "refused"]
PARALLEL_MIN = 64  # below this many events, verifying inline beats a thread hand-off


class IngestResult(msgspec.Struct, frozen=True, omit_defaults=True, gc=False):
    """What happened to one submitted event."""

    status: Status
    id: str | None = None  # base64url id, when the bytes decoded far enough
    reason: Reason | None = None
    message: str = ""
    body_dropped: bool = False

    @property
    def ok(self) -> bool:
        return self.status in ("stored", "duplicate")


class Candidate(msgspec.Struct, gc=False):
    """An event that passed the stateless checks, with what the stateful ones need.

    Outside the cycle collector (nothing it holds leads back to it): a batch makes one
    per event, and the collections walking them cost the event loop 131 -> 95 ms in a
    50k-event ingest (gc.callbacks)."""

    index: int  # position in the submitted batch; -1 for events released from pending
    event: Event
    body: kinds.Body | None
    wire: bytes
    body_dropped: bool = False
    origin: bytes | None = None  # the peer that delivered it, if a peer did
    parked: tuple[str, int] | None = None  # taken from pending: (its source, received)


@dataclass
class Batch:
    """State of one ingest transaction."""

    ledger: Ledger
    source: str
    allow_pending: bool
    now: int
    results: list[IngestResult | None]
    rows: list[tuple] = field(default_factory=list)
    heads: dict[tuple[bytes, str], tuple[int, bytes, int]] = field(default_factory=dict)
    dirty_heads: dict[tuple[bytes, str], bytes] = field(default_factory=dict)  # feed -> pod
    roots: set[bytes] = field(default_factory=set)
    claim_roots: dict[bytes, bytes] = field(default_factory=dict)  # claim id -> request
    waiting_seq: dict[tuple[bytes, str, int], list[Candidate]] = field(default_factory=dict)
    waiting_roster: list[Candidate] = field(default_factory=list)
    loaded: set[tuple[bytes, str]] = field(default_factory=set)  # feeds whose head is known
    forks: list[dict[str, object]] = field(default_factory=list)
    forked: int = 0  # pieces of fork evidence written (peers learn of them: after_commit)
    views: dict[bytes, list[st.EventView]] = field(default_factory=dict)  # root -> stored
    reload: set[bytes] = field(default_factory=set)  # roots to fold from the table anyway
    copies: list[tuple[Candidate, Candidate]] = field(default_factory=list)  # (copy, first)
    anchors: set[bytes] = field(default_factory=set)  # roots whose own event is stored here
    stored_ids: dict[bytes, bool] = field(default_factory=dict)  # id -> stored bodiless
    roster_pods: set[bytes] = field(default_factory=set)  # pods whose roster to re-fold
    roster_new: dict[bytes, list[st.EventView]] = field(default_factory=dict)  # stored here
    roster_full: set[bytes] = field(default_factory=set)  # pods to fold from the table
    # Events released by one just stored (its feed successor, or events of a key it
    # named), offered by _settle: releasing by recursion overflowed Python's stack on a
    # feed of ~1,000 events that arrived newest first, and wedged that feed for good.
    ready: deque[Candidate] = field(default_factory=deque)
    # Parked successors read ahead, a run per feed: (author, lane) -> seq -> rows, and the
    # seq up to which that read is complete. Taken rows are deleted at the next _flush.
    parked: dict[tuple[bytes, str], dict[int, list[tuple]]] = field(default_factory=dict)
    parked_to: dict[tuple[bytes, str], int] = field(default_factory=dict)
    taken: list[bytes] = field(default_factory=list)  # ids taken from pending, to delete
    stored_at: dict[tuple[bytes, str, int], bytes] = field(default_factory=dict)  # -> id
    fork_at: set[tuple[bytes, str, int]] = field(default_factory=set)  # evidence kept
    named_copied: set[bytes] = field(default_factory=set)  # pods whose named set is ours
    first_pos: int = 0
    stored: int = 0
    released: int = 0  # of those, events released from pending (index -1)

    def result(self, cand: Candidate, res: IngestResult) -> None:
        if cand.index >= 0:
            self.results[cand.index] = res

    async def write_events(self) -> None:
        """Write the events stored so far and their feeds' new heads."""
        db = self.ledger.db
        if self.rows:
            await db.executemany(
                "INSERT INTO events (pos, id, pod, author, lane, seq, ts, kind, root, payload, "
                "sig, body, received, origin) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                self.rows,
            )
            self.rows = []
        if self.dirty_heads:
            heads = self.heads
            await db.executemany(
                "INSERT INTO feeds (author, lane, pod, seq, id, ts) VALUES (?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (author, lane) DO UPDATE SET seq = excluded.seq, "
                "id = excluded.id, ts = excluded.ts",
                [(a, ln, pod, *heads[(a, ln)]) for (a, ln), pod in self.dirty_heads.items()],
            )
            self.dirty_heads = {}


_PENDING = IngestResult("pending")


def _refused(err: ProtocolError, id_: bytes | None = None) -> IngestResult:
    return IngestResult("refused", b64e(id_) if id_ else None, err.reason, err.message)


def _check_stateless(
    ev: Event, now: int, signed: bool = False
) -> tuple[Event, kinds.Body | None, bool]:
    """Check signature, time, body hash and kind rules; runs in a worker thread.

    A body that does not match its header is dropped (DESIGN: the header is kept).
    ``signed``: signature and time are known sound already (a worker process checked
    them, or the id is stored: the id fixes the signed header, and only a missing body
    can still be taken from this copy)."""
    if not signed:
        check_signed(ev, now)
    dropped = False
    if ev.body is not None and not ev.body_matches():
        ev, dropped = ev.without_body(), True
    return ev, kinds.check_kind(ev), dropped


def _decode_all(wires: Sequence[bytes]) -> list[Event | ProtocolError]:
    out: list[Event | ProtocolError] = []
    for wire in wires:
        try:
            out.append(decode_event(wire))
        except ProtocolError as err:
            out.append(err)
    return out


def _check_all(items: Sequence[tuple[Event, bool]], now: int) -> list[tuple | ProtocolError]:
    out: list[tuple | ProtocolError] = []
    for ev, signed in items:
        try:
            out.append(_check_stateless(ev, now, signed))
        except ProtocolError as err:
            out.append(err)
    return out


async def _spread(ledger: Ledger, fn: Callable[..., list], items: Sequence, *args: object) -> list:
    """``fn(part, *args)`` over ``items`` split across the verify threads, results in order.

    Decoding and checking run there, not on the event loop: the loop drives the batch
    being committed, and its Python time is the pipeline's critical path; the threads'
    Python runs while the writer's thread is inside SQLite (which releases the GIL)."""
    if len(items) < PARALLEL_MIN:
        return fn(items, *args)
    loop = asyncio.get_running_loop()
    size = -(-len(items) // ledger.workers)
    parts = [items[i : i + size] for i in range(0, len(items), size)]
    done = await asyncio.gather(
        *(loop.run_in_executor(ledger.executor, fn, part, *args) for part in parts)
    )
    return [r for part in done for r in part]


@dataclass
class Prepared:
    """A batch after the stateless checks, ready for its transaction."""

    wires: Sequence[bytes]
    results: list[IngestResult | None]
    fresh: list[Candidate]
    now: int
    # What the reader found stored (id -> refillable), as of ledger.generation = generation;
    # None when the batch was not probed.
    known: dict[bytes, bool] | None = None
    generation: int = 0


def merge_prepared(parts: Sequence[Prepared]) -> Prepared:
    """Prepared batches as one new batch, in order (the results of part i follow those of
    part i-1); the parts are left as they were, so that they can be committed again.

    For a group commit of appends, which are never probed for copies: each event's copy
    check happens in the transaction, against the store and the batch before it."""
    wires: list[bytes] = []
    results: list[IngestResult | None] = []
    fresh: list[Candidate] = []
    for part in parts:
        if part.known is not None:
            raise ValueError("only unprobed batches (appends) can be merged")
        offset = len(wires)
        wires += part.wires
        results += part.results
        fresh += [msgspec.structs.replace(c, index=c.index + offset) for c in part.fresh]
    return Prepared(wires, results, fresh, max(part.now for part in parts))


async def prepare(ledger: Ledger, wires: Sequence[bytes], *, probe: bool = True) -> Prepared:
    """Stateless checks of a batch (no database): may run while another batch commits."""
    now = clock.now_ms()
    results: list[IngestResult | None] = [None] * len(wires)
    decoded: list[tuple[int, Event]] = []
    for i, out in enumerate(await _spread(ledger, _decode_all, wires)):
        if isinstance(out, ProtocolError):
            results[i] = _refused(out)
        else:
            decoded.append((i, out))
    # Exact copies of stored events (a ring delivers each event twice) skip the costly
    # signature check: same id and same signature bytes as the verified copy we hold
    # (Ed25519 is deterministic). The reader sees committed events only, and nothing
    # stored ever goes away; any other copy is verified like a new event.
    generation = ledger.landed  # before the probe: it sees at least these commits
    # Only an event at or below its feed's head can be stored already (feeds are stored
    # without gaps); the cached heads lag the store, never lead it. Any copy the probe
    # misses is still caught at commit, by id or by its feed position.
    heads = ledger.heads
    ids = [
        ev.id for _, ev in decoded
        if (head := heads.get((ev.header.author, ev.header.lane))) is None
        or ev.header.seq <= head[0]
    ] if probe else []  # local appends are rarely copies  # fmt: skip
    stored = await _stored_sigs(ledger.reader, ids) if ids else {}
    held = [stored.get(ev.id, _NOT_STORED)[0] == ev.sig for _, ev in decoded]
    # Signatures of a large batch are checked in worker processes (ledger/verifier.py);
    # then only bodies and kind rules are left for the threads.
    unsigned = [wires[i] for (i, _), h in zip(decoded, held, strict=True) if not h]
    verdicts = None
    if len(unsigned) >= PROCESS_MIN:
        verdicts = await ledger.verifier.check(unsigned, now)
    remote = iter(verdicts or ())
    items: list[tuple[Event, bool]] = []
    kept: list[int] = []
    for (i, ev), signed in zip(decoded, held, strict=True):
        if not signed and verdicts is not None:
            verdict = next(remote)
            if verdict is not None:
                results[i] = _refused(ProtocolError(*verdict))  # type: ignore[arg-type]
                continue
            signed = True
        items.append((ev, signed))
        kept.append(i)
    checked = await _spread(ledger, _check_all, items, now)
    fresh: list[Candidate] = []
    for i, outcome in zip(kept, checked, strict=True):
        if isinstance(outcome, ProtocolError):
            results[i] = _refused(outcome)
        else:
            ev, body, dropped = outcome
            fresh.append(Candidate(i, ev, body, wires[i], dropped))
    known = {id_: refillable for id_, (_, refillable) in stored.items()} if probe else None
    return Prepared(wires, results, fresh, now, known, generation)


async def commit(
    ledger: Ledger, prep: Prepared, *, source: str, allow_pending: bool,
    linger: bool = False, owner: Streak | None = None,
    then: tuple[str, Sequence[object]] | None = None,
) -> list[IngestResult]:  # fmt: skip
    """Dedupe, chain, authorise, store and project a prepared batch: one transaction.

    The caller holds the ledger's write lock, and has settled any COMMIT left to land
    but its own (ledger/writer.py). ``linger``: leave this one's COMMIT to land while
    ``owner`` goes on; the owner must settle it before it returns. ``then``: one more
    statement in the same transaction, run before any of the batch's (a pull's cursor
    past the page before: see ``Ledger.store``); with it, there is a transaction even
    if nothing is new."""
    db = ledger.db
    batch = Batch(ledger, source, allow_pending, prep.now, prep.results)
    origin = key_or_none(source)
    for cand in prep.fresh:
        cand.origin = origin

    # Dedupe, within the batch and against the store (refilling bodies lost in transit).
    seen: dict[bytes, Candidate] = {}
    unique: list[Candidate] = []
    for cand in prep.fresh:
        kept = seen.get(cand.event.id)
        if kept is None:
            seen[cand.event.id] = cand
            unique.append(cand)
            continue
        if kept.event.body is None and cand.event.body is not None:
            # A later copy in the batch brings the body the first one lacked: keep it.
            kept.event, kept.body, kept.wire = cand.event, cand.body, cand.wire
            kept.body_dropped = False
        batch.copies.append((cand, kept))
    ids = [c.event.id for c in unique]
    known = _known_in_memory(ledger, prep, ids)
    if known is None:
        known = await _known_ids(db, ids)
    refills: list[Candidate] = []
    candidates: list[Candidate] = []
    for cand in unique:
        refillable = known.get(cand.event.id)
        if refillable is None:
            candidates.append(cand)
            continue
        if refillable and cand.event.body is not None:
            refills.append(cand)
        batch.result(cand, IngestResult("duplicate", cand.event.id_text))

    if not candidates and not refills and then is None:
        return _final(batch)

    roster = ledger.roster.snapshot()  # a roster event folded here must not outlive a rollback
    try:
        async with transaction(db) as tx:
            await ledger.settle_landed()  # its own COMMIT before this BEGIN, if one was left
            if then is not None:
                await db.execute(*then)
            batch.first_pos = ledger.next_pos
            await _load_heads(batch, candidates)
            await _forget_emptied_feeds(batch, candidates)
            stored_fast = (
                ledger.fast_path and not refills and fast.qualifies(batch, candidates)
                and await fast.store(batch, candidates)
            )  # fmt: skip
            if not stored_fast:
                ledger.fast_memo.clear()  # the general path may change any request
            forgot = False if stored_fast else await _general(batch, candidates, refills)
            tx.linger = linger and not forgot  # (a forget shreds the WAL next: on disk first)
    except BaseException:
        ledger.roster.restore(roster)
        ledger.forget_caches()
        raise
    ledger.after_commit(batch, tx.landing, owner)
    if forgot:
        await ledger.shred_wal()
    return _final(batch)


async def _general(batch: Batch, candidates: list[Candidate], refills: list[Candidate]) -> bool:
    """Every case: chain, authorise, store, park and project, one event at a time; True if
    a member was forgotten."""
    ledger = batch.ledger
    for cand in refills:  # first: a refilled roster.add may authorise this batch
        await _refill(batch, cand)
        if batch.ready:
            await _settle(batch)
    for cand in candidates:
        await _offer(batch, cand)
        if batch.ready:  # (no coroutine per event when nothing was released)
            await _settle(batch)
    await _park_waiting(batch)
    await _flush(batch)
    await _refold_rosters(batch)
    fresh = await _fresh_roots(batch)
    return await projections.refold(
        ledger.db, batch.roots, ledger.roster, fresh=fresh, folds=ledger.folds,
        new=batch.views, reload=batch.reload,
    )  # fmt: skip


def _final(batch: Batch) -> list[IngestResult]:
    """The results; a second copy within the batch shares the fate of the first (it is a
    ``duplicate`` only if that one is stored: never acknowledge what waits or was refused)."""
    for cand, kept in batch.copies:
        first = batch.results[kept.index]
        if first is not None and first.status != "stored":
            batch.result(cand, first)
        else:
            batch.result(cand, IngestResult("duplicate", cand.event.id_text))
    return [r or IngestResult("refused") for r in batch.results]


async def _refill(batch: Batch, cand: Candidate) -> None:
    """Put back the body of a stored event that arrived without one (or with a bad one)."""
    ev = cand.event
    async with batch.ledger.db.execute(
        f"UPDATE events SET body = ? WHERE {id_is()} AND body IS NULL AND dropped = 0 "
        "RETURNING root",
        (ev.body, *twice(ev.id)),
    ) as cur:
        refilled = await cur.fetchall()
    if not refilled:
        return
    root = refilled[0][0]
    if root is not None:
        batch.roots.add(root)
        batch.reload.add(root)  # its events in memory lack this body: fold from the table
    if ev.kind in st.ROSTER_KINDS:  # a roster event only counts with its body
        batch.roster_full.add(ev.pod)  # it was folded bodiless: fold the pod's anew
        await _roster_event(batch, ev.pod, cand.body)


async def _fresh_roots(batch: Batch) -> dict[bytes, list[st.EventView]]:
    """Roots all of whose events were stored by this batch, with those events.

    Only roots whose anchor event this batch stored qualify (a root whose anchor came
    earlier, or never, is folded from the table); then only followers can be older."""
    candidates = [
        r for r in batch.roots if r in batch.anchors and r in batch.views and r not in batch.reload
    ]
    if not candidates:
        return {}
    older: set[bytes] = set()
    for part in chunks(candidates):
        sql = (
            f"SELECT root FROM events WHERE {ids_in(len(part), 'root')} AND root != id "
            "AND pos < ?"
        )
        found = await rows(batch.ledger.db, sql, [*part, *part, batch.first_pos])
        older.update(r[0] for r in found)
    return {r: batch.views[r] for r in candidates if r not in older}


_NOT_STORED = (None, False)


async def _stored_sigs(db, ids: list[bytes]) -> dict[bytes, tuple[bytes, bool]]:
    """The stored signature of each id we hold, and whether its body may be refilled."""
    found: dict[bytes, tuple[bytes, bool]] = {}
    for part in chunks(ids):
        sql = (
            "SELECT id, sig, body IS NULL AND dropped = 0 FROM events "
            f"WHERE {ids_in(len(part))}"
        )
        found.update(
            (id_, (sig, bool(r))) for id_, sig, r in await rows(db, sql, [*part, *part])
        )
    return found


def _known_in_memory(ledger: Ledger, prep: Prepared, ids: list[bytes]) -> dict[bytes, bool] | None:
    """Which of ``ids`` are stored, from the reader's probe and the commits since; None if
    the probe was skipped or those commits are no longer all remembered."""
    if prep.known is None:
        return None
    since = ledger.stored_since(prep.generation)
    if since is None:
        return None
    known: dict[bytes, bool] = {}
    for id_ in ids:
        if id_ in since:
            known[id_] = since[id_]
        elif id_ in prep.known:
            known[id_] = prep.known[id_]
    return known


async def _known_ids(db, ids: list[bytes]) -> dict[bytes, bool]:
    """Stored ids, each with whether its body is missing and may be refilled."""
    return {id_: refillable for id_, (_, refillable) in (await _stored_sigs(db, ids)).items()}


async def _load_heads(batch: Batch, cands: list[Candidate]) -> None:
    feeds = list({(c.event.header.author, c.event.header.lane) for c in cands} - batch.loaded)
    cache = batch.ledger.heads
    missing = [f for f in feeds if f not in cache]
    for part in chunks(missing, 250):
        where = " OR ".join(["(author = ? AND lane = ?)"] * len(part))
        params = [x for f in part for x in f]
        for author, lane, seq, id_, ts in await rows(
            batch.ledger.db, f"SELECT author, lane, seq, id, ts FROM feeds WHERE {where}", params
        ):
            cache[(author, lane)] = (seq, id_, ts)
    for f in feeds:
        if f in cache:
            batch.heads[f] = cache[f]
    batch.loaded.update(feeds)


async def _forget_emptied_feeds(batch: Batch, cands: list[Candidate]) -> None:
    """Take out of ``ledger.pending_feeds`` the batch's feeds on which nothing waits any
    more (the caller holds the writer; read before the batch changes anything).

    The set only grew while the ledger was open (a parked event adds its feed; one
    released or expired left it there): harmless to the general path, which then looked
    for successors that were not there, but it kept every feed that ever had a gap off
    the fast path (ledger/fast.py) until a restart, most of a shuffled catch-up's. Run
    for every batch, whichever path takes it, so that both keep the same set."""
    ledger = batch.ledger
    feeds = list({(c.event.header.author, c.event.header.lane) for c in cands}
                 & ledger.pending_feeds)  # fmt: skip
    if not feeds:
        return
    waiting: set[tuple[bytes, str]] = set()
    for part in chunks(feeds, 250):
        where = " OR ".join(["(author = ? AND lane = ?)"] * len(part))
        params = [x for feed in part for x in feed]
        found = await rows(ledger.db, f"SELECT DISTINCT author, lane FROM pending WHERE {where}",
                           params)  # fmt: skip
        waiting.update((author, lane) for author, lane in found)
    ledger.pending_feeds.difference_update(set(feeds) - waiting)


async def _offer(batch: Batch, cand: Candidate) -> None:
    """Chain and authorise one candidate; store it, park it, or refuse it."""
    ev = cand.event
    h = ev.header
    ledger = batch.ledger
    feed = (h.author, h.lane)
    if feed not in batch.loaded:  # released from pending: not among the batch's feeds
        await _load_heads(batch, [cand])
    head_seq, head_id, head_ts = batch.heads.get(feed, (0, None, -1))

    # Pod-lane events never leave their pod: refuse other pods' ones outright.
    if h.lane == "pod" and ledger.pod is not None and h.pod != ledger.pod:
        batch.result(cand, _refused(ProtocolError(
            "unauthorised", "pod-lane events of another pod are never accepted"), ev.id))
        return

    # Chain: the next seq with prev = our head; a gap waits; a clash is a fork.
    if h.seq <= head_seq:
        kept_id = await _id_at(batch, h.author, h.lane, h.seq)
        if kept_id == ev.id:  # a copy released from pending after a fresh one was stored
            if ev.body is not None:  # ...or a fresh one after a bodiless copy from pending
                await _flush(batch)
                await _refill(batch, cand)
            batch.result(cand, IngestResult("duplicate", ev.id_text))
        else:
            await _record_fork(batch, cand, kept_id)
        return
    if h.seq == head_seq + 1 and h.prev != head_id:
        await _record_fork(batch, cand, head_id or b"")  # its history differs before it
        return
    if h.seq > head_seq + 1:
        _wait(batch, cand, "seq", f"waiting for seq {head_seq + 1} of this feed")
        return
    if h.ts <= head_ts:
        batch.result(cand, _refused(ProtocolError(
            "invalid", "timestamp is not after the previous event of its feed"), ev.id))
        return

    # Authorisation: the pod's key, or a key named by a roster.add of the pod (stored
    # even when no tenure covers its time: the folds soft-fail it; see state.Roster).
    # A key never named waits: its roster.add may be on its way.
    if not ledger.roster.is_named(h.pod, h.author):
        _wait(batch, cand, "roster", "author not (yet) on its pod's roster")
        return

    await _store(batch, cand)


async def _settle(batch: Batch) -> None:
    """Offer the events that storing others released, and those they release in turn."""
    while batch.ready:
        await _offer(batch, batch.ready.popleft())


def _wait(batch: Batch, cand: Candidate, why: str, message: str) -> None:
    """Park ``cand`` (or refuse it as ``pending`` where nothing may wait: a local append).

    An event released from pending (``cand.parked``) waits again when its release did
    not place it (a predecessor released with it was refused, say): it goes back to the
    table under its own source and time, even in a local append, never refused for a
    bound it was counted in already. (Refused there, with no result anyone saw, it was
    lost, and its feed waited behind it until the pending TTL.)"""
    if not batch.allow_pending and cand.parked is None:
        batch.result(cand, _refused(ProtocolError("pending", message), cand.event.id))
        return
    h = cand.event.header
    if why == "seq":
        batch.waiting_seq.setdefault((h.author, h.lane, h.seq), []).append(cand)
    else:
        batch.waiting_roster.append(cand)
    batch.result(cand, IngestResult("pending", cand.event.id_text, "pending", message))


async def _id_at(batch: Batch, author: bytes, lane: str, seq: int) -> bytes:
    """The id of the stored event at a feed position (this batch's unflushed rows too)."""
    if (found := batch.stored_at.get((author, lane, seq))) is not None:
        return found
    kept = await rows(
        batch.ledger.db,
        "SELECT id FROM events WHERE author = ? AND lane = ? AND seq = ?",
        (author, lane, seq),
    )
    return kept[0][0] if kept else b""


async def _record_fork(batch: Batch, cand: Candidate, kept_id: bytes) -> None:
    """Refuse the newcomer; keep its signed header as evidence next to the event we hold,
    if none is kept for that feed position yet.

    One other header proves the equivocation. Keeping each one would let a key that signs
    thousands of events at one position (one peer served 600 in a review) fill the disk
    and the log; the evidence is bounded by the positions of the feed, as its events are."""
    h = cand.event.header
    if not await _fork_known(batch, h.author, h.lane, h.seq):
        batch.fork_at.add((h.author, h.lane, h.seq))
        batch.forks.append({
            "author": h.author, "lane": h.lane, "seq": h.seq, "kept_id": kept_id,
            "other_id": cand.event.id, "other_pod": h.pod, "other_payload": cand.event.payload,
            "other_sig": cand.event.sig, "source": batch.source, "received": batch.now,
        })  # fmt: skip
        log.warning(
            "fork: %s signed two events at %s seq %d (kept %s, refused %s, from %s)",
            b64e(h.author)[:8], h.lane, h.seq, b64e(kept_id)[:8], cand.event.id_text[:8],
            batch.source,
        )  # fmt: skip
    batch.result(cand, _refused(ProtocolError(
        "fork", f"another event is already stored at {h.lane} seq {h.seq} of this author"),
        cand.event.id))  # fmt: skip


async def _fork_known(batch: Batch, author: bytes, lane: str, seq: int) -> bool:
    """Whether evidence of a fork at this feed position is kept (or about to be)."""
    if (author, lane, seq) in batch.fork_at:
        return True
    found = await rows(
        batch.ledger.db,
        "SELECT 1 FROM forks WHERE author = ? AND lane = ? AND seq = ? LIMIT 1",
        (author, lane, seq),
    )
    return bool(found)


async def _resolve_root(batch: Batch, ev: Event, root: bytes) -> bytes:
    """Map a claim's answer to the claim's request when the claim is known."""
    if ev.kind not in st.CLAIM_ANSWERS:
        return root
    if root in batch.claim_roots:
        return batch.claim_roots[root]
    found = await rows(
        batch.ledger.db,
        f"SELECT root FROM events WHERE {id_is()} AND kind = 'claim.make'",
        twice(root),
    )
    return found[0][0] if found and found[0][0] is not None else root


async def _store(batch: Batch, cand: Candidate) -> None:
    ev, h = cand.event, cand.event.header
    ledger = batch.ledger
    root = st.root_of(h.kind, ev.id, h.pod, tuple(h.refs))
    roster = h.kind in st.ROSTER_KINDS  # filed under its pod, folded by _refold_rosters
    if root is not None:
        if h.kind in st.CLAIM_ANSWERS:  # as rebuild and _flush do: if its root is a claim,
            root = await _resolve_root(batch, ev, root)  # the claim's request
        if not roster:  # the pod's directory entry does not depend on its roster events
            batch.roots.add(root)
    if h.kind == "claim.make" and root is not None:
        batch.claim_roots[ev.id] = root
        # Answers stored earlier in this batch, before their claim, join its request too
        # (_flush re-homes their rows; their views must follow for the fresh-root fold).
        # Only answers: any other event naming this claim keeps its root, as in the table.
        filed = batch.views.pop(ev.id, [])
        batch.views.setdefault(root, []).extend(v for v in filed if v.kind in st.CLAIM_ANSWERS)
        if others := [v for v in filed if v.kind not in st.CLAIM_ANSWERS]:
            batch.views[ev.id] = others
        if ev.id in batch.reload:
            # An answer filed under this claim had its body refilled in this batch: its
            # view in memory is the bodiless one, so the request folds from the table.
            batch.reload.add(root)
    pos = ledger.next_pos
    ledger.next_pos += 1
    if root is not None:
        view = st.EventView(
            ev.id, h.pod, h.author, h.lane, h.seq, h.ts, h.kind, tuple(h.refs), cand.body, pos)
        if roster:
            batch.roster_new.setdefault(h.pod, []).append(view)
        else:
            batch.views.setdefault(root, []).append(view)
    if root == ev.id:
        batch.anchors.add(root)
    batch.stored_ids[ev.id] = ev.body is None
    batch.stored_at[(h.author, h.lane, h.seq)] = ev.id
    batch.rows.append((
        pos, ev.id, h.pod, h.author, h.lane, h.seq, h.ts, h.kind, root, ev.payload, ev.sig,
        ev.body, batch.now, cand.origin,
    ))  # fmt: skip
    feed = (h.author, h.lane)
    batch.heads[feed] = (h.seq, ev.id, h.ts)
    batch.dirty_heads[feed] = h.pod
    batch.stored += 1
    if cand.index < 0:
        batch.released += 1
    batch.result(cand, IngestResult("stored", ev.id_text, body_dropped=cand.body_dropped))
    # Our own pod's events are followed up to the acceptance limit (what its organizers
    # write next must come after them: a roster.add, say); other pods' a minute short.
    limit = clock.FUTURE_LIMIT_MS if h.pod == ledger.pod else clock.OBSERVE_LIMIT_MS
    ledger.clock.observe(h.ts, limit)

    if roster:
        await _roster_event(batch, h.pod, cand.body)

    # Successors that were waiting for exactly this event.
    nxt = (h.author, h.lane, h.seq + 1)
    batch.ready.extend(batch.waiting_seq.pop(nxt, ()))
    if feed in ledger.pending_feeds:
        batch.ready.extend(await _take_successors(batch, feed, h.seq + 1))


async def _roster_event(batch: Batch, pod: bytes, body: kinds.Body | None) -> None:
    """A roster event of ``pod`` was stored (or got its body back): name its key now and
    release the events that waited for it; re-fold the tenures once, at the batch's end.

    Storing an event needs only naming (see state.Roster), and naming only grows, one
    key per roster.add; the tenures matter to the folds, which run after every event of
    the batch is stored. Re-folding the whole roster per roster event made an ingest of
    thousands of them in one pod cubic (3,000 took over a minute)."""
    batch.roster_pods.add(pod)
    if not isinstance(body, kinds.OrganizerAdded):
        return
    roster = batch.ledger.roster
    if roster.is_named(pod, body.key):
        return
    if pod not in batch.named_copied:  # never change in place what a snapshot holds
        roster.named[pod] = set(roster.named.get(pod, ()))
        batch.named_copied.add(pod)
    roster.named[pod].add(body.key)
    await _release_roster_waiters(batch, pod, body.key)


async def _refold_rosters(batch: Batch) -> None:
    """Fold the roster of each pod this batch touched; re-fold what the keys whose tenures
    changed wrote from the time the change starts (their events may now count, or no
    longer; earlier ones cannot change: a late roster event re-folded everything its key
    ever wrote)."""
    for pod in sorted(batch.roster_pods):
        new = None if pod in batch.roster_full else batch.roster_new.get(pod, [])
        since = await projections.refold_roster(
            batch.ledger.db, batch.ledger.roster, pod, new
        )
        if since:
            batch.roots.update(await _roots_by_authors(batch, since))
    batch.roster_pods.clear()


async def _roots_by_authors(batch: Batch, since: dict[bytes, int]) -> set[bytes]:
    """The aggregates each key wrote to at or after its time (roster events aside: the
    roster fold counts those)."""
    await _flush(batch)
    found: set[bytes] = set()
    for part in chunks(list(since.items()), 250):  # a batch may add a thousand keys
        sql = (
            f"WITH k (author, ts) AS (VALUES {', '.join(['(?, ?)'] * len(part))}) "
            "SELECT DISTINCT e.root FROM k JOIN events e ON e.author = k.author "
            "AND e.ts >= k.ts WHERE e.root IS NOT NULL "
            "AND e.kind NOT IN ('roster.add', 'roster.remove')"
        )
        params = [x for pair in part for x in pair]
        found.update(r[0] for r in await rows(batch.ledger.db, sql, params))
    return found


async def _release_roster_waiters(batch: Batch, pod: bytes, key: bytes) -> None:
    """Offer again the events of ``key`` for ``pod`` that waited for its naming there.

    Only that pod's: a key named by another pod (any pod may name any key) leaves them
    parked, where they were."""
    def named(c: Candidate) -> bool:
        return c.event.author == key and c.event.pod == pod

    waiters = [c for c in batch.waiting_roster if named(c)]
    batch.waiting_roster = [c for c in batch.waiting_roster if not named(c)]
    if key in batch.ledger.pending_roster:
        waiters += await _take_pending(
            batch, "why = 'roster' AND author = ?", (key,), keep=named
        )
    batch.ready.extend(waiters)


PARKED_RUN = 500  # parked successors of a feed read at once


async def _take_successors(
    batch: Batch, feed: tuple[bytes, str], seq: int
) -> list[Candidate]:
    """Take the events parked at ``seq`` of ``feed`` (waiting for the event just stored).

    The parked events that follow are read with them, up to PARKED_RUN rows: a feed of
    thousands parked behind one gap (a peer's page that lacked one event, a feed sent
    newest first) is then released with one read per run rather than a read and a
    delete per event (three times the cost of an ordinary event, measured by
    ``python -m bench --only shapes``)."""
    if seq > batch.parked_to.get(feed, 0):
        await _flush_taken(batch)
        found = await rows(
            batch.ledger.db,
            "SELECT id, wire, source, received, seq FROM pending WHERE author = ? "
            "AND lane = ? AND seq >= ? ORDER BY seq LIMIT ?",
            (*feed, seq, PARKED_RUN),
        )
        run: dict[int, list[tuple]] = {}
        for id_, wire, source, received, at in found:
            run.setdefault(at, []).append((id_, wire, source, received))
        batch.parked[feed] = run
        # Complete up to the last seq read; short of it if the limit may have cut a seq.
        complete = 2**63 if len(found) < PARKED_RUN else found[-1][4] - 1
        batch.parked_to[feed] = complete
        if complete < seq:  # the whole run is copies at this one seq: take them all
            del batch.parked[feed], batch.parked_to[feed]
            return await _take_pending(
                batch, "seq = ? AND author = ? AND lane = ?", (seq, *feed)
            )
    found = batch.parked.get(feed, {}).pop(seq, [])
    _uncount(batch, found)
    batch.taken += [r[0] for r in found]
    return _decoded(found)


async def _flush_taken(batch: Batch) -> None:
    if batch.taken:
        await batch.ledger.db.executemany(
            "DELETE FROM pending WHERE id = ?", [(id_,) for id_ in batch.taken]
        )
        batch.taken = []


async def _take_pending(
    batch: Batch,
    where: str,
    params: Sequence,
    keep: Callable[[Candidate], bool] | None = None,
) -> list[Candidate]:
    """Move parked events matching ``where`` (and ``keep``) out of the pending table,
    ready to retry."""
    db = batch.ledger.db
    await _flush_taken(batch)
    found = await rows(
        db, f"SELECT id, wire, source, received FROM pending WHERE {where}", params
    )
    taken = _decoded(found)
    if keep is not None:
        kept = [(r, c) for r, c in zip(found, taken, strict=True) if keep(c)]
        found, taken = [r for r, _ in kept], [c for _, c in kept]
    if not found:
        return []
    await db.executemany("DELETE FROM pending WHERE id = ?", [(r[0],) for r in found])
    gone = {r[0] for r in found}
    for run in batch.parked.values():  # read ahead for a feed, taken here: not twice
        for at, parked in list(run.items()):
            run[at] = [r for r in parked if r[0] not in gone]
    _uncount(batch, found)
    return taken


def _decoded(found: Sequence[tuple]) -> list[Candidate]:
    """Rows of the pending table (id, wire, source, received) as candidates."""
    out = []
    for _, wire, source, received in found:
        ev = decode_event(wire)  # verified before it was parked
        if ev.body is not None and not ev.body_matches():
            ev = ev.without_body()
        out.append(Candidate(-1, ev, kinds.check_kind(ev), wire, origin=key_or_none(source),
                             parked=(source, received)))  # fmt: skip
    return out


def _uncount(batch: Batch, found: Sequence[tuple]) -> None:
    """Rows taken out of the pending table no longer count against their sources."""
    for r in found:
        batch.ledger.pending_count_changed(r[2], -1, [])


async def _park_waiting(batch: Batch) -> None:
    """Write what still waits at the end of the batch to the bounded pending table."""
    ledger = batch.ledger
    await _flush_taken(batch)
    waiting = [c for cs in batch.waiting_seq.values() for c in cs] + batch.waiting_roster
    if not waiting:
        return
    for_roster = {id(c) for c in batch.waiting_roster}
    # An event parked already (a peer resending it, or a second copy) waits and counts once;
    # a copy with the body that the parked one lacks takes its place.
    by_id: dict[bytes, Candidate] = {}
    for cand in waiting:
        first = by_id.setdefault(cand.event.id, cand)
        if first is cand:
            continue
        if first.event.body is None and cand.event.body is not None:
            by_id[cand.event.id] = cand
        by_id[cand.event.id].parked = first.parked or cand.parked  # counted where it was
    parked = set()
    ids = list(by_id)
    for part in chunks(ids):
        sql = f"SELECT id FROM pending WHERE id IN ({marks(len(part))})"
        parked.update(r[0] for r in await rows(ledger.db, sql, part))
    await ledger.db.executemany(
        "UPDATE pending SET wire = ? WHERE id = ?",
        [(by_id[i].wire, i) for i in parked if by_id[i].event.body is not None],
    )
    waiting = [c for i, c in by_id.items() if i not in parked]
    back = [c for c in waiting if c.parked is not None]  # released, waiting again
    waiting = [c for c in waiting if c.parked is None]
    # Those going back under this batch's source count against its room for new ones
    # (taking them out of pending uncounted them).
    again = sum(c.parked is not None and c.parked[0] == batch.source for c in back)
    room = ledger.limits.pending_per_source - ledger.pending_count(batch.source) - again
    keep, over = waiting[: max(room, 0)], waiting[max(room, 0) :]
    for cand in over:
        if cand.index >= 0 and (batch.results[cand.index] or _PENDING).status != "pending":
            continue  # already refused for its own reason
        batch.result(cand, _refused(ProtocolError(
            "rate-limited",
            f"too many events waiting from {batch.source} "
            f"(limit {ledger.limits.pending_per_source}); send the missing ones first"),
            cand.event.id))  # fmt: skip
    rows_ = []
    for cand in [*keep, *back]:
        h = cand.event.header
        why = "roster" if id(cand) in for_roster else "seq"
        source, received = cand.parked or (batch.source, batch.now)
        rows_.append((cand.event.id, source, h.author, h.lane, h.seq, cand.wire, why,
                      received))  # fmt: skip
    await ledger.db.executemany(
        "INSERT OR IGNORE INTO pending (id, source, author, lane, seq, wire, why, received) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        rows_,
    )
    for r in rows_:
        ledger.pending_count_changed(r[1], 1, [(r[2], r[3], r[6])])


async def _rehome_answers(db, claims: dict[bytes, bytes]) -> set[bytes]:
    """Move the answers filed under each stored claim (claim id -> its root) to that root.

    Only answers that name the claim themselves (root_of gives the claim): one filed
    here because it was moved from a claim naming this claim (a malformed claim of a
    claim) stays where it is, one level from what it names, as rebuild files it."""
    moves: list[tuple[bytes, int]] = []
    for part in chunks(list(claims)):
        sql = (
            f"SELECT pos, root, kind, pod, payload FROM events WHERE {ids_in(len(part), 'root')} "
            "AND root != id AND kind IN ('claim.accept', 'claim.decline')"
        )
        for pos, root, kind, pod, payload in await rows(db, sql, [*part, *part]):
            refs = tuple(decode_header(payload).refs)
            if st.root_of(kind, b"", pod, refs) == root:
                moves.append((claims[root], pos))
    if moves:
        await db.executemany("UPDATE events SET root = ? WHERE pos = ?", moves)
    return {root for root, _ in moves}


async def _flush(batch: Batch) -> None:
    """Write stored events, feed heads and fork evidence gathered so far."""
    db = batch.ledger.db
    await _flush_taken(batch)
    # Answers that arrived before their claim now join the claim's request.
    claims = {row[1]: row[8] for row in batch.rows if row[7] == "claim.make" and row[8]}
    await batch.write_events()
    if claims:  # the requests gain events stored before: fold them from the table
        batch.reload.update(await _rehome_answers(db, claims))
    if batch.forks:
        # The kept header is the stored event's (flushed above): the row carries both, so
        # that the evidence can be served without the events (docs/protocol.md, V8).
        await db.executemany(
            "INSERT OR IGNORE INTO forks (author, lane, seq, kept_id, kept_pod, kept_payload, "
            "kept_sig, other_id, other_pod, other_payload, other_sig, source, received) "
            "SELECT :author, :lane, :seq, :kept_id, e.pod, e.payload, e.sig, :other_id, "
            ":other_pod, :other_payload, :other_sig, :source, :received "
            f"FROM (SELECT :kept_id AS k) LEFT JOIN events AS e ON {ids_joined('e.id', 'k')}",
            batch.forks,
        )
        batch.forked += len(batch.forks)
        batch.forks = []
