"""Reads of the read model: what the organizer API and the CLI show.

Every function takes the ledger's connection and returns plain values (ids as raw bytes);
the node turns them into JSON. Short id prefixes resolve here, like git's short hashes.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable, Sequence
from itertools import chain, islice
from typing import Any

import aiosqlite

from podlink.ledger import state as st
from podlink.ledger.errors import Ambiguous, NotFound
from podlink.ledger.projections import (
    EVENT_COLUMNS,
    POSITIONED,
    URGENCY_RANK,
    load_roster,
    view_from_row,
)
from podlink.ledger.store import (
    chunks,
    id_is,
    ids_joined,
    marks,
    of_roots,
    rows,
    rows_by_pairs,
    scalar,
)  # fmt: skip
from podlink.protocol import boxes, kinds
from podlink.protocol.errors import ProtocolError
from podlink.protocol.text import b64e, key_or_none

Row = dict[str, Any]

#: SQLite reads LIMIT -1 as "no limit": what the ledger's own readers ask for.
NO_LIMIT = -1


B64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
ID_BYTES = 32  # every id and key: 43 base64url characters


def _prefix_range(prefix: str) -> tuple[bytes, bytes]:
    """Bytes bounds [lo, hi) of every id whose base64url text starts with ``prefix``.

    A partial group of k characters fixes 6k bits: its bytes run from those bits followed
    by zeros to the next value of them. (Keeping only whole bytes made one character fix
    nothing, so the range was every id, and a LIMIT could cut the one asked for.)"""
    whole = len(prefix) // 4 * 4
    head = base64.urlsafe_b64decode(prefix[:whole]) if whole else b""
    rest = prefix[whole:]
    if not rest:
        return head, _increment(head) if head else b"\xff" * 33
    bits = 6 * len(rest)
    value = 0
    for char in rest:
        value = value * 64 + B64URL.index(char)
    size = min(-(-bits // 8), ID_BYTES - len(head))  # a last group's spare bits are padding
    if 8 * size < bits:
        value, bits = value >> (bits - 8 * size), 8 * size
    lo = head + (value << (8 * size - bits)).to_bytes(size, "big")
    top = (value + 1) << (8 * size - bits)
    if top < 1 << (8 * size):
        return lo, head + top.to_bytes(size, "big")
    return lo, _increment(head) if head else b"\xff" * 33


def _increment(raw: bytes) -> bytes:
    n = int.from_bytes(raw, "big") + 1
    if n >= 1 << (8 * len(raw)):
        return b"\xff" * (len(raw) + 33)
    return n.to_bytes(len(raw), "big")


async def resolve(db: aiosqlite.Connection, table: str, prefix: str, what: str) -> bytes:
    """The one id in ``table`` whose base64url form starts with ``prefix``."""
    prefix = prefix.strip()
    if not prefix or not set(prefix) <= set(B64URL) or len(prefix) > 43:
        raise NotFound(f"{prefix!r} is not a {what} id (ids are base64url, like 'Xk3b9a1Q')")
    lo, hi = _prefix_range(prefix)
    if table in POSITIONED:  # no id index of its own: its rows sit at their event's pos
        sql = (
            f"SELECT e.id FROM events e JOIN {table} t ON t.rowid = e.pos "
            "WHERE substr(e.id, 1, 8) BETWEEN substr(?, 1, 8) AND substr(?, 1, 8) "
            "AND e.id >= ? AND e.id < ? LIMIT 50"
        )
        params: tuple[bytes, ...] = (lo, hi, lo, hi)
    else:
        column = "pod" if table == "pods" else "id"
        sql = f"SELECT {column} FROM {table} WHERE {column} >= ? AND {column} < ? LIMIT 50"
        params = (lo, hi)
    found = [r[0] for r in await rows(db, sql, params) if b64e(r[0]).startswith(prefix)]
    if not found:
        raise NotFound(f"no {what} with id starting {prefix!r}")
    if len(found) > 1:
        texts = [b64e(f) for f in found]
        raise Ambiguous(
            f"{prefix!r} matches {len(found)} {what}s ({', '.join(t[:10] for t in texts[:5])});"
            " type more characters",
            texts,
        )
    return found[0]


# ---------------------------------------------------------------- pods and roster


async def pod_names(
    db: aiosqlite.Connection, pods: Iterable[bytes | None] | None = None
) -> dict[bytes, str]:
    """Directory names of ``pods`` (None: of every pod). A page of a list names only the
    pods in it: reading the whole directory for each page made every page cost as much
    as the network is large."""
    if pods is None:
        return {pod: name for pod, name in await rows(db, "SELECT pod, name FROM pods")}
    wanted = sorted({p for p in pods if p is not None})
    out: dict[bytes, str] = {}
    for part in chunks(wanted):
        sql = f"SELECT pod, name FROM pods WHERE pod IN ({marks(len(part))})"
        out.update(await rows(db, sql, part))
    return out


def _filters(
    equal: Sequence[tuple[str, Any]], *, made_by: bytes | None = None
) -> tuple[list[str], list[Any]]:
    """Conditions and their parameters: ``column = value`` for each value given (None:
    no condition), and with ``made_by`` the one row that event made (``_at_event``)."""
    where = [f"{column} = ?" for column, value in equal if value is not None]
    params = [value for _, value in equal if value is not None]
    if made_by is not None:
        where.append(_at_event())
        params += [made_by, made_by, made_by]
    return where, params


def _where(conditions: Sequence[str]) -> str:
    return f"WHERE {' AND '.join(conditions)}" if conditions else ""


def _at_event(table: str = "") -> str:
    """The condition for the one row of a positioned table made by event ``?`` (its id
    given three times): such rows sit at their event's store position and have no id
    index."""
    prefix = f"{table}." if table else ""
    return f"{prefix}rowid = (SELECT pos FROM events WHERE {id_is()}) AND {prefix}id = ?"


async def _positioned_page(
    db: aiosqlite.Connection,
    table: str,
    columns: str,
    where: list[str],
    params: list[Any],
    *,
    order: str,
    limit: int,
    offset: int,
    after: int | None,
) -> list[tuple[int | None, Sequence[Any]]]:
    """(pos, row) of a page of a table whose rowid is its row's store position.

    ``after`` None: in ``order``, ``offset`` rows skipped (what the lists show; pos None).
    Else the rows stored after that position, in store order (keyset pages that never
    skip nor repeat a row, whatever changes between them)."""
    if after is not None:
        sql = (f"SELECT rowid, {columns} FROM {table} {_where([*where, 'rowid > ?'])} "
               "ORDER BY rowid LIMIT ?")  # fmt: skip
        return [(r[0], r[1:]) for r in await rows(db, sql, [*params, after, limit])]
    sql = f"SELECT {columns} FROM {table} {_where(where)} ORDER BY {order} LIMIT ? OFFSET ?"
    return [(None, r) for r in await rows(db, sql, [*params, limit, offset])]


def _with_pos(row: Row, pos: int | None) -> Row:
    if pos is not None:
        row["pos"] = pos
    return row


def roster_cursor(pod: bytes, key: bytes, add_id: bytes) -> str:
    """A roster row's place in key order (its primary key), as ``after`` takes it."""
    return f"{b64e(pod)}.{b64e(key)}.{b64e(add_id)}"


