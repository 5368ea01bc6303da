"""A peer's answer that arrives in pieces is read whole (and a bottomless one is cut off).

Over a real network a page of a few hundred kilobytes reaches the client in several TCP
segments. The node must read a peer's answer to its end, within its size cap, before it
decodes it: reading only what had arrived so far turned every large page into "unreadable
page: Input data was truncated" and stopped replication from that peer for good (found by
tests/reliability/test_crash.py).
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from podlink.ledger.authoring import Author
from podlink.node.gossip import MAX_RESPONSE_BYTES
from podlink.protocol import kinds
from tests.node.helpers import FakePeer, wait_for


class PiecewisePeer(FakePeer):
    """Serves its pages in ``pieces`` writes with a pause between them; ``endless`` sends
    an answer with no length that never stops (until the client hangs up)."""

    def __init__(self, pieces: int = 4, endless: bool = False) -> None:
        super().__init__()
        self.pieces = pieces
        self.endless = endless
        self.sent = 0

    async def _changes(self, request: web.Request) -> web.StreamResponse:
        if self._check(request) is None:
            return web.json_response({"error": "unauthorised", "message": "sign"}, status=401)
        resp = web.StreamResponse(headers={"Content-Type": "application/msgpack"})
        if self.endless:
            await resp.prepare(request)
            chunk = b"\x00" * (256 * 1024)
            try:
                while self.sent < 4 * MAX_RESPONSE_BYTES:  # bounded, whatever happens
                    await resp.write(chunk)
                    self.sent += len(chunk)
            except (ConnectionError, RuntimeError):
                pass  # the node hung up on us, as it should
            return resp
        body = self.page(int(request.query.get("since", "0")))
        resp.content_length = len(body)
        await resp.prepare(request)
        step = -(-len(body) // self.pieces)
        for start in range(0, len(body), step):
            await resp.write(body[start : start + step])
            await asyncio.sleep(0.05)  # the client sees a partial buffer in between
        await resp.write_eof()
        self.sent += len(body)
        return resp


def network_events(fake: FakePeer, n: int) -> list[bytes]:
    pod = Author(fake.keypair, fake.keypair.public)
    events = [pod.write(kinds.PodFounded(name="Piecewise"), "network")]
    for i in range(n):
        need = kinds.RequestOpened(title=f"need {i}", category="food", details="x" * 400)
        events.append(pod.write(need, "network"))
    return [e.to_wire() for e in events]


async def test_a_page_arriving_in_pieces_is_read_whole(network: Any) -> None:
    [node] = await network(1)
    fake = PiecewisePeer(pieces=6)
    fake.events = network_events(fake, 400)  # ~250 KB in one page
    await fake.start()
    try:
        before = await node.event_count()
        await node.client.post("/v1/peers", {"url": fake.url, "key": fake.key})

        async def all_stored() -> bool:
            return await node.event_count() == before + len(fake.events)

        await wait_for(all_stored, within=15, what="the whole page stored")
        status = (await node.peers())[fake.key]
        assert status["refused"] == 0 and "unreadable" not in status["last_error"], status
    finally:
        await fake.stop()


async def test_an_endless_answer_is_cut_off_at_the_cap(network: Any) -> None:
    [node] = await network(1)
    fake = PiecewisePeer(endless=True)
    await fake.start()
    try:
        await node.client.post("/v1/peers", {"url": fake.url, "key": fake.key})

        async def refused() -> str:
            return (await node.peers())[fake.key]["last_error"]

        error = await wait_for(refused, within=15, what="the endless answer refused")
        assert "larger than" in error, error
        assert fake.sent <= 2 * MAX_RESPONSE_BYTES, fake.sent
        assert (await node.status())["name"] == node.name
    finally:
        await fake.stop()
