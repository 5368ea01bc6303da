"""Real keys, one shared hybrid clock, and small readers for the ledger's SQLite file.

Every author of a test world stamps its events from the same :class:`HybridClock`, the way
organizers who have seen each other's events do: an organizer's first event then always
sorts after the roster.add that authorises it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from podlink.ledger.authoring import Author
from podlink.ledger.ingest import IngestResult
from podlink.ledger.ledger import Ledger, Limits
from podlink.protocol import clock, kinds
from podlink.protocol.envelope import Event, encode_wire
from podlink.protocol.keys import Keypair


@dataclass
class Pod:
    """A pod: its node key (an Author writing with it) and its organizers."""

    key: Keypair
    author: Author
    organizers: list[Author] = field(default_factory=list)

    @property
    def id(self) -> bytes:
        return self.key.public


class World:
    """Pods and organizers that share one clock."""

    def __init__(self, start_ms: int | None = None) -> None:
        start = clock.now_ms() if start_ms is None else start_ms
        self.ms = start
        # A wall that only moves when told to: runs are reproducible, and tests can write
        # "earlier" events by hand with explicit timestamps.
        self.clock = clock.HybridClock(wall=lambda: self.ms)

    def tick(self, ms: int = 1) -> None:
        self.ms += ms

    def pod(self, name: str = "Elm", *, key: Keypair | None = None) -> tuple[Pod, list[Event]]:
        """A new pod and its genesis event."""
        key = key or Keypair.generate()
        pod = Pod(key, Author(key, key.public, self.clock))
        return pod, [pod.author.write(kinds.PodFounded(name=name, zone=name), "network")]

    def organizer(
        self, pod: Pod, name: str = "Ana", *, key: Keypair | None = None,
        by: Author | None = None,
    ) -> tuple[Author, Event]:  # fmt: skip
        """A new organizer key and the roster.add for it (by the pod's key, or ``by``)."""
        key = key or Keypair.generate()
        adder = by or pod.author
        add = adder.write(kinds.OrganizerAdded(key=key.public, name=name), "network")
        org = Author(key, pod.id, self.clock)
        pod.organizers.append(org)
        return org, add


def wires(events: Iterable[Event]) -> list[bytes]:
    return [e.to_wire() for e in events]


def bodiless(event: Event) -> bytes:
    """The wire form of an event whose body was left behind in transit."""
    return encode_wire(event.payload, event.sig, None)


def with_body(event: Event, body: bytes) -> bytes:
    """The wire form of an event carrying some other body than the one it was signed with."""
    return encode_wire(event.payload, event.sig, body)


def statuses(results: Sequence[IngestResult]) -> list[str]:
    return [r.status for r in results]


def reasons(results: Sequence[IngestResult]) -> list[str | None]:
    return [r.reason for r in results]


async def open_ledger(
    path: Path, *, pod: bytes | None = None, limits: Limits | None = None
) -> Ledger:
    ledger = await Ledger.open(path, limits=limits)
    if pod is not None:
        await ledger.set_pod(pod)
    return ledger


async def until_queued(ledger: Ledger, n: int, within: float = 20.0) -> None:
    """Wait until exactly ``n`` appends wait in the ledger's group-commit queue (a test
    holds the writer). Each append decodes and verifies in the ledger's threads before it
    queues: a fixed sleep of 10-50 ms was not always enough on a loaded machine."""
    deadline = time.monotonic() + within
    while len(ledger._appends) < n:
        if time.monotonic() > deadline:
            raise AssertionError(f"{len(ledger._appends)} of {n} appends queued in {within} s")
        await asyncio.sleep(0.001)
    assert len(ledger._appends) == n, (len(ledger._appends), n)


async def query(ledger: Ledger, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
    return [tuple(r) for r in await ledger.db.execute_fetchall(sql, params)]


async def one(ledger: Ledger, sql: str, params: Sequence[Any] = ()) -> Any:
    found = await query(ledger, sql, params)
    assert len(found) <= 1, found
    return found[0][0] if found and len(found[0]) == 1 else (found[0] if found else None)


async def count(ledger: Ledger, table: str) -> int:
    return (await query(ledger, f"SELECT count(*) FROM {table}"))[0][0]


async def stored_ids(ledger: Ledger) -> set[bytes]:
    return {r[0] for r in await query(ledger, "SELECT id FROM events")}


async def request_row(ledger: Ledger, request: bytes) -> dict[str, Any] | None:
    cur = await ledger.db.execute("SELECT * FROM requests WHERE id = ?", (request,))
    row = await cur.fetchone()
    names = [d[0] for d in cur.description]
    await cur.close()
    return None if row is None else dict(zip(names, row, strict=True))


async def claim_status(ledger: Ledger, claim: bytes) -> str | None:
    return await one(ledger, "SELECT status FROM claims WHERE id = ?", (claim,))


@dataclass
class Scene:
    """Two pods, Elm and Oak, one organizer each, and a ledger holding their setup."""

    world: World
    ledger: Ledger
    elm: Pod
    oak: Pod
    ana: Author  # organizes Elm
    ben: Author  # organizes Oak

    async def feed(self, *events: Event) -> None:
        results = await self.ledger.ingest(wires(events))
        assert statuses(results) == ["stored"] * len(events), results

    async def rebuild_equals_live(self) -> None:
        live = await self.ledger.dump()
        await self.ledger.rebuild()
        assert await self.ledger.dump() == live

    def need(self, by: Author | None = None, title: str = "Soup") -> Event:
        return (by or self.ana).write(kinds.RequestOpened(title=title, category="food"), "network")


def diff(a: dict, b: dict) -> dict:
    """What differs between two canonical dumps, table by table (for assertion messages)."""
    return {
        t: {
            "only a": [r for r in a[t] if r not in b[t]],
            "only b": [r for r in b[t] if r not in a[t]],
        }
        for t in a
        if a[t] != b[t]
    }
