"""Schema V13: the events' indexes of ids and roots hold each id's first 8 bytes, and the
whole id is no longer UNIQUE. Every lookup of an event by id or of followers by their root
must still be a search of those indexes, never a scan of the log (at a million events a
scan is a second per lookup), and ids stay unique.
"""

from __future__ import annotations

import random
import re
import sqlite3
from pathlib import Path

import pytest

from podlink.ledger import queries as q
from podlink.ledger import store
from podlink.ledger.errors import StorageError
from podlink.ledger.ledger import Ledger
from podlink.ledger.schema import MIGRATIONS
from podlink.ledger.store import _statements
from podlink.protocol import kinds
from podlink.protocol.text import b64e
from tests.ledger.conftest import OpenLedger
from tests.ledger.helpers import World, bodiless, query, statuses, stored_ids, wires
from tests.ledger.scenario import Scenario, deliveries
from tests.ledger.test_review_lifecycle import downgrade

# Statements that read the whole log on purpose (rebuild's re-rooting of answers).
_WHOLE_LOG = ("UPDATE events AS a SET root = c.root",)


def _events_aliases(sql: str) -> set[str]:
    """The names the statement gives the events table (itself, and any AS alias)."""
    names = {"events"}
    names.update(re.findall(r"\bevents\s+(?:AS\s+)?(\w+)", sql, flags=re.IGNORECASE))
    return names - {"WHERE", "JOIN", "LEFT", "ON", "ORDER", "GROUP", "LIMIT", "SET", "USING"}


def _looks_up_ids(sql: str) -> bool:
    """Whether a (parameter-expanded) statement compares an id or a root with a value or
    another column: what must go through the id or root index when the table is events."""
    return bool(re.search(r"\b(id|root)\s*(=|IN\b|>=)", sql)) and bool(
        re.search(r"\bevents\b", sql)
    )


def _scans(path: Path, statements: set[str]) -> list[tuple[str, list[str]]]:
    """The statements among ``statements`` whose plan reads the events table in full."""
    out = []
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        for sql in sorted(statements):
            if sql.startswith(_WHOLE_LOG) or not _looks_up_ids(sql):
                continue
            plan = [r[3] for r in con.execute("EXPLAIN QUERY PLAN " + sql)]
            aliases = _events_aliases(sql)
            full = [line for line in plan if re.match(r"SCAN (\w+)", line)
                    and re.match(r"SCAN (\w+)", line).group(1) in aliases]  # fmt: skip
            if full:
                out.append((sql[:300], plan))
    finally:
        con.close()
    return out


async def _traced(ledger: Ledger, seen: set[str]) -> None:
    for con in (ledger.db, ledger.reader):
        await con.set_trace_callback(seen.add)


async def test_every_lookup_by_id_searches_the_prefix_index(
    make_ledger: OpenLedger, world: World
) -> None:
    """A mixed history (two pods, claims and answers, events out of order, a fork, a
    member forgotten, a body refilled), the queries by id of the API, verify and rebuild:
    each statement that looks an event up by id searches the index; the test fails on a
    lookup written as ``id = ?`` against events (a full scan)."""
    scenario = Scenario.build(random.Random(13), pods=2, steps=150)
    pod = scenario.pods[0]
    org = pod.author
    ledger = await make_ledger(pod=pod.id)
    seen: set[str] = set()
    await _traced(ledger, seen)
    for batch in deliveries(scenario.events, random.Random(2)):
        await ledger.ingest(batch)
    head = org.heads["peers"]
    fork_a = org.write(kinds.RequestOpened(title="A", category="food"), "peers")
    after_a, org.heads["peers"] = org.heads["peers"], head
    fork_b = org.write(kinds.RequestOpened(title="B", category="food"), "peers")
    org.heads["peers"] = after_a
    assert statuses(await ledger.ingest(wires([fork_a]))) == ["stored"]
    assert statuses(await ledger.ingest(wires([fork_b]))) == ["refused"]
    claim = org.write(kinds.ClaimMade(note="me"), "peers", [fork_a.id])
    assert statuses(await ledger.ingest([bodiless(claim)])) == ["stored"]
    last = "SELECT body IS NULL FROM events WHERE pos = (SELECT max(pos) FROM events)"
    assert await query(ledger, last) == [(1,)]
    assert statuses(await ledger.ingest(wires([claim]))) == ["duplicate"]  # refilled
    assert await query(ledger, last) == [(0,)]

    request = fork_a.id
    assert (await q.get_request(ledger.reader, request))["title"] == "A"
    assert [c["id"] for c in await q.list_claims(ledger.reader, id=claim.id)] == [claim.id]
    assert await q.resolve(ledger.reader, "requests", b64e(request)[:6], "request") == request
    await q.list_hours(ledger.reader)
    offers = await query(ledger, "SELECT id FROM offers LIMIT 1")
    if offers:
        assert len(await q.list_offers(ledger.reader, id=offers[0][0], status=None)) == 1
    resources = await query(ledger, "SELECT id FROM resources LIMIT 1")
    if resources:
        assert len(await q.list_resources(ledger.reader, id=resources[0][0])) == 1
    assert (await ledger.verify()).ok
    await ledger.rebuild()

    lookups = {s for s in seen if _looks_up_ids(s)}
    assert len(lookups) >= 8, sorted(lookups)  # the workload did look events up by id
    assert _scans(ledger.path, seen) == []