async def list_pods(
    db: aiosqlite.Connection,
    *,
    limit: int = NO_LIMIT,
    offset: int = 0,
    after: bytes | None = None,
) -> list[Row]:
    """The directory, by name. ``after``: instead, the pods whose key sorts after it
    (b"": from the first), in key order, each with its ``cursor``."""
    columns = "pod, name, zone, description, categories, contact, founded_ts, updated_ts"
    if after is not None:
        sql = f"SELECT {columns} FROM pods WHERE pod > ? ORDER BY pod LIMIT ?"
        params: list[Any] = [after, limit]
    else:
        sql = f"SELECT {columns} FROM pods ORDER BY name, pod LIMIT ? OFFSET ?"
        params = [limit, offset]
    out = [
        {"pod": p, "name": n, "zone": z, "description": d, "categories": json.loads(c),
         "contact": ct, "founded_ts": f, "updated_ts": u}
        for p, n, z, d, c, ct, f, u in await rows(db, sql, params)
    ]  # fmt: skip
    if after is not None:
        for row in out:
            row["cursor"] = b64e(row["pod"])
    return out


async def list_roster(
    db: aiosqlite.Connection,
    pod: bytes | None,
    *,
    limit: int = NO_LIMIT,
    offset: int = 0,
    after: tuple[bytes, bytes, bytes] | None = None,
) -> list[Row]:
    """The organizers of ``pod`` (None: of every pod this node knows), oldest first.
    ``after`` (pod, key, add_id): instead, the tenures after that one in primary-key
    order, each with its ``cursor`` (:func:`roster_cursor`)."""
    where, params = (["pod = ?"], [pod]) if pod is not None else ([], [])
    columns = "pod, key, name, from_ts, until_ts, add_id"
    if after is not None:
        where.append("(pod, key, add_id) > (?, ?, ?)")
        sql = f"SELECT {columns} FROM roster {_where(where)} ORDER BY pod, key, add_id LIMIT ?"
        params += [*after, limit]
    else:
        sql = (f"SELECT {columns} FROM roster {_where(where)} "
               "ORDER BY from_ts, pod, key, add_id LIMIT ? OFFSET ?")  # fmt: skip
        params += [limit, offset]
    out = []
    for p, k, n, f, u, add in await rows(db, sql, params):
        row = {"pod": p, "key": k, "name": n, "from_ts": f, "until_ts": u, "active": u is None}
        if after is not None:
            row["cursor"] = roster_cursor(p, k, add)
        out.append(row)
    return out


# ---------------------------------------------------------------- requests


REQUEST_COLUMNS = (
    "id, pod, author, lane, title, details, category, urgency, needed_by, area, for_member, "
    "status, accepted_claim, opened_ts, updated_ts, closed_ts, claims, cancel_reason"
)


def _request_row(r: Sequence[Any], names: dict[bytes, str]) -> Row:
    keys = [c.strip() for c in REQUEST_COLUMNS.split(",")]
    row = dict(zip(keys, r, strict=True))
    row["pod_name"] = names.get(row["pod"], "")
    row["share"] = row["lane"]
    return row


