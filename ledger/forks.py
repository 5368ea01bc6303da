"""Fork evidence kept in the ``forks`` table: what peers may see of it, by number, and
what a peer sent us, checked and stored.

A row is one piece of evidence (protocol/evidence.py) at one feed position, the first
seen: recorded by ingest when this node refused the other event itself (``gossiped`` 0),
or sent by a peer (``gossiped`` 1, ``source`` that peer). Each row has a local number,
``num``, increasing; peers page through the ones they may see by it
(``GET /v1/peer/forks``), and every page of changes says the newest (``Page.forks``).

A piece a peer sends about a feed position we do not hold waits in ``forks_waiting``
(bounded per source, expired with the pending TTL), unchecked, until an ingest brings its
feed that far; then it is checked and stored as one that just came (``Ledger.store_forks``,
``Ledger._release_waiting``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import aiosqlite

from podlink.ledger.store import rows, rows_by_pairs
from podlink.protocol.errors import ProtocolError
from podlink.protocol.evidence import (
    Evidence,
    Fork,
    decode_evidence,
    parse_evidence,
    verify_fork,
)
from podlink.protocol.text import b64e

if TYPE_CHECKING:
    from podlink.ledger.ledger import Ledger

log = logging.getLogger("podlink.ledger")
FORKS_PAGE = 100  # pieces of evidence in one page at most (~2 kB each at the very most)


def visible_clause(pod: bytes | None, asker: bytes) -> tuple[str, list[object]]:
    """SQL for the evidence a direct peer may see, by the lanes' rules for events: every
    ``network`` feed's, a ``peers`` feed's only when both headers were written for this
    pod or for the asker's (what ``heads`` and ``feed`` serve it), never the ``pod``
    lane's. Nor what the asker sent us itself, nor a row whose kept header this node
    never had (from before V8, its event gone)."""
    both = [pod or b"", asker]
    clause = (
        "kept_payload IS NOT NULL AND (lane = 'network' OR (lane = 'peers' "
        "AND kept_pod IN (?, ?) AND other_pod IN (?, ?))) AND NOT (gossiped = 1 AND source = ?)"
    )
    return clause, [*both, *both, b64e(asker)]


async def newest_visible(db: aiosqlite.Connection, *, pod: bytes | None, asker: bytes) -> int:
    """The number of the newest evidence ``asker`` may be served (0: none): what every
    page of changes says (``Page.forks``), so it is read through the V9 indexes in a few
    steps. It is an upper bound: rows of a ``peers`` feed whose other header is a third
    pod's, and what ``asker`` sent us itself, count here and are left out of the pages
    (``visible_after``); a peer then asks once for a page with nothing in it, where
    leaving them out here meant passing over each of them on every page."""
    sql = (
        "SELECT max(num) FROM forks WHERE lane = 'network' AND kept_payload IS NOT NULL "
        "UNION ALL SELECT max(num) FROM forks WHERE lane = 'peers' AND kept_payload IS NOT NULL "
        "AND kept_pod = ? UNION ALL SELECT max(num) FROM forks WHERE lane = 'peers' "
        "AND kept_payload IS NOT NULL AND kept_pod = ?"
    )
    found = await rows(db, sql, [pod or b"", asker])
    return max((r[0] for r in found if r[0] is not None), default=0)


async def visible_after(
    db: aiosqlite.Connection, after: int, limit: int, *, pod: bytes | None, asker: bytes
) -> tuple[list[Evidence], int, int]:
    """Evidence ``asker`` may see numbered after ``after``, in number order: (pieces,
    cursor, head), as a page of changes: ``head`` is the newest visible number, read
    first; ``cursor`` the last number of a full page, else ``head`` (never below
    ``after``)."""
    head = await newest_visible(db, pod=pod, asker=asker)
    clause, params = visible_clause(pod, asker)
    found = await rows(
        db,
        f"SELECT num, kept_payload, kept_sig, other_payload, other_sig FROM forks "
        f"WHERE num > ? AND num <= ? AND {clause} ORDER BY num LIMIT ?",
        [after, head, *params, limit],
    )
    cursor = found[-1][0] if len(found) == limit else head
    pieces = [Evidence(kp, ks, op, os_) for _, kp, ks, op, os_ in found]
    return pieces, max(cursor, after), head


@dataclass(frozen=True)
class Unplaced:
    """A piece in the shape of a fork, about a feed position beyond what we hold (a feed
    we do not hold, or past its head + 1): its signatures are not checked yet, and it
    waits for its feed (``Ledger.store_forks``)."""

    fork: Fork


Checked = Fork | ProtocolError | Unplaced  # a piece: sound, refused, or waiting for its feed


def check_pieces(
    raws: Sequence[bytes],
    pod: bytes | None,
    sender: bytes,
    heads: dict[tuple[bytes, str], int] | None = None,
) -> list[Checked]:
    """Check pieces a peer sent: decoded, a fork, in a lane that peer may send us
    (``shaped``), and signed (two Ed25519 checks each: ``verified``).

    With ``heads`` (our feed heads by (author, lane): ``feed_heads``), a piece about a
    feed we do not hold, or past its head + 1, is ``Unplaced`` and its signatures are
    not checked: evidence is kept only where our ledger admitted the author's events
    (``Ledger.store_forks``); such a piece waits, unchecked, and is checked only if its
    feed reaches that position. Two Ed25519 checks of a piece we may never keep would be
    work a peer makes us do for nothing."""
    pieces = [shaped(raw, pod, sender) for raw in raws]
    return verified(pieces if heads is None else placed(pieces, heads))


def shaped(raw: bytes, pod: bytes | None, sender: bytes) -> Fork | ProtocolError:
    """One piece decoded and found a fork (no signature checked yet), in a lane the
    sender may send us: never ``pod``; ``peers`` only when both headers were written for
    its pod or ours, the one hop that lane goes."""
    try:
        fork = parse_evidence(decode_evidence(raw))
    except ProtocolError as err:
        return err
    if fork.lane == "pod":
        return ProtocolError(
            "unauthorised", "evidence about a pod-lane feed: those never leave their pod")
    if fork.lane == "peers" and not {fork.kept.pod, fork.other.pod} <= {pod, sender}:
        return ProtocolError(
            "unauthorised", "evidence about a third pod's peers lane (one hop only)")
    return fork


def placed(pieces: list[Checked], heads: dict[tuple[bytes, str], int]) -> list[Checked]:
    """Each fork about a feed position we do not hold made ``Unplaced`` (see ``within``)."""
    return [Unplaced(p) if isinstance(p, Fork) and not within(p, heads) else p for p in pieces]


def verified(pieces: list[Checked]) -> list[Checked]:
    """Each fork's signatures checked; a forged one becomes its refusal."""
    out: list[Checked] = []
    for piece in pieces:
        if isinstance(piece, Fork):
            try:
                verify_fork(piece)
            except ProtocolError as err:
                piece = err
        out.append(piece)
    return out


