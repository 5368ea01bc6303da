"""A flooding peer: the node throttles it and keeps serving everyone else, in bounded memory.

The victim is a real node in a child process (its memory is measured with psutil). At the
same time, for ~10 s:

* a hostile peer pod serves it thousands of events per pull, in pages of megabytes, half of
  them out of order so that they pile up in the pending area (bounded per peer), and hangs
  up its stream at once so that the node pulls again and again;
* the same pod, as a client, hammers the peer API (pages of the maximum size) with many
  concurrent signed requests; an accomplice pod (peered too) opens a hundred live streams
  and never reads them (each would hold a page of the flood in the node's memory: before
  a peer was held to one live stream, this alone took the node past 600 MB);
* slow-loris clients hold hundreds of sockets, sending request headers a byte at a time;
* an organizer keeps asking GET /v1/status, and an honest peer keeps exchanging events.

The node must throttle the flood (429 ``rate-limited`` for the flooding key, and parked
events refused past the pending bound), answer its organizer within 2 s every time (a
liveness bound, not a benchmark), replicate with the honest peer both ways, and keep its
resident memory under 300 MB. PODLINK_LONG=1 floods for 60 s.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

import aiohttp
import yarl
from aiohttp import web

from podlink.ledger.authoring import Author
from podlink.node.api_types import StreamHello, msgpack_encoder
from podlink.node.peer_api import STREAMS
from podlink.protocol import kinds
from podlink.protocol.http_auth import sign_request
from podlink.protocol.keys import Keypair
from tests.node.helpers import FakePeer, PodNode, make_node, wait_for
from tests.reliability.served import ServedNode, stable_port

LONG = os.environ.get("PODLINK_LONG") == "1"
FLOOD_S = 60.0 if LONG else 10.0
RATE = 20.0  # the victim's rate_per_s (burst: 5 s worth)
PENDING_CAP = 2000  # the victim's pending_per_source
RSS_LIMIT = 300 * 1024 * 1024
DEAD_URL = "http://127.0.0.1:9"
LIVENESS_S = 2.0
SETUP_S = 60.0  # the flood's honest events taken in before it starts: a bound on a hang


class FloodPeer(FakePeer):
    """Serves every event it has since the cursor in one page, and closes its stream at
    once: the node comes back for more, as fast as its backoff lets it."""

    async def _stream(self, request: web.Request) -> web.StreamResponse:
        if self._check(request) is None:
            return web.json_response({"error": "unauthorised", "message": "sign"}, status=401)
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.close()
        return ws


def flood_events(key: Keypair, stored: int, gapped: int) -> tuple[list[bytes], list[bytes]]:
    """``stored`` honest events of the flooding pod, and ``gapped`` events of a second feed
    of it whose first event is never sent (so each one waits in the pending area)."""
    pod = Author(key, key.public)
    details = "x" * 1000  # a page of all of them stays under the 8 MiB a node accepts
    good = [pod.write(kinds.PodFounded(name="Flood"), "network").to_wire()]
    for i in range(stored - 1):
        need = kinds.RequestOpened(title=f"flood {i}", category="food", details=details)
        good.append(pod.write(need, "network").to_wire())
    pod.write(kinds.OfferOpened(title="never sent", category="tools"), "peers")  # the gap
    waiting = [
        pod.write(kinds.OfferOpened(title=f"orphan {i}", category="tools"), "peers").to_wire()
        for i in range(gapped)
    ]
    return good, waiting


async def hammer(url: str, pod: bytes, key: Keypair, stop: float, counts: dict[str, int]) -> None:
    """One client of many: page after page of the peer API, as fast as answers come."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as session:
        while time.monotonic() < stop:
            target = yarl.URL(url + "/v1/peer/changes").with_query({"since": 0, "limit": 500})
            headers = sign_request(key, "GET", target.raw_path_qs, pod=pod)
            try:
                async with session.get(target, headers=headers) as resp:
                    await resp.read()
                    counts[str(resp.status)] = counts.get(str(resp.status), 0) + 1
            except (aiohttp.ClientError, TimeoutError):
                counts["error"] = counts.get("error", 0) + 1


async def idle_stream(
    url: str, pod: bytes, key: Keypair, stop: float, counts: dict[str, int]
) -> None:
    """A live stream from position 0 that is never read."""
    target = yarl.URL(url + "/v1/peer/stream")
    async with aiohttp.ClientSession() as session:
        try:
            async with session.ws_connect(
                target, headers=sign_request(key, "GET", target.raw_path_qs, pod=pod)
            ) as ws:
                await ws.send_bytes(msgpack_encoder.encode(StreamHello(since=0)))
                counts["streams"] = counts.get("streams", 0) + 1
                await asyncio.sleep(max(stop - time.monotonic(), 0))
        except (aiohttp.ClientError, TimeoutError):
            counts["stream refused"] = counts.get("stream refused", 0) + 1


async def slow_loris(port: int, stop: float, counts: dict[str, int]) -> None:
    """A socket that sends a request's headers one byte at a time and never finishes."""
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        counts["loris refused"] = counts.get("loris refused", 0) + 1
        return
    counts["loris"] = counts.get("loris", 0) + 1
    head = b"GET /v1/status HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Padding: " + b"a" * 10_000
    try:
        for byte in head:
            if time.monotonic() > stop:
                break
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.sleep(0.25)
    except (ConnectionError, OSError):
        counts["loris cut"] = counts.get("loris cut", 0) + 1
    finally:
        writer.transport.abort()


async def watch_organizer(node: PodNode, stop: float, latencies: list[float]) -> None:
    while time.monotonic() < stop:
        started = time.monotonic()
        status = await node.client.get("/v1/status")
        latencies.append(time.monotonic() - started)
        assert status["name"] == node.name
        await asyncio.sleep(0.1)


