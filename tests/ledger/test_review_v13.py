"""Review of schema V13 (the events' indexes on 8-byte prefixes of ids and roots, no
UNIQUE (id), the old log set aside as ``events_v12`` and dropped after the migration).

Each test says whether it shows a fault ("FAULT: ...", failing on the code reviewed, and
fixed since: kept as a regression test) or a corner checked and found correct.
"""

from __future__ import annotations

import asyncio
import os
import random
import sqlite3
from contextlib import closing
from pathlib import Path

import pytest

from podlink.cli import restore
from podlink.ledger import aside
from podlink.ledger import queries as q
from podlink.ledger.errors import Ambiguous, NotFound, StorageError
from podlink.ledger.ledger import Ledger
from podlink.ledger.schema import MIGRATIONS
from podlink.protocol import boxes
from podlink.protocol import kinds as k
from podlink.protocol.text import b64e
from tests.ledger.conftest import OpenLedger
from tests.ledger.helpers import World, query, statuses, wires
from tests.ledger.test_aside import bodies_in, details
from tests.ledger.test_id_index import _scans, _traced
from tests.ledger.test_review_lifecycle import downgrade

EVENT_COLUMNS = ("pos, id, pod, author, lane, seq, ts, kind, root, payload, sig, body, dropped, "
                 "received, origin")  # fmt: skip


def _tables(path: Path) -> set[str]:
    with closing(sqlite3.connect(path)) as db:
        return {n for (n,) in db.execute("SELECT name FROM sqlite_schema WHERE type = 'table'")}


async def _twin(ledger: Ledger, of: bytes, *, root: bytes | None = None, tail: int = 1) -> bytes:
    """Store a row whose id shares its first 8 bytes with ``of`` but differs after them
    (another author, so no feed position is shared), with ``root``; its id."""
    twin = of[:8] + bytes((b + tail) % 256 for b in of[8:])
    pos = ledger.next_pos
    ledger.next_pos += 1
    await ledger.write(
        f"INSERT INTO events ({EVENT_COLUMNS}) VALUES (?, ?, ?, ?, 'network', 1, 1, "
        "'x.twin', ?, x'00', x'00', NULL, 0, 0, NULL)",
        (pos, twin, os.urandom(32), os.urandom(32), root),
    )
    return twin


# ---------------------------------------------------------------- ids sharing a prefix


async def test_lookups_pick_the_whole_id_among_ids_sharing_their_first_8_bytes(
    make_ledger: OpenLedger, world: World
) -> None:
    """Corner found correct: the prefix index finds every id with the same first 8 bytes;
    each helper (id_is, ids_in, ids_joined, of_roots) then keeps only the whole id, so
    rows whose id or root merely share the prefix never answer a lookup: requests,
    claims by request and by id, a root's events, a duplicate's dedupe, resolve."""
    pod, setup = world.pod()
    org, add = world.organizer(pod)
    need = org.write(k.RequestOpened(title="Soup", category="food"), "network")
    claim = org.write(k.ClaimMade(note="me"), "network", [need.id])
    ledger = await make_ledger(pod=pod.id)
    first = [*setup, add, need, claim]
    assert statuses(await ledger.ingest(wires(first))) == ["stored"] * len(first)
    # Rows at the same 8-byte prefix: an id twin of the request and of the claim, and a
    # follower whose root is a twin of the request (so it sits in the root index at the
    # request's prefix).
    twin_need = await _twin(ledger, need.id)
    await _twin(ledger, claim.id)
    await _twin(ledger, os.urandom(32), root=twin_need)
    prefixed = "SELECT count(*) FROM events WHERE substr(id, 1, 8) = substr(?, 1, 8)"
    assert await query(ledger, prefixed, (need.id,)) == [(2,)]

    assert (await q.get_request(ledger.reader, need.id))["title"] == "Soup"
    with pytest.raises(NotFound):
        await q.get_request(ledger.reader, twin_need)
    assert [c["id"] for c in await q.list_claims(ledger.reader, request=need.id)] == [claim.id]
    assert [c["id"] for c in await q.list_claims(ledger.reader, id=claim.id)] == [claim.id]
    views = await q.load_roots_one(ledger.reader, need.id)
    assert sorted(v.id for v in views) == sorted([need.id, claim.id])
    assert await q.resolve(ledger.reader, "requests", b64e(need.id), "request") == need.id
    # 10 characters: 7.5 bytes, shared by the twin (which has no request row)
    assert await q.resolve(ledger.reader, "requests", b64e(need.id)[:10], "request") == need.id
    again = await ledger.ingest(wires([need, claim]))
    assert statuses(again) == ["duplicate", "duplicate"]
    assert (await ledger.verify()).problems != []  # the twins are not signed: reported