async def list_requests(
    db: aiosqlite.Connection,
    *,
    status: str | None = None,
    category: str | None = None,
    pod: bytes | None = None,
    lane: str | None = None,
    limit: int = 500,
    offset: int = 0,
    after: int | None = None,
) -> list[Row]:
    """Requests this node can see: open and accepted ones first (unless ``status`` says
    which), then most urgent, oldest, and by id (so every node holding the same requests
    lists them in the same order). ``after``: instead, the rows stored after that position,
    in store order, each with its ``pos``: pages that never skip nor repeat a row, however
    rows change between them (an export)."""
    where, params = _filters(
        [("status", status), ("category", category), ("pod", pod), ("lane", lane)])
    active = "" if status else "status NOT IN ('open', 'accepted'), "  # closed ones last
    found = await _positioned_page(
        db, "requests", REQUEST_COLUMNS, where, params,
        order=f"{active}urgency_rank, opened_ts, id", limit=limit, offset=offset, after=after,
    )  # fmt: skip
    names = await pod_names(db, (r[1] for _, r in found))
    return [_with_pos(_request_row(r, names), pos) for pos, r in found]


#: Claims a request's answer holds by default: the newest (the accepted one always).
CLAIMS_SHOWN = 100
#: History steps a request's answer holds by default: its opening and the newest.
HISTORY_SHOWN = 200


async def get_request(
    db: aiosqlite.Connection,
    request: bytes,
    *,
    claims: int = CLAIMS_SHOWN,
    history: int = HISTORY_SHOWN,
    event: bytes | None = None,
) -> Row:
    """One request with its newest ``claims`` claims, its fulfilment and ``history``
    steps of its history (each event and its outcome), each step's author named.

    Any pod may claim a shared need, thousands of times: the answer holds the newest
    claims (oldest first, and the accepted one whatever its age), ``claims_total`` says
    how many there are, and ``GET /v1/claims?request=`` pages through them all. The
    history is folded from every event (an outcome depends on all that came before it)
    but holds the opening step and the newest ones; ``history_total`` counts them all.
    ``event``: ``step`` is that event's step, wherever it is in the history (None if it
    is not one of the request's), so a writer learns what came of its event."""
    found = await rows(
        db,
        f"SELECT {REQUEST_COLUMNS} FROM requests WHERE {_at_event()}",
        (request, request, request),
    )
    if not found:
        raise NotFound(f"no request {b64e(request)[:10]}")
    events = await load_roots_one(db, request)
    folded = st.fold_request(request, events, await load_roster(db, {e.pod for e in events}))
    steps = folded.history if folded else []
    shown = _history_window(steps, history)
    wanted = next((s for s in steps if s.id == event), None) if event is not None else None
    named = [*shown, *([wanted] if wanted is not None else [])]
    names = await pod_names(db, [found[0][1], *(s.pod for s in named)])
    authors = await organizer_names(db, ((s.pod, s.author) for s in named))
    row = _request_row(found[0], names)
    row["claims_total"] = row["claims"]
    row["claims"] = await _newest_claims(db, request, claims, row["accepted_claim"])
    row["fulfilments"] = [
        {"id": i, "pod": p, "note": n, "hours": h, "ts": t}
        for i, p, n, h, t in await rows(
            db, "SELECT id, pod, note, hours, ts FROM fulfilments WHERE request = ?", (request,)
        )
    ]
    row["history_total"] = len(steps)
    row["history"] = [_step_row(s, names, authors) for s in shown]
    if event is not None:
        row["step"] = None if wanted is None else _step_row(wanted, names, authors)
    return row


def _history_window(steps: list[st.Step], size: int) -> list[st.Step]:
    """The opening step and the newest ``size - 1`` (all of them when they fit)."""
    if len(steps) <= size:
        return steps
    return steps[:1] + (steps[-(size - 1):] if size > 1 else [])


def _step_row(
    s: st.Step, names: dict[bytes, str], authors: dict[tuple[bytes, bytes], str]
) -> Row:
    return {"id": s.id, "kind": s.kind, "pod": s.pod, "pod_name": names.get(s.pod, ""),
            "author": s.author, "author_name": authors.get((s.pod, s.author), ""),
            "ts": s.ts, "outcome": s.outcome, "why": s.why}  # fmt: skip


async def _newest_claims(
    db: aiosqlite.Connection, request: bytes, limit: int, accepted: bytes | None
) -> list[Row]:
    """The newest ``limit`` claims of ``request`` and its accepted one, oldest first."""
    found = await list_claims(db, request=request, limit=limit, newest_first=True) if limit else []
    if accepted is not None and all(c["id"] != accepted for c in found):
        found += await list_claims(db, id=accepted)
    return sorted(found, key=lambda c: (c["ts"], c["id"]))


async def load_roots_one(db: aiosqlite.Connection, root: bytes) -> list[st.EventView]:
    sql = of_roots(f"SELECT {EVENT_COLUMNS} FROM events", 1)
    return [view_from_row(r) for r in await rows(db, sql, (root,) * 4)]


CLAIM_COLUMNS = "id, request, pod, author, lane, by_member, note, status, ts, decided_ts, reason"


