"""Write amplification, one run: ``python -m bench._wal_pages 100000``.

Ingests N events into a fresh ledger, then 5 more batches of 1,000 with automatic
checkpoints off, and counts the WAL frames those 5 commits wrote, by the table or index
(B-tree) each page belongs to. Every frame is a 4 KiB write now and another at checkpoint,
so this is what a 1,000-event commit costs the disk (an SD card, on a Raspberry Pi). Not a
figure of ``python -m bench``: it patches the ledger's pragmas.
"""

from __future__ import annotations

import asyncio
import collections
import sqlite3
import struct
import sys
import tempfile
from pathlib import Path

from bench._corpus import pod_wires
from podlink.ledger import store
from podlink.ledger.ledger import Ledger, Limits

BATCHES = 5


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


async def main(n: int) -> None:
    store.PRAGMAS = tuple(
        "PRAGMA wal_autocheckpoint=0" if "autocheckpoint" in p else p for p in store.PRAGMAS
    )
    wires = pod_wires(n + 1000 * BATCHES)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "ledger.db"
        async with await Ledger.open(path, limits=Limits(batch_size=1000)) as ledger:
            for i in range(0, len(wires) - 1000 * BATCHES, 10_000):
                await ledger.ingest(wires[i : min(i + 10_000, len(wires) - 1000 * BATCHES)])
            await ledger.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            await ledger.ingest(wires[len(wires) - 1000 * BATCHES :])
            counts = frames_by_btree(path)
    total = sum(counts.values()) / BATCHES
    print(f"WAL pages per 1,000-event commit after {len(wires) - 1000 * BATCHES:,} events: "
          f"{total:,.0f} ({total * 4096 / 1e6:.1f} MB)")  # fmt: skip
    for name, count in counts.most_common():
        print(f"  {count / BATCHES:8,.0f}  {name}")


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 100_000))
