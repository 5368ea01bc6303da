"""Review of the COMMIT left to land (ledger/writer.py) and of fast.Memo (ledger/fast.py).

What the ledger stores, reports and shows must be what it was before either change
(e087c6f): a result "stored" or "duplicate" means on disk, a failed COMMIT stores no batch
of its ingest after it, listeners are told only of what a reader sees, and a request row
kept by the fast path is the row on disk whoever wrote since.

Real files under tmp_path, real keys; the failing COMMIT is SQLite's own (a deferred
foreign key: tests/ledger/test_landing.py ``fail_commit_with``).
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

import pytest

from podlink.ledger.errors import LedgerError, StorageError
from podlink.ledger.ledger import Ledger, Limits
from podlink.protocol import kinds
from podlink.protocol.envelope import Event
from tests.ledger.helpers import World, query, statuses, stored_ids, wires
from tests.ledger.test_landing import fail_commit_with
from tests.ledger.test_review_fast import Twins, _claim, _need, _world

BATCH = 10


def _feeds(world: World, per: int) -> tuple[bytes, list[Event], list[Event], list[Event]]:
    """A pod with two organizers; ``per`` needs by Ana, then ``per`` by Bo (the second
    batch of an ingest depends on nothing in the first)."""
    pod, setup = world.pod()
    ana, add_ana = world.organizer(pod, "Ana")
    bo, add_bo = world.organizer(pod, "Bo")
    setup += [add_ana, add_bo]
    world.tick()
    by_ana, by_bo = [], []
    for i in range(per):
        world.tick()
        by_ana.append(ana.write(kinds.RequestOpened(title=f"a{i}", category="food"), "network"))
    for i in range(per):
        world.tick()
        by_bo.append(bo.write(kinds.RequestOpened(title=f"b{i}", category="food"), "network"))
    return pod.id, setup, by_ana, by_bo


async def _open(path: Path, pod: bytes, setup: list[Event]) -> Ledger:
    ledger = await Ledger.open(path, limits=Limits(batch_size=BATCH))
    await ledger.set_pod(pod)
    assert statuses(await ledger.ingest(wires(setup))) == ["stored"] * len(setup)
    return ledger


async def _until_writing(ledger: Ledger, within: float = 10.0) -> None:
    """Until an ingest's batch holds the writer (its transaction is under way)."""
    deadline = time.monotonic() + within
    while not ledger._write.locked():
        assert time.monotonic() < deadline, "the ingest never took the writer"
        await asyncio.sleep(0)


async def _outcome(aw: Awaitable[Any]) -> Any:
    try:
        return await aw
    except Exception as err:
        return err


def _on_disk(path: Path) -> set[bytes]:
    with contextlib.closing(sqlite3.connect(path)) as con:
        return {r[0] for r in con.execute("SELECT id FROM events")}


# ------------------------------------------------- another caller while a COMMIT is landing


async def test_copies_of_a_landing_batch_are_not_acknowledged_before_it_lands(
    tmp_path: Path, world: World
) -> None:
    """A ring delivers each event twice: a second peer's page of the same events is stored
    while the first peer's ingest has its first batch's COMMIT landing. Before e087c6f the
    ids in ``Ledger.recent`` were on disk; now the second page is told "duplicate" from
    them before the COMMIT landed, returns, and the COMMIT then fails."""
    pod, setup, by_ana, by_bo = _feeds(world, BATCH)
    ledger = await _open(tmp_path / "pod.db", pod, setup)
    try:
        page = await ledger.check(wires(by_ana))  # the second peer's copies, checked already
        await fail_commit_with(ledger, by_ana[3])
        a = asyncio.ensure_future(_outcome(ledger.ingest(wires([*by_ana, *by_bo]))))
        await _until_writing(ledger)  # the first batch is in its transaction: the page queues
        second = await _outcome(ledger.store(page, source="peer2"))
        first = await a
        assert isinstance(first, StorageError), first
        on_disk = await stored_ids(ledger)
        assert not {e.id for e in by_ana} & on_disk  # the failed batch is not there
        if not isinstance(second, Exception):
            acknowledged = {
                e.id for e, r in zip(by_ana, second, strict=True)
                if r.status in ("stored", "duplicate")
            }  # fmt: skip
            lost = acknowledged - on_disk
            assert not lost, f"{len(lost)} answered {sorted(set(statuses(second)))}, not stored"
    finally:
        await ledger.close()


