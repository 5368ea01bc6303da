"""Write amplification, one run: ``python -m bench._wal_pages 100000 [--pragma P ...]``.

Ingests N events into a fresh ledger, then 5 more batches of 1,000 with automatic
checkpoints off, and counts the WAL frames those 5 commits wrote, by the table or index
(B-tree) each page belongs to; then 200 events one commit each, as organizers append
them, and the bytes those wrote. Every frame is one page written now and again at
checkpoint, so this is what a commit costs the disk (an SD card, on a Raspberry Pi).
``--pragma`` (repeatable) runs a pragma on the new ledger before its own, e.g.
``--pragma page_size=16384``. Not a figure of ``python -m bench``: it patches the ledger's
pragmas.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import sqlite3
import struct
import tempfile
from pathlib import Path

from bench._corpus import pod_wires
from podlink.ledger import store
from podlink.ledger.ledger import Ledger, Limits
from podlink.ledger.store import scalar

BATCHES = 5
SINGLES = 200


def frames_by_btree(db_path: Path) -> collections.Counter[str]:
    """WAL frames of ``db_path`` counted by the B-tree owning each page (via dbstat)."""
    data = (db_path.parent / (db_path.name + "-wal")).read_bytes()
    page_size = struct.unpack(">I", data[8:12])[0]
    pages: collections.Counter[int] = collections.Counter()
    offset = 32  # WAL header; each frame is a 24-byte header and one page
    while offset + 24 + page_size <= len(data):
        pages[struct.unpack(">I", data[offset : offset + 4])[0]] += 1
        offset += 24 + page_size
    con = sqlite3.connect(db_path)
    try:
        owner = dict(con.execute("SELECT pageno, name FROM dbstat"))
    finally:
        con.close()
    counts: collections.Counter[str] = collections.Counter()
    for page, n in pages.items():
        counts[owner.get(page, "(free or new)")] += n
    return counts


async def main(n: int, pragmas: list[str]) -> None:
    store.PRAGMAS = tuple(f"PRAGMA {p}" for p in pragmas) + tuple(
        "PRAGMA wal_autocheckpoint=0" if "autocheckpoint" in p else p for p in store.PRAGMAS
    )
    base = n + 1000 * BATCHES
    wires = pod_wires(base + SINGLES)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "ledger.db"
        wal = path.with_name(path.name + "-wal")
        async with await Ledger.open(path, limits=Limits(batch_size=1000)) as ledger:
            for i in range(0, n, 10_000):
                await ledger.ingest(wires[i : min(i + 10_000, n)])
            await ledger.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            await ledger.ingest(wires[n:base])
            counts = frames_by_btree(path)
            page_size = await scalar(ledger.db, "PRAGMA page_size")
            await ledger.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            for wire in wires[base:]:
                await ledger.ingest([wire])
            singles = wal.stat().st_size
    total = sum(counts.values()) / BATCHES
    print(f"WAL pages per 1,000-event commit after {n:,} events: {total:,.0f} of "
          f"{page_size:,} B ({total * page_size / 1e6:.1f} MB)")  # fmt: skip
    for name, count in counts.most_common():
        print(f"  {count / BATCHES:8,.0f}  {name}")
    per_event = singles / SINGLES / 1024
    print(f"{SINGLES} events after them, one commit each: {per_event:.1f} KiB of WAL per event")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("events", type=int, nargs="?", default=100_000)
    parser.add_argument("--pragma", action="append", default=[], metavar="NAME=VALUE")
    args = parser.parse_args()
    asyncio.run(main(args.events, args.pragma))
