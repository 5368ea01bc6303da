"""Writing the read model: fold each touched aggregate and replace its rows.

Called inside the ingest transaction with the set of aggregate roots a batch touched, and
by ``rebuild`` with every root. Both paths run the same folds of ledger/state.py, which is
why a rebuild equals the live projections.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import aiosqlite

from podlink.ledger import state as st
from podlink.ledger.schema import PROJECTIONS
from podlink.ledger.store import chunks, id_is, ids_in, marks, of_roots, rows, twice
from podlink.protocol import kinds
from podlink.protocol.envelope import decode_header
from podlink.protocol.errors import ProtocolError

# The signed header (payload) is read only for the kinds whose refs a fold reads: the
# rest is bytes copied out of SQLite for nothing (a re-folded request reads all its events).
_PAYLOAD = (
    f"CASE WHEN kind IN ({', '.join(repr(kd) for kd in sorted(st.REFS_READ))}) "
    "THEN payload END AS payload"
)
EVENT_COLUMNS = f"id, pod, author, lane, seq, ts, kind, {_PAYLOAD}, body, pos"
URGENCY_RANK = {"urgent": 0, "high": 1, "normal": 2, "low": 3}  # how lists sort needs
MEMBER_KINDS = ("member.join", "member.update", "member.forget")


def view_from_row(row: tuple) -> st.EventView:
    """An EventView from ``SELECT {EVENT_COLUMNS}``.

    Its refs are decoded only for the kinds whose fold reads them (st.REFS_READ): the
    header decode was a tenth of the writer's Python time when a claim re-folds a request.
    Bodies were checked at ingest, except those of a kind this podlink did not know then
    (stored and forwarded as they were): one that does not decode now is treated as a
    dropped body, never as a reason to fail a fold or a rebuild."""
    id_, pod, author, lane, seq, ts, kind, payload, body, pos = row
    refs = tuple(decode_header(payload).refs) if kind in st.REFS_READ else ()
    decoded = None
    if body is not None:
        try:  # a plain try: this runs for every event a re-fold reads
            decoded = kinds.decode_body(kind, body)
        except ProtocolError:
            decoded = None
    return st.EventView(id_, pod, author, lane, seq, ts, kind, refs, decoded, pos)


async def load_roots(db: aiosqlite.Connection, roots: Iterable[bytes]) -> dict[bytes, list]:
    """Every stored event of each root, grouped by root."""
    grouped: dict[bytes, list[st.EventView]] = defaultdict(list)
    roots = list(roots)
    for part in chunks(roots):
        sql = of_roots(f"SELECT root, {EVENT_COLUMNS} FROM events", len(part))
        for row in await rows(db, sql, [*part] * 4):
            grouped[row[0]].append(view_from_row(row[1:]))
    return grouped


async def load_roster(
    db: aiosqlite.Connection, pods: Iterable[bytes] | None = None
) -> st.Roster:
    """The roster as last projected, and the keys roster.adds name (the ledger keeps both
    in memory between batches). ``pods``: only theirs (what folding one request's events
    needs: the pods that wrote them), not the whole network's."""
    by_pod: dict[bytes, list[st.Tenure]] = defaultdict(list)
    sql = "SELECT pod, key, name, from_ts, add_id, until_ts, remove_id FROM roster"
    if pods is None:
        found = await rows(db, sql)
    else:
        found = []
        for part in chunks(sorted(set(pods))):
            found += await rows(db, f"{sql} WHERE pod IN ({marks(len(part))})", part)
    for pod, key, name, from_ts, add_id, until_ts, remove_id in found:
        by_pod[pod].append(st.Tenure(pod, key, name, from_ts, add_id, until_ts, remove_id))
    # Keys named by roster.adds, counted or not: read through the root index (a roster
    # event's root is its pod), not a scan of the log. Every pod with a key named besides
    # its own has a tenure in the table: the first key named in a pod is named by the
    # pod's key, whose roster.add always counts unless it names a key already in office.
    named: dict[bytes, set[bytes]] = defaultdict(set)
    for part in chunks(list(by_pod)):
        sql = (
            f"SELECT pod, body FROM events WHERE {ids_in(len(part), 'root')} AND root != id "
            "AND kind = 'roster.add' AND body IS NOT NULL"
        )
        for pod, body in await rows(db, sql, [*part, *part]):
            named[pod].add(kinds.decode_body("roster.add", body).key)  # type: ignore[union-attr]
    return st.Roster(by_pod, named)


