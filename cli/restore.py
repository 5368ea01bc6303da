"""Restoring a backup without losing what the database it replaces still holds.

A backup misses whatever was written after it. Peers give back what this pod shared with
them (the epoch rotation makes them repair), but pod-lane events never left the pod, and
local decisions (a peer removed, an invite used) were never events at all. So when the
database being replaced can still be read, restore carries over from it:

* every event the backup lacks, through the ledger's own ingest (signatures, chains and
  roster checked again, so a damaged row is refused, never copied) — a member forgotten
  after the backup stays forgotten, since the forget is one of those events;
* member keys the backup lacks, for members the restored pod holds (a key whose join
  could not be read is not kept: nothing could show it, nor forget it); a member
  forgotten in the replaced database stays forgotten: by the carried forget, or, when
  the forget's events cannot be read any more, by a forget the pod's node key signs again;
* the peers and invites tables as they stand (removals, cursors, used invites), and the
  fork evidence and parked events it holds (a fork's other header is kept nowhere else),
  fork evidence waiting for its feed too (the peers would not send it again).

When it cannot be read (the reason to restore, often), nothing is carried and restore
says what that loses.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path

from podlink.cli.session import run_sync
from podlink.ledger import queries
from podlink.ledger.authoring import Author
from podlink.ledger.ledger import Ledger
from podlink.ledger.store import ids_joined, private_file
from podlink.protocol import kinds
from podlink.protocol.envelope import encode_wire
from podlink.protocol.keys import Keypair

PAGE = 2000  # events read from the replaced database and ingested at a time
LOCAL_TABLES = ("peers", "invites")  # replaced: the replaced database's are the newer
# Merged: fork evidence only the forker could re-send, and evidence waiting for its feed
# (our cursors into the peers' evidence are carried: they would not send it again).
KEPT_TABLES = ("forks", "pending", "forks_waiting")
# Columns numbered by the restored database itself: the fork evidence's local numbers
# (peers page by them) go on from the backup's, never taken from the other database.
RENUMBERED = {("forks", "num"), ("forks_waiting", "id")}
SINCE = {"forks_waiting": 10}  # tables a replaced database older than that schema lacks


@dataclass
class Carried:
    """What restore took over from the database it replaced."""

    events: int = 0  # stored: the backup lacked them
    keys: int = 0
    peers: int = 0
    forgets: int = 0  # written again: forgotten there, their forget lost with its events
    unreadable: str = ""  # why nothing could be carried over ("" if it could)


def read_only(path: Path) -> str:
    """A URI opening ``path`` read-only (quoted: '#', '?' and '%' are path characters)."""
    return path.resolve().as_uri() + "?mode=ro"


@contextmanager
def no_trace(file: Path) -> Iterator[None]:
    """Remove the ``-shm`` and empty ``-wal`` files that reading ``file`` (a database in
    WAL mode, read-only) leaves beside it, unless they were there before."""
    sidecars = [file.with_name(file.name + extra) for extra in ("-shm", "-wal")]
    before = {f for f in sidecars if f.exists()}
    try:
        yield
    finally:
        for f in sidecars:
            if f not in before and f.exists() and (f.name.endswith("-shm") or not f.stat().st_size):
                f.unlink(missing_ok=True)


def copy_backup(source: Path, target: Path) -> None:
    """``source`` into ``target`` through SQLite's backup API, so that what a copy's
    ``-wal`` file still holds comes too; ``source`` is only read (and never ``target``:
    SQLite's backup of a file onto itself never ends)."""
    if target.exists() and source.exists() and os.path.samefile(source, target):
        raise OSError(f"{source} and {target} are the same file")
    with (
        closing(sqlite3.connect(read_only(source), uri=True)) as src,
        closing(sqlite3.connect(target)) as dst,
    ):
        src.backup(dst)


def keep_aside(live: Path, aside: Path) -> None:
    """A copy of the live database (with its WAL) at ``aside``, 0600; byte for byte if
    SQLite cannot read it (a damaged database is what one restores over)."""
    private_file(aside)
    try:
        with closing(sqlite3.connect(live)) as old, closing(sqlite3.connect(aside)) as copy:
            old.backup(copy)
    except sqlite3.DatabaseError:
        shutil.copyfile(live, aside)  # into the private file: it keeps its mode
        wal = live.with_name(live.name + "-wal")
        if wal.exists():
            aside_wal = aside.with_name(aside.name + "-wal")
            private_file(aside_wal)
            shutil.copyfile(wal, aside_wal)


def carry_over(
    live: Path, incoming: Path, pod: bytes, signer: Keypair | None = None
) -> Carried:
    """Take into ``incoming`` (the backup, being restored) what ``live`` holds that it
    lacks; see the module's docstring. ``signer``: the pod's node key, which writes a
    member's forget again when ``live`` says they were forgotten but the forget itself
    cannot be read any more (its events damaged)."""
    if not live.exists():
        return Carried(unreadable="there is no current database")
    try:
        src = sqlite3.connect(live)
    except sqlite3.Error as e:
        return Carried(unreadable=str(e))
    with closing(src):
        try:
            found = src.execute("SELECT value FROM meta WHERE key = 'pod'").fetchone()
            if found is None or bytes(found[0]) != pod:
                return Carried(unreadable="it is not this pod's database")
            keys = src.execute("SELECT member, key FROM member_keys").fetchall()
            version = src.execute("PRAGMA user_version").fetchone()[0]
            local = {t: _table(src, t) for t in (*LOCAL_TABLES, *KEPT_TABLES)
                     if version >= SINCE.get(t, 0)}  # fmt: skip
        except sqlite3.Error as e:
            return Carried(unreadable=str(e))
        try:  # the read model may still say it where the events cannot
            forgotten = {m for (m,) in src.execute(
                "SELECT id FROM members WHERE status = 'forgotten'")}  # fmt: skip
        except sqlite3.Error:
            forgotten = set()
        return run_sync(_carry(src, incoming, keys, local, forgotten, signer))


async def _carry(
    src: sqlite3.Connection,
    incoming: Path,
    keys: list[tuple[bytes, bytes]],
    local: dict[str, tuple[list[str], list[tuple]]],
    forgotten: set[bytes],
    signer: Keypair | None,
) -> Carried:
    carried = Carried()
    async with await Ledger.open(incoming) as ledger:
        for table, (columns, rows) in local.items():
            carried.peers += await _replace_table(ledger, table, columns, rows)
        try:
            carried.events = await _events(src, ledger)
        except sqlite3.Error as e:  # damaged past some page: keep what came before it
            carried.unreadable = f"it could be read only in part ({e})"
        # Keys after the events, and only for members the restored pod now holds and has
        # not forgotten: a key whose member.join was lost with damaged pages would be
        # shown nowhere, and no `member forget` could ever reach it.
        status = dict(await ledger.reader.execute_fetchall("SELECT id, status FROM members"))
        have = {m for (m,) in await ledger.reader.execute_fetchall(
            "SELECT member FROM member_keys")}  # fmt: skip
        for member, key in keys:
            if member not in have and status.get(member) == "active":
                await ledger.write("INSERT OR IGNORE INTO member_keys VALUES (?, ?)",
                                   (member, key))  # fmt: skip
                carried.keys += 1
        # Forgotten there, with the forget itself unreadable: forgotten here again, by a
        # forget the node key signs (the key, their bodies and their details destroyed).
        again = sorted(m for m in forgotten if status.get(m) == "active")
        if again and signer is not None:
            carried.forgets = await _forget_again(ledger, signer, again)
        # Fork evidence carried from a database older than V8 lacks its kept header: the
        # events carried give it (as the V8 migration does), so that it can be gossiped.
        await ledger.write(
            "UPDATE forks SET kept_pod = e.pod, kept_payload = e.payload, kept_sig = e.sig "
            f"FROM events AS e WHERE {ids_joined('e.id', 'forks.kept_id')} "
            "AND forks.kept_payload IS NULL")
        # And the other header's pod, read from its bytes as V8 does (schema.py): without
        # it a peers-lane proof is kept but never served to the pods it concerns.
        await ledger.write(
            "UPDATE forks SET other_pod = substr(other_payload, 5, 32) "
            "WHERE other_pod IS NULL AND substr(other_payload, 1, 4) = x'9b01c420'")
        # A member forgotten in either database stays forgotten: no key of theirs is kept
        # (the forget may be a duplicate here, so no fold would run to destroy it again).
        await ledger.write("DELETE FROM member_keys WHERE member IN "
                           "(SELECT id FROM members WHERE status = 'forgotten')")  # fmt: skip
        for member in forgotten:  # (without a signer: their key at least)
            await ledger.write("DELETE FROM member_keys WHERE member = ?", (member,))
    return carried


async def _forget_again(ledger: Ledger, signer: Keypair, members: list[bytes]) -> int:
    """A member.forget of each of ``members``, signed by the pod's node key in the pod
    lane, stored through the ledger's own ingest (it destroys key and bodies)."""
    pod = ledger.pod
    assert pod is not None
    author = Author(signer, pod)
    for lane, (seq, id_, ts) in (await queries.feed_heads(ledger.reader, signer.public)).items():
        author.set_head(lane, seq, id_, ts)
    wires = [author.write(kinds.MemberForgotten(), "pod", [m]).to_wire() for m in members]
    results = await ledger.append(wires)
    return sum(r.status == "stored" for r in results)


def _table(db: sqlite3.Connection, table: str) -> tuple[list[str], list[tuple]]:
    columns = [row[1] for row in db.execute(f"PRAGMA table_info({table})")]
    return columns, db.execute(f"SELECT * FROM {table}").fetchall()


async def _replace_table(
    ledger: Ledger, table: str, columns: list[str], rows: list[tuple]
) -> int:
    """Make ``table`` of the restored ledger hold ``rows``, or add those it lacks (the
    KEPT_TABLES); columns it lacks are left out (the replaced database may be of an older
    schema). Returns the rows for peers, else 0."""
    ours = [row[1] for row in await ledger.reader.execute_fetchall(f"PRAGMA table_info({table})")]
    kept = [i for i, name in enumerate(columns) if name in ours and (table, name) not in RENUMBERED]
    names = ", ".join(f'"{columns[i]}"' for i in kept)
    marks = ", ".join("?" for _ in kept)
    merge = table in KEPT_TABLES
    if not merge:
        await ledger.write(f"DELETE FROM {table}")
    insert = f"INSERT {'OR IGNORE ' if merge else ''}INTO {table} ({names}) VALUES ({marks})"
    await ledger.write_many(insert, [[row[i] for i in kept] for row in rows])
    return len(rows) if table == "peers" else 0


async def _events(src: sqlite3.Connection, ledger: Ledger) -> int:
    """Ingest every event of ``src`` in store order; the ones the backup holds are
    duplicates, dropped at once. Returns how many were stored."""
    stored, last = 0, 0
    while True:
        page = src.execute(
            "SELECT pos, payload, sig, body FROM events WHERE pos > ? ORDER BY pos LIMIT ?",
            (last, PAGE),
        ).fetchall()
        if not page:
            return stored
        last = page[-1][0]
        wires = [encode_wire(payload, sig, body) for _, payload, sig, body in page]
        results = await ledger.ingest(wires, source="restore")
        stored += sum(r.status == "stored" for r in results)
