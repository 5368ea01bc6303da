"""Review: crash, cancellation, failed-transaction and worker-process corners of the ledger.

Real SQLite files under tmp_path, real signatures, real worker processes; nothing of the
storage or the crypto is faked. Cancellations are injected by cancelling a task after a
given number of event-loop iterations, swept over a range so that they land on different
awaits.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import sqlite3
from pathlib import Path

import psutil
import pytest

from podlink.ledger import projections
from podlink.ledger.ledger import Ledger, Limits
from podlink.ledger.schema import MIGRATIONS, SCHEMA_VERSION
from podlink.protocol import kinds
from podlink.protocol.envelope import Event
from tests.ledger.helpers import World, query, statuses, stored_ids, until_queued, wires
from tests.ledger.scenario import Scenario, deliveries

# ---------------------------------------------------------------- helpers


def pod_events(world: World, n: int, organizers: int = 2) -> tuple[list[Event], list[Event]]:
    """A pod's genesis and roster.adds, then ``n`` requests spread over its organizers."""
    pod, setup = world.pod()
    orgs = []
    for i in range(organizers):
        org, add = world.organizer(pod, f"org {i}")
        orgs.append(org)
        setup.append(add)
    needs = []
    for i in range(n):
        world.tick()
        needs.append(orgs[i % organizers].write(
            kinds.RequestOpened(title=f"need {i}", category="food"), "network"))  # fmt: skip
    return setup, needs


async def spin(n: int) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


def verifier_children() -> list[psutil.Process]:
    """Live verify worker processes started by this test process."""
    out = []
    for child in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if "podlink.ledger.verifier" in " ".join(child.cmdline()) and child.status() != (
                psutil.STATUS_ZOMBIE
            ):
                out.append(child)
    return out


def reap(children: list[psutil.Process]) -> None:
    for child in children:
        with contextlib.suppress(psutil.Error):
            child.kill()
            child.wait(5)


async def caches_match_file(ledger: Ledger) -> None:
    """The in-memory caches agree with the file."""
    top = (await query(ledger, "SELECT max(pos) FROM events"))[0][0] or 0
    assert ledger.next_pos == top + 1 or ledger._stale_caches
    for (author, lane), (seq, id_, ts) in ledger.heads.items():
        assert (await query(
            ledger, "SELECT seq, id, ts FROM feeds WHERE author = ? AND lane = ?", (author, lane)
        )) == [(seq, id_, ts)]  # fmt: skip
    counts = dict(await query(ledger, "SELECT source, count(*) FROM pending GROUP BY 1"))
    assert dict(ledger.pending_by_source) == counts or ledger._stale_caches


async def roster_matches_file(ledger: Ledger) -> None:
    on_file = await projections.load_roster(ledger.db)

    def norm(r):  # type: ignore[no-untyped-def]
        return ({p: sorted(map(repr, ts)) for p, ts in r.tenures.items() if ts},
                {p: ks for p, ks in r.named.items() if ks})  # fmt: skip

    assert norm(ledger.roster) == norm(on_file)


# ---------------------------------------------------------------- group commit


