"""kill -9 a running node, again and again, while organizers and a peer write to it.

The victim is a real node in a child process (tests/reliability/served.py). Two organizers
submit events to it as fast as it answers, each recording every id the node acknowledged
(``stored`` or ``duplicate`` in the reply); a second node, in this process and peered with
it both ways, writes network events that the victim pulls (and pulls the victim's). At
random moments — while it starts, while it serves — the victim gets SIGKILL. After every
kill, with the victim down, its file must hold every acknowledged event (and each
acknowledged member's key), pass ``PRAGMA integrity_check`` and ``Ledger.verify()``, have
projections equal to a rebuild, no fork rows, the same store epoch, a cursor into the
peer that never went back, and a head at or past the cursor the peer holds into it (the
peer never saw an event that the crash took away). At the end both nodes converge on the
same shareable events.

The default (CI) run kills 20 times within ~75 s; PODLINK_LONG=1 kills 100 times.
PODLINK_CRASH_SEED=N replays one run (the seed is printed).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from podlink.ledger.ledger import Ledger
from podlink.ledger.store import rows, scalar
from podlink.node.client import ClientError, NodeClient
from podlink.protocol import boxes, kinds
from podlink.protocol.envelope import Event
from podlink.protocol.keys import Keypair
from podlink.protocol.text import b64e
from tests.node.helpers import PodNode, make_node, wait_for
from tests.reliability.served import ServedNode, stable_port

LONG = os.environ.get("PODLINK_LONG") == "1"
KILLS = 100 if LONG else 20
WALL_S = 420.0 if LONG else 75.0
MIN_KILLS = 8  # on a very slow machine the wall bound may stop the run early; never below


@dataclass
class Feeder:
    """One organizer submitting batches back to back, recording what the node acknowledged."""

    name: str
    node: PodNode
    keypair: Keypair
    rng: random.Random
    acked: set[bytes] = field(default_factory=set)
    acked_members: dict[bytes, bytes] = field(default_factory=dict)  # member id -> key
    requests: list[bytes] = field(default_factory=list)
    submitted: int = 0
    failures: int = 0  # requests that died with the node (not acknowledged: fine)
    surprises: list[str] = field(default_factory=list)  # refusals an honest writer never gets

    async def run(self) -> None:
        client = NodeClient(self.node.url, self.keypair, timeout=10)
        try:
            while True:
                try:
                    author = await client.author()  # chain on what the node really holds
                    while True:
                        await self._one_batch(client, author)
                except ClientError as err:
                    if err.reason != "unavailable":
                        self.surprises.append(f"{err.reason}: {err.message}"[:300])
                    self.failures += 1
                except (aiohttp.ClientError, TimeoutError, ConnectionError):
                    self.failures += 1
                await asyncio.sleep(0.02)  # the node is down (or starting): try again soon
        finally:
            await client.close()

    async def _one_batch(self, client: NodeClient, author: Any) -> None:
        events: list[Event] = []
        keys: dict[bytes, bytes] = {}
        for _ in range(self.rng.randint(1, 8)):
            roll = self.rng.random()
            if roll < 0.12:
                key = boxes.new_member_key()
                details = kinds.MemberDetails(name=f"{self.name} member {self.submitted}")
                box = boxes.lock(key, kinds.encode_body(details))
                event = author.write(kinds.MemberJoined(box=box), "pod")
                keys[event.id] = key
            elif roll < 0.25 and self.requests:
                target = self.rng.choice(self.requests)
                event = author.write(
                    kinds.RequestUpdated(urgency=self.rng.choice(kinds.URGENCIES)),  # type: ignore[arg-type]
                    "network", [target],
                )  # fmt: skip
            elif roll < 0.35:
                event = author.write(
                    kinds.OfferOpened(title=f"{self.name} offer", category="tools"), "peers"
                )
            else:
                lane = "pod" if roll > 0.85 else "network"
                event = author.write(
                    kinds.RequestOpened(title=f"{self.name} need {self.submitted}",
                                        category="food"), lane)  # fmt: skip
                self.requests.append(event.id)
            events.append(event)
            self.submitted += 1
        results = await client.submit(events, member_keys=keys)
        for event, result in zip(events, results, strict=True):
            if result["status"] in ("stored", "duplicate"):
                self.acked.add(event.id)
                if event.id in keys:
                    self.acked_members[event.id] = keys[event.id]


async def peer_writer(peer: PodNode, rng: random.Random, written: list[bytes]) -> None:
    """The peer's organizer: network needs in small batches, at a brisk pace."""
    author = await peer.author()
    n = 0
    while True:
        events = []
        for _ in range(rng.randint(1, 5)):
            n += 1
            need = kinds.RequestOpened(title=f"peer need {n}", category="water")
            events.append(author.write(need, "network"))
        results = await peer.client.submit(events)
        assert all(r["status"] == "stored" for r in results), results
        written += [e.id for e in events]
        await asyncio.sleep(rng.uniform(0.0, 0.05))