def within(fork: Fork, heads: dict[tuple[bytes, str], int]) -> bool:
    """Whether a piece is about a feed we hold, at most one past its head (shape (b) is
    filed at the event after the head, when that event continued another history)."""
    head = heads.get((fork.author, fork.lane))
    return head is not None and fork.seq <= head + 1


async def feed_heads(
    db: aiosqlite.Connection, feeds: Sequence[tuple[bytes, str]]
) -> dict[tuple[bytes, str], int]:
    """The head seq of each of ``feeds`` (author, lane) we hold."""
    found = await rows_by_pairs(
        db, ("author", "lane"),
        "SELECT f.author, f.lane, f.seq FROM k JOIN feeds AS f ON f.author = k.author "
        "AND f.lane = k.lane", feeds,
    )  # fmt: skip
    return {(a, ln): seq for a, ln, seq in found}


async def check_from_peer(
    ledger: Ledger, raws: Sequence[bytes], sender: bytes
) -> list[Checked]:
    """``check_pieces`` against our feed heads: decoded and placed here (cheap, and the
    positions are needed for one small query), the signatures off the event loop."""
    pieces = [shaped(raw, ledger.pod, sender) for raw in raws]
    feeds = [(p.author, p.lane) for p in pieces if isinstance(p, Fork)]
    pieces = placed(pieces, await feed_heads(ledger.reader, feeds))
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(ledger.executor, verified, pieces)