async def test_group_members_of_a_leader_cancelled_at_commit_get_their_own_results(
    tmp_path: Path,
) -> None:
    """Eight appends queue and go in one group transaction, run by the first one's task
    (the leader), which is cancelled after n loop iterations. When the cancellation lands
    while COMMIT runs (the fsync: the longest await of the transaction), the commit still
    completes on aiosqlite's thread, but _commit_queued takes it for rolled back and puts
    the seven others back in the queue; they are committed again and each gets
    ``duplicate`` for an event it submitted once, for the first time, and that its own
    group stored. Expected: ``stored`` (or an error), never ``duplicate``."""
    world = World()
    pod, setup = world.pod()
    orgs = []
    for i in range(8):
        org, add = world.organizer(pod, f"org {i}")
        orgs.append(org)
        setup.append(add)
    ledger = await Ledger.open(tmp_path / "pod.db")
    try:
        await ledger.set_pod(pod.id)
        assert set(statuses(await ledger.append(wires(setup)))) == {"stored"}
        problems = []
        for n in range(0, 30):
            events = [o.write(kinds.RequestOpened(title=f"{n}", category="food"), "network")
                      for o in orgs]  # fmt: skip
            async with ledger._write:  # a transaction in flight: all eight queue
                tasks = [asyncio.create_task(ledger.append([e.to_wire()])) for e in events]
                await until_queued(ledger, 8)
            await spin(n)
            tasks[0].cancel()  # the leader: its task runs the group's transaction
            done = await asyncio.gather(*tasks, return_exceptions=True)
            stored = await stored_ids(ledger)
            for i, (event, outcome) in enumerate(zip(events, done, strict=True)):
                if isinstance(outcome, BaseException):
                    continue
                if statuses(outcome) != ["stored"]:
                    problems.append((n, i, statuses(outcome), event.id in stored))
            # An organizer whose event was lost with the cancellation sends it again.
            for event in events:
                if event.id not in stored:
                    assert statuses(await ledger.append([event.to_wire()])) == ["stored"]
            assert ledger._appends == []
        assert problems == [], f"(n, append, results, stored): {problems[:5]}"
    finally:
        await ledger.close()


# ---------------------------------------------------------------- cancelled ingests


@pytest.mark.parametrize("seed", range(6))
async def test_ingests_cancelled_anywhere_leave_a_consistent_ledger(
    tmp_path: Path, seed: int
) -> None:
    scenario = Scenario.build(random.Random(seed), pods=2, steps=80)
    batches = [b[i : i + 6] for b in deliveries(scenario.events, random.Random(1))
               for i in range(0, len(b), 6)]  # fmt: skip
    limits = Limits(batch_size=4)  # several transactions per call, prepared ahead
    ref = await Ledger.open(tmp_path / "ref.db", limits=limits)
    led = await Ledger.open(tmp_path / "pod.db", limits=limits)
    try:
        for ledger in (ref, led):
            await ledger.set_pod(scenario.pods[0].id)
        for batch in batches:
            await ref.ingest(batch)
        acked: set[str] = set()
        rng = random.Random(seed)
        cancelled = 0
        for i, batch in enumerate(batches):
            task = asyncio.create_task(led.ingest(batch))
            await spin(int(12_000 ** rng.random()))  # log-uniform: early awaits too
            task.cancel()
            try:
                acked |= {r.id for r in await task if r.ok and r.id}
            except asyncio.CancelledError:
                cancelled += 1
            if i % 5 == 0:
                await caches_match_file(led)
        for _ in range(2):  # everything again, as a peer would resend it
            for batch in batches:
                for r in await led.ingest(batch):
                    assert r.reason not in ("invalid", "forged", "fork"), (r, i)
        from podlink.protocol.text import b64e

        ids = {b64e(i) for i in await stored_ids(led)}
        assert acked <= ids
        await assert_converged(led, ref)
    finally:
        await ref.close()
        await led.close()


async def assert_converged(led: Ledger, ref: Ledger) -> None:
    """``led`` holds what ``ref`` holds, is sound, equals its own rebuild, and its caches
    and roster in memory match its file."""
    assert await stored_ids(led) == await stored_ids(ref)
    assert (await led.verify()).ok
    live = await led.dump()
    assert live == await ref.dump()
    await led.rebuild()
    assert await led.dump() == live
    await caches_match_file(led)
    await roster_matches_file(led)


async def page_count(ledger: Ledger) -> int:
    return (await query(ledger, "PRAGMA page_count"))[0][0]