async def roster_views(db: aiosqlite.Connection, pod: bytes) -> list[st.EventView]:
    """Every stored roster event of ``pod`` (a roster event's root is its pod)."""
    sql = (
        f"SELECT {EVENT_COLUMNS} FROM events WHERE {id_is('root')} AND root != id "
        "AND kind IN ('roster.add', 'roster.remove')"
    )
    return [view_from_row(r) for r in await rows(db, sql, twice(pod))]


async def refold_roster(
    db: aiosqlite.Connection,
    roster: st.Roster,
    pod: bytes,
    new: list[st.EventView] | None = None,
) -> dict[bytes, int]:
    """Fold one pod's roster into ``roster`` and its table; return, for each key whose
    tenures changed, the earliest time from which its events may count differently (they
    may now be authorised, or soft-failed); none before it can.

    ``new``: the pod's roster events stored since the last fold. When they all sort after
    it, they are folded onto the tenures in memory and only the rows that changed are
    written (Roster.extend_pod); else, or without them, the pod's every roster event is
    read and folded again."""
    if new is not None and (change := roster.extend_pod(pod, new)) is not None:
        added, closed = change
        await _write_tenures(db, added)
        await db.executemany(
            "UPDATE roster SET until_ts = ?, remove_id = ? WHERE pod = ? AND key = ? "
            "AND add_id = ?",
            [(t.until_ts, t.remove_id, t.pod, t.key, t.add_id) for _, t in closed],
        )
        since: dict[bytes, int] = {}
        for t, at in [*((t, t.from_ts) for t in added), *((t, t.until_ts) for _, t in closed)]:
            since[t.key] = min(since.get(t.key, at), at)  # type: ignore[type-var]
        return since
    views = await roster_views(db, pod)
    before = {(t.key, t.from_ts, t.until_ts) for t in roster.tenures.get(pod, [])}
    tenures = st.fold_roster(pod, views)
    last = max(((v.ts, v.id) for v in views), default=None)
    roster.set_pod(pod, tenures, st.named_keys(pod, views), last)
    after = {(t.key, t.from_ts, t.until_ts) for t in tenures}
    await db.execute("DELETE FROM roster WHERE pod = ?", (pod,))
    await _write_tenures(db, tenures)
    return changed_since(before, after)


def changed_since(
    before: set[tuple[bytes, int, int | None]], after: set[tuple[bytes, int, int | None]]
) -> dict[bytes, int]:
    """For each key whose tenures differ, the earliest time at which they cover differently:
    a tenure added or gone counts from its start; one whose end moved, from the earlier end."""
    ends: dict[tuple[bytes, int], list[int | None]] = defaultdict(list)
    for key, start, end in before ^ after:
        ends[(key, start)].append(end)
    since: dict[bytes, int] = {}
    for (key, start), moved in ends.items():
        at = start
        if len(moved) > 1:  # the same tenure on both sides, its end moved (set, lifted)
            at = min((e for e in moved if e is not None), default=start)
        since[key] = min(since.get(key, at), at)
    return since


async def _write_tenures(db: aiosqlite.Connection, tenures: list[st.Tenure]) -> None:
    await db.executemany(
        "INSERT INTO roster (pod, key, name, from_ts, until_ts, add_id, remove_id) "
        "VALUES (?, ?, ?, ?, ?, ?, ?)",
        [(t.pod, t.key, t.name, t.from_ts, t.until_ts, t.add_id, t.remove_id) for t in tenures],
    )


@dataclass
class Folded:
    """A request's fold kept between batches: under which roster it was made, and the
    store positions of its anchor and claims (where their rows are)."""

    fold: st.RequestFold
    roster_version: int
    pos: dict[bytes, int]