async def list_claims(
    db: aiosqlite.Connection,
    *,
    request: bytes | None = None,
    status: str | None = None,
    id: bytes | None = None,
    pod: bytes | None = None,
    limit: int = NO_LIMIT,
    offset: int = 0,
    after: int | None = None,
    newest_first: bool = False,
) -> list[Row]:
    """Claims by time, oldest first (``newest_first``: newest first; ``after``: by store
    position, each with its ``pos``); ``id``: the one claim made by that event; ``pod``:
    only those that pod made."""
    where, params = _filters([("status", status), ("pod", pod)], made_by=id)
    if request is not None:  # through the events' root index (claims have none by request)
        where.append(
            f"rowid IN (SELECT pos FROM events WHERE {id_is('root')} AND root != id "
            "AND kind = 'claim.make') AND request = ?"
        )
        params += [request, request, request]
    order = "ts DESC, id DESC" if newest_first else "ts, id"
    found = await _positioned_page(db, "claims", CLAIM_COLUMNS, where, params, order=order,
                                   limit=limit, offset=offset, after=after)  # fmt: skip
    names = await pod_names(db, (r[2] for _, r in found))
    return [
        _with_pos(
            {"id": i, "request": rq, "pod": p, "pod_name": names.get(p, ""), "author": a,
             "lane": ln, "by_member": bm, "note": n, "status": s, "ts": t, "decided_ts": d,
             "reason": why},
            pos,
        )
        for pos, (i, rq, p, a, ln, bm, n, s, t, d, why) in found
    ]  # fmt: skip


async def list_hours(
    db: aiosqlite.Connection,
    *,
    limit: int = NO_LIMIT,
    offset: int = 0,
    after: bytes | None = None,
) -> list[Row]:
    """Time-bank hours: each fulfilment that recorded hours, with whom they helped (the
    request's pod and member) and who gave them (the accepted claim's pod and member).
    ``id`` is the fulfilment's. ``after``: instead, the fulfilments whose id sorts after
    it (b"": from the first), in id order, each with its ``cursor``: fulfilments are not
    kept at a store position, and their id (the primary key) never changes.

    Requests and claims are found by their event's position (they have no index on id)."""
    where, params = ["f.hours IS NOT NULL"], []
    if after is not None:
        where.append("f.id > ?")
        params.append(after)
    sql = (
        "SELECT f.id, f.hours, f.ts, r.id, r.title, r.pod, r.for_member, r.accepted_claim, "
        "c.pod, c.by_member "
        "FROM fulfilments f "
        "JOIN requests r ON r.rowid = "
        f"(SELECT pos FROM events WHERE {ids_joined('id', 'f.request')}) "
        "LEFT JOIN claims c ON c.rowid = "
        f"(SELECT pos FROM events WHERE {ids_joined('id', 'r.accepted_claim')}) "
        f"{_where(where)} ORDER BY "
    )
    if after is not None:
        sql += "f.id LIMIT ?"
        params.append(limit)
    else:
        sql += "f.ts, f.id LIMIT ? OFFSET ?"
        params += [limit, offset]
    found = await rows(db, sql, params)
    names = await pod_names(db, chain((r[5] for r in found), (r[8] for r in found)))
    out = [
        {"id": fid, "hours": h, "ts": ts, "request": rid, "title": title, "pod": p,
         "pod_name": names.get(p, ""), "for_member": fm, "accepted_claim": ac,
         "helper_pod": hp, "helper_pod_name": names.get(hp, "") if hp else "",
         "by_member": bm}
        for fid, h, ts, rid, title, p, fm, ac, hp, bm in found
    ]  # fmt: skip
    if after is not None:
        for row in out:
            row["cursor"] = b64e(row["id"])
    return out


# ---------------------------------------------------------------- offers, resources


OFFER_COLUMNS = (
    "id, pod, author, lane, title, category, details, by_member, availability, capacity, "
    "status, opened_ts, closed_ts"
)


async def list_offers(
    db: aiosqlite.Connection,
    *,
    status: str | None = "open",
    id: bytes | None = None,
    pod: bytes | None = None,
    limit: int = NO_LIMIT,
    offset: int = 0,
    after: int | None = None,
) -> list[Row]:
    """Offers, oldest first (``after``: by store position, each with its ``pos``);
    ``id``: the one offer opened by that event; ``pod``: that pod's only."""
    where, params = _filters([("status", status or None), ("pod", pod)], made_by=id)
    found = await _positioned_page(db, "offers", OFFER_COLUMNS, where, params,
                                   order="opened_ts, id", limit=limit, offset=offset,
                                   after=after)  # fmt: skip
    names = await pod_names(db, (r[1] for _, r in found))
    return [_with_pos(_offer_row(r, names), pos) for pos, r in found]


def _offer_row(r: Sequence[Any], names: dict[bytes, str]) -> Row:
    i, p, a, ln, t, c, d, bm, av, cap, s, o, cl = r
    return {"id": i, "pod": p, "pod_name": names.get(p, ""), "author": a, "lane": ln,
            "share": ln, "title": t, "category": c, "details": d, "by_member": bm,
            "availability": av, "capacity": cap, "status": s, "opened_ts": o,
            "closed_ts": cl}  # fmt: skip


RESOURCE_COLUMNS = 'id, pod, lane, name, category, what, "where", "when", contact, ts'


