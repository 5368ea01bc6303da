"""An ingest of several batches leaves each COMMIT but the last to land while it goes on
(ledger/writer.py): what readers are told waits for the COMMIT, and a COMMIT that fails
takes no batch after it with it onto the disk.

The failing COMMIT is SQLite's own: a deferred foreign key, violated by a temporary trigger
on one event's insert, fails the COMMIT of that event's batch and leaves its transaction
open, as SQLite documents for deferred constraints. Nothing of the ledger is faked.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from podlink.ledger.errors import StorageError
from podlink.ledger.ledger import Ledger, Limits
from podlink.ledger.projections import canonical_dump
from podlink.protocol import kinds
from podlink.protocol.envelope import Event
from tests.ledger.helpers import World, query, statuses, stored_ids, wires
from tests.ledger.test_fast import counted

BATCH = 10


def pod_needs(world: World, n: int) -> tuple[bytes, list[Event], list[Event]]:
    pod, setup = world.pod()
    orgs = []
    for name in ("Ana", "Bo"):
        org, add = world.organizer(pod, name)
        orgs.append(org)
        setup.append(add)
    needs = []
    for i in range(n):
        world.tick()
        need = kinds.RequestOpened(title=f"need {i}", category="food")
        needs.append(orgs[i % 2].write(need, "network"))
    return pod.id, setup, needs


async def fail_commit_with(ledger: Ledger, event: Event) -> None:
    """The COMMIT of the transaction that stores ``event`` will fail."""
    db = ledger.db
    await db.execute("PRAGMA foreign_keys=ON")  # the schema declares none: only these
    await db.execute("CREATE TEMP TABLE doom_parent (id INTEGER PRIMARY KEY)")
    await db.execute(
        "CREATE TEMP TABLE doom (parent INTEGER "
        "REFERENCES doom_parent (id) DEFERRABLE INITIALLY DEFERRED)"
    )
    await db.execute(
        "CREATE TEMP TRIGGER doom AFTER INSERT ON main.events "
        f"WHEN NEW.id = x'{event.id.hex()}' BEGIN INSERT INTO doom VALUES (1); END"
    )


@pytest.mark.parametrize("behind", ["new events", "copies"])
async def test_a_commit_failing_while_it_lands_stores_no_batch_after_it(
    tmp_path: Path, world: World, behind: str
) -> None:
    """Behind the failing batch: a batch with a transaction of its own (whose BEGIN finds
    the failed one open), or one of copies only (no transaction: the failure is found
    when the ingest settles its COMMITs before it raises)."""
    pod, setup, needs = pod_needs(world, 3 * BATCH)
    ledger = await Ledger.open(tmp_path / "pod.db", limits=Limits(batch_size=BATCH))
    told: list[int] = []
    try:
        await ledger.set_pod(pod)
        assert statuses(await ledger.ingest(wires(setup))) == ["stored"] * len(setup)
        ledger.stored_listeners.append(told.append)
        await fail_commit_with(ledger, needs[BATCH + 5])  # in the second batch
        sent = wires(needs if behind == "new events" else [*needs[: 2 * BATCH], *needs[:BATCH]])
        with pytest.raises(StorageError, match="rolled back: FOREIGN KEY constraint failed"):
            await ledger.ingest(sent)
        # The first batch landed; the second failed at its COMMIT; the third, queued
        # behind it, wrote nothing.
        on_disk = {e.id for e in [*setup, *needs[:BATCH]]}
        assert await stored_ids(ledger) == on_disk
        (last,) = await query(ledger, "SELECT max(pos) FROM events")
        assert told and max(told) <= last[0]  # nobody was told of what is not there

        # Nothing of the failed batches stayed in memory: the same events again, once the
        # trigger is gone, are stored after the first batch with no gap and no copy.
        await ledger.db.execute("DROP TRIGGER doom")
        again = await ledger.ingest(wires(needs))
        assert statuses(again) == ["duplicate"] * BATCH + ["stored"] * (2 * BATCH)
        report = await ledger.verify()
        assert report.ok and report.events == len(setup) + len(needs)
        live = await canonical_dump(ledger.reader)
        await ledger.rebuild()
        assert await canonical_dump(ledger.reader) == live
    finally:
        await ledger.close()

    # The same state as a ledger that never failed.
    clean = await Ledger.open(tmp_path / "clean.db", limits=Limits(batch_size=BATCH))
    try:
        await clean.set_pod(pod)
        await clean.ingest(wires([*setup, *needs]))
        reopened = await Ledger.open(tmp_path / "pod.db")
        try:
            assert await canonical_dump(reopened.reader) == await canonical_dump(clean.reader)
        finally:
            await reopened.close()
    finally:
        await clean.close()


async def test_listeners_are_told_only_of_what_readers_see(tmp_path: Path, world: World) -> None:
    """Woken by a store, a live stream reads at once on the reader connection: everything
    up to the position it was told of must be there."""
    pod, setup, needs = pod_needs(world, 8 * BATCH)
    ledger = await Ledger.open(tmp_path / "pod.db", limits=Limits(batch_size=BATCH))
    seen: list[tuple[int, int]] = []
    reads: list[asyncio.Task[None]] = []

    async def read(head: int) -> None:
        sql = "SELECT count(*) FROM events WHERE pos <= ?"
        (row,) = await ledger.reader.execute_fetchall(sql, (head,))
        seen.append((head, row[0]))

    try:
        await ledger.set_pod(pod)
        ledger.stored_listeners.append(lambda head: reads.append(asyncio.ensure_future(read(head))))
        results = await ledger.ingest(wires([*setup, *needs]))
        assert statuses(results) == ["stored"] * (len(setup) + len(needs))
        await asyncio.gather(*reads)
    finally:
        await ledger.close()
    assert len(seen) == -(-(len(setup) + len(needs)) // BATCH)  # one wake-up per batch
    assert all(found == head for head, found in seen), seen
    assert sorted(head for head, _ in seen) == [head for head, _ in seen]  # in order


async def test_copies_of_batches_still_landing_are_duplicates(
    tmp_path: Path, world: World
) -> None:
    """A ring delivers each event twice. The later batches are probed for copies on the
    reader while the earlier ones' COMMITs may still be landing: what the probe cannot
    see yet, the ledger must remember (or the copies reach the transaction, where the
    general path finds them by their feed position, at its cost)."""
    pod, setup, needs = pod_needs(world, 6 * BATCH)
    sent = wires([*setup, *needs])
    ledger = await Ledger.open(tmp_path / "pod.db", limits=Limits(batch_size=BATCH))
    try:
        await ledger.set_pod(pod)
        # The whole ring twice, then a second ledger with each copy a batch behind.
        assert statuses(await ledger.ingest([*sent, *sent])) == (
            ["stored"] * len(sent) + ["duplicate"] * len(sent)
        )
        assert await stored_ids(ledger) == {e.id for e in [*setup, *needs]}
    finally:
        await ledger.close()
    # Then each batch half new events, half copies of some batches before it: the probe
    # of a batch runs while the COMMIT of the batch three before it may still land.
    half = BATCH // 2
    chunks = [sent[i : i + half] for i in range(0, len(sent), half)]
    for lag in (1, 2, 3, 4):
        second = await Ledger.open(tmp_path / f"lag{lag}.db", limits=Limits(batch_size=BATCH))
        try:
            await second.set_pod(pod)
            await second.ingest([w for chunk in chunks[:lag] for w in chunk])
            lagging: list[bytes] = []
            for i in range(lag, len(chunks)):
                lagging += [*chunks[i], *chunks[i - lag]]
            with counted() as fast:
                results = await second.ingest(lagging)
            expected = [
                status
                for i in range(lag, len(chunks))
                for status in ["stored"] * len(chunks[i]) + ["duplicate"] * half
            ]
            assert statuses(results) == expected
            # The copies known before the transaction, every batch is the fast path's.
            assert fast == [True] * (len(chunks) - lag)
            assert await stored_ids(second) == {e.id for e in [*setup, *needs]}
        finally:
            await second.close()
