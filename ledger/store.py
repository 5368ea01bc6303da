"""Opening the SQLite file: permissions, pragmas, migrations, and error translation.

Durability choice: WAL with ``synchronous=FULL``. In WAL mode ``NORMAL`` may lose the last
transactions on a power cut (they are in the WAL but not yet fsynced); ``FULL`` fsyncs the
WAL at every commit, so once ``ingest`` returns its events survive a power cut or
``kill -9``. Batching makes the fsync cost per batch, not per event.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite

from podlink.ledger.errors import SchemaTooNew, StorageError
from podlink.ledger.schema import LEFTOVERS, MIGRATIONS, ROOM, SCHEMA_VERSION

BUSY_TIMEOUT_MS = 5000  # how long a statement waits for a lock another connection holds
PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    "PRAGMA synchronous=FULL",
    "PRAGMA secure_delete=ON",  # forgotten members' keys and bodies are overwritten
    "PRAGMA foreign_keys=OFF",
    "PRAGMA cache_size=-32000",  # 32 MB page cache: bounded memory at any log size
    "PRAGMA temp_store=MEMORY",
    # Checkpoint every ~40 MB of WAL rather than every 4 MB: each checkpoint fsyncs the
    # database file, and at the default it landed on almost every 1,000-event commit.
    "PRAGMA wal_autocheckpoint=10000",
    f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}",
)
T = TypeVar("T")
log = logging.getLogger("podlink.ledger")
# Ids per IN (...) query. A lookup through an index of prefixes binds each id twice, and
# of_roots four times: 2,000 variables, well under the 32,766 of any SQLite with STRICT
# tables (3.37+, which the schema needs already).
MAX_PARAMS = 500


class Tx:
    """What the body of a ``transaction`` may ask of its end."""

    def __init__(self) -> None:
        self.linger = False  # queue the COMMIT and return without waiting for it
        self.landing: asyncio.Future[None] | None = None  # that COMMIT (ledger/writer.py)


@contextlib.asynccontextmanager
async def transaction(db: aiosqlite.Connection) -> AsyncIterator[Tx]:
    """``BEGIN IMMEDIATE`` ... ``COMMIT``, rolled back on any error or cancellation.

    BEGIN is awaited inside the guarded block: aiosqlite's thread runs a statement to its
    end even when the task awaiting it is cancelled, so a cancellation that lands while
    BEGIN runs must still roll back, or the transaction stays open and every later BEGIN
    fails ("cannot start a transaction within a transaction"). A rollback with no
    transaction open does nothing.

    With ``Tx.linger`` set by the body, the COMMIT is put on aiosqlite's queue and left
    to land (``Tx.landing``): a task that calls ``db.commit()``, given one turn of the
    loop before this returns. Tasks first run in the order they were made, so that turn
    queues the COMMIT before any statement this caller sends next."""
    tx = Tx()
    try:
        await db.execute("BEGIN IMMEDIATE")
        yield tx
        if tx.linger:
            tx.landing = asyncio.ensure_future(db.commit())
            await asyncio.sleep(0)
        else:
            await db.commit()
    except BaseException:
        if tx.landing is not None:  # cancelled at the sleep: nobody will await it now
            tx.landing.add_done_callback(_retrieved)
        await db.rollback()
        raise


def _retrieved(task: asyncio.Future[None]) -> None:
    """Mark a task's outcome as seen (asyncio logs an exception nobody retrieved)."""
    if not task.cancelled():
        task.exception()