async def list_resources(
    db: aiosqlite.Connection,
    *,
    category: str | None = None,
    id: bytes | None = None,
    limit: int = NO_LIMIT,
    offset: int = 0,
    after: int | None = None,
) -> list[Row]:
    """The resource directory by category and name (``after``: by store position, each
    with its ``pos``); ``id``: the one entry shared by that event."""
    where, params = _filters([("category", category or None)], made_by=id)
    found = await _positioned_page(db, "resources", RESOURCE_COLUMNS, where, params,
                                   order="category, name, id", limit=limit, offset=offset,
                                   after=after)  # fmt: skip
    names = await pod_names(db, (r[1] for _, r in found))
    return [
        _with_pos(
            {"id": i, "pod": p, "pod_name": names.get(p, ""), "lane": ln, "share": ln,
             "name": n, "category": c, "what": w, "where": wh, "when": wn, "contact": ct,
             "ts": t},
            pos,
        )
        for pos, (i, p, ln, n, c, w, wh, wn, ct, t) in found
    ]  # fmt: skip


# ---------------------------------------------------------------- members (personal data)


async def member_key(db: aiosqlite.Connection, member: bytes) -> bytes | None:
    return await scalar(db, "SELECT key FROM member_keys WHERE member = ?", (member,))


async def list_members(
    db: aiosqlite.Connection,
    *,
    include_forgotten: bool = False,
    id: bytes | None = None,
    limit: int = NO_LIMIT,
    offset: int = 0,
    after: bytes | None = None,
) -> list[Row]:
    """Members with their details opened with their keys (pod lane only; never gossiped),
    in joining order. ``after``: instead, the members whose id sorts after it (b"": from
    the first), in id order, each with its ``cursor`` (a member's id never changes; the
    table's rowid would, were the read model rebuilt between two pages). Only the rows
    of the page are opened."""
    where, params = ([] if include_forgotten else ["m.status = 'active'"]), []
    if id is not None:
        where.append("m.id = ?")
        params.append(id)
    sql = (
        "SELECT m.id, m.status, m.box, m.joined_ts, m.updated_ts, k.key FROM members m "
        "LEFT JOIN member_keys k ON k.member = m.id "
    )
    if after is not None:
        where.append("m.id > ?")
        sql += f"{_where(where)} ORDER BY m.id LIMIT ?"
        params += [after, limit]
    else:
        sql += f"{_where(where)} ORDER BY m.joined_ts, m.id LIMIT ? OFFSET ?"
        params += [limit, offset]
    out = []
    for id_, status, box, joined, updated, key in await rows(db, sql, params):
        row: Row = {"id": id_, "status": status, "joined_ts": joined, "updated_ts": updated}
        details = _open_member(box, key)
        if details is not None:
            row.update(
                name=details.name, contact=details.contact, prefers=details.prefers,
                can=list(details.can), needs=list(details.needs), role=details.role,
                languages=list(details.languages), notes=details.notes,
            )  # fmt: skip
        else:
            row.update(name="(forgotten)" if status == "forgotten" else "(no key)")
        if after is not None:
            row["cursor"] = b64e(id_)
        out.append(row)
    return out


def _open_member(box: bytes | None, key: bytes | None) -> kinds.MemberDetails | None:
    if box is None or key is None:
        return None
    try:
        return kinds.decode_member_details(boxes.unlock(key, box))
    except ProtocolError:
        return None


# ---------------------------------------------------------------- the log, feeds, forks


async def max_position(db: aiosqlite.Connection) -> int:
    return await scalar(db, "SELECT max(pos) FROM events") or 0


async def count_events(db: aiosqlite.Connection) -> int:
    return await scalar(db, "SELECT count(*) FROM events") or 0


def visible_clause(pod: bytes | None, exclude_pod: bytes | None) -> tuple[str, list[Any]]:
    """SQL for what a direct peer may see: every network event, and this pod's peers lane.

    The pod lane never appears. ``exclude_pod`` leaves out the asking peer's own events
    and the events it delivered to us (it has them already)."""
    clause = "(lane = 'network' OR (lane = 'peers' AND pod = ?))"
    params: list[Any] = [pod or b""]
    if exclude_pod is not None:  # nor what it sent us: echoes cost the peer a verify each
        clause += " AND pod != ? AND origin IS NOT ?"
        params += [exclude_pod, exclude_pod]
    return clause, params


async def select_visible(
    db: aiosqlite.Connection,
    since: int,
    limit: int,
    *,
    pod: bytes | None,
    exclude_pod: bytes | None = None,
) -> tuple[list[tuple[int, bytes, bytes, bytes | None]], int, int]:
    """Events a peer may see after store position ``since``, in store order.

    Returns (rows of (pos, payload, sig, body), cursor, head). The head is read first and
    bounds the scan, so an event committed meanwhile is never skipped; the cursor is the
    last position scanned, which passes invisible events so a peer never rescans them."""
    head = await max_position(db)
    clause, params = visible_clause(pod, exclude_pod)
    found = await rows(
        db,
        f"SELECT pos, payload, sig, body FROM events WHERE pos > ? AND pos <= ? AND {clause} "
        "ORDER BY pos LIMIT ?",
        [since, head, *params, limit],
    )
    cursor = found[-1][0] if len(found) == limit else head
    return found, max(cursor, since), head


async def visible_heads(
    db: aiosqlite.Connection,
    *,
    pod: bytes | None,
    own: bytes | None = None,
    after: tuple[bytes, str] | None = None,
    limit: int | None = None,
) -> list[tuple[bytes, str, int, bytes]]:
    """(author, lane, seq, id) of every feed a peer may see, for repair: the network lane,
    this pod's peers lane, and the asking pod's ``own`` peers lane (it wrote it). In
    (author, lane) order; with ``after``, only feeds after that one; at most ``limit``."""
    sql = (
        "SELECT author, lane, seq, id FROM feeds "
        "WHERE (lane = 'network' OR (lane = 'peers' AND pod IN (?, ?)))"
    )
    params: list[object] = [pod or b"", own or b""]
    if after is not None:
        sql += " AND (author, lane) > (?, ?)"
        params += after
    sql += " ORDER BY author, lane"
    if limit is not None:
        sql += " LIMIT ?"
        params.append(limit)
    return list(await rows(db, sql, params))


