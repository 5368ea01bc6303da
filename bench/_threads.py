"""Where an ingest's CPU goes, by thread: ``python -m bench._threads 50000 [ROUNDS]``.

Runs, interleaved ROUNDS times (default 3), the raw baseline of ``bench/ingest.py`` and one
``Ledger.ingest`` of the same corpus (50 organizers) with its verify processes started
ahead, and prints per event: wall time, the CPU of each of the node's threads (the event
loop, the verify threads, aiosqlite's SQLite threads), of the verify processes, the total,
and **cores busy** (total CPU / wall). On two cores the wall time of an ingest is at least
total / 2; cores busy says how far from that a run is, and the threads say where to look.

``--batch`` sets ``Limits.batch_size`` for both sides (raw commits every ``--batch`` events
too), ``--workers`` the verify processes, ``--pragma`` (repeatable) runs a pragma on each new
ledger before its own (``--pragma page_size=16384``: what SQLite settings are worth, the raw
side unchanged). Thread CPU comes from ``/proc/self/task``
(Linux only). Not a figure of ``python -m bench``: a diagnostic quoted in
docs/performance.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

from bench._corpus import pod_wires
from bench._util import process_cpu_seconds, remove_db
from bench.ingest import AUTHORS, raw_ingest
from podlink.ledger import store
from podlink.ledger.ledger import Ledger, Limits


def thread_cpu() -> dict[int, float]:
    """CPU seconds so far of each thread of this process, by native thread id."""
    ticks = os.sysconf("SC_CLK_TCK")
    out: dict[int, float] = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except FileNotFoundError:  # ended meanwhile
            continue
        out[int(tid)] = (int(fields[11]) + int(fields[12])) / ticks
    return out


def role(thread: threading.Thread | None) -> str:
    """Which part of the node a thread is."""
    if thread is threading.main_thread():
        return "event loop"
    name = thread.name if thread is not None else ""
    if name.startswith("podlink-verify"):
        return "verify threads"
    if "_connection_worker_thread" in name:
        return "sqlite threads"
    return "other threads"


async def ledger_run(wires: list[bytes], path: Path, workers: int, batch: int) -> dict[str, float]:
    """One fresh ledger's ingest of ``wires``: seconds of wall and of CPU by part."""
    ledger = await Ledger.open(path, limits=Limits(batch_size=batch), workers=workers)
    try:
        await ledger.verifier.start()
        pids = ledger.verifier.pids
        procs = sum(process_cpu_seconds(pid) for pid in pids)
        before = thread_cpu()
        start = time.perf_counter()
        results = await ledger.ingest(wires, source="peer")
        wall = time.perf_counter() - start
        after = thread_cpu()
        procs = sum(process_cpu_seconds(pid) for pid in pids) - procs
        by_id = {t.native_id: t for t in threading.enumerate()}
    finally:
        await ledger.close()
    stored = sum(r.status == "stored" for r in results)
    if stored != len(wires):
        raise SystemExit(f"stored {stored} of {len(wires)} events: {results[:3]}")
    parts: dict[str, float] = defaultdict(float)
    for tid, cpu in after.items():
        parts[role(by_id.get(tid))] += cpu - before.get(tid, 0.0)
    parts["verify processes"] = procs
    parts["total"] = sum(parts.values())
    parts["wall"] = wall
    return parts


def with_pragmas(pragmas: list[str]) -> None:
    """Run ``PRAGMA p`` for each of ``pragmas`` on every ledger opened from now on, before
    the ledger's own (so that ``page_size`` still applies to a new file)."""
    store.PRAGMAS = tuple(f"PRAGMA {p}" for p in pragmas) + store.PRAGMAS


def show(name: str, runs: list[dict[str, float]], n: int) -> None:
    keys = [k for k in runs[0] if k not in ("wall", "total") and any(r[k] for r in runs)]
    med = {k: statistics.median(r[k] for r in runs) * 1e6 / n for k in runs[0]}
    busy = statistics.median(r["total"] / r["wall"] for r in runs)
    parts = " = " + ", ".join(f"{k} {med[k]:.1f}" for k in keys) if keys else ""
    print(f"{name:>8}: wall {med['wall']:5.1f} us/event ({1e6 / med['wall']:,.0f}/s); "
          f"CPU {med['total']:5.1f}{parts}; cores busy {busy:.2f}")  # fmt: skip


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("events", type=int, nargs="?", default=50_000)
    parser.add_argument("rounds", type=int, nargs="?", default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--pragma", action="append", default=[], metavar="NAME=VALUE")
    args = parser.parse_args()
    with_pragmas(args.pragma)
    wires = pod_wires(args.events, authors=AUTHORS)
    n = len(wires)
    raw: list[dict[str, float]] = []
    node: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory(prefix="bench-threads-") as tmp:
        path = Path(tmp) / "x.db"
        for _ in range(args.rounds):
            timed = raw_ingest(wires, path, batch=args.batch)
            remove_db(path)
            raw.append({"total": timed.cpu, "wall": timed.wall})
            node.append(await ledger_run(wires, path, args.workers, args.batch))
            remove_db(path)
    print(f"{n:,} events, {args.rounds} interleaved rounds, batch {args.batch}, "
          f"{args.workers} verify processes; medians")  # fmt: skip
    show("raw", raw, n)
    show("ledger", node, n)
    ratios = [r["wall"] / s["wall"] for r, s in zip(raw, node, strict=True)]
    print(f"   ratio: ledger rate / raw rate {statistics.median(ratios):.2f} (per round, median)")


if __name__ == "__main__":
    asyncio.run(main())
