"""The CLI's client and a node that is slow to answer (a `podlink sync` waiting on a long
pull): a wait longer than the client's usual one where the caller asks for it, and a
timeout said as it is, never as "is it running?" (the node answered the connection)."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp import web

from podlink.node.client import ClientError, NodeClient
from podlink.protocol.keys import Keypair


@pytest.fixture
async def slow_node() -> object:
    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(0.8)
        return web.json_response({"peers": []})

    app = web.Application()
    app.router.add_post("/v1/sync", slow)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


async def test_a_slow_answer_is_waited_for_when_asked_and_said_as_a_timeout_otherwise(
    slow_node: str,
) -> None:
    pod = Keypair.generate().public
    async with NodeClient(slow_node, Keypair.generate(), pod=pod, timeout=0.3) as client:
        with pytest.raises(ClientError) as err:
            await client.post("/v1/sync")
        assert err.value.status == 504 and "no answer within 0.3 s" in err.value.message
        assert "is it running" not in err.value.message
        assert await client.post("/v1/sync", wait_s=5) == {"peers": []}