async def feed_range(
    db: aiosqlite.Connection,
    author: bytes,
    lane: str,
    start: int,
    end: int,
    limit: int,
    *,
    pods: tuple[bytes, ...] | None = None,
) -> list[tuple[int, bytes, bytes, bytes | None]]:
    """(seq, payload, sig, body) of one feed's events with start <= seq <= end, in seq
    order; with ``pods``, only events written for one of those pods (each event is
    checked, not the feed)."""
    where, params = "", []
    if pods is not None:
        where = f" AND pod IN ({marks(len(pods))})"
        params = list(pods)
    return list(
        await rows(
            db,
            "SELECT seq, payload, sig, body FROM events WHERE author = ? AND lane = ? "
            f"AND seq BETWEEN ? AND ?{where} ORDER BY seq LIMIT ?",
            (author, lane, start, end, *params, limit),
        )
    )


async def feed_heads(db: aiosqlite.Connection, author: bytes) -> dict[str, tuple[int, bytes, int]]:
    """This author's feed heads by lane: (seq, id, ts)."""
    return {
        lane: (seq, id_, ts)
        for lane, seq, id_, ts in await rows(
            db, "SELECT lane, seq, id, ts FROM feeds WHERE author = ?", (author,)
        )
    }


async def log_page(
    db: aiosqlite.Connection, since: int = 0, limit: int = 100, *, newest_first: bool = False
) -> list[Row]:
    order = "DESC" if newest_first else "ASC"
    cond = "pos < ?" if newest_first and since else "pos > ?"
    sql = (
        "SELECT pos, id, pod, author, lane, seq, ts, kind, body IS NULL, length(payload) + "
        f"coalesce(length(body), 0) FROM events WHERE {cond} ORDER BY pos {order} LIMIT ?"
    )
    found = await rows(db, sql, (since, limit))
    names = await pod_names(db, (r[2] for r in found))  # the page's pods, not the directory
    authors = await organizer_names(db, ((r[2], r[3]) for r in found))
    return [
        {"pos": pos, "id": i, "pod": p, "pod_name": names.get(p, ""), "author": a,
         "author_name": authors.get((p, a), ""), "lane": ln, "seq": s, "ts": t, "kind": k,
         "body_dropped": bool(nb), "size": size}
        for pos, i, p, a, ln, s, t, k, nb, size in found
    ]  # fmt: skip


async def organizer_names(
    db: aiosqlite.Connection, keys: Iterable[tuple[bytes, bytes]]
) -> dict[tuple[bytes, bytes], str]:
    """The name each (pod, key) goes by on that pod's roster: its latest tenure's (a key
    added again under a new name goes by the new one). Only the pairs asked for are read,
    so a page of the log costs what the page holds, not what the network does."""
    found = await rows_by_pairs(
        db, ("pod", "key"),
        "SELECT r.pod, r.key, r.name FROM k JOIN roster AS r ON r.pod = k.pod "
        "AND r.key = k.key WHERE r.name != '' ORDER BY r.from_ts", keys,
    )  # fmt: skip
    return {(p, k): n for p, k, n in found}  # in time order: the latest tenure's wins


async def list_forks(
    db: aiosqlite.Connection,
    *,
    author: bytes | None = None,
    limit: int = NO_LIMIT,
    offset: int = 0,
    after: int | None = None,
) -> list[Row]:
    """The fork evidence held, in the order it came (by ``num``): recorded here
    (``gossiped`` false: ``source`` delivered the refused event) or sent by the peer
    ``source`` (true). ``after``: the pieces numbered after it (numbers never change, so
    pages never skip nor repeat one); ``author``: only that key's.

    Each piece is named as a log row is: ``pod`` (the signed headers' pod, None if
    neither is held), ``pod_name``, ``author_name`` (the name the key goes by on that
    pod's roster) and ``source_name`` (the delivering peer's directory name). Only the
    page's keys are looked up: naming them in the CLI read every roster and directory
    page of the network for a list of a few forks."""
    where, params = _filters([("author", author)])
    if after is not None:
        where.append("num > ?")
        params.append(after)
    sql = (
        "SELECT num, author, lane, seq, kept_id, other_id, source, received, gossiped, "
        f"coalesce(kept_pod, other_pod) FROM forks {_where(where)} ORDER BY num LIMIT ? OFFSET ?"
    )
    found = await rows(db, sql, [*params, limit, offset])
    sources = {r[6]: key_or_none(r[6]) for r in found}
    names = await pod_names(db, chain((r[9] for r in found), sources.values()))
    authors = await organizer_names(db, ((r[9], r[1]) for r in found if r[9] is not None))
    return [
        {"num": n, "author": a, "lane": ln, "seq": s, "kept_id": k, "other_id": o,
         "source": src, "received": r, "gossiped": bool(g), "pod": p,
         "pod_name": names.get(p, "") if p else "", "author_name": authors.get((p, a), ""),
         "source_name": names.get(sources[src], "") if sources[src] else ""}
        for n, a, ln, s, k, o, src, r, g, p in found
    ]  # fmt: skip