# ---------------------------------------------------------------- resolve


async def test_resolve_agrees_with_a_brute_force_at_every_prefix_length(
    make_ledger: OpenLedger, world: World
) -> None:
    """Corner found correct: ``resolve`` on a positioned table (requests), with the new
    range on ``substr(e.id, 1, 8)``, for prefixes of 1 to 43 characters of ids at the
    0x00 and 0xff edges, ids that share 8 bytes and differ only after them, and prefixes
    that match nothing: the same answer as filtering every id's text (found, ambiguous,
    not found). The 8-byte range is a truncation of [lo, hi), so it never drops an id."""
    pod, setup = world.pod()
    org, add = world.organizer(pod)
    needs = [org.write(k.RequestOpened(title=f"n{i}", category="food"), "network")
             for i in range(3)]  # fmt: skip
    ledger = await make_ledger(pod=pod.id)
    first = [*setup, add, *needs]
    assert statuses(await ledger.ingest(wires(first))) == ["stored"] * len(first)
    columns = [r[1] for r in await query(ledger, "PRAGMA table_info(requests)")]
    others = ", ".join(f'"{c}"' for c in columns if c != "id")
    template = (await query(ledger, "SELECT rowid FROM requests LIMIT 1"))[0][0]
    rng = random.Random(13)
    crafted = [
        b"\xff" * 32, b"\xff" * 31 + b"\xfe", b"\xff" * 8 + b"\x00" * 24,
        b"\xff" * 7 + b"\xfe" + b"\xff" * 24, b"\x00" * 32, b"\x00" * 8 + b"\xff" * 24,
        b"\x00" * 7 + b"\x01" + b"\x00" * 24, b"\xfb\xff" + bytes(30),
    ]
    base = rng.randbytes(8)
    crafted += [base + rng.randbytes(24) for _ in range(3)]  # one 8-byte prefix, 3 ids
    crafted += [base[:7] + bytes([(base[7] + 1) % 256]) + b"\x00" * 24]
    for id_ in crafted:
        pos = ledger.next_pos
        ledger.next_pos += 1
        await ledger.write(
            f"INSERT INTO events ({EVENT_COLUMNS}) VALUES (?, ?, ?, ?, 'network', 1, 1, "
            "'x.crafted', ?, x'00', x'00', NULL, 0, 0, NULL)",
            (pos, id_, pod.id, os.urandom(32), id_),
        )
        await ledger.write(
            f'INSERT INTO requests (rowid, "id", {others}) '
            f"SELECT ?, ?, {others} FROM requests WHERE rowid = ?",
            (pos, id_, template),
        )
    ids = [n.id for n in needs] + crafted
    texts = {b64e(i): i for i in ids}
    prefixes = {t[:n] for t in texts for n in range(1, 44)}
    prefixes |= {t[:n - 1] + ("A" if t[n - 1] != "A" else "B") for t in texts
                 for n in (2, 5, 11, 12, 20, 43)}  # fmt: skip
    checked = {"found": 0, "ambiguous": 0, "none": 0}
    for prefix in sorted(prefixes):
        want = sorted(i for t, i in texts.items() if t.startswith(prefix))
        if len(want) == 1:
            assert await q.resolve(ledger.reader, "requests", prefix, "r") == want[0], prefix
            checked["found"] += 1
        elif want:
            with pytest.raises(Ambiguous) as err:
                await q.resolve(ledger.reader, "requests", prefix, "r")
            assert sorted(texts[t] for t in err.value.matches) == want, prefix
            checked["ambiguous"] += 1
        else:
            with pytest.raises(NotFound):
                await q.resolve(ledger.reader, "requests", prefix, "r")
            checked["none"] += 1
    assert min(checked.values()) > 0, checked


# ---------------------------------------------------------------- forget, aside copies


