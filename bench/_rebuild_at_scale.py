"""Rebuild at scale, one run: ``python -m bench._rebuild_at_scale 1000000``.

Ingests N events (50 organizers, streamed 10,000 per call) into a fresh ledger, then times
``Ledger.rebuild`` and checks the rebuilt projections equal the live ones, and times the
open-requests list. Not a figure of ``python -m bench`` (it takes minutes at 1M).
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from pathlib import Path

from bench._corpus import pod_wires
from podlink.ledger import queries
from podlink.ledger.ledger import Ledger


async def main(n: int) -> None:
    started = time.perf_counter()
    wires = pod_wires(n)
    print(f"corpus of {len(wires):,} events: {time.perf_counter() - started:.1f} s", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        async with await Ledger.open(Path(tmp) / "ledger.db") as ledger:
            started = time.perf_counter()
            for i in range(0, len(wires), 10_000):
                await ledger.ingest(wires[i : i + 10_000], source="peer")
            rate = len(wires) / (time.perf_counter() - started)
            print(f"ingest: {rate:,.0f} events/s", flush=True)
            live = await ledger.dump()
            started = time.perf_counter()
            await ledger.rebuild()
            took = time.perf_counter() - started
            same = live == await ledger.dump()
            print(f"rebuild: {took:.1f} s ({len(wires) / took:,.0f} events/s); "
                  f"equal to the live projections: {same}", flush=True)  # fmt: skip
            times = []
            for _ in range(5):
                started = time.perf_counter()
                await queries.list_requests(ledger.reader, status="open", limit=500)
                times.append(time.perf_counter() - started)
            print(f"open requests (first 500): median {sorted(times)[2] * 1000:.1f} ms")


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000))