@dataclass
class Tally:
    kills: int = 0
    early_kills: int = 0  # killed before it served its first request
    checked: int = 0  # acknowledged events found again, summed over every check
    victim_cursor: int = 0  # the victim's cursor into the peer, as saved on its disk
    peer_cursor: int = 0  # the peer's cursor into the victim


async def check_after_kill(
    db: Path, feeders: list[Feeder], tally: Tally, epoch: bytes, peer: PodNode, seed: int
) -> None:
    """Everything the brief promises about a file a SIGKILL left behind."""
    where = f"(seed {seed}, after kill {tally.kills})"
    async with await Ledger.open(db) as ledger:
        assert await scalar(ledger.db, "PRAGMA integrity_check") == "ok", where
        assert ledger.epoch == epoch, f"a crash must not look like a restore {where}"
        stored = {r[0] for r in await rows(ledger.db, "SELECT id FROM events")}
        for f in feeders:
            lost = f.acked - stored
            assert not lost, f"{f.name}: {len(lost)} acknowledged events lost {where}"
            tally.checked += len(f.acked)
            keys = dict(await rows(ledger.db, "SELECT member, key FROM member_keys"))
            for member, key in f.acked_members.items():
                assert keys.get(member) == key, f"{f.name}: member key lost {where}"
        report = await ledger.verify()
        assert report.ok, (where, report.problems[:5] if report.problems else None)
        assert await scalar(ledger.db, "SELECT count(*) FROM forks") == 0, where
        # The feed heads agree with the log, and nothing parked is also stored.
        heads = sorted(await rows(ledger.db, "SELECT author, lane, seq FROM feeds"))
        tops = sorted(await rows(
            ledger.db, "SELECT author, lane, max(seq) FROM events GROUP BY 1, 2"))  # fmt: skip
        assert heads == tops, where
        live = await ledger.dump()
        await ledger.rebuild()
        assert await ledger.dump() == live, f"projections differ from a rebuild {where}"

        # The victim's cursor into the peer only moves forward (resumes, never rewinds).
        cursor = await scalar(ledger.db, "SELECT cursor FROM peers WHERE pod = ?", (peer.pod,))
        assert cursor is not None and cursor >= tally.victim_cursor, (cursor, tally, where)
        tally.victim_cursor = cursor
        # The peer never holds a cursor past what the victim kept: it was only ever shown
        # committed, durable events.
        head = await scalar(ledger.db, "SELECT max(pos) FROM events") or 0
        record = peer.node.peers.get(ledger.pod or b"")
        assert record is not None
        assert record.cursor <= head, f"peer cursor {record.cursor} > victim head {head} {where}"
        assert record.cursor >= tally.peer_cursor, where
        tally.peer_cursor = record.cursor