def _create_private(path: Path) -> None:
    """Create an empty file readable only by its owner (it will hold personal data)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.fchmod(fd, 0o600)
    os.close(fd)


async def run_to_end(aw: Awaitable[T]) -> T:
    """Await ``aw`` to its end even if the caller is cancelled meanwhile, then pass the
    cancellation on. For work that must not stop halfway for a caller that went away:
    closing the ledger, or a transaction other callers' results depend on (aiosqlite's
    thread finishes a statement anyway; stopping the Python around it midway is what
    leaves caches and callers wrong)."""
    task = asyncio.ensure_future(aw)
    cancelled: asyncio.CancelledError | None = None
    while not task.done():
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError as err:
            if task.cancelled():
                raise
            cancelled = err
        except BaseException:
            break  # the task failed: its error is raised below
    if cancelled is not None:
        if not task.cancelled():
            task.exception()  # seen: asyncio would log it as never retrieved
        raise cancelled
    return task.result()


def private_file(path: Path) -> None:
    """Create ``path``, or empty it, readable only by its owner, before anything personal
    is written to it (a chmod after writing leaves a moment in which others may open it
    and keep it open). Writing to it afterwards keeps the mode."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # an existing file keeps its mode through O_CREAT
    finally:
        os.close(fd)


@contextlib.asynccontextmanager
async def translated(what: str) -> AsyncIterator[None]:
    """Turn SQLite's errors into the ledger's StorageError (the one place that does)."""
    try:
        yield
    except sqlite3.Error as err:
        raise StorageError(f"{what}: {err}") from err


async def connect(path: Path) -> aiosqlite.Connection:
    """Open (creating if needed) a ledger database and migrate it to the current schema."""
    path = Path(path)
    if not path.exists():
        _create_private(path)
    async with translated(f"opening {path}"):
        db = await aiosqlite.connect(path, isolation_level=None)
        try:
            for pragma in PRAGMAS:
                await db.execute(pragma)
            await migrate(db)
        except BaseException:
            await db.close()
            raise
    return db


async def migrate(db: aiosqlite.Connection) -> None:
    """Apply every migration past the file's ``user_version``, each in its own transaction."""
    version = await scalar(db, "PRAGMA user_version")
    if version > SCHEMA_VERSION:
        raise SchemaTooNew(
            f"this database has schema {version}, newer than this podlink ({SCHEMA_VERSION});"
            " upgrade podlink"
        )
    room = max((ROOM.get(t, 0.0) for t in range(version + 1, SCHEMA_VERSION + 1)), default=0.0)
    if version and room:
        await _check_room(db, version, room)
    if version < SCHEMA_VERSION and await scalar(db, "SELECT count(*) FROM sqlite_schema"):
        log.warning(
            "migrating the database from schema %d to %d (once; a large log takes a while: "
            "about 1-2 s per 100,000 events)", version, SCHEMA_VERSION,
        )  # fmt: skip
    for target in range(version + 1, SCHEMA_VERSION + 1):
        async with transaction(db):
            await _run_script(db, MIGRATIONS[target - 1])
            await db.execute(f"PRAGMA user_version={target}")
    try:
        await drop_leftovers(db)
    except sqlite3.Error as err:  # the schema is whole: open anyway, try again next time
        log.warning("could not drop what the last migration set aside (%s); the next "
                    "open tries again", err)  # fmt: skip


def free_bytes(folder: Path) -> int:
    """Free space on the disk holding ``folder`` (a function of its own: tests stand in
    for a full disk through it)."""
    return shutil.disk_usage(folder).free


async def _check_room(db: aiosqlite.Connection, version: int, room: float) -> None:
    """Refuse, before it starts, a migration the disk has no room for: cut short by a
    full disk, it would leave a WAL as large as the room it found, and the node down."""
    path = Path(next(r[2] for r in await rows(db, "PRAGMA database_list") if r[1] == "main"))
    size = await scalar(db, "PRAGMA page_count") * await scalar(db, "PRAGMA page_size")
    need, free = int(size * room), free_bytes(path.parent)
    if free < need:
        raise StorageError(
            f"upgrading {path} from schema {version} to {SCHEMA_VERSION} copies its log once "
            f"and needs about {need / 1e6:,.0f} MB free on its disk; {free / 1e6:,.0f} MB "
            "are: make room (or move the folder), then start podlink again"
        )


async def drop_leftovers(db: aiosqlite.Connection) -> None:
    """Drop the tables a migration set aside (schema.LEFTOVERS), each in a transaction
    of its own, then empty the WAL, which holds the copy and the zeroed pages."""
    left = [name for (name,) in await rows(db, LEFTOVERS_HELD, LEFTOVERS)]
    for name in left:
        await db.execute(f"DROP TABLE {name}")  # autocommit: no statement journal
    if left:
        await db.execute("PRAGMA wal_checkpoint(TRUNCATE)")