def insert_rows(forks: Sequence[Fork], source: str, now_ms: int) -> list[tuple[object, ...]]:
    return [
        (f.author, f.lane, f.seq, f.kept.id, f.kept.pod, f.kept.payload, f.kept.sig,
         f.other.id, f.other.pod, f.other.payload, f.other.sig, source, now_ms)
        for f in forks
    ]  # fmt: skip


INSERT_GOSSIPED = (
    "INSERT OR IGNORE INTO forks (author, lane, seq, kept_id, kept_pod, kept_payload, "
    "kept_sig, other_id, other_pod, other_payload, other_sig, source, received, gossiped) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 1)"
)


# ---------------------------------------------------------------- evidence waiting for its feed

#: Pieces that waited, checked and stored at most this many at a time (after an ingest
#: transaction or a page of evidence); the rest at the next one. Two Ed25519 checks each.
RELEASE_AT_ONCE = 100

INSERT_WAITING = (
    "INSERT OR IGNORE INTO forks_waiting (author, lane, seq, source, received, kept_payload, "
    "kept_sig, other_payload, other_sig) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


def waiting_row(fork: Fork, source: str, now_ms: int) -> tuple[object, ...]:
    return (fork.author, fork.lane, fork.seq, source, now_ms, fork.kept.payload,
            fork.kept.sig, fork.other.payload, fork.other.sig)  # fmt: skip


async def waiting_counts(
    db: aiosqlite.Connection,
) -> tuple[dict[str, int], dict[tuple[bytes, str], int], set[tuple[bytes, str]]]:
    """What waits, for the ledger's memory: pieces per source, the lowest waiting seq per
    feed, and the feeds with a piece at most one past their head already (due)."""
    by_source = {s: n for s, n in await rows(
        db, "SELECT source, count(*) FROM forks_waiting GROUP BY 1")}  # fmt: skip
    first = {(a, ln): seq for a, ln, seq in await rows(
        db, "SELECT author, lane, min(seq) FROM forks_waiting GROUP BY 1, 2")}  # fmt: skip
    due = {(a, ln) for a, ln in await rows(
        db, "SELECT DISTINCT w.author, w.lane FROM forks_waiting AS w JOIN feeds AS f "
        "ON f.author = w.author AND f.lane = w.lane WHERE w.seq <= f.seq + 1")}  # fmt: skip
    return by_source, first, due


Feed = tuple[bytes, str]  # (author, lane)
Due = tuple[int, str, Feed, Fork | ProtocolError]  # (row id, source, feed, piece)


async def take_due(
    db: aiosqlite.Connection, feeds: Sequence[Feed], limit: int
) -> tuple[list[Due], set[Feed]]:
    """Up to ``limit`` waiting pieces about positions of ``feeds`` that are now at most one
    past their heads, parsed (not verified): (row id, source, feed, fork or why not).
    Also the feeds all of whose such pieces were read (no longer due)."""
    found: list[Due] = []
    done: set[tuple[bytes, str]] = set()
    for feed in feeds:
        room = limit - len(found)
        if room <= 0:
            break
        got = await rows(
            db, "SELECT w.id, w.source, w.kept_payload, w.kept_sig, w.other_payload, "
            "w.other_sig FROM forks_waiting AS w JOIN feeds AS f ON f.author = w.author "
            "AND f.lane = w.lane WHERE w.author = ? AND w.lane = ? AND w.seq <= f.seq + 1 "
            "ORDER BY w.seq LIMIT ?", (*feed, room))  # fmt: skip
        for id_, source, kp, ks, op, os_ in got:
            try:
                piece: Fork | ProtocolError = parse_evidence(Evidence(kp, ks, op, os_))
            except ProtocolError as err:
                piece = err
            found.append((id_, source, feed, piece))
        if len(got) < room:
            done.add(feed)
    return found, done


async def waiting_first(db: aiosqlite.Connection, feeds: Sequence[Feed]) -> dict[Feed, int]:
    """The lowest seq still waiting of each of ``feeds`` that has a piece waiting."""
    found = await rows_by_pairs(
        db, ("author", "lane"),
        "SELECT w.author, w.lane, min(w.seq) FROM k JOIN forks_waiting AS w "
        "ON w.author = k.author AND w.lane = k.lane GROUP BY 1, 2", feeds,
    )  # fmt: skip
    return {(a, ln): seq for a, ln, seq in found}
