"""What an index of event ids costs a commit: ``python -m bench._id_index 100000 [rounds]``.

Raw's own insert (bench/ingest.py: the same columns, WAL, synchronous=FULL, one
transaction per 1,000 events; the ledger's 32 MB page cache) into three shapes of the
events table, interleaved round by round, timing the insert and the COMMIT on this thread:

* ``whole``: ``id BLOB UNIQUE``, the ledger's schema before V13 (and raw's);
* ``prefix``: no UNIQUE on the id, an index on ``substr(id, 1, 8)`` (the ledger since V13);
* ``none``: no index on the id at all (what any id index costs, for scale).

Rows are decoded before the clock starts: this weighs SQLite alone, not the signatures.
Not a figure of ``python -m bench``: it informs a schema choice (docs/performance.md,
thirteenth round).
"""

from __future__ import annotations

import argparse
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

from bench._corpus import pod_wires
from bench._util import remove_db
from bench.ingest import RAW_BATCH, RAW_INSERT, RAW_SCHEMA
from podlink.protocol.envelope import decode_event

_PREFIX_SCHEMA = RAW_SCHEMA.replace("id BLOB NOT NULL UNIQUE", "id BLOB NOT NULL")
SHAPES = {
    "whole": [RAW_SCHEMA],
    "prefix": [_PREFIX_SCHEMA, "CREATE INDEX events_id ON events (substr(id, 1, 8))"],
    "none": [_PREFIX_SCHEMA],
}


def run(rows: list[tuple], path: Path, schema: list[str]) -> tuple[float, float]:
    """(insert, COMMIT) seconds of thread CPU over all batches."""
    remove_db(path)
    db = sqlite3.connect(path, isolation_level=None)
    try:
        for pragma in ("journal_mode=WAL", "synchronous=FULL", "cache_size=-32000"):
            db.execute(f"PRAGMA {pragma}")
        for statement in schema:
            db.execute(statement)
        insert = commit = 0.0
        for start in range(0, len(rows), RAW_BATCH):
            t0 = time.thread_time()
            db.execute("BEGIN")
            db.executemany(RAW_INSERT, rows[start : start + RAW_BATCH])
            t1 = time.thread_time()
            db.execute("COMMIT")
            insert += t1 - t0
            commit += time.thread_time() - t1
    finally:
        db.close()
        remove_db(path)
    return insert, commit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("events", type=int, nargs="?", default=100_000)
    parser.add_argument("rounds", type=int, nargs="?", default=3)
    args = parser.parse_args()
    if RAW_SCHEMA == _PREFIX_SCHEMA:
        raise SystemExit("bench.ingest.RAW_SCHEMA changed: update _PREFIX_SCHEMA")
    rows = []
    for wire in pod_wires(args.events):
        ev = decode_event(wire)
        h = ev.header
        rows.append((ev.id, h.pod, h.author, h.lane, h.seq, h.ts, h.kind, ev.payload, ev.sig,
                     ev.body, 0))  # fmt: skip
    n = len(rows)
    times: dict[str, list[tuple[float, float]]] = {shape: [] for shape in SHAPES}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.rounds):
            for shape, schema in SHAPES.items():
                times[shape].append(run(rows, Path(tmp) / f"{shape}.db", schema))
    print(f"{n:,} events, {args.rounds} interleaved rounds, {RAW_BATCH}/txn; "
          "medians, us/event of thread CPU")  # fmt: skip
    base = statistics.median(i + c for i, c in times["whole"])
    for shape, runs in times.items():
        ins = statistics.median(i for i, _ in runs) / n * 1e6
        com = statistics.median(c for _, c in runs) / n * 1e6
        both = statistics.median(i + c for i, c in runs)
        print(f"  {shape:6s}  insert {ins:5.2f}  COMMIT {com:5.2f}  both {both / n * 1e6:5.2f}"
              f"  ({both / base:.2f} of whole)")  # fmt: skip


if __name__ == "__main__":
    main()
