"""Append: organizer submissions over a real node's HTTP API vs Ledger.append of the same events.

A node runs in this process (``create_app`` + ``AppRunner`` on 127.0.0.1, an ephemeral
port); organizers submit pre-signed events one per request with ``NodeClient.submit``,
either one submitter at a time or 8 at once (each with its own key, put on the roster by
``roster.add`` events signed by the pod key). The baseline appends the very same events,
in the same shapes (one at a time; 8 tasks at once), to a ledger opened directly, holding
the same history. Each submission is its own transaction (an fsync) on both sides.
Reported: events/s, p50 and p99 latency per submission, and the ratios HTTP / direct.
"""

from __future__ import annotations

import asyncio
import random
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

from bench import Result, result
from bench._corpus import body_of, keypair
from bench._nodes import LocalNode, start_local
from bench._util import Stopwatch, Timed, busy, percentile, rates, rounds
from podlink.ledger.authoring import Author
from podlink.ledger.ledger import Ledger
from podlink.node.client import NodeClient
from podlink.protocol import kinds
from podlink.protocol.envelope import Event, encode_wire

SUBMITTERS = 8
KINDS = ("request.open", "offer.open", "resource.share")


def _sizes(quick: bool) -> dict[str, int]:
    if quick:
        return {"serial": 60, "concurrent": 64, "repeats": 3}
    return {"serial": 1000, "concurrent": 1000, "repeats": 5}


class Submitter:
    """One organizer: its key, an HTTP client, and an Author chained on its feeds."""

    def __init__(self, client: NodeClient, author: Author, seed: int) -> None:
        self.client = client
        self.author = author
        self.rng = random.Random(seed)

    def sign(self, n: int) -> list[Event]:
        out = []
        for _ in range(n):
            kind = self.rng.choice(KINDS)
            lane = "network" if kind == "resource.share" else self.rng.choice(("peers", "network"))
            out.append(self.author.write(body_of(self.rng, kind), lane))  # type: ignore[arg-type]
        return out


async def _setup(node: LocalNode, base: Ledger) -> list[Submitter]:
    """Put SUBMITTERS organizer keys on the roster (roster.add by the pod key), and give
    the baseline ledger the node's history so both hold the same events from here on."""
    keys = [keypair(f"submitter-{i}") for i in range(SUBMITTERS)]
    pod_author = await node.pod_client.author()
    adds = [pod_author.write(kinds.OrganizerAdded(key=k.public, name=f"submitter {i}"),
                             "network") for i, k in enumerate(keys)]  # fmt: skip
    await node.pod_client.submit(adds)
    history = await node.node.ledger.reader.execute_fetchall(
        "SELECT payload, sig, body FROM events ORDER BY pos"
    )
    await base.set_pod(node.pod)
    results = await base.append([encode_wire(p, s, b) for p, s, b in history])
    if not all(r.ok for r in results):
        raise AssertionError(f"baseline refused the node's history: {results}")
    out = []
    for i, k in enumerate(keys):
        client = node.client_for(k)
        out.append(Submitter(client, await client.author(), seed=i))
    return out


async def _each(
    streams: Sequence[Sequence[Event]], send: Callable[[Event], Awaitable[None]]
) -> tuple[Timed, list[float]]:
    """Send each stream's events one at a time, all streams at once; time every send."""
    latencies: list[float] = []

    async def one(events: Sequence[Event]) -> None:
        for ev in events:
            t = time.perf_counter()
            await send(ev)
            latencies.append(time.perf_counter() - t)

    with Stopwatch() as sw:
        await asyncio.gather(*(one(s) for s in streams))
    return sw.timed(sum(map(len, streams))), latencies


async def run(quick: bool) -> list[Result]:
    size = _sizes(quick)
    with tempfile.TemporaryDirectory(prefix="bench-append-") as tmp:
        node = await start_local(Path(tmp) / "node", "Append")
        base = await Ledger.open(Path(tmp) / "base.db")
        try:
            subs = await _setup(node, base)
            pending: dict[str, list[list[Event]]] = {}
            lat: dict[str, list[list[float]]] = {}

            async def http(ev: Event, client: NodeClient) -> None:
                results = await client.submit([ev])
                if results[0]["status"] != "stored":
                    raise AssertionError(f"node did not store a submission: {results}")

            async def direct(ev: Event) -> None:
                results = await base.append([ev.to_wire()])
                if results[0].status != "stored":
                    raise AssertionError(f"ledger did not store an append: {results}")

            def variant(shape: str, over_http: bool) -> Callable[[], Awaitable[Timed]]:
                async def go() -> Timed:
                    if over_http:  # sign this round's events; the baseline reuses them
                        if shape == "serial":
                            pending[shape] = [subs[0].sign(size["serial"])]
                        else:
                            per = size["concurrent"] // SUBMITTERS
                            pending[shape] = [s.sign(per) for s in subs]
                        streams = pending[shape]
                        by_author = {s.author.keypair.public: s.client for s in subs}

                        async def send(ev: Event) -> None:
                            await http(ev, by_author[ev.author])

                    else:
                        streams = pending[shape]
                        send = direct
                    timed, latencies = await _each(streams, send)
                    key = f"{'http' if over_http else 'ledger'}.{shape}"
                    lat.setdefault(key, []).append(latencies)
                    return timed

                return go

            t = await rounds(
                {
                    "http.serial": variant("serial", True),
                    "ledger.serial": variant("serial", False),
                    "http.concurrent8": variant("concurrent8", True),
                    "ledger.concurrent8": variant("concurrent8", False),
                },
                size["repeats"],
            )
        finally:
            await base.close()
            await node.close()

    def pct(key: str, q: float) -> list[float]:
        return [percentile(run, q) * 1e3 for run in lat[key]]

    out: list[Result] = []
    for shape, what in (("serial", "one submitter, one event per request, one after another"),
                        ("concurrent8", f"{SUBMITTERS} submitters at once (own keys), one event"
                                        " per request each")):  # fmt: skip
        n = size["serial"] if shape == "serial" else size["concurrent"]
        base_rate = (f"append.ledger.{shape}", rates(t[f"ledger.{shape}"]))
        out += [
            result(f"append.ledger.{shape}", "ops/s", base_rate[1],
                   note=f"Ledger.append([event]) directly, same events, same shape; "
                   f"{busy(t[f'ledger.{shape}'])}"),
            result(f"append.http.{shape}", "ops/s", rates(t[f"http.{shape}"]),
                   baseline=base_rate,
                   note=f"POST /v1/events via NodeClient.submit: {what}; {n} events/run; "
                   f"{busy(t[f'http.{shape}'])}"),
        ]  # fmt: skip
        for q in (50, 99):
            b = (f"append.ledger.{shape}.p{q}", pct(f"ledger.{shape}", q))
            out += [
                result(b[0], "ms", b[1], note=f"p{q} of one Ledger.append call"),
                result(f"append.http.{shape}.p{q}", "ms", pct(f"http.{shape}", q), baseline=b,
                       note=f"p{q} of one submission, request to reply"),
            ]  # fmt: skip
    return out