@pytest.mark.slow
async def test_kill_9_under_load_loses_nothing_acknowledged(
    network: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="podlink.gossip")
    seed = int(os.environ.get("PODLINK_CRASH_SEED", random.randrange(2**31)))
    print(f"\ncrash test seed: {seed} (PODLINK_CRASH_SEED={seed} replays it)")
    rng = random.Random(seed)

    [peer] = await network(1)
    victim_pod = await make_node(tmp_path / "Victim", "Victim", port=stable_port())
    victim = ServedNode(victim_pod)
    second = Keypair.generate()
    tally = Tally()
    tasks: list[asyncio.Task[None]] = []
    peer_written: list[bytes] = []
    started = time.monotonic()
    try:
        await victim.start()
        await victim_pod.write(kinds.OrganizerAdded(key=second.public, name="Second"))
        await peer.client.post("/v1/peers", {"url": victim.url, "key": victim_pod.key})
        await victim_pod.client.post("/v1/peers", {"url": peer.url, "key": peer.key})
        epoch = await _epoch_via_peer(peer, victim_pod)

        feeders = [
            Feeder("first", victim_pod, victim_pod.organizer, random.Random(rng.random())),
            Feeder("second", victim_pod, second, random.Random(rng.random())),
        ]
        tasks = [asyncio.create_task(f.run()) for f in feeders]
        tasks.append(asyncio.create_task(
            peer_writer(peer, random.Random(rng.random()), peer_written)))  # fmt: skip

        deadline = started + WALL_S
        while tally.kills < KILLS and time.monotonic() < deadline:
            if not victim.running:
                await victim.spawn()
            if rng.random() < 0.15:  # while it opens its ledger, migrates, binds
                await asyncio.sleep(rng.uniform(0.0, 0.5))
                tally.early_kills += 1
            else:
                await victim.wait_ready()
                await asyncio.sleep(rng.uniform(0.05, 1.2))
            await victim.kill()
            tally.kills += 1
            await check_after_kill(victim.db, feeders, tally, epoch, peer, seed)

        # The last restart: writers stop, and both sides converge.
        await victim.start()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for f in feeders:
            assert not f.surprises, (f.name, f.surprises[:3], seed)
        await converge(victim_pod, peer, peer_written)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await victim.stop()
    took = time.monotonic() - started
    acked = sum(len(f.acked) for f in feeders)
    print(
        f"kills survived: {tally.kills} ({tally.early_kills} while starting) in {took:.0f} s; "
        f"{acked} acknowledged events ({tally.checked} checks), "
        f"{len(peer_written)} pulled from the peer, "
        f"{sum(f.failures for f in feeders)} requests cut by a kill"
    )
    assert tally.kills >= min(KILLS, MIN_KILLS), (tally, seed)
    assert acked > 0 and peer_written
    restored = [r for r in caplog.records if "store restored" in r.getMessage()]
    assert not restored, "a kill -9 must never look like a restored store to a peer"


async def _epoch_via_peer(peer: PodNode, victim: PodNode) -> bytes:
    """The victim's store epoch, as the peer learns it from its first page."""

    async def known() -> bytes | None:
        record = peer.node.peers.get(victim.pod)
        return record.epoch if record is not None else None

    return await wait_for(known, within=20, what="the peer's first page from the victim")


async def converge(victim: PodNode, peer: PodNode, peer_written: list[bytes]) -> None:
    """The victim holds every event the peer wrote, and the peer every shareable event the
    victim holds (the pod lane stays home)."""
    wanted_at_victim = {b64e(i) for i in peer_written}

    async def victim_has_all() -> bool:
        return wanted_at_victim <= {r["id"] for r in await whole_log(victim)}

    try:
        await wait_for(victim_has_all, within=60, every=0.2, what="the victim to pull the peer")
        shareable = {r["id"] for r in await whole_log(victim) if r["lane"] != "pod"}

        async def peer_has_all() -> bool:
            return shareable <= {r["id"] for r in await whole_log(peer)}

        await wait_for(peer_has_all, within=60, every=0.2, what="the peer to pull the victim")
    except AssertionError:
        for who, node in (("victim", victim), ("peer", peer)):
            print(who, await node.status(), await node.client.get("/v1/peers"))
        raise
    peer_log = await whole_log(peer)
    assert not [r for r in peer_log if r["lane"] == "pod" and r["pod"] == victim.key]
    assert (await victim.status())["forks"] == 0
    assert (await victim.client.post("/v1/verify"))["ok"] is True


async def whole_log(node: PodNode) -> list[dict[str, Any]]:
    """Every row of a node's /v1/log, page by page."""
    out: list[dict[str, Any]] = []
    since = 0
    while True:
        page = await node.client.get("/v1/log", since=since, limit=5000)
        if not page:
            return out
        out += page
        since = page[-1]["pos"]