class FoldCache:
    """The requests folded last, by root, to continue with their next events (bounded:
    the least recently used go; a request not kept is folded from the table)."""

    def __init__(self, size: int = 1000) -> None:
        self.size = size
        self._kept: OrderedDict[bytes, Folded] = OrderedDict()

    def keep(self, root: bytes, folded: Folded) -> None:
        self._kept[root] = folded
        self._kept.move_to_end(root)
        while len(self._kept) > self.size:
            self._kept.popitem(last=False)

    def get(self, root: bytes) -> Folded | None:
        found = self._kept.get(root)
        if found is not None:
            self._kept.move_to_end(root)
        return found

    def drop(self, root: bytes) -> None:
        self._kept.pop(root, None)

    def clear(self) -> None:
        self._kept.clear()


def _request_row(req: st.RequestState, pos: int) -> tuple:
    return (
        pos, req.id, req.pod, req.author, req.lane, req.title, req.details, req.category,
        req.urgency, req.needed_by, req.area, req.for_member, req.status, req.accepted_claim,
        req.opened_ts, req.updated_ts, req.closed_ts, len(req.claims),
        URGENCY_RANK.get(req.urgency, 9), req.cancel_reason,
    )  # fmt: skip


def _claim_row(c: st.ClaimState, pos: int) -> tuple:
    return (pos, c.id, c.request, c.pod, c.author, c.lane, c.by_member, c.note, c.status,
            c.ts, c.decided_ts, c.reason)  # fmt: skip


def _fulfilment_row(f: st.FulfilmentState) -> tuple:
    return (f.id, f.request, f.pod, f.note, f.hours, f.ts)


