"""Sync: a fresh node pulls N events from a peer; events/s vs ingest, wire and idle bytes, RSS.

Node A holds N events of another pod (network lane, so peers may see them; ingested
straight into A's ledger before A starts) plus its own. Each round a fresh node B starts,
A and B add each other (POST /v1/peers, A first), and B's gossip pulls until its ledger
holds everything A shows it: that time gives events/s. A and B run in child processes
(``bench._child``), so neither shares this process's core or GIL, and B reaches A through
a loopback proxy here that counts the bytes both ways.

Baseline, in the same rounds: ``Ledger.ingest`` of the same wires (same order) into a fresh
ledger in this process, B's own pipeline without the network. Targets: sync rate / ingest
rate ``>= 0.8``; wire bytes (requests + responses) per event / raw event bytes ``<= 1.2``;
one caught-up ``GET /v1/peer/changes`` (request + response) ``< 1000`` bytes; B's peak
RSS ``< 200`` MB.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import tempfile
from pathlib import Path

import aiohttp
import yarl

from bench import Result, result
from bench._corpus import pod_wires
from bench._nodes import (
    ChildNode,
    CountingProxy,
    finish_fresh_node,
    make_home,
    pull_into_fresh_node,
)
from bench._util import (
    Stopwatch,
    Timed,
    cpu_seconds,
    cpu_us,
    process_cpu_seconds,
    rates,
    remove_db,
    rounds,
)
from podlink.ledger.ledger import Ledger
from podlink.node.api_types import page_decoder
from podlink.protocol.envelope import encode_wire
from podlink.protocol.http_auth import sign_request
from podlink.protocol.keys import Keypair, load_keypair

AUTHORS = 50


def _sizes(quick: bool) -> dict[str, int]:
    if quick:
        return {"events": 3_000, "repeats": 2}
    return {"events": 50_000, "repeats": 3}


async def signed_get(
    url: str, pod: bytes, keypair: Keypair, path: str, **query: object
) -> bytes:
    """One signed GET to ``pod``'s node on a fresh connection, as a peer's gossip would
    send it."""
    full = yarl.URL(url + path).with_query({k: str(v) for k, v in query.items()})
    headers = sign_request(keypair, "GET", full.raw_path_qs, pod=pod)
    async with aiohttp.ClientSession() as session, session.get(full, headers=headers) as resp:
        data = await resp.read()
        if resp.status != 200:
            raise RuntimeError(f"GET {path}: HTTP {resp.status} {data[:200]!r}")
        return data


async def prepare_a(home: Path, n: int) -> tuple[object, list[bytes]]:
    """A's home, holding ``n`` remote events; returns its config and the wires a peer sees,
    in A's store order."""
    config = await make_home(home, "A")
    wires = pod_wires(n, authors=AUTHORS, lane="network")
    ledger = await Ledger.open(config.ledger_path)
    try:
        results = await ledger.ingest(wires, source="peer")
        if not all(r.status == "stored" for r in results):
            raise AssertionError("A did not store its corpus")
        visible = await ledger.db.execute_fetchall(
            "SELECT payload, sig, body FROM events WHERE lane = 'network' "
            "OR (lane = 'peers' AND pod = ?) ORDER BY pos",
            (ledger.pod,),
        )
    finally:
        await ledger.close()
    return config, [encode_wire(p, s, b) for p, s, b in visible]