async def test_a_forget_scrubs_the_old_log_a_copy_set_aside_still_holds(
    tmp_path: Path, world: World
) -> None:
    """FAULT: a node stopped after V13's migration committed but before ``events_v12``
    was dropped (a crash, a kill during the long secure-delete DROP) leaves the whole old
    log, member bodies included, in the file; ``podlink restore`` then keeps that file
    aside (restore.keep_aside copies it as it is, without opening it through the
    ledger, so the leftover is never dropped there), and a later forget scrubs only the
    copy's ``events`` (ledger/aside.py _scrub_one): the forgotten member's body stays in
    ``events_v12`` of the copy for good, against aside.py's promise that their details
    are destroyed in every copy. Fixed: _scrub_one drops schema.LEFTOVERS tables, on
    their own, before scrubbing."""
    elm, setup = world.pod("Elm")
    ana, add = world.organizer(elm)
    key = boxes.new_member_key()
    gone = ana.write(k.MemberJoined(box=boxes.lock(key, details("Gone Soon"))), "pod")
    live = tmp_path / "ledger.db"
    async with await Ledger.open(live) as ledger:
        await ledger.set_pod(elm.id)
        first = [*setup, add, gone]
        assert statuses(await ledger.ingest(wires(first))) == ["stored"] * len(first)
        await ledger.put_member_key(gone.id, key)
    with closing(sqlite3.connect(live, isolation_level=None)) as con:  # what V13 set aside
        con.execute("CREATE TABLE events_v12 AS SELECT * FROM events")
    kept = live.with_name(f"{live.name}{aside.ASIDE}20261101-090000")
    restore.keep_aside(live, kept)  # the node stopped; restore keeps the file it replaces
    assert bodies_in(kept, gone.id, "events_v12") == 1
    async with await Ledger.open(live) as ledger:  # its own leftover dropped on open
        assert "events_v12" not in _tables(live)
        forget = ana.write(k.MemberForgotten(), "pod", [gone.id])
        assert statuses(await ledger.ingest(wires([forget]))) == ["stored"]
    assert bodies_in(kept, gone.id, "events") == 0  # the copy's log is scrubbed...
    tables = _tables(kept)
    # ...and its old log must be too (or be gone)
    assert "events_v12" not in tables or bodies_in(kept, gone.id, "events_v12") == 0


async def test_a_forget_scrubs_a_copy_set_aside_before_v13(tmp_path: Path, world: World) -> None:
    """Corner found correct: a copy kept aside by a restore before the upgrade is at
    schema 12 (UNIQUE id, the root index on whole roots); the scrub's SQL, built by
    of_roots for V13 (prefix and whole id, bound (m, m, kinds) twice), still runs there
    and destroys exactly the forgotten member's bodies."""
    elm, setup = world.pod("Elm")
    ana, add = world.organizer(elm)
    key, other_key = boxes.new_member_key(), boxes.new_member_key()
    gone = ana.write(k.MemberJoined(box=boxes.lock(key, details("Gone"))), "pod")
    stays = ana.write(k.MemberJoined(box=boxes.lock(other_key, details("Stays"))), "pod")
    live = tmp_path / "ledger.db"
    old = tmp_path / f"ledger.db{aside.ASIDE}20260101-090000"
    async with await Ledger.open(live) as ledger:
        await ledger.set_pod(elm.id)
        first = [*setup, add, gone, stays]
        assert statuses(await ledger.ingest(wires(first))) == ["stored"] * len(first)
        await ledger.put_member_key(gone.id, key)
        await ledger.put_member_key(stays.id, other_key)
        await ledger.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        downgrade(live, old, 12)
        with closing(sqlite3.connect(old)) as con:
            assert con.execute("PRAGMA user_version").fetchone()[0] == 12
        assert bodies_in(old, gone.id, "events") == 1
        forget = ana.write(k.MemberForgotten(), "pod", [gone.id])
        assert statuses(await ledger.ingest(wires([forget]))) == ["stored"]
    assert bodies_in(old, gone.id, "events") == 0
    assert bodies_in(old, stays.id, "events") == 1
    with closing(sqlite3.connect(old)) as con:
        assert {m for (m,) in con.execute("SELECT member FROM member_keys")} == {stays.id}


async def test_forget_and_hours_search_the_prefix_indexes(
    make_ledger: OpenLedger, world: World
) -> None:
    """Corner found correct: statements the id-index test does not drive (a forget's
    UPDATE through of_roots with a ``where``, the roster read at open, hours joined to
    requests and claims) each search the prefix indexes: no full scan of events."""
    elm, setup = world.pod("Elm")
    ana, add = world.organizer(elm)
    key = boxes.new_member_key()
    gone = ana.write(k.MemberJoined(box=boxes.lock(key, details("Gone"))), "pod")
    need = ana.write(k.RequestOpened(title="Soup", category="food"), "network")
    claim = ana.write(k.ClaimMade(note="me"), "network", [need.id])
    accept = ana.write(k.ClaimAccepted(), "network", [claim.id])
    done = ana.write(k.RequestFulfilled(hours=2.0), "network", [need.id])
    ledger = await make_ledger(pod=elm.id)
    seen: set[str] = set()
    await _traced(ledger, seen)
    first = [*setup, add, gone, need, claim, accept, done]
    assert statuses(await ledger.ingest(wires(first))) == ["stored"] * len(first)
    await ledger.put_member_key(gone.id, key)
    forget = ana.write(k.MemberForgotten(), "pod", [gone.id])
    assert statuses(await ledger.ingest(wires([forget]))) == ["stored"]
    hours = await q.list_hours(ledger.reader)
    assert [(h["request"], h["accepted_claim"]) for h in hours] == [(need.id, claim.id)]
    forgets = [s for s in seen if s.startswith("UPDATE events SET body = NULL")]
    assert forgets, "the forget's UPDATE was not traced"
    assert _scans(ledger.path, seen) == []
    with closing(sqlite3.connect(ledger.path)) as con:
        dropped = "SELECT dropped FROM events WHERE id = ?"
        assert con.execute(dropped, (gone.id,)).fetchall() == [(1,)]