async def _run_script(db: aiosqlite.Connection, script: str) -> None:
    """Run DDL statements one by one (executescript would commit our open transaction)."""
    for statement in _statements(script):
        await db.execute(statement)


def _statements(script: str) -> Iterable[str]:
    buf: list[str] = []
    for line in script.splitlines():
        stripped = line.split("--", 1)[0].rstrip()
        if not stripped:
            continue
        buf.append(stripped)
        if stripped.endswith(";"):
            yield "\n".join(buf)
            buf = []
    if buf:
        yield "\n".join(buf)


async def rows_by_pairs(
    db: aiosqlite.Connection, names: tuple[str, str], query: str, pairs: Iterable[tuple]
) -> list[Any]:
    """The rows of ``query`` for each distinct pair of values in ``pairs``: ``query``
    reads them as the table ``k`` with columns ``names``, joined 250 pairs at a time (one
    statement per 250 pairs, not one per pair)."""
    wanted = sorted(set(pairs))
    out: list[Any] = []
    for i in range(0, len(wanted), 250):
        part = wanted[i : i + 250]
        values = ", ".join("(?, ?)" for _ in part)
        sql = f"WITH k ({names[0]}, {names[1]}) AS (VALUES {values}) {query}"
        out += await rows(db, sql, [value for pair in part for value in pair])
    return out


async def scalar(db: aiosqlite.Connection, sql: str, params: Sequence[Any] = ()) -> Any:
    async with db.execute(sql, params) as cur:
        row = await cur.fetchone()
    return None if row is None else row[0]


async def rows(db: aiosqlite.Connection, sql: str, params: Sequence[Any] = ()) -> list[Any]:
    return list(await db.execute_fetchall(sql, params))


def chunks(items: Sequence[Any], size: int = MAX_PARAMS) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def marks(n: int) -> str:
    """``?,?,?`` for an IN clause of n parameters."""
    return ",".join("?" * n)


# The tables of schema.LEFTOVERS a file holds (bind LEFTOVERS).
LEFTOVERS_HELD = (
    f"SELECT name FROM sqlite_schema WHERE type = 'table' AND name IN ({marks(len(LEFTOVERS))})"
)


def id_is(column: str = "id") -> str:
    """``column = ?`` for an id, in a form that reaches the events' indexes of ids and roots
    (schema V13: they hold each id's first 8 bytes). Bind the id twice: ``twice(id_)``."""
    return f"(substr({column}, 1, 8) = substr(?, 1, 8) AND {column} = ?)"


def twice(value: Any) -> tuple[Any, Any]:
    """The parameters of one :func:`id_is`."""
    return value, value


def ids_in(n: int, column: str = "id") -> str:
    """``column IN (n ids)`` through the events' index of ``column`` (``id`` or ``root``);
    bind ``[*ids, *ids]``."""
    m = marks(n)
    prefixes = ",".join(["substr(?, 1, 8)"] * n)
    return f"(substr({column}, 1, 8) IN ({prefixes}) AND {column} IN ({m}))"


def ids_joined(event_id: str, other: str) -> str:
    """A join condition ``event_id = other`` (``event_id`` an events' id column, ``other``
    a column of another table) that looks the event up through the id index."""
    return f"(substr({event_id}, 1, 8) = substr({other}, 1, 8) AND {event_id} = {other})"


def of_roots(select: str, n: int, where: str = "") -> str:
    """``select`` (``SELECT ... FROM events``) restricted to the events of ``n`` roots.

    Followers are found through the partial root index, anchors (root = id) through the
    id index. Bind the roots twice (:func:`ids_in`) followed by the parameters of
    ``where``, then the same again."""
    also = f" AND {where}" if where else ""
    return (
        f"{select} WHERE {ids_in(n, 'root')} AND root != id{also} "
        f"UNION ALL {select} WHERE {ids_in(n)} AND root = id{also}"
    )
