"""A pull leaves each page's COMMIT to land while it takes the next (node/gossip.py,
``_pull_changes``); a page's cursor is written with the next page, or once the last page
has landed. A cursor must never be on disk, or in memory, ahead of its page's events.

The failing COMMIT is SQLite's own (a deferred foreign key violated by a temporary
trigger on one event's insert, tests/ledger/test_landing.py); the peer is a FakePeer over
HTTP on 127.0.0.1, the node a real one.
"""

from __future__ import annotations

import asyncio
from typing import Any

from podlink.ledger.store import rows
from tests.ledger.test_landing import fail_commit_with
from tests.node.helpers import wait_for
from tests.node.test_review_pull_ahead import _fake_with_events

PAGE = 5


async def _cursor_on_disk(node: Any, pod: bytes) -> int:
    [(cursor,)] = await rows(node.ledger.reader, "SELECT cursor FROM peers WHERE pod = ?", (pod,))
    return cursor


async def test_a_page_whose_commit_fails_leaves_the_cursor_behind_it(network: Any) -> None:
    """Pages of 5; the COMMIT of the fourth page fails, again at each retry. The three
    pages before it are stored and the cursor, on disk and in memory, names no more
    than them. Once the fault is gone, the next pull stores the rest from there."""
    [a] = await network(1)
    fake, ids = _fake_with_events(6 * PAGE)
    fake.page_size = PAGE
    await fail_commit_with(a.ledger, _Id(ids[3 * PAGE + 2]))
    before = await a.event_count()
    await fake.start()
    try:
        await a.client.post("/v1/peers", {"url": fake.url, "key": fake.key, "name": "Fir"})
        link = a.node.gossip.links[fake.keypair.public]

        async def failed() -> bool:
            return "StorageError" in link.status.last_error

        await wait_for(failed, what="the pull to fail at the fourth page")
        stored = await a.event_count() - before
        assert stored == 3 * PAGE  # the pages before the failed one, and no more
        on_disk = await _cursor_on_disk(a, fake.keypair.public)
        assert on_disk <= stored  # never ahead of what is stored
        assert a.node.peers[fake.keypair.public].cursor == on_disk  # memory as on disk

        await a.ledger.db.execute("DROP TRIGGER doom")

        async def all_in() -> bool:
            return await a.event_count() == before + len(ids)

        await wait_for(all_in, what="the rest stored by the next pull", within=20.0)

        async def caught_up() -> bool:
            return await _cursor_on_disk(a, fake.keypair.public) == len(ids)

        await wait_for(caught_up, what="the cursor saved past the last page")
        assert a.node.peers[fake.keypair.public].cursor == len(ids)
    finally:
        await fake.stop()


class _Id:
    """What ``fail_commit_with`` reads of an event: its id."""

    def __init__(self, id_: bytes) -> None:
        self.id = id_


async def test_the_cursor_on_disk_follows_a_pull_a_page_behind(network: Any) -> None:
    """While a pull runs, each page's transaction saves the cursor past the page before
    it: a node killed midway fetches again at most the pages after that, not the whole
    pull."""
    [a] = await network(1)
    fake, ids = _fake_with_events(8 * 2)
    fake.page_size = 2
    pod = fake.keypair.public
    seen: list[int] = []  # the cursor on disk as each page's store starts
    submit = a.node.submit

    async def watched_submit(*args: Any, **kwargs: Any) -> Any:
        await asyncio.sleep(0.05)  # the page before has landed by now
        seen.append(await _cursor_on_disk(a, pod))
        return await submit(*args, **kwargs)

    a.node.submit = watched_submit  # type: ignore[method-assign]
    before = await a.event_count()
    await fake.start()
    try:
        await a.client.post("/v1/peers", {"url": fake.url, "key": fake.key, "name": "Fir"})

        async def done() -> bool:
            return await _cursor_on_disk(a, pod) == len(ids)

        await wait_for(done, what="the pull to end")
        assert await a.event_count() == before + len(ids)
    finally:
        await fake.stop()
    pages = len(seen)
    assert pages == len(ids) // 2
    # At page k's store (from 0), the cursor past page k-2 is on disk, and none further.
    assert seen == [max(0, 2 * (k - 1)) for k in range(pages)], seen
