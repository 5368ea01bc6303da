"""Crash-test writer: ingest random histories into a ledger file until killed.

Run as ``python crash_writer.py DB SEED``. Prints ``READY`` once the ledger is open, then
after every ``ingest`` call returns one line ``ACK id id ...`` with the ids that call
acknowledged (stored or duplicate), flushed at once. The parent test kills this process
with SIGKILL at a random moment and checks that every acknowledged id survived.
"""

from __future__ import annotations

import asyncio
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository, for tests.*

from podlink.ledger.ledger import Ledger, Limits
from tests.ledger.scenario import Scenario, deliveries


async def main(path: Path, seed: int) -> None:
    rng = random.Random(seed)
    ledger = await Ledger.open(path, limits=Limits(batch_size=rng.choice((4, 16, 1000))))
    print("READY", flush=True)
    round_ = 0
    while True:
        scenario = Scenario.build(random.Random(f"{seed}/{round_}"), steps=40)
        for batch in deliveries(scenario.events, rng):
            results = await ledger.ingest(batch)
            acked = [r.id for r in results if r.ok and r.id]
            print("ACK", *acked, flush=True)
        round_ += 1


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]), int(sys.argv[2])))