class Writer:
    """Collects the rows of re-folded aggregates and writes them with executemany."""

    def __init__(self, *, fresh: bool = False, folds: FoldCache | None = None) -> None:
        # fresh: the roots have no rows yet (all their events are new), so skip the deletes
        self.fresh = fresh
        self.folds = folds  # where to keep the requests folded, to continue them later
        self.deletes: dict[str, list[tuple]] = defaultdict(list)  # table -> [(root,)]
        self.inserts: dict[str, list[tuple]] = defaultdict(list)
        self.anchor_pos: dict[bytes, int] = {}  # root -> store position of its own event
        self.claim_pos: list[int] = []  # where the folded requests' claim rows may be
        self.forgotten: list[bytes] = []

    def fold(self, root: bytes, events: list[st.EventView], roster: st.Roster) -> None:
        kinds_here = {e.kind for e in events}
        # The anchor event (a request, offer, member or resource is its first event's id)
        # decides what the root is; a stray follower of another type must not hide it.
        anchor = next((e.kind for e in events if e.id == root and e.kind in st.ANCHORS), None)
        if anchor is not None:
            kinds_here = {anchor}
        if kinds_here & st.POD_KINDS:
            self._pod(root, events, roster)
        elif any(kd.startswith(("request.", "claim.")) for kd in kinds_here):
            self._request(root, events, roster)
        elif any(kd.startswith("member.") for kd in kinds_here):
            self._member(root, events, roster)
        elif any(kd.startswith("offer.") for kd in kinds_here):
            self._offer(root, events, roster)
        elif "resource.share" in kinds_here:
            self._resource(root, events, roster)

    def _pod(self, root: bytes, events: list[st.EventView], roster: st.Roster) -> None:
        self.deletes["pods"].append((root,))
        pod = st.fold_pod(root, events, roster)
        if pod is not None:
            self.inserts["pods"].append((
                pod.pod, pod.name, pod.zone, pod.description, json.dumps(pod.categories),
                pod.contact, pod.founded_ts, pod.updated_ts,
            ))  # fmt: skip

    def _request(self, root: bytes, events: list[st.EventView], roster: st.Roster) -> None:
        for table in ("requests", "claims", "fulfilments"):
            self.deletes[table].append((root,))
        pos_of = {e.id: e.pos for e in events}
        if root in pos_of:
            self.anchor_pos[root] = pos_of[root]
        # A claim row sits at its claim.make event's position: every row this request may
        # have had is at one of these (a claim's root never changes once stored).
        self.claim_pos += [e.pos for e in events if e.kind == "claim.make"]
        fold = st.RequestFold.start(root, events, roster, history=False)
        if fold is None:
            if self.folds is not None:
                self.folds.drop(root)
            return
        req = fold.req
        self.inserts["requests"].append(_request_row(req, pos_of[req.id]))
        self.inserts["claims"] += [_claim_row(c, pos_of[c.id]) for c in req.claims.values()]
        self.inserts["fulfilments"] += [_fulfilment_row(f) for f in req.fulfilments]
        # Kept when folded from the table: a request whose events were all new (most,
        # in a catch-up) is folded from memory again as cheaply, and would only crowd out
        # the ones that are being claimed or answered.
        if self.folds is not None and not self.fresh:
            self.folds.keep(root, Folded(fold, roster.version, pos_of))

    def extend_request(
        self, root: bytes, kept: Folded, events: list[st.EventView], roster: st.Roster
    ) -> None:
        """Continue a kept fold with later events and write the rows they can change:
        the request's, the claims they make or name (all of them for a fulfil or
        cancel), and its fulfilments if one came. A claim on a request of thousands
        re-read and re-folded them all, and re-read their rows."""
        req = kept.fold.req
        touched = {req.accepted_claim}
        kept.fold.extend(events, roster)
        kept.pos.update((e.id, e.pos) for e in events if e.kind == "claim.make")
        touched.add(req.accepted_claim)
        closing = any(e.kind in ("request.fulfil", "request.cancel") for e in events)
        touched.update(e.id for e in events if e.kind == "claim.make")
        touched.update(e.refs[0] for e in events if e.kind in st.CLAIM_ANSWERS and e.refs)
        claims = req.claims.values() if closing else [
            c for id_ in touched if id_ is not None and (c := req.claims.get(id_)) is not None
        ]  # fmt: skip
        self.deletes["requests"].append((root,))
        self.anchor_pos[root] = kept.pos[root]
        self.inserts["requests"].append(_request_row(req, kept.pos[root]))
        self.deletes["claims"].append((root,))
        self.claim_pos += [kept.pos[c.id] for c in claims]
        self.inserts["claims"] += [_claim_row(c, kept.pos[c.id]) for c in claims]
        if closing:
            self.deletes["fulfilments"].append((root,))
            self.inserts["fulfilments"] += [_fulfilment_row(f) for f in req.fulfilments]

    def _anchor(self, root: bytes, events: list[st.EventView]) -> int:
        """The store position of ``root``'s own event (0 if absent: then no row is made)."""
        pos = next((e.pos for e in events if e.id == root), 0)
        if pos:
            self.anchor_pos[root] = pos
        return pos

    def _member(self, root: bytes, events: list[st.EventView], roster: st.Roster) -> None:
        self.deletes["members"].append((root,))
        m = st.fold_member(root, events, roster)
        if m is None:
            return
        if m.status == "forgotten":
            self.forgotten.append(root)
        self.inserts["members"].append(
            (m.id, m.pod, m.status, m.box, m.joined_ts, m.updated_ts)
        )

    def _offer(self, root: bytes, events: list[st.EventView], roster: st.Roster) -> None:
        self.deletes["offers"].append((root,))
        pos = self._anchor(root, events)
        o = st.fold_offer(root, events, roster)
        if o is not None:
            self.inserts["offers"].append((
                pos, o.id, o.pod, o.author, o.lane, o.title, o.category, o.details, o.by_member,
                o.availability, o.capacity, o.status, o.opened_ts, o.closed_ts,
            ))  # fmt: skip

    def _resource(self, root: bytes, events: list[st.EventView], roster: st.Roster) -> None:
        self.deletes["resources"].append((root,))
        pos = self._anchor(root, events)
        r = st.fold_resource(root, events, roster)
        if r is not None:
            self.inserts["resources"].append((
                pos, r.id, r.pod, r.lane, r.name, r.category, r.what, r.where, r.when, r.contact,
                r.ts,
            ))  # fmt: skip

    async def write(self, db: aiosqlite.Connection) -> bool:
        """Write the rows; True if a member was forgotten (their key and bodies deleted)."""
        if self.fresh:
            for table, values in self.inserts.items():
                if values:
                    await db.executemany(await insert_sql(db, table), values)
        else:
            for table, roots in self.deletes.items():
                await _replace(
                    db, table, [r for (r,) in roots], self.inserts.get(table, []),
                    self.anchor_pos, self.claim_pos,
                )  # fmt: skip
        if self.forgotten:
            await forget_members(db, self.forgotten)
        return bool(self.forgotten)