@pytest.mark.parametrize("seed", range(8))
async def test_ingests_failing_on_a_full_disk_leave_a_consistent_ledger(
    tmp_path: Path, seed: int
) -> None:
    from podlink.ledger.errors import StorageError

    scenario = Scenario.build(random.Random(100 + seed), pods=2, steps=80)
    batches = [b[i : i + 6] for b in deliveries(scenario.events, random.Random(seed))
               for i in range(0, len(b), 6)]  # fmt: skip
    limits = Limits(batch_size=4)
    ref = await Ledger.open(tmp_path / "ref.db", limits=limits)
    led = await Ledger.open(tmp_path / "pod.db", limits=limits)
    rng = random.Random(seed)
    try:
        for ledger in (ref, led):
            await ledger.set_pod(scenario.pods[0].id)
        for batch in batches:
            await ref.ingest(batch)
        failed = 0
        for batch in batches:
            if rng.random() < 0.6:  # the disk is full: at most 0-2 more pages
                pages = await page_count(led) + rng.randrange(0, 3)
                await led.db.execute(f"PRAGMA max_page_count = {pages}")
            try:
                await led.ingest(batch)
            except StorageError:
                failed += 1
            await led.db.execute("PRAGMA max_page_count = 1073741823")
            await caches_match_file(led)
        for _ in range(2):
            for batch in batches:
                for r in await led.ingest(batch):
                    assert r.reason not in ("invalid", "forged", "fork"), r
        await assert_converged(led, ref)
    finally:
        await ref.close()
        await led.close()


# ---------------------------------------------------------------- old schema


def downgrade_to_v5(live: Path, old: Path) -> None:
    """A file as podlink at schema 5 left it: MIGRATIONS[:5] applied, the same log and
    local state, the read model as V5 kept it (roster keyed by its start time)."""
    from podlink.ledger.store import _statements

    con = sqlite3.connect(old, isolation_level=None)
    for script in MIGRATIONS[:5]:
        for statement in _statements(script):
            con.execute(statement)
    con.execute("PRAGMA user_version=5")
    con.execute("ATTACH ? AS live", (str(live),))
    for table in ("meta", "events", "feeds", "forks", "pending", "member_keys", "peers",
                  "invites", "pods", "requests", "claims", "fulfilments", "offers",
                  "members", "resources"):  # fmt: skip
        # The columns V5 had (later versions add some, e.g. V7's reasons).
        names = ", ".join(f'"{r[1]}"' for r in con.execute(f"PRAGMA main.table_info({table})"))
        con.execute(f"INSERT INTO main.{table} ({names}) SELECT {names} FROM live.{table}")
    con.execute("INSERT OR IGNORE INTO main.roster SELECT * FROM live.roster")
    con.execute("DETACH live")
    con.close()


@pytest.mark.parametrize("seed", range(3))
async def test_a_schema_5_file_opens_to_the_same_state(tmp_path: Path, seed: int) -> None:
    """Passing corner: a V5 file (events in it) opens at V6 with the dump of a fresh
    ledger fed the same events, also when the open is cancelled during its rebuild."""
    scenario = Scenario.build(random.Random(200 + seed), pods=2, steps=150)
    live_path = tmp_path / "live.db"
    async with await Ledger.open(live_path) as live:
        await live.set_pod(scenario.pods[0].id)
        for batch in deliveries(scenario.events, random.Random(seed)):
            await live.ingest(batch)
        want = await live.dump()
        events = await stored_ids(live)
    old = tmp_path / "old.db"
    downgrade_to_v5(live_path, old)
    for n in (3, 30, 300, 3000):  # opens cancelled at different awaits of the upgrade
        task = asyncio.create_task(Ledger.open(old))
        await spin(n)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await (await task).close()
    async with await Ledger.open(old) as upgraded:
        assert await query(upgraded, "PRAGMA user_version") == [(SCHEMA_VERSION,)]
        assert await query(upgraded, "SELECT key FROM meta WHERE key = 'rebuild'") == []
        assert await stored_ids(upgraded) == events
        assert await upgraded.dump() == want
        await roster_matches_file(upgraded)


# ---------------------------------------------------------------- the roster in memory


