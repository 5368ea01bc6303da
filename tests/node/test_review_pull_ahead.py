"""Review of the pull that fetches and checks pages two ahead (node/gossip.py, ``_Ahead``).

Two tests drive the real ``PeerLink.run`` -> ``pull`` -> ``_pull_changes`` -> ``_Ahead``
with a stand-in ``_fetch``. Their faults are windows one or a few event-loop steps wide
that HTTP timing cannot hit on purpose, so each one tries every step of the handover.
The others use a real node and a FakePeer over HTTP on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from types import SimpleNamespace
from typing import Any

import pytest

from podlink.ledger.authoring import Author
from podlink.ledger.store import rows
from podlink.node.api_types import Page
from podlink.node.gossip import PeerError, PeerLink
from podlink.node.runtime import PeerRecord
from podlink.protocol import kinds
from podlink.protocol.text import b64e
from tests.node.helpers import FakePeer, wait_for

STEPS = range(8)  # loop steps tried between a fetch's answer and the cancellation


def _stub_link(fetch: Any) -> PeerLink:
    """A real PeerLink whose ``_fetch`` is ``fetch``; ``run`` needs no more of its node
    until a page is taken."""
    node = SimpleNamespace(
        config=SimpleNamespace(backoff_max_s=0.4, peer_timeout_s=5.0),
        metrics=SimpleNamespace(set=lambda *a, **k: None),
    )
    record = PeerRecord(pod=b"p" * 32, url="http://127.0.0.1:9", name="stub", cursor=0,
                        epoch=None, last_sync=None)  # fmt: skip
    link = PeerLink(node, record)  # type: ignore[arg-type]
    link._fetch = fetch  # type: ignore[method-assign]
    return link


async def _run_released(
    fetch: Any, asked: asyncio.Event, gate: asyncio.Event, steps: int
) -> asyncio.Task[None]:
    """``PeerLink.run`` of a stub link on ``fetch``, once it has asked for the first page:
    the fetch let go (``gate``), then ``steps`` turns of the loop."""
    task = asyncio.ensure_future(_stub_link(fetch).run())
    await asyncio.wait_for(asked.wait(), 5)
    await asyncio.sleep(0)
    gate.set()
    for _ in range(steps):
        await asyncio.sleep(0)
    return task


def _page(since: int) -> Page:
    return Page(epoch=b"e" * 16, cursor=since + 1, head=100, events=[], forks=0)


def _fake_with_events(n: int) -> tuple[FakePeer, list[bytes]]:
    fake = FakePeer()
    pod = Author(fake.keypair, fake.keypair.public)
    events = [pod.write(kinds.PodFounded(name="Fir", zone="fir"), "network")]
    events += [
        pod.write(kinds.RequestOpened(title=f"need {i}", category="food"), "network")
        for i in range(n - 1)
    ]
    fake.events = [e.to_wire() for e in events]
    return fake, [e.id for e in events]


def _ahead_tasks() -> list[asyncio.Task]:
    names = {"_Ahead._run", "PeerLink._check", "Queue.get"}
    return [t for t in asyncio.all_tasks() if t.get_coro().__qualname__ in names]


async def test_a_link_stopped_as_a_page_is_handed_over_leaves_no_check_running() -> None:
    """The node stopping or the peer removed cancels PeerLink.run at any step. Cancelled
    while ``_Ahead.next`` waits in ``asyncio.wait`` and the ``getting`` task has already
    taken the page off the queue, ``next`` only awaits ``getting`` and re-raises: that
    page's check task is cancelled by nobody (it is no longer in the queue, nor held by
    ``_run``), and runs on after the pull has ended (on a node stopping: against a
    ledger being closed, its error then never retrieved)."""
    leaked: dict[int, int] = {}
    for steps in STEPS:
        gate, asked = asyncio.Event(), asyncio.Event()
        checks: list[asyncio.Future] = []

        async def fetch(since: int, gate=gate, asked=asked, checks=checks) -> Any:
            asked.set()
            await gate.wait()
            check = asyncio.ensure_future(asyncio.sleep(3600))  # a long check under way
            checks.append(check)
            return _page(since), check

        task = await _run_released(fetch, asked, gate, steps)
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=5)
        assert task in done and task.cancelled(), f"{steps} steps: the link did not stop"
        running = [c for c in checks if not c.done()]
        if running:
            leaked[steps] = len(running)
        for c in running:
            c.cancel()
        await asyncio.gather(*running, return_exceptions=True)
    assert not leaked, f"checks left running after the link stopped (steps: count): {leaked}"


async def test_a_link_stopped_as_a_fetch_fails_stops() -> None:
    """A cancellation that comes while ``_Ahead.next`` cleans up its ``getting`` task
    after the fetch task failed (``await _cancel(getting)``) is swallowed by ``_cancel``
    (it suppresses CancelledError, the caller's own included): ``next`` raises the
    fetch's PeerError instead, ``run`` takes it for a peer's failure and backs off, and
    the link never stops, so ``Gossip.stop_peer`` (peer removed, node stopping) waits
    on it for good."""
    kept_running: list[int] = []
    for steps in STEPS:
        gate, asked = asyncio.Event(), asyncio.Event()

        async def fetch(since: int, gate=gate, asked=asked) -> Any:
            asked.set()
            await gate.wait()
            raise PeerError("unreadable page: test")

        task = await _run_released(fetch, asked, gate, steps)
        if task.done():  # never the case: run loops on a peer's errors
            continue
        task.cancel()  # what Gossip.stop_peer does, before it awaits the task
        done, _ = await asyncio.wait({task}, timeout=2)
        if task not in done:
            kept_running.append(steps)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    assert not kept_running, (
        f"the link went on after being cancelled {len(kept_running)} of "
        f"{len(STEPS)} times (steps {kept_running}): its cancellation was swallowed"
    )


async def test_two_pages_ahead_at_most_in_order_once_each(
    network: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a slow store the pipeline fills: each page of changes is asked for once, in
    order, and a page is asked for at most two pages past the cursor saved (one waiting,
    one in the task's hand), never three; every event ends stored."""
    [a] = await network(1)
    fake, _ = _fake_with_events(16)
    fake.page_size = 2
    seen: list[tuple[int, int]] = []  # (since, our cursor when it was asked)
    serve = fake._changes

    async def changes(request: Any) -> Any:
        record = a.node.peers.get(fake.keypair.public)
        seen.append((int(request.query.get("since", "0")), record.cursor if record else -1))
        return await serve(request)

    fake._changes = changes  # type: ignore[method-assign]
    submit = a.node.submit

    async def slow_submit(*args: Any, **kwargs: Any) -> Any:
        await asyncio.sleep(0.05)
        return await submit(*args, **kwargs)

    monkeypatch.setattr(a.node, "submit", slow_submit)
    await fake.start()
    try:
        before = await a.event_count()
        await a.client.post("/v1/peers", {"url": fake.url, "key": fake.key, "name": "Fir"})

        async def stored() -> bool:
            return await a.event_count() == before + 16

        await wait_for(stored, what="all pages stored")
        sinces = [s for s, _ in seen]
        assert sinces == list(range(0, 16, 2)), sinces
        ahead = max(since - cursor for since, cursor in seen)
        assert ahead == 2 * fake.page_size, seen
        assert a.node.peers[fake.keypair.public].cursor == 16
    finally:
        await fake.stop()


async def test_a_restore_seen_mid_pull_drops_the_pages_ahead_and_goes_on_from_its_head(
    network: Any,
) -> None:
    """The peer's epoch changes at its third page while pages are fetched ahead: that
    page repairs and moves the cursor to its head, the pages fetched ahead of it (old
    chain) are dropped, never stored, and the pull goes on from the head."""
    [a] = await network(1)
    fake, ids = _fake_with_events(10)
    fake.page_size = 2
    old, new = fake.epoch, b"n" * 16
    page = fake.page

    def restored_from_4(since: int) -> bytes:
        fake.epoch = old if since < 4 else new
        return page(since)

    fake.page = restored_from_4  # type: ignore[method-assign]
    await fake.start()
    try:
        before = await a.event_count()
        await a.client.post("/v1/peers", {"url": fake.url, "key": fake.key, "name": "Fir"})

        async def moved() -> bool:
            peer = (await a.peers())[fake.key]
            return peer["cursor"] == 10 and await a.event_count() == before + 4

        await wait_for(moved, what="the cursor moved to the restored peer's head")
        await asyncio.sleep(0.3)  # anything stored late would show now
        assert await a.event_count() == before + 4
        held = await a.event_ids()
        assert {b64e(i) for i in ids[:4]} <= held
        assert not {b64e(i) for i in ids[4:]} & held
        changes = [p for _, p, _ in fake.calls if p.startswith("/v1/peer/changes")]
        assert any("since=10" in p for p in changes), changes
        assert a.node.peers[fake.keypair.public].epoch == new
    finally:
        await fake.stop()


async def _pulling(a: Any, n: int) -> FakePeer:
    """A fake peer of ``n`` events in pages of 2, each page served slowly, with ``a``
    pulling from it and some pages stored (not all)."""
    fake, _ = _fake_with_events(n)
    fake.page_size = 2
    serve = fake._changes

    async def slow(request: Any) -> Any:
        await asyncio.sleep(0.03)
        return await serve(request)

    fake._changes = slow  # type: ignore[method-assign]
    await fake.start()
    await a.client.post("/v1/peers", {"url": fake.url, "key": fake.key, "name": "Fir"})

    async def midway() -> bool:
        record = a.node.peers.get(fake.keypair.public)
        return record is not None and 4 <= record.cursor < n - 8

    await wait_for(midway, every=0.005, what="a pull under way")
    return fake


async def test_a_node_stopped_mid_pull_leaves_nothing_running(
    network: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """The node stops (gossip cancelled, then its ledger closed) while pages are fetched
    and checked ahead: no fetch or check task of the pull outlives it, nothing is logged
    as never retrieved, and after a restart the cursor names exactly what was stored."""
    caplog.set_level(logging.WARNING, logger="asyncio")
    [a] = await network(1)
    before = await a.event_count()
    fake = await _pulling(a, 40)
    try:
        await a.stop()
        assert _ahead_tasks() == []
    finally:
        await fake.stop()
    gc.collect()
    await asyncio.sleep(0.05)
    assert "never retrieved" not in caplog.text
    assert "was destroyed but it is pending" not in caplog.text
    await a.start()
    peer = (await a.peers())[fake.key]
    assert 0 < peer["cursor"] < 40
    assert await a.event_count() == before + peer["cursor"]


async def test_a_peer_removed_mid_pull_stops_its_pull_cleanly(
    network: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """The peer is removed while its pages are fetched and checked ahead: removing it
    returns promptly, no task of its pull is left, nothing is logged as never retrieved,
    and its saved cursor names exactly the pages stored."""
    caplog.set_level(logging.WARNING, logger="asyncio")
    [a] = await network(1)
    before = await a.event_count()
    fake = await _pulling(a, 40)
    try:
        await asyncio.wait_for(a.node.remove_peer(fake.keypair.public), 5)
        assert _ahead_tasks() == []
        await asyncio.sleep(0.2)
        [(cursor,)] = await rows(
            a.ledger.reader, "SELECT cursor FROM peers WHERE pod = ?", (fake.keypair.public,)
        )
        assert 0 < cursor < 40
        assert await a.event_count() == before + cursor
    finally:
        await fake.stop()
    gc.collect()
    await asyncio.sleep(0.05)
    assert "never retrieved" not in caplog.text
