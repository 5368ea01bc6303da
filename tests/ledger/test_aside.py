"""A forget reaches the copies a restore keeps aside (ledger/aside.py): the keys and
member bodies destroyed in the live database are destroyed in each readable copy too,
other members' are left alone, and a copy SQLite cannot read is reported, not skipped
in silence."""

from __future__ import annotations

import logging
import sqlite3
from contextlib import closing
from pathlib import Path

import pytest

from podlink.ledger import aside
from podlink.ledger.ledger import Ledger
from podlink.protocol import boxes
from podlink.protocol import kinds as k
from tests.ledger.helpers import World, statuses, wires


def details(name: str) -> bytes:
    return k.encode_body(k.MemberDetails(name=name, contact="555 0100"))


def copy_aside(live: Path, when: str) -> Path:
    """What `podlink restore` does to the database it replaces (restore.keep_aside)."""
    target = live.with_name(f"{live.name}{aside.ASIDE}{when}")
    with closing(sqlite3.connect(live)) as src, closing(sqlite3.connect(target)) as dst:
        src.backup(dst)
    return target


def keys_in(path: Path) -> set[bytes]:
    with closing(sqlite3.connect(path)) as db:
        return {m for (m,) in db.execute("SELECT member FROM member_keys")}


def bodies_in(path: Path, member: bytes, table: str = "events") -> int:
    """Rows of ``table`` (an events table) of ``member``'s that still hold a body."""
    with closing(sqlite3.connect(path)) as db:
        sql = f"SELECT count(*) FROM {table} WHERE (id = ? OR root = ?) AND body IS NOT NULL"
        return db.execute(sql, (member, member)).fetchone()[0]


async def test_a_forget_scrubs_every_readable_copy_and_names_the_others(
    tmp_path: Path, world: World, caplog: pytest.LogCaptureFixture
) -> None:
    elm, setup = world.pod("Elm")
    ana, add = world.organizer(elm)
    gone_key, kept_key = boxes.new_member_key(), boxes.new_member_key()
    gone = ana.write(k.MemberJoined(box=boxes.lock(gone_key, details("Gone Soon"))), "pod")
    kept = ana.write(k.MemberJoined(box=boxes.lock(kept_key, details("Stays On"))), "pod")
    live = tmp_path / "ledger.db"
    async with await Ledger.open(live) as ledger:
        await ledger.set_pod(elm.id)
        first_events = [*setup, add, gone, kept]
        assert statuses(await ledger.ingest(wires(first_events))) == ["stored"] * len(first_events)
        await ledger.put_member_key(gone.id, gone_key)
        await ledger.put_member_key(kept.id, kept_key)
        await ledger.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        first, second = copy_aside(live, "20261101-090000"), copy_aside(live, "20261102-090000")
        damaged = live.with_name(f"{live.name}{aside.ASIDE}20261103-090000")
        damaged.write_bytes(b"not a database " * 100)
        sidecar = first.with_name(first.name + "-journal")  # never taken for a copy
        sidecar.write_bytes(b"")
        assert aside.copies(live) == [first, second, damaged]
        assert bodies_in(first, gone.id) == 1

        with caplog.at_level(logging.WARNING, logger="podlink.ledger"):
            forget = ana.write(k.MemberForgotten(), "pod", [gone.id])
            assert statuses(await ledger.ingest(wires([forget]))) == ["stored"]

    for copy in (first, second):
        assert keys_in(copy) == {kept.id}, copy.name
        assert bodies_in(copy, gone.id) == 0 and bodies_in(copy, kept.id) == 1
        assert b"Gone Soon" not in copy.read_bytes()  # (the body is in the clear too)
    assert str(damaged) in caplog.text and "delete it" in caplog.text
    assert keys_in(live) == {kept.id}
    assert aside.scrub(live, [gone.id]) == [damaged]  # again: nothing more to do, same report
    assert keys_in(first) == {kept.id}