async def run(quick: bool) -> list[Result]:
    size = _sizes(quick)
    n = size["events"]
    syncs: list[Timed] = []
    wire: list[float] = []
    idle: list[float] = []
    rss: list[float] = []
    worker_rss: list[float] = []
    workers: list[int] = []
    b_cpu: list[float] = []
    a_cpu: list[float] = []
    with tempfile.TemporaryDirectory(prefix="bench-sync-") as tmp:
        tmpdir = Path(tmp)
        a_config, visible = await prepare_a(tmpdir / "A", n)
        expect = len(visible)
        raw_bytes = sum(map(len, visible))
        a = await ChildNode.start(a_config)
        proxy = await CountingProxy(a_config.host, a_config.port).start()
        timeout = 30.0 if quick else max(120.0, expect / 200)  # quick: fail fast in CI
        counter = iter(range(1000))
        try:

            async def sync() -> Timed:
                proxy.up = proxy.down = 0
                a_before = process_cpu_seconds(a.proc.pid)
                pulled = await pull_into_fresh_node(
                    a, tmpdir / f"B{next(counter)}", expect, a_url=proxy.url, wait_s=timeout
                )
                try:
                    wire.append(proxy.total / expect)
                    a_cpu.append((process_cpu_seconds(a.proc.pid) - a_before) / expect * 1e6)
                    # One idle round: B's key asks A (through the proxy) for changes past
                    # A's head, on a fresh connection.
                    b_key = load_keypair(pulled["b_config"].node_key_path)
                    a_pod = load_keypair(a_config.node_key_path).public
                    first = await signed_get(
                        proxy.url, a_pod, b_key, "/v1/peer/changes", since=0, limit=1
                    )
                    head = page_decoder.decode(first).head
                    await asyncio.sleep(0.2)
                    before = proxy.total
                    page = page_decoder.decode(
                        await signed_get(proxy.url, a_pod, b_key, "/v1/peer/changes", since=head)
                    )
                    await asyncio.sleep(0.05)
                    if page.events:
                        raise AssertionError("the idle round was not idle")
                    idle.append(proxy.total - before)
                finally:
                    final = await finish_fresh_node(a, pulled)
                rss.append(final["rss_peak_mb"])  # B and its verify workers, sampled together
                worker_rss.append(final["workers_rss_peak_mb"])
                workers.append(final["workers"])
                b_cpu.append(final["cpu_s"] / expect * 1e6)
                return Timed(final["elapsed"], float("nan"), expect)

            async def ingest() -> Timed:
                path = tmpdir / "base.db"
                ledger = await Ledger.open(path)
                cpu = cpu_seconds()
                try:
                    with Stopwatch() as sw:
                        results = await ledger.ingest(visible, source="peer")
                finally:
                    # Closing reaps the verify workers: their CPU is counted then, as in
                    # B's figure (B's node reports after it has closed its ledger).
                    await ledger.close()
                    cpu = cpu_seconds() - cpu
                    remove_db(path)
                if sum(r.status == "stored" for r in results) != expect:
                    raise AssertionError("baseline ingest did not store every event")
                return Timed(sw.wall, cpu, expect)

            t = await rounds({"ingest": ingest, "sync": sync}, size["repeats"])
            syncs = t["sync"]
        finally:
            await proxy.close()
            with contextlib.suppress(Exception):
                await a.stop()

    base = ("sync.ingest", rates(t["ingest"]))
    raw = ("sync.wire.raw", [raw_bytes / expect] * len(wire))
    cpu_base = ("sync.ingest.cpu", cpu_us(t["ingest"]))
    what = f"{expect:,} events ({n:,} by {AUTHORS} organizers of another pod + rosters)"
    return [
        result("sync.ingest", "ops/s", base[1],
               note=f"Ledger.ingest of the same wires into a fresh ledger, this process; {what}"),
        result("sync.pull", "ops/s", rates(syncs), baseline=base, target=">= 0.8",
               note="fresh node B peers with A (child processes) and pulls until its ledger "
               "holds them all (POST /v1/peers to the last store)"),
        result("sync.ingest.cpu", "us/event", cpu_base[1],
               note="CPU per event of the baseline ingest, its verify workers included"),
        result("sync.pull.cpu.b", "us/event", b_cpu, baseline=cpu_base,
               note="node B's process CPU per event, from ready to stop, its verify "
               "workers included"),
        result("sync.pull.cpu.a", "us/event", a_cpu,
               note="node A's process CPU per event served (pages, auth, gossip)"),
        result("sync.wire.raw", "B/event", raw[1], note="wire bytes of the events themselves"),
        result("sync.wire", "B/event", wire, baseline=raw, target="<= 1.2",
               note="bytes through the proxy both ways (HTTP requests + responses) per event"),
        result("sync.idle", "B", idle, target="< 1000",
               note="one caught-up signed GET /v1/peer/changes: request + response bytes"),
        result("sync.rss.peak", "MB", rss, target="< 200",
               note="node B's peak RSS over the sync, with its verify worker processes "
               f"({max(workers)}; {statistics.median(worker_rss):.0f} MB together at their "
               "peak): sampled every 10 ms, the node's RSS plus theirs"),
    ]  # fmt: skip