async def sealed_for(
    db: aiosqlite.Connection,
    pod: bytes,
    limit: int = 100,
    page: int = 1000,
    *,
    per_sender: int = 10,
    before: int | None = None,
    sender: bytes | None = None,
) -> list[Row]:
    """The newest ``limit`` sealed events addressed to ``pod`` (opened by the node, which
    holds the pod key) stored before position ``before`` (None: all), newest stored first,
    each with its ``pos``; at most ``per_sender`` from any one pod, unless ``sender`` says
    whose messages to read (then all of theirs).

    The recipient is inside the body, so every sealed event is read, newest first, a
    page at a time, until ``limit`` are found: the sealed messages other pods exchange
    through this one must not push this pod's own out of reach. Nor may one pod's
    messages to this one push the others' out: any pod can seal to any other, and a
    hundred from one stranger hid every contact that came before them.

    Nothing is out of reach: the next page is ``before`` the oldest ``pos`` of this one
    (every message to ``pod`` between the two was either listed or held back by the
    per-sender cap), and a sender that hit the cap is read whole with ``sender``."""
    out: list[Row] = []
    sent: dict[bytes, int] = {}
    before = (1 << 63) - 1 if before is None else before
    cap = per_sender if sender is None else limit
    where, extra = ("AND pod = ?", [sender]) if sender is not None else ("", [])
    while len(out) < limit:
        found = await rows(
            db,
            "SELECT pos, id, pod, ts, body FROM events INDEXED BY events_sealed "
            f"WHERE kind = 'sealed' AND pos < ? {where} ORDER BY pos DESC LIMIT ?",
            (before, *extra, page),
        )
        for pos, id_, from_pod, ts, body in found:
            if body is None:
                continue
            sealed = kinds.decode_body("sealed", body)
            if isinstance(sealed, kinds.SealedMessage) and sealed.to == pod:
                sent[from_pod] = sent.get(from_pod, 0) + 1
                if sent[from_pod] > cap:
                    continue
                out.append({"id": id_, "from": from_pod, "ts": ts, "box": sealed.box,
                            "pos": pos})  # fmt: skip
                if len(out) >= limit:
                    break
        if len(found) < page:
            break
        before = found[-1][0]
    return out


# ---------------------------------------------------------------- matching

#: The open needs the matcher reads at most per call, in the order they are listed (most
#: urgent, oldest): on any ordinary pod, every open need it can see.
MATCH_SCAN = 5000
#: The pods whose offers of one category the matcher weighs, besides this pod's and the
#: needing pod's: more than an ordinary network has offering any one kind of help.
MATCH_PODS = 50
#: The members whose skills the matcher reads (active ones, in joining order).
MATCH_MEMBERS = 5000


def _forgotten_by(alias: str) -> str:
    """The condition: the offer ``alias`` was made for a member this pod forgot."""
    return (f"{alias}.by_member IS NOT NULL AND EXISTS (SELECT 1 FROM members AS m "
            f"WHERE m.id = {alias}.by_member AND m.status != 'active')")  # fmt: skip


class _OpenOffers:
    """The open offers the matcher pairs, read per (category, pod) and kept for one call.

    Only the categories of the needs in view are read, and of each pod at most the
    ``per_request`` oldest (a need gets no more suggestions than that): through the
    ``offers_open`` index, so the rows read do not grow with the offers a network holds
    in other categories, nor with one pod's many offers in the same."""

    def __init__(self, db: aiosqlite.Connection, own_pod: bytes | None, per_request: int):
        self.db, self.own, self.per_request = db, own_pod, per_request
        self._of: dict[tuple[str, bytes, bytes | None], list[Row]] = {}
        self._pods: dict[str, list[bytes]] = {}
        self._names: dict[bytes, str] = {}

    async def of_pod(self, category: str, pod: bytes, without: bytes | None = None) -> list[Row]:
        """``pod``'s oldest open offers of ``category``, oldest first; this pod's never
        those made for a member it forgot, nor (``without``) for that member."""
        key = (category, pod, without)
        if key not in self._of:
            where = ["o.status = 'open'", "o.category = ?", "o.pod = ?"]
            params: list[Any] = [category, pod]
            if pod == self.own:
                where.append(f"NOT ({_forgotten_by('o')})")
            if without is not None:
                where.append("o.by_member IS NOT ?")
                params.append(without)
            found = await rows(
                self.db,
                f"SELECT {OFFER_COLUMNS} FROM offers AS o INDEXED BY offers_open "
                f"{_where(where)} ORDER BY o.opened_ts, o.id LIMIT ?",
                [*params, self.per_request],
            )
            if found and pod not in self._names:
                self._names.update(await pod_names(self.db, [pod]))
            self._of[key] = [_offer_row(r, self._names) for r in found]
        return self._of[key]

    async def third_pods(self, category: str) -> list[bytes]:
        """The other pods with open offers of ``category``, the one with the oldest offer
        first (the order the matcher weighs them in): at most MATCH_PODS of them, found
        one index step each (a network of more is read in key order up to that many)."""
        if category not in self._pods:
            found: list[tuple[int, bytes, bytes]] = []
            last = b""
            while len(found) < MATCH_PODS:
                pod = await scalar(
                    self.db, "SELECT min(pod) FROM offers INDEXED BY offers_open "
                    "WHERE status = 'open' AND category = ? AND pod > ?", (category, last),
                )  # fmt: skip
                if pod is None:
                    break
                last = pod
                if pod == self.own:
                    continue
                offers = await self.of_pod(category, pod)
                if offers:
                    found.append((offers[0]["opened_ts"], offers[0]["id"], pod))
            self._pods[category] = [pod for _, _, pod in sorted(found)]
        return self._pods[category]


