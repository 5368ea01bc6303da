"""Group commit: appends that queue while the writer is busy share one transaction, and
each still gets exactly the results it would have got on its own."""

from __future__ import annotations

import asyncio

from podlink.ledger.errors import StorageError
from podlink.ledger.ledger import Ledger, Limits
from podlink.protocol import kinds
from podlink.protocol.envelope import Event, encode_wire
from tests.ledger.conftest import OpenLedger
from tests.ledger.helpers import (
    Pod,
    World,
    count,
    reasons,
    statuses,
    stored_ids,
    until_queued,
    wires,
)


def organizers(world: World, pod: Pod, n: int) -> tuple[list, list[Event]]:
    out, adds = [], []
    for i in range(n):
        org, add = world.organizer(pod, f"org {i}")
        out.append(org)
        adds.append(add)
    return out, adds


async def pod_of(make_ledger: OpenLedger, world: World, n: int) -> tuple[Ledger, list]:
    """A ledger holding a pod with ``n`` organizers, and those organizers."""
    pod, genesis = world.pod()
    orgs, adds = organizers(world, pod, n)
    ledger = await make_ledger(pod=pod.id)
    assert statuses(await ledger.append(wires(genesis + adds))) == ["stored"] * (n + 1)
    return ledger, orgs


async def queued(ledger: Ledger, submissions: list[list[bytes]]) -> list:
    """Append each submission while a transaction holds the writer, so that they all
    queue; then let the writer go and gather the outcomes (exceptions included)."""
    async with ledger._write:
        tasks = [asyncio.create_task(ledger.append(s)) for s in submissions]
        await until_queued(ledger, len(submissions))  # each checked, waiting for the writer
    return await asyncio.gather(*tasks, return_exceptions=True)


def need(org, title: str) -> Event:  # type: ignore[no-untyped-def]
    return org.write(kinds.RequestOpened(title=title, category="food"), "network")


async def test_queued_appends_share_a_transaction_with_their_own_results(
    make_ledger: OpenLedger, world: World
) -> None:
    pod, genesis = world.pod()
    orgs, adds = organizers(world, pod, 6)
    ledger = await make_ledger(pod=pod.id)
    assert statuses(await ledger.append(wires(genesis + adds))) == ["stored"] * 7
    first = [need(org, f"first {i}") for i, org in enumerate(orgs)]
    second = [need(org, f"second {i}") for i, org in enumerate(orgs)]
    need(orgs[0], "never sent")  # so the next one of this feed comes after a gap
    stray = need(orgs[0], "after the gap")
    forged = encode_wire(first[5].payload, bytes(64), first[5].body)
    submissions = [
        [first[0].to_wire()],
        [first[1].to_wire(), second[1].to_wire()],  # one feed, in order: both stored
        [first[2].to_wire(), first[2].to_wire()],  # a copy in the same submission
        [stray.to_wire()],  # a gap: appends are refused, never parked
        [forged],
        [second[3].to_wire()],  # needs first[3], which comes in a later submission
        [first[3].to_wire(), first[4].to_wire()],
    ]
    generation = ledger.generation
    async with ledger._write:  # a transaction in flight: everyone below queues
        tasks = [asyncio.create_task(ledger.append(s)) for s in submissions]
        await until_queued(ledger, len(submissions))  # each checked, waiting for the writer
    results = await asyncio.gather(*tasks)
    assert ledger.generation == generation + 1  # one transaction stored them all
    assert [statuses(r) for r in results] == [
        ["stored"], ["stored", "stored"], ["stored", "duplicate"],
        ["refused"], ["refused"], ["refused"], ["stored", "stored"],
    ]  # fmt: skip
    assert reasons(results[3]) == ["pending"]
    assert reasons(results[4]) == ["forged"]
    assert reasons(results[5]) == ["pending"]
    stored = await stored_ids(ledger)
    assert {e.id for e in (*first[:5], second[1])} <= stored
    assert not {stray.id, second[3].id, first[5].id} & stored
    assert ledger._appends == []


