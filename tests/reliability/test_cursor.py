"""A peer link resumes from the cursor it last saved, however many peers join after it.

Adding a peer reloads the node's peer records. The gossip link of an earlier peer must keep
seeing its own cursor move: a link left holding a stale record asked for the same first
page again and again after its next reconnect, forever, once the peer held more than one
page of events (found by tests/reliability/test_partition.py: links never went live again
after a cut, and replication through them stopped).
"""

from __future__ import annotations

from typing import Any

from podlink.protocol import kinds
from tests.node.helpers import PodNode, wait_for, wait_linked


async def _has(node: PodNode, event_id: str) -> bool:
    return event_id in await node.event_ids()


async def test_cursor_survives_a_later_peer_and_a_reconnect(network: Any) -> None:
    a, b, c = await network(3, page_events=5)
    await a.client.post("/v1/peers", {"url": b.url, "key": b.key})
    await b.client.post("/v1/peers", {"url": a.url, "key": a.key})
    await wait_linked([(a, b)])
    await a.client.post("/v1/peers", {"url": c.url, "key": c.key})  # reloads a's peers
    await c.client.post("/v1/peers", {"url": a.url, "key": a.key})
    await wait_linked([(a, c)])

    author = await b.author()
    events = [
        author.write(kinds.RequestOpened(title=f"need {i}", category="food"), "network")
        for i in range(20)
    ]
    assert all(r["status"] == "stored" for r in await b.client.submit(events))
    await wait_for(lambda: _has(a, events[-1].id_text), what="b's needs at a (live stream)")
    cursor = (await a.peers())[b.key]["cursor"]
    assert cursor == await b.event_count()

    # b goes away and comes back: a's link reconnects and pulls from its saved cursor.
    link = a.node.gossip.links[b.pod]  # type: ignore[attr-defined]
    received = link.status.received
    await b.restart()
    late = await b.open_request("after the restart")
    await wait_for(lambda: _has(a, late.id_text), what="the late need at a")
    await wait_linked([(a, b)])
    assert link.record.cursor == a.node.peers[b.pod].cursor == await b.event_count()
    # Only what was new came over the wire after the restart: nothing was pulled twice.
    assert link.status.received == received + 1, link.status
