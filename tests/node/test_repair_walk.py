"""A repair cut short by the peer's rate limit goes on, next time, from where it stopped.

A repair asks the peer for each feed it lacks, in the peer's (author, lane) order. Feeds
whose events wait (their authors' roster.add is in a feed further on) cost a request at
every walk and store nothing; a walk that always started from the first feed, and met
the peer's 429 before the feed naming those authors, failed at the same place forever.
"""

from __future__ import annotations

import os
from typing import Any

from podlink.ledger.authoring import Author
from podlink.protocol import kinds
from podlink.protocol.keys import Keypair
from tests.node.helpers import FakePeer


def key_between(low: int, high: int) -> Keypair:
    """A fresh key whose first byte is in [low, high]: its place in the peer's heads."""
    for _ in range(10_000):
        key = Keypair.generate()
        if low <= key.public[0] <= high:
            return key
    raise AssertionError("no key in range")


async def test_a_walk_stopped_by_429_resumes_at_the_feed_it_could_not_fetch(
    network: Any,
) -> None:
    from podlink.node.api_types import FeedHead

    [node] = await network(1)
    peer = FakePeer(key_between(0xF0, 0xFF))  # its own feed sorts after its organizers'
    await peer.start()
    try:
        await node.client.post("/v1/peers", {"url": peer.url, "key": peer.key})
        await node.client.post("/v1/sync")  # an empty first page: epoch and cursor saved
        pod = Author(peer.keypair, peer.keypair.public)
        feed = [pod.write(kinds.PodFounded(name="Far"), "network")]
        needs = []
        for i in range(3):
            key = key_between(0x00, 0xEF)
            feed.append(pod.write(kinds.OrganizerAdded(key=key.public, name=f"o{i}"), "network"))
            her = Author(key, pod.pod, pod.clock)
            needs.append(her.write(kinds.RequestOpened(title=f"need {i}", category="food"),
                                   "network"))  # fmt: skip
        everything = [*feed, *needs]
        peer.heads = [FeedHead(e.author, "network", e.header.seq, e.id) for e in [*needs, feed[-1]]]
        peer.feeds = {e.author: [e.to_wire()] for e in needs}
        peer.feeds[pod.pod] = [e.to_wire() for e in feed]
        peer.refuse_feed_every = 3  # the third feed asked for in a row meets the rate limit
        peer.epoch = os.urandom(16)  # the peer's store was restored: its events come by repair
        # One sync, two walks: the one that found the peer's restore stops at the 429,
        # the pull's own repair goes on from there and ends (so the sync is ok).
        report = await node.client.post("/v1/sync")
        assert {e.id_text for e in everything} <= await node.event_ids()
        [mine] = [p for p in report["peers"] if p["pod"] == peer.key]
        assert mine["ok"] is True, mine
    finally:
        await peer.stop()