async def watch_memory(victim: ServedNode, stop: float, samples: list[int]) -> None:
    while time.monotonic() < stop:
        samples.append(victim.rss())
        await asyncio.sleep(0.2)


async def test_a_flooding_peer_is_throttled_and_contained(network: Any, tmp_path: Path) -> None:
    [honest] = await network(1)
    pod = await make_node(
        tmp_path / "Victim", "Victim", port=stable_port(), rate_per_s=RATE,
        pending_per_source=PENDING_CAP,
    )  # fmt: skip
    victim = ServedNode(pod)
    flooder = FloodPeer()
    good, waiting = flood_events(flooder.keypair, stored=4000, gapped=PENDING_CAP + 1000)
    flooder.events = good + waiting
    accomplice = Keypair.generate()
    counts: dict[str, int] = {}
    latencies: list[float] = []
    rss: list[int] = []
    tasks: list[asyncio.Task[Any]] = []
    await flooder.start()
    try:
        await victim.start()
        baseline = victim.rss()
        await pod.client.post("/v1/peers", {"url": honest.url, "key": honest.key})
        await honest.client.post("/v1/peers", {"url": pod.url, "key": pod.key})
        await pod.client.post("/v1/peers", {"url": flooder.url, "key": flooder.key})
        await pod.client.post("/v1/peers", {"url": DEAD_URL, "key": accomplice.public_text})
        # Not yet the test: 4,000 events checked by verify workers that run at nice 19,
        # which a loaded machine starves (10 s was not always enough).
        await wait_for(lambda: _holds(pod, 4000), within=SETUP_S, what="the flood stored")

        stop = time.monotonic() + FLOOD_S
        tasks += [asyncio.create_task(hammer(pod.url, pod.pod, flooder.keypair, stop, counts))
                  for _ in range(16)]  # fmt: skip
        tasks += [asyncio.create_task(idle_stream(pod.url, pod.pod, accomplice, stop, counts))
                  for _ in range(100)]  # fmt: skip
        tasks += [asyncio.create_task(slow_loris(pod.config.port, stop, counts))
                  for _ in range(300)]  # fmt: skip
        tasks.append(asyncio.create_task(watch_memory(victim, stop, rss)))
        watcher = asyncio.create_task(watch_organizer(pod, stop, latencies))

        # Meanwhile the honest peer and the victim's organizer exchange events.
        await asyncio.sleep(FLOOD_S / 3)
        theirs = await honest.open_request("honest, during the flood")
        mine = await pod.open_request("organizer, during the flood")

        async def exchanged() -> bool:
            return (theirs.id_text in await pod.event_ids()
                    and mine.id_text in await honest.event_ids())  # fmt: skip

        await wait_for(exchanged, within=FLOOD_S, what="the honest exchange during the flood")
        await watcher
        for task in tasks:
            await task

        stored = await pod.event_ids()
        status = await pod.status()
        link = (await pod.peers())[flooder.key]
        metrics = await metrics_text(pod.url)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await victim.stop()
        await flooder.stop()

    print(
        f"\nflood: {counts}; organizer /v1/status: {len(latencies)} answers, "
        f"max {max(latencies) * 1000:.0f} ms; victim RSS {baseline / 2**20:.0f} MB at start, "
        f"max {max(rss) / 2**20:.0f} MB; {len(stored)} events, {status['pending']} pending, "
        f"flooder link: received {link['received']}, refused {link['refused']} "
        f"{link['last_error']!r}"
    )
    assert max(latencies) < LIVENESS_S, sorted(latencies)[-5:]
    assert max(rss) < RSS_LIMIT, max(rss)
    # Throttled: most of the flooder's requests were refused with 429, none was a 5xx.
    assert counts.get("429", 0) > counts.get("200", 0) > 0, counts
    assert not [s for s in counts if s.isdigit() and int(s) >= 500], counts
    assert 'podlink_requests_refused_total{reason="rate-limited"}' in metrics
    # Bounded: what waits for a missing predecessor is capped per peer, the rest refused.
    assert status["pending"] == PENDING_CAP, status
    assert link["refused"] >= 1000, link
    assert len(stored) >= 4000  # the flooder's honest events were all taken in
    assert counts.get("loris", 0) >= 250 and counts.get("streams", 0) >= 1, counts


async def metrics_text(url: str) -> str:
    async with aiohttp.ClientSession() as session, session.get(url + "/metrics") as resp:
        return await resp.text()


async def _holds(node: PodNode, n: int) -> bool:
    return (await node.status())["events"] >= n


async def test_a_peer_holds_one_live_stream_at_most(network: Any) -> None:
    """A newer stream from the same peer replaces the older one (a reconnect after a blip
    looks just like that), so a peer's streams cost one page of memory, not a hundred."""
    [node] = await network(1)
    peer = Keypair.generate()
    await node.client.post("/v1/peers", {"url": DEAD_URL, "key": peer.public_text})
    url = yarl.URL(node.url + "/v1/peer/stream")
    async with aiohttp.ClientSession() as session:
        sockets = []
        for _ in range(10):
            headers = sign_request(peer, "GET", url.raw_path_qs, pod=node.pod)
            ws = await session.ws_connect(url, headers=headers)
            await ws.send_bytes(msgpack_encoder.encode(StreamHello(since=0)))
            sockets.append(ws)

        async def one_left() -> bool:
            return len(node.app[STREAMS]) == 1  # type: ignore[index]

        await wait_for(one_left, what="the older streams closed")
        for ws in sockets[:-1]:
            msg = await asyncio.wait_for(ws.receive(), 5)
            assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED,
                                aiohttp.WSMsgType.ERROR), msg  # fmt: skip
        assert not sockets[-1].closed
        for ws in sockets:
            await ws.close()
