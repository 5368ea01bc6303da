"""Fixtures for the node tests: networks of real nodes on 127.0.0.1, each in tmp_path.

``network(n, **config)`` starts ``n`` pods (``init_pod`` in ``tmp_path/<name>``) on free
ports with quick gossip settings and returns their :class:`PodNode` handles, not yet
peered; ``peer_line`` and ``ring`` (tests/node/helpers.py) peer them by invite codes.
Every node and client is stopped at the end of the test.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.node.helpers import PodNode, make_node

NAMES = ("Alder", "Birch", "Cedar", "Damson", "Elm", "Fir", "Gorse", "Hazel")
Network = Callable[..., Awaitable[list[PodNode]]]


@pytest.fixture
async def network(tmp_path: Path) -> AsyncIterator[Network]:
    """A factory: ``await network(3, max_request_bytes=4096)`` → three running nodes."""
    made: list[PodNode] = []

    async def make(n: int, *, start: bool = True, **config: Any) -> list[PodNode]:
        nodes = []
        for _ in range(n):
            name = NAMES[len(made) % len(NAMES)] + (
                "" if len(made) < len(NAMES) else str(len(made))
            )
            node = await make_node(tmp_path / name, name, **config)
            made.append(node)
            if start:
                await node.start()
            nodes.append(node)
        return nodes

    yield make
    for node in reversed(made):
        await node.stop()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    """A bare HTTP session for hand-made (unsigned, replayed, tampered) requests."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as s:
        yield s