def test_a_lookup_written_against_the_whole_id_is_caught(tmp_path: Path) -> None:
    """The check above can fail: ``id = ?`` or ``root IN (...)`` on events is a full scan
    under V13."""
    path = tmp_path / "x.db"
    con = sqlite3.connect(path, isolation_level=None)
    for script in MIGRATIONS:
        for statement in _statements(script):
            con.execute(statement)
    con.close()
    raw = "SELECT pos FROM events WHERE id = x'00'"
    good = "SELECT pos FROM events WHERE (substr(id, 1, 8) = substr(x'00', 1, 8) AND id = x'00')"
    raw_root = "SELECT pos FROM events WHERE root IN (x'00') AND root != id"
    good_root = (
        "SELECT pos FROM events WHERE (substr(root, 1, 8) IN (substr(x'00', 1, 8)) "
        "AND root IN (x'00')) AND root != id"
    )
    found = _scans(path, {raw, good, raw_root, good_root})
    assert sorted(found) == sorted(
        [(raw, ["SCAN events"]), (raw_root, ["SCAN events USING INDEX events_root"])]
    )


async def test_the_schema_holds_no_index_of_whole_ids_and_ids_stay_unique(
    make_ledger: OpenLedger, world: World
) -> None:
    """The events' indexes: the prefix index, (author, lane, seq) unique, the partial
    ones; none on the whole id. An id could only repeat at the same feed position (it
    hashes a header holding it), which the unique feed index refuses."""
    pod, events = world.pod()
    ledger = await make_ledger(pod=pod.id)
    assert statuses(await ledger.ingest(wires(events))) == ["stored"] * len(events)
    indexes = {r[1]: r[2] for r in await query(ledger, "PRAGMA index_list(events)")}
    columns = {
        name: [r[2] for r in await query(ledger, f"PRAGMA index_xinfo({name})") if r[5]]
        for name in indexes
    }
    assert columns["events_id"] == [None]  # an expression: substr(id, 1, 8)
    assert columns["events_root"] == [None]  # substr(root, 1, 8), followers only
    assert [name for name, cols in columns.items() if cols == ["id"]] == []
    assert [cols for name, cols in columns.items() if indexes[name]] == [
        ["author", "lane", "seq"]
    ]
    with pytest.raises(StorageError, match=re.escape("UNIQUE constraint failed: events.author")):
        await ledger.write(
            "INSERT INTO events (pos, id, pod, author, lane, seq, ts, kind, root, payload, "
            "sig, body, received) SELECT pos + 1000, id, pod, author, lane, seq, ts, kind, "
            "root, payload, sig, body, received FROM events WHERE pos = 1"
        )
    assert len(await stored_ids(ledger)) == len(events)


