"""Forgetting reaches the copies a restore keeps aside.

`podlink restore` keeps the database it replaces beside the new one, in the pod's own
folder, as ``ledger.db.before-restore-TIME``: a whole ledger, member keys and boxes
included (a restore cut off leaves ``ledger.db.restoring``, the same). A member forgotten
afterwards is crypto-shredded in the live database, and the forget promises their
details are destroyed for good; so the same keys and bodies are destroyed in every such
copy too. A copy SQLite cannot read (restore keeps a damaged database as bytes) cannot be
scrubbed: it is named in a warning, to be deleted by hand.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Sequence
from contextlib import closing
from pathlib import Path

from podlink.ledger.projections import MEMBER_KINDS
from podlink.ledger.schema import LEFTOVERS
from podlink.ledger.store import LEFTOVERS_HELD, marks, of_roots

log = logging.getLogger("podlink.ledger")

ASIDE = ".before-restore-"  # what cli/pods.py restore puts between the name and the time
RESTORING = ".restoring"  # the ledger a restore prepares (left whole if it is cut off)
_SIDECARS = ("-journal", "-wal", "-shm")


def copies(live: Path) -> list[Path]:
    """The copies a restore set aside beside the database at ``live``, and the one a
    restore cut off left (the next restore removes it; until then it is scrubbed too)."""
    found = [p for p in live.parent.glob(f"{live.name}{ASIDE}*")
             if p.is_file() and not p.name.endswith(_SIDECARS)]  # fmt: skip
    left = live.with_name(live.name + RESTORING)
    return sorted(found + ([left] if left.is_file() else []))


def scrub(live: Path, members: Sequence[bytes]) -> list[Path]:
    """Destroy ``members``' keys and the bodies of their member events in every copy set
    aside beside ``live``, as ``projections.forget_members`` did in the live database;
    the copies that could not be scrubbed."""
    failed: list[Path] = []
    if not members:
        return failed
    for path in copies(live):
        try:
            _scrub_one(path, members)
        except sqlite3.Error as err:
            log.warning("%s may still hold a forgotten member's details (%s): delete it",
                        path, err)  # fmt: skip
            failed.append(path)
    return failed


def _scrub_one(path: Path, members: Sequence[bytes]) -> None:
    where = f"kind IN ({marks(len(MEMBER_KINDS))}) AND dropped = 0"
    with closing(sqlite3.connect(path, isolation_level=None)) as db:
        db.execute("PRAGMA secure_delete=ON")  # freed cells zeroed, as in the live file
        # A copy of a file whose migration was cut before it dropped the old log (schema
        # V13's events_v12) still holds every body there: drop it first, on its own.
        for (name,) in db.execute(LEFTOVERS_HELD, LEFTOVERS).fetchall():
            db.execute(f"DROP TABLE {name}")
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute(
                f"DELETE FROM member_keys WHERE member IN ({marks(len(members))})", members
            )
            db.executemany(
                "UPDATE events SET body = NULL, dropped = 1 "
                f"WHERE pos IN ({of_roots('SELECT pos FROM events', 1, where)})",
                [(m, m, *MEMBER_KINDS) * 2 for m in members],
            )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        # A copy in WAL mode keeps the old pages in its WAL until a checkpoint empties it.
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