async def test_a_group_is_at_most_one_batch(make_ledger: OpenLedger, world: World) -> None:
    pod, genesis = world.pod()
    orgs, adds = organizers(world, pod, 5)
    ledger = await make_ledger(pod=pod.id, limits=Limits(batch_size=4))
    await ledger.append(wires(genesis + adds[:3]))
    await ledger.append(wires(adds[3:]))
    generation = ledger.generation
    async with ledger._write:
        tasks = [asyncio.create_task(ledger.append([need(o, "x").to_wire()])) for o in orgs]
        tasks.append(asyncio.create_task(ledger.append(wires([need(orgs[0], "y")] * 4))))
        await until_queued(ledger, len(tasks))
    results = await asyncio.gather(*tasks)
    assert [statuses(r) for r in results] == [["stored"]] * 5 + [["stored", *["duplicate"] * 3]]
    assert ledger.generation == generation + 3  # 4 events, then 1 (1 + 4 is over), then 4


async def test_an_append_cancelled_in_the_queue_is_not_stored(
    make_ledger: OpenLedger, world: World
) -> None:
    ledger, orgs = await pod_of(make_ledger, world, 3)
    needs = [need(org, f"need {i}") for i, org in enumerate(orgs)]
    async with ledger._write:
        tasks = [asyncio.create_task(ledger.append([e.to_wire()])) for e in needs]
        await until_queued(ledger, len(tasks))
        tasks[1].cancel()
        await asyncio.sleep(0)
    done = await asyncio.gather(*tasks, return_exceptions=True)
    assert isinstance(done[1], asyncio.CancelledError)
    assert statuses(done[0]) == statuses(done[2]) == ["stored"]  # type: ignore[arg-type]
    stored = await stored_ids(ledger)
    assert needs[0].id in stored and needs[2].id in stored and needs[1].id not in stored
    assert ledger._appends == []


async def test_a_failed_group_fails_each_append_and_stores_nothing(
    make_ledger: OpenLedger, world: World
) -> None:
    ledger, orgs = await pod_of(make_ledger, world, 3)
    before = await count(ledger, "events")
    # The disk "fills up": the writer cannot grow the file by even one page.
    await ledger.db.execute(f"PRAGMA max_page_count = {await _pages(ledger)}")
    big = [orgs[i].write(kinds.RequestOpened(title="x", category="food",
                                             details="y" * 3000), "network")
           for i in range(3)]  # fmt: skip
    done = await queued(ledger, [[e.to_wire()] for e in big])
    assert all(isinstance(d, StorageError) for d in done), done
    assert "append failed and was rolled back" in str(done[0])
    assert await count(ledger, "events") == before
    await ledger.db.execute("PRAGMA max_page_count = 1073741823")
    again = await asyncio.gather(*(ledger.append([e.to_wire()]) for e in big))
    assert [statuses(r) for r in again] == [["stored"]] * 3  # nothing half-done was kept


async def _pages(ledger) -> int:  # type: ignore[no-untyped-def]
    cur = await ledger.db.execute("PRAGMA page_count")
    (n,) = await cur.fetchone()
    await cur.close()
    return int(n)


async def test_a_lone_append_is_committed_by_itself(make_ledger: OpenLedger, world: World) -> None:
    pod, genesis = world.pod()
    ledger = await make_ledger(pod=pod.id)
    generation = ledger.generation
    assert statuses(await ledger.append(wires(genesis))) == ["stored"]
    assert ledger.generation == generation + 1 and ledger._appends == []


async def test_appends_with_an_event_in_common_are_not_grouped(
    make_ledger: OpenLedger, world: World
) -> None:
    """In one batch a copy shares the fate of the first: B's e2 would take A's refusal.
    Such appends go in separate transactions, each with the results it has on its own."""
    ledger, (org,) = await pod_of(make_ledger, world, 1)
    e1, e2 = need(org, "one"), need(org, "two")
    generation = ledger.generation
    a, b = await queued(ledger, [[e2.to_wire()], [e1.to_wire(), e2.to_wire()]])
    assert (statuses(a), reasons(a)) == (["refused"], ["pending"])  # e1 was not there yet
    assert statuses(b) == ["stored", "stored"]
    assert ledger.generation == generation + 1  # A stored nothing; B alone committed