async def test_a_v12_file_moves_its_log_to_v13_in_store_order(
    tmp_path: Path, world: World
) -> None:
    """A file at schema 12 (UNIQUE id) holding a log opens at 13 with every event at its
    old store position, the same read model, and the next event stored after them."""
    pod, events = world.pod()
    org, add = world.organizer(pod)
    reqs = [org.write(kinds.RequestOpened(title=f"r{i}", category="food"), "network")
            for i in range(5)]  # fmt: skip
    claim = org.write(kinds.ClaimMade(note="me"), "network", [reqs[0].id])
    live_path, old = tmp_path / "live.db", tmp_path / "v12.db"
    async with await Ledger.open(live_path) as live:
        await live.set_pod(pod.id)
        assert statuses(await live.ingest(wires([*events, add, *reqs, claim]))) == [
            "stored"] * (len(events) + 7)  # fmt: skip
        before = await query(live, "SELECT pos, id FROM events ORDER BY pos")
        want = await live.dump()
    downgrade(live_path, old, 12)
    con = sqlite3.connect(old)
    assert ["id"] in [
        [c[2] for c in con.execute(f"PRAGMA index_info({r[1]})")]
        for r in con.execute("PRAGMA index_list(events)") if r[2]
    ]  # fmt: skip
    con.close()
    async with await Ledger.open(old) as ledger:
        assert await query(ledger, "PRAGMA user_version") == [(len(MIGRATIONS),)]
        assert await query(ledger, "SELECT pos, id FROM events ORDER BY pos") == before
        assert await ledger.dump() == want
        req = org.write(kinds.RequestOpened(title="after", category="food"), "network")
        assert statuses(await ledger.ingest(wires([req]))) == ["stored"]
        last = await query(ledger, "SELECT pos, id FROM events ORDER BY pos DESC LIMIT 1")
        assert last == [(before[-1][0] + 1, req.id)]
        assert (await q.get_request(ledger.reader, reqs[0].id))["status"] == "accepted"
        assert (await ledger.verify()).ok
        tables = await query(ledger, "SELECT name FROM sqlite_schema WHERE type = 'table'")
        assert ("events_v12",) not in tables and ("events_v13",) not in tables
        assert await query(ledger, "PRAGMA integrity_check") == [("ok",)]


async def test_an_open_cut_before_the_old_log_was_dropped_drops_it_next_time(
    tmp_path: Path, world: World
) -> None:
    """The old table is dropped after the migration's transaction: a node stopped in
    between (the file at schema 13, ``events_v12`` still there) drops it on its next
    open, and the log is untouched."""
    _, events = world.pod()
    path = tmp_path / "pod.db"
    async with await Ledger.open(path) as ledger:
        assert statuses(await ledger.ingest(wires(events))) == ["stored"] * len(events)
        before = await query(ledger, "SELECT pos, id FROM events ORDER BY pos")
    con = sqlite3.connect(path, isolation_level=None)
    con.execute("CREATE TABLE events_v12 AS SELECT * FROM events")  # what V13 set aside
    con.close()
    async with await Ledger.open(path) as ledger:
        tables = await query(ledger, "SELECT name FROM sqlite_schema WHERE type = 'table'")
        assert ("events_v12",) not in tables
        assert await query(ledger, "SELECT pos, id FROM events ORDER BY pos") == before


async def test_an_upgrade_the_disk_has_no_room_for_is_refused_before_it_starts(
    tmp_path: Path, world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """V13 copies the log: with less free disk than it needs, the open is refused with a
    sentence that says how much, and the file is left at schema 12, whole; with room, the
    same file opens at 13. (The disk's free space is stood in for: filling a real disk
    is not something a test should do.)"""
    pod, events = world.pod()
    _, add = world.organizer(pod)
    live_path, old = tmp_path / "live.db", tmp_path / "v12.db"
    async with await Ledger.open(live_path) as live:
        await live.set_pod(pod.id)
        assert statuses(await live.ingest(wires([*events, add]))) == ["stored"] * (len(events) + 1)
        before = await query(live, "SELECT pos, id FROM events ORDER BY pos")
    downgrade(live_path, old, 12)
    size = old.stat().st_size
    monkeypatch.setattr(store, "free_bytes", lambda folder: size)  # 1 x: not enough
    with pytest.raises(StorageError, match=r"from schema 12 to 13 copies its log once and "
                       r"needs about [\d,]+ MB free on its disk; [\d,]+ MB are"):  # fmt: skip
        await Ledger.open(old)
    con = sqlite3.connect(old)
    assert con.execute("PRAGMA user_version").fetchone() == (12,)
    assert con.execute("SELECT pos, id FROM events ORDER BY pos").fetchall() == before
    con.close()
    monkeypatch.setattr(store, "free_bytes", lambda folder: 2 * size)
    async with await Ledger.open(old) as ledger:
        assert await query(ledger, "PRAGMA user_version") == [(len(MIGRATIONS),)]
        assert await query(ledger, "SELECT pos, id FROM events ORDER BY pos") == before