async def test_a_rolled_back_roster_add_is_not_left_in_the_roster_in_memory(
    tmp_path: Path,
) -> None:
    """A batch [roster.add K, large request] fails on a full disk and is rolled back. The
    roster in memory (``Ledger.roster``: node.runtime.roles_of reads it to grant the
    organizer role) keeps K as an active organizer although nothing of the batch was
    stored, until some later ingest happens to reload it."""
    from podlink.ledger.errors import StorageError

    world = World()
    pod, setup = world.pod()
    ana, add_ana = world.organizer(pod, "Ana")
    ledger = await Ledger.open(tmp_path / "pod.db")
    try:
        await ledger.set_pod(pod.id)
        assert statuses(await ledger.ingest(wires([*setup, add_ana]))) == ["stored"] * 2
        kay, add_kay = world.organizer(pod, "Kay")
        big = [ana.write(kinds.RequestOpened(title="x", category="food", details="y" * 3000),
                         "network") for _ in range(4)]  # fmt: skip
        await ledger.db.execute(f"PRAGMA max_page_count = {await page_count(ledger) + 1}")
        with pytest.raises(StorageError):  # 12 kB of bodies, room for one more 4 kB page
            await ledger.ingest(wires([add_kay, *big]))
        await ledger.db.execute("PRAGMA max_page_count = 1073741823")
        assert add_kay.id not in await stored_ids(ledger)  # rolled back
        on_file = await projections.load_roster(ledger.db)
        assert kay.keypair.public not in on_file.active_keys(pod.id)
        in_memory = kay.keypair.public in ledger.roster.active_keys(pod.id)
        assert not in_memory, "the roster in memory names an organizer that was rolled back"
        # Naming is applied as a batch goes (test_roster_scale): it must be taken back
        # too, or Kay's events would be stored on the strength of an unstored roster.add.
        assert not ledger.roster.is_named(pod.id, kay.keypair.public)
        world.tick()
        by_kay = kay.write(kinds.OfferOpened(title="soup", category="food", details="a pot"),
                           "network")  # fmt: skip
        assert statuses(await ledger.ingest(wires([by_kay]))) == ["pending"]
        assert statuses(await ledger.ingest(wires([add_kay]))) == ["stored"]
        assert by_kay.id in await stored_ids(ledger)  # released once Kay is named
    finally:
        await ledger.close()


async def test_a_cancelled_rebuild_leaves_the_roster_in_memory_as_on_file(
    tmp_path: Path,
) -> None:
    """rebuild() replaces ``Ledger.roster`` with an empty one and refolds pod by pod in
    its transaction; cancelled (or failed) there, the transaction rolls back but the
    ledger keeps the half-folded roster in memory: the pod's organizers are missing from
    ``roster.active_keys`` (node.runtime.roles_of) until some later ingest reloads it."""
    scenario = Scenario.build(random.Random(7), pods=3, steps=60)
    ledger = await Ledger.open(tmp_path / "pod.db")
    try:
        await ledger.set_pod(scenario.pods[0].id)
        for batch in deliveries(scenario.events, random.Random(7)):
            await ledger.ingest(batch)
        on_file = await projections.load_roster(ledger.db)
        pods = [p.id for p in scenario.pods]
        want = {p: on_file.active_keys(p) for p in pods}
        assert all(want.values())
        wrong = []
        for n in sorted({int(1.2**i) for i in range(60)}):
            task = asyncio.create_task(ledger.rebuild())
            await spin(n)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            got = {p: ledger.roster.active_keys(p) for p in pods}
            if got != want:
                wrong.append(n)
        assert wrong == [], f"roster in memory is not the file's after rebuild cancelled at {wrong}"
    finally:
        await ledger.close()


# ---------------------------------------------------------------- worker processes


async def test_a_cancelled_close_still_stops_the_verify_workers(tmp_path: Path) -> None:
    """close() cancelled at any of its awaits (a shutdown with a deadline) returns with the
    worker processes still running and the writer's connection (a non-daemon thread)
    still open: nothing retries the close."""
    leaks = []
    for n in range(1, 12):  # n = 0 would cancel close() before it starts
        ledger = await Ledger.open(tmp_path / f"pod{n}.db")
        assert await ledger.verifier.start()
        workers = ledger.verifier.pids
        task = asyncio.create_task(ledger.close())
        await spin(n)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        alive = [p for p in workers if psutil.pid_exists(p)
                 and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]  # fmt: skip
        writer_open = False
        with contextlib.suppress(ValueError):  # aiosqlite: "Connection closed"
            writer_open = await query(ledger, "SELECT 1") == [(1,)]
        if alive or writer_open:
            leaks.append((n, len(alive), writer_open))
        await ledger.close()  # the test's own clean-up
    assert leaks == [], f"(n, workers alive, writer open) after a cancelled close: {leaks}"


