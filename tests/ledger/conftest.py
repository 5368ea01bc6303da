"""Fixtures for the ledger tests: a fresh world of keys and real ledger files under tmp_path."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from podlink.ledger.ledger import Ledger, Limits
from tests.ledger.helpers import Scene, World, open_ledger

OpenLedger = Callable[..., Awaitable[Ledger]]


@pytest.fixture
def world() -> World:
    return World()


@pytest.fixture
async def make_ledger(tmp_path: Path) -> AsyncIterator[OpenLedger]:
    """Open ledgers under tmp_path (``name``, ``pod``, ``limits``); all closed at the end."""
    opened: list[Ledger] = []

    async def make(
        name: str = "pod.db", *, pod: bytes | None = None, limits: Limits | None = None
    ) -> Ledger:
        ledger = await open_ledger(tmp_path / name, pod=pod, limits=limits)
        opened.append(ledger)
        return ledger

    yield make
    for ledger in opened:
        await ledger.close()  # a no-op for ledgers a test closed itself


@pytest.fixture
async def scene(make_ledger: OpenLedger, world: World) -> Scene:
    elm, setup = world.pod("Elm")
    oak, oak_setup = world.pod("Oak")
    ana, add_ana = world.organizer(elm, "Ana")
    ben, add_ben = world.organizer(oak, "Ben")
    s = Scene(world, await make_ledger(pod=elm.id), elm, oak, ana, ben)
    await s.feed(*setup, *oak_setup, add_ana, add_ben)
    return s