#: Tables whose rows are stored at the position of the event that made them (rowid = that
#: event's ``pos``) and have no index on their random 32-byte id: rows append in store
#: order, and a lookup by id goes through the events' id index. An index per table on
#: random ids cost a random page write per row (measured: ~750 of 3,063 WAL pages per
#: 1,000-event commit at 100k events, bench/_wal_pages.py).
POSITIONED = frozenset({"requests", "claims", "offers", "resources"})
# The column naming the aggregate a table's rows belong to, and the one naming the row.
_ROOT_COLUMN = {"pods": "pod", "fulfilments": "request"}
_KEY_COLUMN = {"pods": "pod"}
_columns: dict[str, tuple[str, ...]] = {}


async def _table_columns(db: aiosqlite.Connection, table: str) -> tuple[str, ...]:
    if table not in _columns:
        found = await rows(db, f"SELECT name FROM pragma_table_info('{table}') ORDER BY cid")
        _columns[table] = tuple(name for (name,) in found)
    return _columns[table]


async def insert_sql(db: aiosqlite.Connection, table: str) -> str:
    columns = await _table_columns(db, table)
    if table in POSITIONED:  # rows lead with their rowid
        names = ", ".join(f'"{c}"' for c in columns)
        return f"INSERT INTO {table} (rowid, {names}) VALUES ({marks(len(columns) + 1)})"
    return f"INSERT INTO {table} VALUES ({marks(len(columns))})"


async def _replace(
    db: aiosqlite.Connection,
    table: str,
    roots: list[bytes],
    new_rows: list[tuple],
    anchor_pos: dict[bytes, int],
    claim_pos: list[int],
) -> None:
    """Make the rows of ``roots`` in ``table`` equal ``new_rows``, writing only differences.

    A claim re-folds its whole request, but usually changes two columns of one row.
    Deleting and re-inserting the rows rewrote every index entry of each, each on a random
    page; an UPDATE of the changed columns touches the row's page and only the indexes
    over those columns (SQLite rewrites an index whenever its columns are SET, even to the
    same value, so unchanged columns are left out)."""
    columns = await _table_columns(db, table)
    positioned = table in POSITIONED
    root_col = _ROOT_COLUMN.get(table, "id")
    keys: Sequence[object] = roots
    if positioned:  # rows are (rowid, *columns); the key is the rowid
        key_at, key_sql, select = 0, "rowid", f"SELECT rowid, * FROM {table}"
        columns = ("rowid", *columns)
        # A claim's row sits at its event's position, any other row at its anchor's.
        root_col = "rowid"
        keys = claim_pos if table == "claims" else [anchor_pos[r] for r in roots if r in anchor_pos]
    else:
        key_sql = _KEY_COLUMN.get(table, "id")
        key_at, select = columns.index(key_sql), f"SELECT * FROM {table}"
    old: dict[object, tuple] = {}
    for part in chunks(keys):
        sql = f"{select} WHERE {root_col} IN ({marks(len(part))})"
        old.update((row[key_at], tuple(row)) for row in await rows(db, sql, part))
    inserts: list[tuple] = []
    updates: dict[tuple[int, ...], list[tuple]] = defaultdict(list)
    for row in new_rows:
        before = old.pop(row[key_at], None)
        if before is None:
            inserts.append(row)
        elif before != row:
            changed = tuple(i for i, (a, b) in enumerate(zip(before, row, strict=True)) if a != b)
            updates[changed].append((*(row[i] for i in changed), row[key_at]))
    if old:
        await db.executemany(f"DELETE FROM {table} WHERE {key_sql} = ?", [(k,) for k in old])
    for changed, params in updates.items():
        sets = ", ".join(f'"{columns[i]}" = ?' for i in changed)
        await db.executemany(f"UPDATE {table} SET {sets} WHERE {key_sql} = ?", params)
    if inserts:
        await db.executemany(await insert_sql(db, table), inserts)


