"""kill -9 at random moments never loses an acknowledged event nor breaks the file.

A real writer process (crash_writer.py) ingests random histories into one ledger file and
prints the ids each ``ingest`` call acknowledged; this test SIGKILLs it at random points,
restarts it on the same file, and finally checks that everything acknowledged survived.
CI runs a few kills; PODLINK_LONG=1 runs the long form.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sys
from pathlib import Path

import pytest

from podlink.ledger.ledger import Ledger
from podlink.protocol.text import b64e
from tests.ledger.helpers import one, query

WRITER = Path(__file__).with_name("crash_writer.py")
KILLS = 25 if os.environ.get("PODLINK_LONG") == "1" else 5
READ_TIMEOUT_S = 60


async def run_and_kill(db: Path, seed: int, rng: random.Random) -> tuple[set[str], int]:
    """Start the writer, let it acknowledge a few batches, SIGKILL it; return the ids it
    acknowledged (including lines still in the pipe) and how many ACK lines there were."""
    errors = db.with_name(f"writer-{seed}.err")
    with errors.open("wb") as err_file:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, str(WRITER), str(db), str(seed),
            stdout=asyncio.subprocess.PIPE, stderr=err_file,
        )  # fmt: skip
    assert proc.stdout is not None
    acked: set[str] = set()
    lines = 0
    try:
        first = await asyncio.wait_for(proc.stdout.readline(), READ_TIMEOUT_S)
        if first != b"READY\n":
            await asyncio.wait_for(proc.wait(), READ_TIMEOUT_S)
            pytest.fail(f"writer did not start: {first!r} {errors.read_text()}")
        for _ in range(rng.randint(1, 12)):
            line = await asyncio.wait_for(proc.stdout.readline(), READ_TIMEOUT_S)
            assert line.startswith(b"ACK"), line
            acked.update(line.decode().split()[1:])
            lines += 1
        await asyncio.sleep(rng.choice((0, 0.001, 0.005, 0.02)))  # land anywhere in a batch
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGKILL)
        rest = await asyncio.wait_for(proc.stdout.read(), READ_TIMEOUT_S)
        await asyncio.wait_for(proc.wait(), READ_TIMEOUT_S)
    assert proc.returncode == -signal.SIGKILL, errors.read_text()
    for line in rest.split(b"\n")[:-1]:  # the last piece is empty, or cut by the kill
        if line.startswith(b"ACK"):  # printed after its ingest call returned
            acked.update(line.decode().split()[1:])
            lines += 1
    return acked, lines


@pytest.mark.slow
@pytest.mark.parametrize("kills", [KILLS], ids=[f"{KILLS}-kills"])
async def test_kill_9_never_loses_an_acknowledged_event(tmp_path: Path, kills: int) -> None:
    db = tmp_path / "pod.db"
    rng = random.Random(os.environ.get("PODLINK_CRASH_SEED", "podlink"))
    acked: set[str] = set()
    batches = 0
    for kill in range(kills):
        got, lines = await run_and_kill(db, kill, rng)
        acked |= got
        batches += lines
        # Every restart finds what every earlier run acknowledged.
        async with await Ledger.open(db) as ledger:
            stored = {b64e(r[0]) for r in await query(ledger, "SELECT id FROM events")}
            assert acked <= stored, f"lost after kill {kill}: {sorted(acked - stored)[:3]}"
    assert batches >= kills and len(acked) > 0

    async with await Ledger.open(db) as ledger:
        assert await one(ledger, "PRAGMA integrity_check") == "ok"
        assert await one(ledger, "PRAGMA foreign_key_check") is None
        report = await ledger.verify()
        assert report.ok, report.problems[:5] if report.problems else None
        live = await ledger.dump()
        await ledger.rebuild()
        assert await ledger.dump() == live
        # The pending area and the heads are consistent with the log.
        heads = await query(ledger, "SELECT author, lane, seq FROM feeds")
        tops = await query(ledger, "SELECT author, lane, max(seq) FROM events GROUP BY 1, 2")
        assert sorted(heads) == sorted(tops)
        assert await one(ledger, "SELECT count(*) FROM pending p JOIN events e USING (id)") == 0