@pytest.mark.parametrize("between", ["another writer", "a minute later"])
async def test_a_failed_commit_settled_by_someone_else_stores_no_batch_after_it(
    tmp_path: Path, world: World, between: str
) -> None:
    """The failing COMMIT is settled before the ingest's next batch reaches its BEGIN: by
    another writer that took the lock in between (a local write of the node), or by the
    next batch itself in ``_commit_locked`` when the minute between purges has passed (an
    ingest of many batches crosses it every minute). Before e087c6f the ingest stopped at
    the failed batch; writer.py says the batches behind it are refused."""
    pod, setup, by_ana, by_bo = _feeds(world, BATCH)
    ledger = await _open(tmp_path / "pod.db", pod, setup)
    try:
        await fail_commit_with(ledger, by_ana[3])
        a = asyncio.ensure_future(_outcome(ledger.ingest(wires([*by_ana, *by_bo]))))
        await _until_writing(ledger)
        other = None
        if between == "another writer":
            sql = "INSERT OR REPLACE INTO meta VALUES ('review', x'01')"
            other = asyncio.ensure_future(ledger.write(sql))
        else:
            ledger._last_purge = time.monotonic() - 61  # the first batch purged a minute ago
        first = await a
        if other is not None:
            assert await other == 1  # the other writer is not failed for it
        assert isinstance(first, StorageError), first
        on_disk = await stored_ids(ledger)
        assert on_disk == {e.id for e in setup}, (
            f"{len(on_disk & {e.id for e in by_bo})} events of the batch after the failed "
            "COMMIT stored by an ingest that raised"
        )
    finally:
        await ledger.close()


async def test_a_page_of_other_events_is_not_failed_by_another_ingests_commit(
    tmp_path: Path, world: World
) -> None:
    """A second peer's page of events of another feed, queued for the writer while the
    first peer's ingest has its first batch in its transaction. That batch's COMMIT fails
    (left open, as SQLite leaves a deferred constraint's). Before e087c6f it was rolled
    back before the writer was let go, and the page was stored."""
    pod, setup, by_ana, by_bo = _feeds(world, BATCH)
    ledger = await _open(tmp_path / "pod.db", pod, setup)
    try:
        page = await ledger.check(wires(by_bo))  # Bo's feed: nothing of Ana's in it
        await fail_commit_with(ledger, by_ana[3])
        a = asyncio.ensure_future(_outcome(ledger.ingest(wires([*by_ana, *by_ana]))))
        await _until_writing(ledger)
        second = await _outcome(ledger.store(page, source="peer2"))
        assert isinstance(await a, StorageError)
        assert not isinstance(second, Exception), f"the other page was failed: {second}"
        assert statuses(second) == ["stored"] * BATCH
    finally:
        await ledger.close()


# ------------------------------------------------------------- cancellation and close


class _Told:
    """Listener: each head told, with the highest position a fresh reader saw then."""

    def __init__(self, path: Path) -> None:
        self.con = sqlite3.connect(path)
        self.seen: list[tuple[int, int]] = []

    def __call__(self, head: int) -> None:
        (top,) = self.con.execute("SELECT coalesce(max(pos), 0) FROM events").fetchone()
        self.seen.append((head, top))

    def check(self) -> None:
        unseen = [(head, top) for head, top in self.seen if top < head]
        assert not unseen, f"told of positions no reader saw yet: {unseen}"
        heads = [head for head, _ in self.seen]
        assert heads == sorted(heads), heads


async def _verifies_and_rebuilds(ledger: Ledger) -> None:
    """Every signature and chain checks out, and a rebuild gives the live projections."""
    assert (await ledger.verify()).ok
    live = await ledger.dump()
    await ledger.rebuild()
    assert await ledger.dump() == live