async def suggest_matches(
    db: aiosqlite.Connection, own_pod: bytes | None, *, per_request: int = 5, limit: int = 500
) -> list[Row]:
    """Open needs paired with open offers and members who can meet them, best first.

    A pairing is suggested when the category agrees. Needs go most urgent first, then
    by closeness of the help, then by age. Closeness is seen from this pod, which acts on
    the list: for its own need, a member of it (rank 0), its own offer (1), another pod's
    offer (2); for another pod's shared need, its own offer (1), a member who could go
    (2: answered with a claim), other offers (3). Never the member in need themselves,
    and never an offer by a member this pod forgot. At most ``per_request`` suggestions
    per need and ``limit`` in all: a long list helps nobody.

    The work is bounded whatever the network holds: the MATCH_SCAN first open needs are
    read (those of categories nobody can meet are passed over, in SQL), and of the
    offers only the few each of them can use (:class:`_OpenOffers`); never every open
    offer or every claim of the network."""
    members = await list_members(db, limit=MATCH_MEMBERS) if own_pod is not None else []
    can = sorted({c for m in members for c in m.get("can", [])})
    # Only needs someone could meet: hundreds that nobody can must not fill the window.
    found = await rows(
        db,
        f"SELECT {REQUEST_COLUMNS} FROM (SELECT * FROM requests WHERE status = 'open' "
        "ORDER BY urgency_rank, opened_ts, id LIMIT ?) AS r "
        "WHERE r.category IN (SELECT value FROM json_each(?)) OR EXISTS (SELECT 1 FROM "
        "offers AS o INDEXED BY offers_open WHERE o.status = 'open' AND o.category = "
        f"r.category AND NOT (o.pod IS ? AND {_forgotten_by('o')})) "
        "ORDER BY urgency_rank, opened_ts, id LIMIT ?",
        (MATCH_SCAN, json.dumps(can), own_pod, limit),
    )  # fmt: skip
    names = await pod_names(db, (r[1] for r in found))
    requests = [_request_row(r, names) for r in found]
    # Members who already offered (a claim of ours, pending) are not suggested for that
    # need again: following the hint would double their claim. A claim of an open need
    # is pending (one accepted would have made the need accepted); the index holds the
    # pending claims made for a member, so this reads this pod's own, not the network's.
    claimed: set[tuple[bytes, bytes]] = set()
    if members:
        claimed = {(rq, bm) for rq, bm in await rows(
            db, "SELECT request, by_member FROM claims INDEXED BY claims_pending WHERE pod = ? "
            "AND status = 'pending' AND by_member IS NOT NULL", (own_pod,))}  # fmt: skip
    offers = _OpenOffers(db, own_pod, per_request)
    suggestions: list[Row] = []
    for req in requests:
        ours = req["pod"] == own_pod
        for_whom = req["for_member"] if ours else None  # a member id means something here only
        category = req["category"]
        helpers = (
            _match(req, "member", m["id"], m["name"], own_pod, 0 if ours else 2)
            for m in members if category in m.get("can", []) and m["id"] != for_whom
            and (req["id"], m["id"]) not in claimed
        )  # fmt: skip
        own = await offers.of_pod(category, own_pod, for_whom) if own_pod is not None else []
        mine = (_offer_match(req, o, 1) for o in own)
        found_here = list(islice(chain(helpers, mine) if ours else chain(mine, helpers),
                                 per_request))  # fmt: skip
        if len(found_here) < per_request:
            # The needing pod's own offers before third parties', these by their oldest.
            rank = 2 if ours else 3
            pods = [] if ours else [req["pod"]]
            pods += [p for p in await offers.third_pods(category) if p != req["pod"]]
            for pod in pods:
                for o in await offers.of_pod(category, pod):
                    found_here.append(_offer_match(req, o, rank))
                    if len(found_here) >= per_request:
                        break
                if len(found_here) >= per_request:
                    break
        suggestions += found_here
    suggestions.sort(key=lambda s: (
        URGENCY_RANK.get(s["urgency"], 9), s["rank"], s["opened_ts"], s["request"],
    ))  # fmt: skip
    return suggestions[:limit]


def _offer_match(req: Row, offer: Row, rank: int) -> Row:
    return _match(req, "offer", offer["id"], offer["title"], offer["pod"], rank,
                  offer["pod_name"])  # fmt: skip


def _match(
    req: Row, via: str, id_: bytes, label: str, pod: bytes | None, rank: int, pod_name: str = ""
) -> Row:
    return {
        "request": req["id"], "request_title": req["title"], "request_pod": req["pod"],
        "request_pod_name": req["pod_name"], "category": req["category"],
        "urgency": req["urgency"], "opened_ts": req["opened_ts"], "via": via, "match": id_,
        "match_label": label, "match_pod": pod, "match_pod_name": pod_name, "rank": rank,
    }  # fmt: skip