# ---------------------------------------------------------------- migration, restore


async def test_a_failure_inside_the_migration_leaves_the_v12_log_whole(
    tmp_path: Path, world: World
) -> None:
    """Corner found correct: V13 failing halfway through its transaction (here its
    CREATE TABLE meets a table of that name) rolls back to schema 12 with its log and
    its UNIQUE (id) index, nothing renamed; once the obstacle is gone the next open
    migrates the same log."""
    pod, events = world.pod()
    live, old = tmp_path / "live.db", tmp_path / "v12.db"
    async with await Ledger.open(live) as ledger:
        await ledger.set_pod(pod.id)
        assert statuses(await ledger.ingest(wires(events))) == ["stored"] * len(events)
        before = await query(ledger, "SELECT pos, id FROM events ORDER BY pos")
    downgrade(live, old, 12)
    with closing(sqlite3.connect(old, isolation_level=None)) as con:
        con.execute("CREATE TABLE events_v13 (x)")
    with pytest.raises(StorageError, match="events_v13"):
        await Ledger.open(old)
    with closing(sqlite3.connect(old, isolation_level=None)) as con:
        assert con.execute("PRAGMA user_version").fetchone()[0] == 12
        assert [tuple(r) for r in con.execute("SELECT pos, id FROM events ORDER BY pos")] == before
        assert "events_v12" not in {r[0] for r in con.execute(
            "SELECT name FROM sqlite_schema WHERE type = 'table'")}  # fmt: skip
        unique = [[c[2] for c in con.execute(f"PRAGMA index_info({r[1]})")]
                  for r in con.execute("PRAGMA index_list(events)") if r[2]]  # fmt: skip
        assert ["id"] in unique
        con.execute("DROP TABLE events_v13")
    async with await Ledger.open(old) as ledger:
        assert await query(ledger, "PRAGMA user_version") == [(len(MIGRATIONS),)]
        assert await query(ledger, "SELECT pos, id FROM events ORDER BY pos") == before
        assert (await ledger.verify()).ok


async def test_restore_of_a_v12_backup_carries_the_newer_events_over(
    tmp_path: Path, world: World
) -> None:
    """Corner found correct: a backup from before V13 restored over a V13 database: the
    backup migrates when opened (its old log dropped), the events it lacks are carried
    over through ingest (dedupe by the prefix index), and the result verifies."""
    pod, setup = world.pod()
    org, add = world.organizer(pod)
    later = [org.write(k.RequestOpened(title=f"r{i}", category="food"), "network")
             for i in range(3)]  # fmt: skip
    live, backup = tmp_path / "ledger.db", tmp_path / "backup-v12.db"
    async with await Ledger.open(live) as ledger:
        await ledger.set_pod(pod.id)
        first = [*setup, add]
        assert statuses(await ledger.ingest(wires(first))) == ["stored"] * len(first)
        await ledger.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        downgrade(live, backup, 12)
        assert statuses(await ledger.ingest(wires(later))) == ["stored"] * 3
        want = await query(ledger, "SELECT id FROM events ORDER BY pos")
    incoming = tmp_path / "ledger.db.restoring"
    restore.copy_backup(backup, incoming)
    # carry_over runs its own event loop (cli): from a thread, as the CLI's would
    carried = await asyncio.to_thread(restore.carry_over, live, incoming, pod.id)
    assert carried.events == 3 and carried.unreadable == ""
    assert "events_v12" not in _tables(incoming)
    async with await Ledger.open(incoming) as ledger:
        assert await query(ledger, "SELECT id FROM events ORDER BY pos") == want
        assert (await q.get_request(ledger.reader, later[0].id))["title"] == "r0"
        assert (await ledger.verify()).ok
