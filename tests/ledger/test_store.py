"""The SQLite file itself: permissions, pragmas, schema version, store order, constraints."""

from __future__ import annotations

import os
import sqlite3
import stat
from pathlib import Path

import pytest

from podlink.ledger.errors import SchemaTooNew
from podlink.ledger.ledger import Ledger
from podlink.ledger.schema import SCHEMA_VERSION
from podlink.protocol import kinds
from tests.ledger.conftest import OpenLedger
from tests.ledger.helpers import World, count, one, query, statuses, stored_ids, wires


def private(path: Path) -> bool:
    return not stat.S_IMODE(path.stat().st_mode) & (stat.S_IRWXG | stat.S_IRWXO)


async def test_file_and_its_wal_are_private_even_with_a_lax_umask(
    tmp_path: Path, world: World
) -> None:
    _, genesis = world.pod()
    old = os.umask(0o000)
    try:
        ledger = await Ledger.open(tmp_path / "pod.db")
        try:
            assert (await ledger.ingest(wires(genesis)))[0].status == "stored"
            db = tmp_path / "pod.db"
            assert stat.S_IMODE(db.stat().st_mode) == 0o600
            sidecars = [tmp_path / "pod.db-wal", tmp_path / "pod.db-shm"]
            assert all(p.exists() for p in sidecars)
            # SQLite gives -wal and -shm the main file's permissions.
            assert all(private(p) for p in sidecars), [oct(p.stat().st_mode) for p in sidecars]
        finally:
            await ledger.close()
    finally:
        os.umask(old)


async def test_pragmas_and_schema_version(make_ledger: OpenLedger) -> None:
    ledger = await make_ledger()
    assert await one(ledger, "PRAGMA journal_mode") == "wal"
    assert await one(ledger, "PRAGMA synchronous") == 2  # FULL
    assert await one(ledger, "PRAGMA secure_delete") == 1
    assert await one(ledger, "PRAGMA user_version") == SCHEMA_VERSION >= 1


async def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "pod.db"
    await (await Ledger.open(path)).close()
    with sqlite3.connect(path) as con:
        con.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    con.close()
    with pytest.raises(SchemaTooNew):
        await Ledger.open(path)


async def test_reopening_keeps_events_positions_and_state(tmp_path: Path, world: World) -> None:
    pod, events = world.pod()
    org, add = world.organizer(pod)
    events += [add, org.write(kinds.RequestOpened(title="Soup", category="food"), "network")]
    path = tmp_path / "pod.db"
    async with await Ledger.open(path) as ledger:
        assert statuses(await ledger.ingest(wires(events))) == ["stored"] * 3
        before = await query(ledger, "SELECT pos, id, payload, sig, body FROM events")
        dump = await ledger.dump()
        epoch = ledger.epoch
    async with await Ledger.open(path) as ledger:
        assert await query(ledger, "SELECT pos, id, payload, sig, body FROM events") == before
        assert await ledger.dump() == dump
        assert ledger.epoch == epoch
        # The reopened ledger knows its heads and roster: the feed continues, no duplicates.
        more = org.write(kinds.RequestOpened(title="Bread", category="food"), "network")
        results = await ledger.ingest(wires([*events, more]))
        assert statuses(results) == ["duplicate"] * 3 + ["stored"]
        assert await one(ledger, "SELECT max(pos) FROM events") == 4


async def test_store_order_is_strictly_increasing(make_ledger: OpenLedger, world: World) -> None:
    pod, events = world.pod()
    org, add = world.organizer(pod)
    events.append(add)
    events += [
        org.write(kinds.RequestOpened(title=f"Need {i}", category="food"), "network")
        for i in range(20)
    ]
    ledger = await make_ledger()
    # Delivered back to front in small batches: stored in feed order, positions 1..n.
    for start in range(len(events), 0, -5):
        await ledger.ingest(wires(events[max(start - 5, 0) : start]))
    positions = [r[0] for r in await query(ledger, "SELECT pos FROM events ORDER BY rowid")]
    assert positions == list(range(1, len(events) + 1))
    by_pos = [r[0] for r in await query(ledger, "SELECT id FROM events ORDER BY pos")]
    assert by_pos == [e.id for e in events]  # causal: each after its predecessor and roster
    assert await stored_ids(ledger) == {e.id for e in events}


async def test_author_lane_seq_is_unique(make_ledger: OpenLedger, world: World) -> None:
    pod, genesis = world.pod()
    ledger = await make_ledger()
    await ledger.ingest(wires(genesis))
    with pytest.raises(sqlite3.IntegrityError):
        await ledger.db.execute(
            "INSERT INTO events (pos, id, pod, author, lane, seq, ts, kind, payload, sig, "
            "received) VALUES (99, ?, ?, ?, 'network', 1, 1, 'pod.genesis', x'', x'', 0)",
            (b"\x01" * 32, pod.id, pod.id),
        )
    assert await count(ledger, "events") == 1