async def _consistent(ledger: Ledger) -> None:
    """The caches in memory say what the file says (after any reload they owe)."""
    if ledger._stale_caches:
        return  # reloaded from the file before the next batch
    (top,) = (await query(ledger, "SELECT coalesce(max(pos), 0) FROM events"))[0]
    assert ledger.next_pos == top + 1
    feeds = {(a, lane): (s, i) for a, lane, s, i in await query(
        ledger, "SELECT author, lane, seq, id FROM feeds")}  # fmt: skip
    for feed, (seq, id_, _) in ledger.heads.items():
        assert feeds.get(feed) == (seq, id_), "a cached feed head is not the file's"
    for _, ids in ledger.recent:
        assert set(ids) <= await stored_ids(ledger), "recent names ids not stored"


async def test_an_ingest_cancelled_anywhere_stores_whole_batches_and_tells_only_those(
    tmp_path: Path, world: World
) -> None:
    """An ingest of four batches cancelled after n turns of the loop, for n across its
    whole run (in its Python, in a BEGIN, while a COMMIT lands, while the next batch
    settles it): what is on disk is whole batches of it, in order; the caches say what the
    file says; listeners were told only of what a reader saw; the same events again are
    the rest, stored, and the first, duplicates."""
    pod, setup = world.pod()
    ana, add = world.organizer(pod, "Ana")
    setup.append(add)
    ledger = await _open(tmp_path / "pod.db", pod.id, setup)
    told = _Told(tmp_path / "pod.db")
    ledger.stored_listeners.append(told)
    cut_at = set()

    def needs_of(n: int) -> list[Event]:
        made = []
        for i in range(4 * BATCH):
            world.tick()
            made.append(
                ana.write(kinds.RequestOpened(title=f"{n}.{i}", category="food"), "network")
            )
        return made

    try:
        # How many turns a whole ingest takes here, uncancelled.
        task = asyncio.ensure_future(ledger.ingest(wires(needs_of(-1))))
        turns = 0
        while not task.done():
            await asyncio.sleep(0)
            turns += 1
        assert statuses(task.result()) == ["stored"] * 4 * BATCH
        for n in range(0, turns + 2, max(1, turns // 60)):
            needs = needs_of(n)
            before = await stored_ids(ledger)
            task = asyncio.ensure_future(ledger.ingest(wires(needs)))
            for _ in range(n):
                await asyncio.sleep(0)
            task.cancel()
            try:
                results = await task
            except asyncio.CancelledError:
                results = None
            await _consistent(ledger)
            on_disk = await stored_ids(ledger)
            mine = [e.id in on_disk for e in needs]
            k = sum(mine)
            assert mine == [True] * k + [False] * (len(needs) - k), "not a prefix"
            assert k % BATCH == 0, f"{k} events stored: part of a batch"
            if results is not None:
                assert k == len(needs) and statuses(results) == ["stored"] * len(needs)
            else:
                cut_at.add(k // BATCH)
            again = await ledger.ingest(wires(needs))
            assert statuses(again) == ["duplicate"] * k + ["stored"] * (len(needs) - k)
            assert await stored_ids(ledger) == before | {e.id for e in needs}
            await _consistent(ledger)
        told.check()
        assert len(cut_at) >= 3, cut_at  # cancelled around several COMMITs
        await _verifies_and_rebuilds(ledger)
    finally:
        told.con.close()
        await ledger.close()


async def test_close_during_an_ingest_keeps_whole_batches_and_every_answer_true(
    tmp_path: Path, world: World
) -> None:
    """``close`` called n turns into an ingest of four batches: it waits for the batch in
    its transaction and settles the COMMIT left to land; the ingest stops with
    LedgerError (or returns, if it was done). Reopened, the file holds whole batches, all
    of them if the ingest returned, and verifies."""
    pod, setup = world.pod()
    ana, add = world.organizer(pod, "Ana")
    setup.append(add)
    needs = []
    for i in range(4 * BATCH):
        world.tick()
        needs.append(ana.write(kinds.RequestOpened(title=f"n{i}", category="food"), "network"))
    base = tmp_path / "base.db"
    ledger = await _open(base, pod.id, setup)
    await ledger.close()
    stopped_after = set()
    path = tmp_path / "whole.db"  # how many turns a whole ingest takes here
    path.write_bytes(base.read_bytes())
    async with await Ledger.open(path, limits=Limits(batch_size=BATCH)) as ledger:
        task = asyncio.ensure_future(ledger.ingest(wires(needs)))
        turns = 0
        while not task.done():
            await asyncio.sleep(0)
            turns += 1
        assert statuses(task.result()) == ["stored"] * len(needs)
    for n in range(0, turns + 2, max(1, turns // 40)):
        path = tmp_path / f"close{n}.db"
        path.write_bytes(base.read_bytes())
        ledger = await Ledger.open(path, limits=Limits(batch_size=BATCH))
        task = asyncio.ensure_future(_outcome(ledger.ingest(wires(needs))))
        for _ in range(n):
            await asyncio.sleep(0)
        await ledger.close()
        outcome = await task
        mine = [e.id in _on_disk(path) for e in needs]
        k = sum(mine)
        assert mine == [True] * k + [False] * (len(needs) - k)
        assert k % BATCH == 0, f"{k} events stored: part of a batch"
        if isinstance(outcome, sqlite3.ProgrammingError):
            # (as before e087c6f: closed while the first batch probed the reader)
            assert k == 0, repr(outcome)
        elif isinstance(outcome, Exception):
            assert isinstance(outcome, LedgerError), repr(outcome)
            assert not isinstance(outcome, StorageError), repr(outcome)
            stopped_after.add(k // BATCH)
        else:
            assert k == len(needs) and statuses(outcome) == ["stored"] * len(needs)
        reopened = await Ledger.open(path, limits=Limits(batch_size=BATCH))
        try:
            assert (await reopened.verify()).ok
            again = await reopened.ingest(wires(needs))
            assert statuses(again) == ["duplicate"] * k + ["stored"] * (len(needs) - k)
        finally:
            await reopened.close()
    assert stopped_after - {0}, stopped_after  # closed between batches at least once


async def test_appends_pages_and_ingests_at_once_store_all_and_tell_only_what_is_seen(
    tmp_path: Path, world: World
) -> None:
    """Two multi-batch ingests from peers, a sync's pages (check, then store) and the pod's
    own appends one by one, all at once: each of them finds the others' COMMITs landing.
    Every answer is "stored" and on disk, listeners are told in order and only of what a
    reader sees, and the state equals its rebuild."""
    pod, setup = world.pod()
    authors = []
    for name in ("Ana", "Bo", "Cy", "Di"):
        org, add = world.organizer(pod, name)
        authors.append(org)
        setup.append(add)
    world.tick()
    made: dict[str, list[Event]] = {name: [] for name in ("ana", "bo", "cy", "di")}
    for i in range(6 * BATCH):
        for name, org in zip(made, authors, strict=True):
            world.tick()
            made[name].append(
                org.write(kinds.RequestOpened(title=f"{name}{i}", category="food"), "network")
            )
    ledger = await _open(tmp_path / "pod.db", pod.id, setup)
    told = _Told(tmp_path / "pod.db")
    ledger.stored_listeners.append(told)

    async def pages(events: list[Event]) -> list:
        out = []
        for i in range(0, len(events), 2 * BATCH):
            checked = await ledger.check(wires(events[i : i + 2 * BATCH]))
            out += await ledger.store(checked, source="peer2")
        return out

    async def appends(events: list[Event]) -> list:
        out = []
        for ev in events:
            out += await ledger.append(wires([ev]))
        return out

    try:
        got = await asyncio.gather(
            ledger.ingest(wires(made["ana"])),
            ledger.ingest(wires(made["bo"]), source="peer3"),
            pages(made["cy"]),
            appends(made["di"]),
        )
        for results in got:
            assert statuses(results) == ["stored"] * len(made["ana"])
        assert await stored_ids(ledger) == {e.id for es in [setup, *made.values()] for e in es}
        await _consistent(ledger)
        told.check()
        assert told.seen and told.seen[-1][0] == ledger.next_pos - 1
        assert ledger._landing is None and ledger.landed == ledger.generation
        await _verifies_and_rebuilds(ledger)
    finally:
        told.con.close()
        await ledger.close()


# ------------------------------------------------------------------------- fast.Memo

BETWEEN = [
    "answer",
    "cancel",
    "append",
    "rebuild",
    "rollback",
    "lingering rollback",
    "eviction",
    "local write",
    "roster change",
]


@pytest.mark.parametrize("between", BETWEEN)
async def test_a_kept_request_row_follows_every_other_writer(tmp_path: Path, between: str) -> None:
    """Claims on requests whose rows the fast path keeps (fast.Memo), then something other
    than the fast path touches them (an answer or a cancel the general way, a local
    append, a rebuild, a batch rolled back at its COMMIT, alone or left to land in a
    multi-batch ingest, rows evicted from a memo of one row, a writer that takes the lock
    for a local write), then claims again: the fast ledger ends as the one without the
    fast path, rows, results and caches."""
    world, w = _world()
    ana, bo, cy = w["ana"], w["bo"], w["cy"]
    r1, r2, r3 = (_need(ana, title=f"r{i}") for i in range(3))
    world.tick(10)
    c1, c2 = _claim(cy, r1.id), _claim(cy, r2.id)
    world.tick(10)
    async with Twins.open(tmp_path, w["elm"].id, batch_size=2) as tw:
        fast_one = tw.ledgers[0]
        if between == "eviction":
            fast_one.fast_memo.CAP = 1
        await tw.feed(wires(w["setup"]))
        await tw.feed(wires([r1, r2, r3]), wires([c1, c2]))
        assert tw.verdicts[-1] is True and fast_one.fast_memo.rows  # kept
        if between == "answer":
            await tw.feed(wires([ana.write(kinds.ClaimAccepted(), "network", [c1.id])]))
        elif between == "cancel":
            await tw.feed(wires([ana.write(kinds.RequestCancelled(), "network", [r2.id])]))
        elif between == "append":
            assert statuses(*await tw.appends([wires([_claim(ana, r1.id)])])) == ["stored"]
        elif between == "rebuild":
            await tw.rebuild_equals_live()
        elif between in ("rollback", "lingering rollback"):
            doomed = [_claim(bo, r1.id), _claim(cy, r2.id)]
            if between == "lingering rollback":
                doomed = [_claim(bo, r3.id), _claim(cy, r3.id), *doomed]
            for ledger in tw.ledgers:
                await fail_commit_with(ledger, doomed[0])
                with pytest.raises(StorageError):
                    await ledger.ingest(wires(doomed))
                await ledger.db.execute("DROP TRIGGER doom")
            await tw.same()
        elif between == "eviction":
            await tw.feed(wires([_claim(bo, r3.id)]))
            assert list(fast_one.fast_memo.rows) == [r3.id]
        elif between == "roster change":
            _, add_ed = world.organizer(w["elm"], "Ed")
            await tw.feed(wires([add_ed]))
            assert not fast_one.fast_memo.rows
        elif between == "local write":
            for ledger in tw.ledgers:
                await ledger.write("INSERT OR REPLACE INTO meta VALUES ('review', x'01')")
            assert not fast_one.fast_memo.rows
        world.tick(10)
        late = [_claim(bo, r1.id), _claim(cy, r2.id), _claim(ana, r3.id), _claim(cy, r1.id)]
        await tw.feed(wires(late))
        world.tick(10)
        await tw.feed(wires([_claim(cy, r3.id), _claim(bo, r2.id)]))
        await tw.rebuild_equals_live()


async def test_a_kept_row_across_batches_of_one_ingest_and_a_general_batch_between(
    tmp_path: Path,
) -> None:
    """One ingest of many two-event batches, each COMMIT but the last left to land: claims
    folded onto kept rows batch after batch, with a batch the general path takes (an
    answer, a request update) in the middle of it; the same as without the fast path."""
    world, w = _world()
    ana, bo, cy = w["ana"], w["bo"], w["cy"]
    needs = [_need(ana, title=f"r{i}") for i in range(4)]
    world.tick(10)
    events: list[Event] = []
    for round_ in range(6):
        for need in needs:
            world.tick()
            events.append(_claim(cy if round_ % 2 else bo, need.id))
        if round_ == 2:
            world.tick()
            events.append(ana.write(kinds.ClaimAccepted(), "network", [events[1].id]))
            events.append(ana.write(kinds.RequestUpdated(title="new"), "network", [needs[2].id]))
    async with Twins.open(tmp_path, w["elm"].id, batch_size=2) as tw:
        await tw.feed(wires(w["setup"]), wires(needs))
        await tw.feed(wires(events))
        assert tw.verdicts.count(True) >= 4, tw.verdicts  # the memo was used
        await tw.rebuild_equals_live()