# ---------------------------------------------------------------- pending accounting


async def test_a_cancelled_purge_leaves_the_pending_counts_as_on_file(tmp_path: Path) -> None:
    """purge_pending() (and the purge an ingest runs once a minute, _purge_pending) deletes
    the expired rows, commits, then recounts ``pending_by_source``. Cancelled between the
    two, the count in memory stays at the old value while the table is empty, and ingest
    enforces ``pending_per_source`` with that count: the source's next parked event is
    refused ``rate-limited`` although nothing of it waits."""
    world = World()
    pod, setup = world.pod()
    ana, add_ana = world.organizer(pod, "Ana")
    needs = [ana.write(kinds.RequestOpened(title=f"{i}", category="food"), "network")
             for i in range(7)]  # fmt: skip
    wrong = []
    for n in range(0, 30):
        ledger = await Ledger.open(tmp_path / f"pod{n}.db", limits=Limits(pending_per_source=5))
        try:
            await ledger.ingest(wires([*setup, add_ana]))
            # needs[1:6] wait for needs[0]: five parked, the source's limit reached.
            assert statuses(await ledger.ingest(wires(needs[1:6]))) == ["pending"] * 5
            task = asyncio.create_task(ledger.purge_pending(now_ms=2**62))  # all expired
            await spin(n)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            on_file = (await query(ledger, "SELECT count(*) FROM pending"))[0][0]
            (later,) = await ledger.ingest([needs[6].to_wire()])  # also waits for needs[0]
            if on_file < 5 and later.status != "pending":
                wrong.append((n, ledger.pending_count("peer"), on_file, later.reason))
        finally:
            await ledger.close()
    assert wrong == [], f"(n, pending in memory, pending on file, refusal): {wrong[:4]}"


# ---------------------------------------------------------------- after a forget


async def test_an_ingest_cancelled_while_the_wal_is_shredded_keeps_the_heads_true(
    tmp_path: Path,
) -> None:
    """commit() runs Ledger.shred_wal() after a batch that forgot a member: after its
    transaction committed, before ``after_commit``. Cancelled there (or failing there),
    the batch is stored but the feed heads cached in memory stay at the old heads, with
    nothing marking them stale (forget_caches is not called): the pod's next event on
    that feed is taken for one after a gap and refused ``pending`` (an ingest would park
    it for ever), although its predecessor is stored."""
    import nacl.secret

    wrong = []
    for n in sorted({int(1.15**i) for i in range(72)}):
        world = World()
        pod, setup = world.pod()
        key = bytes(32)
        box = bytes(nacl.secret.SecretBox(key).encrypt(b"\x80", bytes(24)))
        join = pod.author.write(kinds.MemberJoined(box=box), "pod")
        forget = pod.author.write(kinds.MemberForgotten(), "pod", [join.id])
        after = pod.author.write(kinds.RequestOpened(title="after", category="food"), "pod")
        ledger = await Ledger.open(tmp_path / f"pod{n}.db")
        try:
            await ledger.set_pod(pod.id)
            assert statuses(await ledger.append(wires([*setup, join]))) == ["stored"] * 2
            task = asyncio.create_task(ledger.append([forget.to_wire()]))
            await spin(n)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            if forget.id not in await stored_ids(ledger):
                continue  # cancelled before its commit: nothing to check
            (res,) = await ledger.append([after.to_wire()])  # its predecessor is stored
            if res.status != "stored":
                wrong.append((n, res.status, res.reason))
        finally:
            await ledger.close()
    assert wrong == [], f"(n, status, reason) of the event after a stored forget: {wrong[:4]}"
