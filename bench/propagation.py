"""Propagation: ms for an event posted at one node to reach every node of a line of 5, a ring of 10.

Real nodes, all served by this process's event loop (``create_app`` + ``AppRunner``),
peered with their neighbours (POST /v1/peers both ways), each link pulling and then
holding its live WebSocket stream. Once every link is live and the nodes' founding events
have spread, an organizer of node 0 submits one ``request.open`` at a time (HTTP); the
clock runs from the submission until the last node's ledger has stored it (checked in
memory on each commit: the feed head of the event's author has reached its seq, so no
polling loads the nodes). Target: p50 ``< 1000`` ms on the line (4 hops).

All nodes share one core and one GIL here; on separate machines each hop would only be
faster, so these are upper bounds for a lightly loaded mesh.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import tempfile
import time
from pathlib import Path

from bench import Result, result
from bench._corpus import body_of
from bench._nodes import LocalNode, peer, start_local
from bench._util import percentile

SHAPES = {"line5": (5, False), "ring10": (10, True)}


def _sizes(quick: bool) -> dict[str, int]:
    return {"events": 5} if quick else {"events": 50}


async def _settle(nodes: list[LocalNode], links: int, wait_s: float = 60.0) -> None:
    """Wait until every gossip link streams live and every founding event has spread."""
    want = 2 * len(nodes)  # init_pod writes two network-lane events per pod
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        live = sum(
            1
            for n in nodes
            for link in getattr(n.node.gossip, "links", {}).values()
            if link.status.connected
        )
        held = [n.node.ledger.next_pos - 1 for n in nodes]
        if live == links and all(h >= want for h in held):
            return
        await asyncio.sleep(0.05)
    raise TimeoutError(f"mesh did not settle: {live}/{links} links live, events {held}")


async def _shape(tmp: Path, name: str, size: int, ring: bool, events: int) -> list[float]:
    nodes: list[LocalNode] = []
    try:
        for i in range(size):
            nodes.append(await start_local(tmp / f"{name}-{i}", f"{name}-{i}"))
        pairs = [(i, i + 1) for i in range(size - 1)] + ([(size - 1, 0)] if ring else [])
        for i, j in pairs:
            await peer(nodes[i], nodes[j])
        await _settle(nodes, links=2 * len(pairs))

        origin = nodes[0]
        author = await origin.client.author()
        rng = random.Random(7)
        waiting: dict[int, float] = {}  # node index -> time it stored the event
        target: tuple[bytes, int] = (b"", 0)
        done = asyncio.Event()
        start = 0.0

        def listener(index: int) -> object:
            ledger = nodes[index].node.ledger

            def on_stored(_head: int) -> None:
                if index in waiting or not target[1]:
                    return
                if ledger.heads.get((target[0], "network"), (0,))[0] >= target[1]:
                    waiting[index] = time.perf_counter()
                    if len(waiting) == size:
                        done.set()

            return on_stored

        for i, n in enumerate(nodes):
            n.node.ledger.stored_listeners.append(listener(i))  # type: ignore[arg-type]

        times: list[float] = []
        for _ in range(events):
            ev = author.write(body_of(rng, "request.open"), "network")
            waiting.clear()
            done.clear()
            target = (ev.author, ev.seq)
            start = time.perf_counter()
            await origin.client.submit([ev])
            await asyncio.wait_for(done.wait(), timeout=30)
            times.append((max(waiting.values()) - start) * 1e3)
            await asyncio.sleep(0.01)
        return times
    finally:
        for n in reversed(nodes):
            with contextlib.suppress(Exception):
                await n.close()


async def run(quick: bool) -> list[Result]:
    size = _sizes(quick)
    out: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="bench-propagation-") as tmp:
        for name, (n, ring) in SHAPES.items():
            times = await _shape(Path(tmp), name, n, ring, size["events"])
            hops = n // 2 if ring else n - 1
            shape = f"ring of {n}" if ring else f"line of {n}"
            out += [
                result(f"propagation.{name}", "ms", times,
                       target="< 1000" if not ring else None,
                       note=f"{shape} ({hops} hops to the farthest): submit at node 0 to "
                       f"stored at every node; median of {len(times)} events = p50; "
                       f"~{sorted(times)[len(times) // 2] / hops:.1f} ms/hop"),
                result(f"propagation.{name}.p99", "ms", [percentile(times, 99)],
                       note=f"p99 (nearest rank) of the same {len(times)} events"),
            ]  # fmt: skip
    return out
