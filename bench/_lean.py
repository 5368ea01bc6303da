"""How fast the issue's required work can go when written for one case only:
``python -m bench._lean 30000 [ROUNDS]``.

A question for #4 (ingest with 2 verify workers >= 1.3 x raw) that the ledger's own figures
cannot answer: is the target out of reach for *any* ingest that does what the issue asks
(signature, dedupe, chain, authorisation, store, projections in the same transaction, one
transaction per batch), or only for ours? This script is the leanest such ingest we could
write, and it is **not podlink**: it handles exactly the bench corpus (events in feed order,
authors on the roster, requests, offers, resources, and claims on requests opened earlier)
and raises on anything else. It keeps every part that the ledger would need in any design:

- the same verify processes (``ledger/verifier.py``), two batches checked ahead;
- on one thread with stdlib sqlite3 and the ledger's schema and pragmas: decode, body hash
  and kind check of each event, a dedupe probe of the batch against the store, chains and
  authorisation from heads and tenures in memory, the events rows (the same columns and
  indexes), and the projections updated in the same transaction, a claim by reading its
  request's row (not its events) and updating it in place.

It leaves out what the corpus never needs (pending, forks, refills, roster changes, answers
before claims, folds from the log) and the asyncio hand-offs per statement. Its projection
rows and its events' store order and roots are checked equal to the ledger's for the same
corpus, so both did the same work. Run interleaved with the raw baseline and the ledger, as
``bench._threads`` does; quoted in docs/performance.md, not a figure of ``python -m bench``.
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench._corpus import pod_wires
from bench._util import cpu_seconds, process_cpu_seconds, remove_db
from bench.ingest import AUTHORS, raw_ingest
from podlink.ledger import state as st
from podlink.ledger import store
from podlink.ledger.ledger import Ledger, Limits
from podlink.ledger.projections import URGENCY_RANK, canonical_dump
from podlink.ledger.verifier import Verifier
from podlink.protocol import clock, kinds
from podlink.protocol.envelope import decode_event

BATCH = 1000
AHEAD = 2  # batches whose signatures are checked while one commits (the ledger's PREPARE_AHEAD)


def _marks(n: int) -> str:
    return ", ".join("?" * n)


class Lean:
    """The lean ingest's state between batches: what the ledger keeps in memory too."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.db: sqlite3.Connection | None = None
        self.heads: dict[tuple[bytes, str], tuple[int, bytes, int]] = {}
        self.tenures: dict[tuple[bytes, bytes], int] = {}  # (pod, key) -> from_ts
        self.next_pos = 1

    def open(self) -> None:
        """Runs on the commit thread (sqlite3 connections stay on theirs)."""
        db = sqlite3.connect(self.path, isolation_level=None)
        for pragma in store.PRAGMAS:
            db.execute(pragma)
        self.db = db
        for author, lane, seq, id_, ts in db.execute("SELECT author, lane, seq, id, ts FROM feeds"):
            self.heads[(author, lane)] = (seq, id_, ts)
        for pod, key, from_ts, until in db.execute(
            "SELECT pod, key, from_ts, until_ts FROM roster"
        ):
            assert until is None, "the bench roster has no removals"
            self.tenures[(pod, key)] = from_ts
        self.next_pos = db.execute("SELECT coalesce(max(pos), 0) + 1 FROM events").fetchone()[0]

    def close(self) -> None:
        if self.db is not None:
            self.db.close()

    def commit(self, wires: Sequence[bytes], verdicts: Sequence[object]) -> int:
        """One batch, one transaction; the number of events stored."""
        db = self.db
        assert db is not None
        events = []
        for wire, verdict in zip(wires, verdicts, strict=True):
            if verdict is not None:
                raise AssertionError(f"the bench corpus is sound: {verdict}")
            ev = decode_event(wire)
            if not ev.body_matches():
                raise AssertionError("the bench corpus has whole bodies")
            events.append((ev, kinds.check_kind(ev)))
        ids = [ev.id for ev, _ in events]
        stored: set[bytes] = set()
        for i in range(0, len(ids), 500):
            part = ids[i : i + 500]
            sql = f"SELECT id FROM events WHERE {store.ids_in(len(part))}"
            stored.update(r[0] for r in db.execute(sql, [*part, *part]))
        # Requests the batch's claims name and did not open itself: their rows, by id.
        opened = {ev.id for ev, _ in events if ev.header.kind == "request.open"}
        named = list({
            ev.header.refs[0] for ev, _ in events
            if ev.header.kind == "claim.make" and ev.header.refs[0] not in opened
        })  # fmt: skip
        reqs: dict[bytes, list] = {}  # id -> [rowid, pod, lane, status, accepted, updated, claims]
        for i in range(0, len(named), 500):
            part = named[i : i + 500]
            for row in db.execute(
                "SELECT e.id, r.rowid, r.pod, r.lane, r.status, r.accepted_claim, r.updated_ts, "
                f"r.claims FROM events e JOIN requests r ON r.rowid = e.pos "
                f"WHERE {store.ids_in(len(part), 'e.id')}",
                [*part, *part],
            ):
                reqs[row[0]] = [*row[1:], False]  # last: changed by this batch
        rows, requests, offers, resources, claims = [], [], [], [], []
        heads = self.heads
        dirty: dict[tuple[bytes, str], bytes] = {}
        now = clock.now_ms()
        db.execute("BEGIN IMMEDIATE")
        try:
            for ev, body in events:
                h = ev.header
                if ev.id in stored:
                    raise AssertionError("the bench corpus has no copies")
                feed = (h.author, h.lane)
                seq, prev, ts = heads.get(feed, (0, None, -1))
                if h.seq != seq + 1 or h.prev != prev or h.ts <= ts:
                    raise AssertionError("the bench corpus comes in feed order")
                since = self.tenures.get((h.pod, h.author))
                if since is None or since > h.ts:
                    raise AssertionError("the bench corpus is written by its roster")
                pos = self.next_pos
                self.next_pos += 1
                kind = h.kind
                root = ev.id
                if kind == "request.open":
                    assert isinstance(body, kinds.RequestOpened)
                    requests.append((
                        pos, ev.id, h.pod, h.author, h.lane, body.title, body.details,
                        body.category, body.urgency, body.needed_by, body.area, body.for_member,
                        "open", None, h.ts, h.ts, None, 0, URGENCY_RANK.get(body.urgency, 9), "",
                    ))  # fmt: skip
                    reqs[ev.id] = [pos, h.pod, h.lane, "open", None, h.ts, 0, True]
                elif kind == "offer.open":
                    assert isinstance(body, kinds.OfferOpened)
                    offers.append((
                        pos, ev.id, h.pod, h.author, h.lane, body.title, body.category,
                        body.details, body.by_member, body.availability, body.capacity, "open",
                        h.ts, None,
                    ))  # fmt: skip
                elif kind == "resource.share":
                    assert isinstance(body, kinds.ResourceShared)
                    resources.append((
                        pos, ev.id, h.pod, h.lane, body.name, body.category, body.what,
                        body.where, body.when, body.contact, h.ts,
                    ))  # fmt: skip
                elif kind == "claim.make":
                    assert isinstance(body, kinds.ClaimMade)
                    root = h.refs[0]
                    req = reqs[root]
                    if req[5] >= h.ts:
                        raise AssertionError("the bench corpus claims after the request")
                    # A claim shared less widely than its request is not counted (state._fold).
                    if st.LANE_REACH.get(h.lane, 0) >= st.LANE_REACH.get(req[2], 0):
                        status, decided = "pending", None
                        if req[3] == "open" and h.pod == req[1]:  # the pod's own: accepted
                            status, decided = "accepted", h.ts
                            req[3], req[4] = "accepted", ev.id
                        elif req[3] in ("fulfilled", "cancelled"):
                            status, decided = "closed", h.ts
                        claims.append((
                            pos, ev.id, root, h.pod, h.author, h.lane, body.by_member,
                            body.note, status, h.ts, decided, "",
                        ))  # fmt: skip
                        req[5], req[6], req[7] = h.ts, req[6] + 1, True
                else:
                    raise AssertionError(f"the bench corpus has no {kind}")
                rows.append((
                    pos, ev.id, h.pod, h.author, h.lane, h.seq, h.ts, kind, root, ev.payload,
                    ev.sig, ev.body, now, None,
                ))  # fmt: skip
                heads[feed] = (h.seq, ev.id, h.ts)
                dirty[feed] = h.pod
            db.executemany(
                "INSERT INTO events (pos, id, pod, author, lane, seq, ts, kind, root, payload, "
                "sig, body, received, origin) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
            db.executemany(
                "INSERT INTO feeds (author, lane, pod, seq, id, ts) VALUES (?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (author, lane) DO UPDATE SET seq = excluded.seq, "
                "id = excluded.id, ts = excluded.ts",
                [(a, ln, pod, *heads[(a, ln)]) for (a, ln), pod in dirty.items()],
            )
            # The claims change the request rows they were folded onto: write those first
            # for the requests opened here (then inserted whole), then update the others.
            final = {r[0]: r for r in reqs.values()}
            requests = [
                (*r[:12], final[r[0]][3], final[r[0]][4], r[14], final[r[0]][5], r[16],
                 final[r[0]][6], *r[18:])
                for r in requests
            ]  # fmt: skip
            db.executemany(f"INSERT INTO requests (rowid, {_REQ}) VALUES ({_marks(20)})", requests)
            db.executemany(
                'UPDATE requests SET "status" = ?, "accepted_claim" = ?, "updated_ts" = ?, '
                '"claims" = ? WHERE rowid = ?',
                [(r[3], r[4], r[5], r[6], r[0]) for i, r in reqs.items()
                 if r[7] and i not in opened],
            )  # fmt: skip
            db.executemany(f"INSERT INTO offers (rowid, {_OFFER}) VALUES ({_marks(14)})", offers)
            db.executemany(
                f"INSERT INTO resources (rowid, {_RESOURCE}) VALUES ({_marks(11)})", resources
            )
            db.executemany(f"INSERT INTO claims (rowid, {_CLAIM}) VALUES ({_marks(12)})", claims)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return len(rows)


_REQ = (
    "id, pod, author, lane, title, details, category, urgency, needed_by, area, for_member, "
    "status, accepted_claim, opened_ts, updated_ts, closed_ts, claims, urgency_rank, "
    "cancel_reason"
)
_OFFER = (
    "id, pod, author, lane, title, category, details, by_member, availability, capacity, "
    "status, opened_ts, closed_ts"
)
_RESOURCE = 'id, pod, lane, name, category, what, "where", "when", contact, ts'
_CLAIM = "id, request, pod, author, lane, by_member, note, status, ts, decided_ts, reason"


async def lean_run(wires: Sequence[bytes], path: Path, workers: int) -> tuple[float, float]:
    """Seconds of wall and of CPU (all processes) of the lean ingest of ``wires``.

    The file is made by the ledger with its schema, holding the corpus's roster (the first
    ``AUTHORS + 1`` events), outside the timing; the rest is ingested timed."""
    roster, rest = wires[: AUTHORS + 1], wires[AUTHORS + 1 :]
    ledger = await Ledger.open(path)
    try:
        results = await ledger.ingest(roster, source="peer")
        assert all(r.status == "stored" for r in results)
    finally:
        await ledger.close()
    lean = Lean(path)
    verifier = Verifier(workers)
    loop = asyncio.get_running_loop()
    with ThreadPoolExecutor(1, thread_name_prefix="lean-commit") as thread:
        await loop.run_in_executor(thread, lean.open)
        await verifier.start()
        try:
            cpu = cpu_seconds() - sum(process_cpu_seconds(p) for p in verifier.pids)
            start = time.perf_counter()
            parts = [rest[i : i + BATCH] for i in range(0, len(rest), BATCH)]
            ahead: list[asyncio.Future] = []
            stored = 0
            for i, part in enumerate(parts):
                while len(ahead) <= AHEAD and i + len(ahead) < len(parts):  # as the ledger
                    now = clock.now_ms()
                    ahead.append(asyncio.ensure_future(
                        verifier.check(parts[i + len(ahead)], now)))  # fmt: skip
                verdicts = await ahead.pop(0)
                assert verdicts is not None, "the verify processes did not start"
                stored += await loop.run_in_executor(thread, lean.commit, part, verdicts)
            wall = time.perf_counter() - start
        finally:
            await verifier.close()
            await loop.run_in_executor(thread, lean.close)
        cpu = cpu_seconds() - cpu  # the workers' CPU is counted once they are reaped
    if stored != len(rest):
        raise AssertionError(f"stored {stored} of {len(rest)}")
    # Per event of the timed part, scaled to all wires' count for the comparison.
    return wall * len(wires) / len(rest), cpu * len(wires) / len(rest)


async def ledger_run(wires: Sequence[bytes], path: Path, workers: int) -> tuple[float, float]:
    ledger = await Ledger.open(path, limits=Limits(batch_size=BATCH), workers=workers)
    await ledger.verifier.start()
    cpu = cpu_seconds() - sum(process_cpu_seconds(p) for p in ledger.verifier.pids)
    try:
        start = time.perf_counter()
        results = await ledger.ingest(wires, source="peer")
        wall = time.perf_counter() - start
    finally:
        await ledger.close()
    cpu = cpu_seconds() - cpu
    if sum(r.status == "stored" for r in results) != len(wires):
        raise AssertionError("the ledger did not store the whole corpus")
    return wall, cpu


async def same_work(lean_path: Path, ledger_path: Path) -> None:
    """Raise unless both files hold the same projections and the same log order."""
    import aiosqlite

    dumps, logs = [], []
    for path in (lean_path, ledger_path):
        async with aiosqlite.connect(path) as db:
            dumps.append(await canonical_dump(db))
            async with db.execute("SELECT pos, id, kind, root FROM events ORDER BY pos") as cur:
                logs.append(await cur.fetchall())
    for table in dumps[1]:
        if dumps[0][table] != dumps[1][table]:
            raise AssertionError(f"the lean ingest's {table} differ from the ledger's")
    if logs[0] != logs[1]:
        raise AssertionError("the lean ingest's log differs from the ledger's")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("events", type=int, nargs="?", default=30_000)
    parser.add_argument("rounds", type=int, nargs="?", default=3)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    wires = pod_wires(args.events, authors=AUTHORS)
    n = len(wires)
    figures: dict[str, list[tuple[float, float]]] = {"raw": [], "ledger": [], "lean": []}
    with tempfile.TemporaryDirectory(prefix="podlink-lean-") as tmp:
        for r in range(args.rounds):
            paths = {name: Path(tmp) / f"{name}-{r}.db" for name in figures}
            timed = raw_ingest(wires, paths["raw"])
            figures["raw"].append((timed.wall, timed.cpu))
            figures["ledger"].append(
                asyncio.run(ledger_run(wires, paths["ledger"], args.workers)))
            figures["lean"].append(asyncio.run(lean_run(wires, paths["lean"], args.workers)))
            if r == 0:
                asyncio.run(same_work(paths["lean"], paths["ledger"]))
            for path in paths.values():
                remove_db(path)
    print(f"{n:,} events, {args.rounds} interleaved rounds, batch {BATCH}, "
          f"{args.workers} verify processes; medians (lean: checked equal to the ledger's rows)")
    raw_wall = statistics.median(w for w, _ in figures["raw"])
    for name, runs in figures.items():
        wall = statistics.median(w for w, _ in runs)
        cpu = statistics.median(c for _, c in runs)
        ratios = [rw / w for (rw, _), (w, _) in zip(figures["raw"], runs, strict=True)]
        print(f"  {name:>6}: wall {wall / n * 1e6:5.1f} us/event ({n / wall:,.0f}/s); "
              f"CPU {cpu / n * 1e6:5.1f} us/event; rate / raw {statistics.median(ratios):.2f}"
              f" (raw median {n / raw_wall:,.0f}/s)")


if __name__ == "__main__":
    main()
