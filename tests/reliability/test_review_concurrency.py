"""Review: concurrency on one live node.

Appends, peer ingests, syncs, live streams, rebuilds, forgets and shutdowns running at the
same time on real nodes (real SQLite files, real aiohttp servers on 127.0.0.1, real
Ed25519 signatures); every wait is bounded by ``asyncio.timeout``. To make a race happen
every time, tests hold the ledger's own write lock, keep its verify threads busy, or make
one fold wait on an event: timing seams only, nothing of storage, network or crypto is
faked.

Tests marked "(passes: ...)" pin behaviour found correct. The others fail because of the
bug their docstrings describe: a sync on a live link taken for a restored peer; a
member.join stored without its member key when a request is cut at shutdown; calls that
reach a closed ledger refused with aiosqlite's ValueError; verify reporting a sound log as
damaged when it runs beside a transaction that rolls back.
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from podlink.ledger import projections, queries
from podlink.ledger.authoring import Author
from podlink.ledger.errors import LedgerError
from podlink.ledger.ledger import Ledger, Limits
from podlink.node.app import create_app
from podlink.node.client import ClientError
from podlink.protocol import boxes, kinds
from podlink.protocol.envelope import Event
from podlink.protocol.keys import Keypair
from podlink.protocol.text import b64e
from tests.ledger.helpers import Pod, World, statuses, until_queued, wires
from tests.ledger.scenario import Scenario, deliveries
from tests.node.helpers import PodNode, wait_converged, wait_for, wait_linked

LIMIT_S = 20.0  # no single step of these tests may take longer: a deadlock fails, never hangs


async def _peer(x: PodNode, y: PodNode) -> None:
    await x.client.post("/v1/peers", {"url": y.url, "key": y.key})
    await y.client.post("/v1/peers", {"url": x.url, "key": x.key})


# ---------------------------------------------------------------- gossip: sync while live


async def test_a_sync_while_streaming_is_not_taken_for_a_restored_peer(
    network: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """``podlink sync`` on a live link makes the stream's next page look like a restore.

    The stream (node/gossip.py, ``PeerLink.stream``) reads a page, then waits for the
    link's lock, which a concurrent ``pull`` (``podlink sync``, ``Gossip.sync_all``) holds.
    The pull fetches a newer page and moves the cursor past that page's ``head``; when the
    stream gets the lock, ``_take`` sees ``page.head < record.cursor`` and logs "store
    restored (epoch or head moved back); repairing", runs a repair (heads and feeds
    requests to a peer that restored nothing), and saves the stale page's head as the
    cursor: the cursor moves back. Neither store was restored.

    Made deterministic by holding Birch's write lock: the stream is stuck storing page 1
    while the sync queues behind it and Alder stores two more events, sent as pages 2, 3.
    Without any seam, three nodes in a ring with organizers writing and a few syncs logged
    this warning five times in 3 s."""
    caplog.set_level(logging.WARNING, logger="podlink.gossip")
    a, b = await network(2)
    await _peer(a, b)
    await wait_linked([(a, b)])
    link = b.node.gossip.links[a.pod]  # type: ignore[attr-defined]
    author = await a.author()

    async def write(title: str) -> None:
        event = author.write(kinds.RequestOpened(title=title, category="food"), "network")
        assert (await a.client.submit([event]))[0]["status"] == "stored"

    async with asyncio.timeout(LIMIT_S):
        async with b.ledger._write:  # Birch cannot store: its stream stalls on page 1
            await write("one")
            await wait_for(lambda: _true(link._lock.locked()), what="stream taking page 1")
            sync = asyncio.create_task(b.client.post("/v1/sync"))
            await asyncio.sleep(0.2)  # the sync waits for the link's lock
            await write("two")
            await asyncio.sleep(0.3)  # Alder streams it as a page of its own
            await write("three")
            await asyncio.sleep(0.3)
        report = await sync
        assert report["peers"][0]["ok"] is True

        async def settled() -> bool:
            return link.record.cursor == await a.event_count() and not link._lock.locked()

        await wait_for(settled, what="Birch caught up with Alder")
        await asyncio.sleep(0.3)  # the stream takes the pages it read meanwhile
    restored = [r.getMessage() for r in caplog.records if "store restored" in r.getMessage()]
    assert restored == [], restored
    assert link.record.cursor == await a.event_count()


async def _true(value: bool) -> bool:
    return value


# ---------------------------------------------------------------- two nodes, both ways


async def _append_many(node: PodNode, prefix: str, n: int, writers: int) -> list[str]:
    """``n`` requests written by ``writers`` organizer keys of ``node`` at once, each
    submitted on its own as the CLI does; returns the ids acknowledged as stored."""
    pod_author = await node.author()
    keys = [Keypair.generate() for _ in range(writers)]
    for i, key in enumerate(keys):
        add = pod_author.write(kinds.OrganizerAdded(key=key.public, name=f"{prefix}{i}"),
                               "network")  # fmt: skip
        assert (await node.client.submit([add]))[0]["status"] == "stored"
    acked: list[str] = []

    async def one(key: Keypair, count: int) -> None:
        client = node.client_for(key)
        try:
            author = await client.author()
            for j in range(count):
                ev = author.write(
                    kinds.RequestOpened(title=f"{prefix} {j}", category="food"), "network"
                )
                results = await client.submit([ev])
                assert results[0]["status"] == "stored", results
                acked.append(ev.id_text)
        finally:
            await client.close()

    await asyncio.gather(*(one(k, n // writers) for k in keys))
    return acked


async def _same_state(nodes: list[PodNode]) -> bool:
    ids = [await n.event_ids() for n in nodes]
    return all(i == ids[0] for i in ids)


async def test_two_nodes_pulling_each_other_while_both_append_converge(network: Any) -> None:
    """(passes: pins behaviour) Alder and Birch stream from each other, four organizers
    append on each side at once, and ``podlink sync`` runs on both meanwhile: both end
    with the same events and equal read models, sound logs, and live state = rebuild."""
    a, b = await network(2)
    await _peer(a, b)
    await wait_linked([(a, b)])
    async with asyncio.timeout(LIMIT_S * 2):

        async def syncs(node: PodNode) -> None:
            for _ in range(4):
                await node.client.post("/v1/sync")
                await asyncio.sleep(0.05)

        acked_a, acked_b, _, _ = await asyncio.gather(
            _append_many(a, "alder", 40, 4), _append_many(b, "birch", 40, 4), syncs(a), syncs(b)
        )
        await wait_for(lambda: _same_state([a, b]), within=15, what="equal event sets")
        await wait_converged([a, b])
    ids = await a.event_ids()
    assert set(acked_a) | set(acked_b) <= ids
    for node in (a, b):
        assert (await node.ledger.verify()).ok
    live = await a.ledger.dump()
    assert live == await b.ledger.dump()
    for node in (a, b):
        await node.ledger.rebuild()
        assert await node.ledger.dump() == live


# ---------------------------------------------------------------- one ledger, everything at once


def _own_pod(world: World, organizers: int) -> tuple[Pod, list[Author], list[Event]]:
    pod, setup = world.pod("Own")
    orgs = []
    for i in range(organizers):
        org, add = world.organizer(pod, f"org {i}")
        orgs.append(org)
        setup.append(add)
    return pod, orgs, setup


@pytest.mark.parametrize("seed", range(2))
async def test_appends_ingests_rebuilds_purges_and_forgets_at_once(
    tmp_path: Path, seed: int
) -> None:
    """(passes: pins behaviour) Six organizers append (group commits), one of them adds,
    updates and forgets members, a peer delivers a shuffled history with gaps in small
    batches (pending parked and released), while rebuild, purge_pending and verify run
    in a loop. Every acknowledged append is stored, the log verifies, live state equals
    a rebuild and equals a ledger that took the same events one call at a time."""
    rng = random.Random(seed)
    scenario = Scenario.build(rng, pods=2, steps=60)
    batches = deliveries(scenario.events, random.Random(seed))
    world = World()
    pod, orgs, setup = _own_pod(world, 6)
    limits = Limits(batch_size=5)
    led = await Ledger.open(tmp_path / "pod.db", limits=limits)
    ref = await Ledger.open(tmp_path / "ref.db", limits=limits)
    peer = b64e(Keypair.generate().public)
    appended: list[bytes] = []
    try:
        for ledger in (led, ref):
            await ledger.set_pod(pod.id)
        assert set(statuses(await led.append(wires(setup)))) == {"stored"}
        appended += wires(setup)
        stop = asyncio.Event()

        async def organizer(org: Author, i: int) -> None:
            for j in range(12):
                if i == 0 and j % 3 == 0:
                    key = boxes.new_member_key()
                    details = kinds.encode_body(kinds.MemberDetails(name=f"Bea {j}"))
                    join = org.write(kinds.MemberJoined(box=boxes.lock(key, details)), "pod")
                    forget = org.write(kinds.MemberForgotten(), "pod", [join.id])
                    for ev in (join, forget):
                        assert statuses(await led.append([ev.to_wire()])) == ["stored"]
                        appended.append(ev.to_wire())
                        if ev is join:
                            await led.put_member_key(join.id, key)
                    continue
                ev = org.write(kinds.RequestOpened(title=f"{i}.{j}", category="food"), "network")
                assert statuses(await led.append([ev.to_wire()])) == ["stored"]
                appended.append(ev.to_wire())

        async def peer_delivers() -> None:
            for batch in batches:
                await led.ingest(batch, source=peer)

        async def maintenance() -> None:
            while not stop.is_set():
                await led.rebuild()
                await led.purge_pending()
                assert (await led.verify()).ok
                await asyncio.sleep(0.01)

        async with asyncio.timeout(LIMIT_S):
            upkeep = asyncio.create_task(maintenance())
            await asyncio.gather(peer_delivers(), *(organizer(o, i) for i, o in enumerate(orgs)))
            stop.set()
            await upkeep
        assert await _count(led, "member_keys") == 0  # every member was forgotten
        for batch in batches:  # the peer resends everything, as after a reconnect
            await led.ingest(batch, source=peer)
        for wire in appended:
            assert statuses(await ref.append([wire])) == ["stored"]
        for batch in batches:
            await ref.ingest(batch, source=peer)
        assert (await led.verify()).ok
        live = await led.dump()
        assert live == await ref.dump()
        await led.rebuild()
        assert await led.dump() == live
    finally:
        await led.close()
        await ref.close()


async def _count(ledger: Ledger, table: str) -> int:
    found = await ledger.db.execute_fetchall(f"SELECT count(*) FROM {table}")
    return next(iter(found))[0]


# ---------------------------------------------------------------- shutdown mid-request


async def _serve(node: PodNode, shutdown_timeout: float) -> None:
    """Start ``node`` as PodNode.start does, with a shorter shutdown grace for handlers
    (``podlink serve`` gives them 10 s, then cancels them)."""
    node.app = await create_app(node.config)
    runner = web.AppRunner(node.app, shutdown_timeout=shutdown_timeout)
    await runner.setup()
    await web.TCPSite(runner, node.config.host, node.config.port).start()
    node.runner = runner


@pytest.mark.parametrize("cut", ["before the key", "before the append"])
async def test_a_join_stored_by_a_request_cut_at_shutdown_keeps_its_member_key(
    network: Any, cut: str
) -> None:
    """A member.join must never be stored while the member key sent with it is lost.

    ``POST /v1/events`` (node/organizer_api.py, ``submit_events``) appended the events in
    one transaction, then stored each member key in another (``Ledger.put_member_key``).
    The shutdown grace (``shutdown_timeout``) ended and aiohttp cancelled the handler
    between the two: the join was stored, its key never was, and the member showed with
    no details forever (the CLI makes that key and sends it once). Now the key goes
    first: a request cut anywhere leaves the join with its key, or no join (a key whose
    join never came protects nothing).

    Made deterministic by holding the write lock at each step: a long peer batch or a
    rebuild holds it the same way."""
    [node] = await network(1, start=False)
    await _serve(node, shutdown_timeout=0.3)
    ledger = node.ledger
    author = await node.author()
    key = boxes.new_member_key()
    details = kinds.encode_body(kinds.MemberDetails(name="Agatha", contact="555 0134"))
    join = author.write(kinds.MemberJoined(box=boxes.lock(key, details)), "pod")
    async with asyncio.timeout(LIMIT_S):
        await ledger._write.acquire()
        try:
            submit = asyncio.create_task(node.client.submit([join], {join.id: key}))
            await wait_for(lambda: _true(len(ledger._write._waiters or ()) == 1),
                           what="the member key waiting for the writer")  # fmt: skip
            if cut == "before the append":
                ledger._write.release()  # the key goes in; then the append waits for us
                await ledger._write.acquire()
                await wait_for(lambda: _true(len(ledger._appends) == 1), what="the append")
            runner, node.runner = node.runner, None
            assert runner is not None
            stop = asyncio.create_task(runner.cleanup())  # as on SIGTERM
            with pytest.raises(ClientError):
                await submit  # the node stopped before answering
        finally:
            ledger._write.release()
        await stop
    await node.stop()  # its client
    await node.start()
    stored = join.id_text in await node.event_ids()
    members = await node.client.get("/v1/members")
    key_kept = await queries.member_key(node.ledger.reader, join.id)
    assert not stored or key_kept == key, (stored, members)


# ---------------------------------------------------------------- close with callers waiting


async def test_calls_queued_behind_close_are_refused_by_the_ledger_not_by_aiosqlite(
    tmp_path: Path,
) -> None:
    """Appends and an ingest that reach the writer after ``Ledger.close`` took it fail
    with aiosqlite's ``ValueError: Connection closed`` and the shut executor's
    ``RuntimeError: cannot schedule new futures after shutdown`` (ledger/ledger.py,
    ``_close`` then ``_commit_append`` / ``prepare``): not a LedgerError, so the node
    answers a request that was still running at shutdown (a client that gave up is not
    cancelled by aiohttp) with a 500 and an "unexpected error" traceback. What was
    acknowledged before is durable (checked below); the refusal should say "closed".

    The calls are made while close waits for a transaction in flight (the test holds
    the writer), so they queue behind it."""
    world = World()
    pod, orgs, setup = _own_pod(world, 3)
    other, other_setup = world.pod("Oak")
    backlog = other_setup + [
        other.author.write(kinds.RequestOpened(title=f"n{i}", category="food"), "network")
        for i in range(300)
    ]
    led = await Ledger.open(tmp_path / "pod.db", limits=Limits(batch_size=100))
    await led.set_pod(pod.id)
    assert set(statuses(await led.append(wires(setup)))) == {"stored"}
    early = [o.write(kinds.RequestOpened(title="early", category="food"), "network")
             for o in orgs]  # fmt: skip
    late = [o.write(kinds.RequestOpened(title="late", category="food"), "network")
            for o in orgs]  # fmt: skip
    async with asyncio.timeout(LIMIT_S):
        async with led._write:  # a transaction in flight
            first = [asyncio.create_task(led.append([e.to_wire()])) for e in early]
            await until_queued(led, len(first))  # queued before close: acknowledged below
            closing = asyncio.create_task(led.close())
            await asyncio.sleep(0.05)
        # The early group's transaction takes them from the queue and runs.
        await wait_for(lambda: _true(not led._appends), every=0, what="the group taken")
        after = [asyncio.create_task(led.append([e.to_wire()])) for e in late]
        after.append(asyncio.create_task(led.ingest(wires(backlog), source="peer")))
        await closing
        acked = await asyncio.gather(*first)
        outcomes = await asyncio.gather(*after, return_exceptions=True)
    assert [statuses(r) for r in acked] == [["stored"]] * len(early)
    async with await Ledger.open(tmp_path / "pod.db") as again:
        held = {r[0] for r in await again.reader.execute_fetchall("SELECT id FROM events")}
    assert {e.id for e in early} <= held
    for event, outcome in zip(late, outcomes, strict=False):
        assert isinstance(outcome, BaseException) or event.id in held
    unclean = [repr(o) for o in outcomes if not isinstance(o, LedgerError | list)]
    assert unclean == [], unclean


# ---------------------------------------------------------------- verify during a rollback


async def test_verify_during_a_rolled_back_ingest_reports_no_false_damage(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``Ledger.verify`` reads the writer's connection, outside the write lock
    (ledger/ledger.py, ``verify``: ``rows(self.db, ...)``), so it sees rows of a
    transaction in flight. When that transaction rolls back (a peer link cancelled by
    ``podlink peer remove``, a sync timing out, a full disk) and the next one stores other
    events at the same positions, verify has checked events that never were, and reports
    "chain broken" for a sound log. ``POST /v1/verify`` and ``podlink log --verify`` run
    it on a live node, and docs/operations.md says to restore a backup when it reports
    problems. Expected: verify reads committed data (the reader) and finds nothing.

    Seams: the batch's fold waits on an event (after its rows are written), and the
    ledger's own verify threads are kept busy while the rollback and the next commit run."""
    world = World()
    pod, orgs, setup = _own_pod(world, 1)
    filler = [orgs[0].write(kinds.RequestOpened(title=f"f{i}", category="food"), "network")
              for i in range(1999 - len(setup))]  # fmt: skip
    other, other_setup = world.pod("Oak")
    _, third_setup = world.pod("Pine")
    feed = [other.author.write(kinds.RequestOpened(title=f"o{i}", category="food"), "network")
            for i in range(4)]  # fmt: skip
    led = await Ledger.open(tmp_path / "pod.db")
    try:
        await led.set_pod(pod.id)
        assert set(statuses(await led.append(wires(setup + filler)))) == {"stored"}
        assert led.next_pos == 2000
        gate = asyncio.Event()
        fold = projections.refold

        async def stalled_fold(*args: Any, **kwargs: Any) -> bool:
            await gate.wait()
            return await fold(*args, **kwargs)

        monkeypatch.setattr(projections, "refold", stalled_fold)
        busy = threading.Event()
        async with asyncio.timeout(LIMIT_S):
            # Oak's genesis and feed, rows 2000-2004, written but not committed
            first = asyncio.create_task(led.ingest(wires(other_setup + feed), source="peer"))
            await wait_for(lambda: _true(led.next_pos == 2000 + 1 + len(feed)), every=0.01,
                           what="the batch's rows written")  # fmt: skip
            loop = asyncio.get_running_loop()
            blockers = [loop.run_in_executor(led.executor, busy.wait) for _ in range(led.workers)]
            check = asyncio.create_task(led.verify())
            await asyncio.sleep(0.2)  # its first page read, its signatures queued
            first.cancel()  # rolled back
            with pytest.raises(asyncio.CancelledError):
                await first
            monkeypatch.setattr(projections, "refold", fold)
            # Another pod's genesis comes first now: Oak's events move one position on.
            again = await led.ingest(wires([*third_setup, *other_setup, *feed]), source="peer")
            assert set(statuses(again)) == {"stored"}
            busy.set()
            await asyncio.gather(*blockers)
            report = await check
        assert (await led.verify()).ok  # the log itself is sound
        assert report.ok, report.problems
    finally:
        await led.close()
