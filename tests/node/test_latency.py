"""Live propagation: a network event crosses a line of five nodes over the streams."""

from __future__ import annotations

import time
from typing import Any

from tests.node.helpers import peer_line, wait_for


async def test_network_event_reaches_the_far_end_of_a_line_of_five(network: Any) -> None:
    nodes = await network(5)
    await peer_line(nodes)  # every stream is live before we measure
    first, last = nodes[0], nodes[-1]
    timings = []
    for i in range(3):
        started = time.monotonic()
        event = await first.open_request(f"urgent {i}", urgency="urgent")

        async def arrived(event_id: str = event.id_text) -> bool:
            return event_id in {r["id"] for r in await last.client.get("/v1/requests")}

        await wait_for(arrived, within=10.0, every=0.01, what="the event at the far end")
        timings.append(time.monotonic() - started)
    print(f"\nline of 5, 4 hops: {', '.join(f'{t * 1000:.0f} ms' for t in timings)}")
    # Every hop was a live stream push: no node needed to poll.
    for node in nodes:
        for peer in (await node.peers()).values():
            assert peer["connected"] and peer["status"] == "live", (node.name, peer)