def stall_next_transaction(ledger: Ledger) -> tuple[asyncio.Event, asyncio.Event]:
    """Hold the next transaction inside the writer (its group taken from the queue) until
    ``go`` is set; ``inside`` is set once it is there. A timing seam, nothing is faked:
    the transaction then runs as usual."""
    go, inside = asyncio.Event(), asyncio.Event()
    purge = ledger._purge_pending

    async def stalled() -> None:
        ledger._purge_pending = purge  # type: ignore[method-assign]
        inside.set()
        await go.wait()
        await purge()

    ledger._purge_pending = stalled  # type: ignore[method-assign]
    return go, inside


async def test_a_group_runs_to_its_end_when_its_appends_are_cancelled(
    make_ledger: OpenLedger, world: World
) -> None:
    """The follower is cancelled while its group's transaction runs, then the leader too.
    The transaction still runs to its end (a COMMIT under way finishes on aiosqlite's
    thread whatever the caller does; cut short, it told the others "rolled back" for
    events it had stored, and they were committed again as duplicates of themselves):
    both events are stored once, both callers see their cancellation, nothing is queued
    again, and a later append gets its own results."""
    ledger, orgs = await pod_of(make_ledger, world, 3)
    lead_need, follower_need, later = (need(o, f"need {i}") for i, o in enumerate(orgs))
    go, inside = stall_next_transaction(ledger)
    async with ledger._write:
        lead = asyncio.create_task(ledger.append([lead_need.to_wire()]))
        follower = asyncio.create_task(ledger.append([follower_need.to_wire()]))
        await until_queued(ledger, 2)
    await inside.wait()
    assert ledger._appends == []  # both taken by the stalled transaction
    follower.cancel()
    await asyncio.sleep(0)
    lead.cancel()
    await asyncio.sleep(0.05)
    assert not lead.done()  # the leader waits for its group's transaction
    go.set()
    outcomes = await asyncio.gather(lead, follower, return_exceptions=True)
    assert all(isinstance(o, asyncio.CancelledError) for o in outcomes)
    assert ledger._appends == []
    assert {lead_need.id, follower_need.id} <= await stored_ids(ledger)
    assert statuses(await ledger.append([later.to_wire()])) == ["stored"]


async def test_an_append_cancelled_in_a_failed_group_leaves_no_unseen_error(
    make_ledger: OpenLedger, world: World
) -> None:
    """The follower is cancelled while its group's transaction runs, and then that
    transaction fails: the leader gets the error, and the follower's copy of it is not
    left for asyncio to report as never retrieved."""
    ledger, orgs = await pod_of(make_ledger, world, 2)
    lead_need, follower_need = (
        o.write(kinds.RequestOpened(title="x", category="food", details="y" * 3000), "network")
        for o in orgs
    )
    await ledger.db.execute(f"PRAGMA max_page_count = {await _pages(ledger)}")  # disk full
    go, inside = stall_next_transaction(ledger)
    async with ledger._write:
        lead = asyncio.create_task(ledger.append([lead_need.to_wire()]))
        follower = asyncio.create_task(ledger.append([follower_need.to_wire()]))
        await until_queued(ledger, 2)
        _, follower_entry = ledger._appends
    await inside.wait()
    follower.cancel()
    await asyncio.sleep(0)
    go.set()
    lead_outcome, follower_outcome = await asyncio.gather(lead, follower, return_exceptions=True)
    assert isinstance(lead_outcome, StorageError)
    assert isinstance(follower_outcome, asyncio.CancelledError)
    # Its future was cancelled with it, so the failure was never set on it: an exception
    # set there would have no reader, and asyncio would log "never retrieved".
    assert follower_entry.done.cancelled()