async def forget_members(db: aiosqlite.Connection, members: list[bytes]) -> None:
    """Crypto-shred: destroy each member's key and drop the bodies of their events."""
    params = [(m,) for m in members]
    await db.executemany("DELETE FROM member_keys WHERE member = ?", params)
    where = f"kind IN ({marks(len(MEMBER_KINDS))}) AND dropped = 0"
    await db.executemany(
        "UPDATE events SET body = NULL, dropped = 1 "
        f"WHERE pos IN ({of_roots('SELECT pos FROM events', 1, where)})",
        [(m, m, *MEMBER_KINDS) * 2 for m in members],
    )


async def refold(
    db: aiosqlite.Connection,
    roots: Iterable[bytes],
    roster: st.Roster,
    *,
    fresh: dict[bytes, list[st.EventView]] | None = None,
    empty: bool = False,
    folds: FoldCache | None = None,
    new: dict[bytes, list[st.EventView]] | None = None,
    reload: set[bytes] = frozenset(),  # type: ignore[assignment]
) -> bool:
    """Re-fold the given aggregates from the log and replace their rows; True if that
    forgot a member.

    ``fresh`` maps roots whose every event is new (in this batch) to those events: they
    are folded from memory, with no read and no delete (the ingest fast path). ``empty``:
    the tables hold no rows of these roots (a rebuild), so rows are only inserted.
    ``folds``: requests folded before, kept; one whose ``new`` events (this batch's) all
    sort after what it folded, under the same roster, and none of whose events changed
    otherwise (``reload``: a body put back, answers moved to it), is continued from
    there rather than folded from the table."""
    forgot = False
    if fresh:
        writer = Writer(fresh=True, folds=folds)
        for root, events in fresh.items():
            writer.fold(root, events, roster)
        forgot = await writer.write(db)
    roots = [r for r in roots if not fresh or r not in fresh]
    if folds is not None and new is not None:
        writer, rest = Writer(folds=folds), []
        for root in roots:
            kept = folds.get(root)
            events = new.get(root)
            if (kept is not None and events and root not in reload
                    and kept.roster_version == roster.version
                    and kept.fold.can_extend(events)):  # fmt: skip
                writer.extend_request(root, kept, events, roster)
            else:
                rest.append(root)
        forgot = await writer.write(db) or forgot
        roots = rest
    for part in chunks(roots, 2000):
        grouped = await load_roots(db, part)
        writer = Writer(fresh=empty, folds=folds)
        for root in part:
            events = grouped.get(root)
            if events:
                writer.fold(root, events, roster)
            elif folds is not None:
                folds.drop(root)
        forgot = await writer.write(db) or forgot
    return forgot


async def canonical_dump(db: aiosqlite.Connection) -> dict[str, list[list]]:
    """Every projection table sorted by all its columns: equal dumps mean equal state."""
    dump: dict[str, list[list]] = {}
    for table in PROJECTIONS:
        data = await rows(db, f"SELECT * FROM {table}")
        dump[table] = sorted(
            ([c.hex() if isinstance(c, bytes) else c for c in r] for r in data),
            key=lambda r: json.dumps(r),
        )
    return dump


def digest(dump: dict[str, list[list]]) -> str:
    """A short hash of a canonical dump, to compare nodes at a glance."""
    return hashlib.blake2b(json.dumps(dump, sort_keys=True).encode(), digest_size=16).hexdigest()
