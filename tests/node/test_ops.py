"""Operating a node: /metrics, the public /v1/info, and a graceful stop on SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from podlink.node.client import ClientError
from podlink.protocol.envelope import encode_wire
from podlink.protocol.text import b64e
from tests.node.helpers import join, make_node, peer_line, wait_converged, wait_for, wait_linked


async def metrics(session: aiohttp.ClientSession, url: str) -> str:
    async with session.get(url + "/metrics") as resp:
        assert resp.status == 200
        assert resp.content_type == "text/plain"
        return await resp.text()


def value(text: str, series: str) -> float:
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{series} not in /metrics:\n{text}")


async def test_metrics(network: Any, session: aiohttp.ClientSession) -> None:
    a, b = nodes = await network(2)
    await peer_line(nodes)
    event = await a.open_request("counted")
    forged = encode_wire(event.payload, bytes(64), event.body)
    with pytest.raises(ClientError):
        await a.client.post("/v1/events", {"events": [b64e(forged)]})
    async with session.get(a.url + "/v1/status") as resp:  # unsigned: refused
        assert resp.status == 401
    await wait_converged(nodes)

    text = await metrics(session, a.url)
    assert "# TYPE podlink_events_stored_total counter" in text
    assert value(text, 'podlink_events_stored_total{source="local"}') == 1
    assert value(text, 'podlink_events_refused_total{reason="forged"}') == 1
    assert value(text, "podlink_ledger_events") == await a.event_count()
    assert value(text, 'podlink_http_requests_total{route="/v1/events",status="200"}') == 1
    # Refusals are counted too, under their route and status.
    assert value(text, 'podlink_http_requests_total{route="/v1/events",status="401"}') == 1
    assert value(text, 'podlink_http_requests_total{route="/v1/status",status="401"}') == 1
    assert value(text, f'podlink_peer_connected{{peer="{b.key[:8]}"}}') == 1
    assert value(text, f'podlink_peer_lag_events{{peer="{b.key[:8]}"}}') == 0

    text_b = await metrics(session, b.url)
    assert value(text_b, 'podlink_events_stored_total{source="peer"}') >= 1
    assert "# TYPE podlink_peer_connected gauge" in text_b


async def test_info_is_public(network: Any, session: aiohttp.ClientSession) -> None:
    [a] = await network(1)
    async with session.get(a.url + "/v1/info") as resp:
        assert resp.status == 200
        info = await resp.json()
    assert info["pod"] == a.key and info["name"] == "Alder"
    assert info["protocols"] == [1] and info["version"]
    async with session.get(a.url + "/") as resp:
        assert (await resp.json())["info"] == "/v1/info"
    async with session.get(a.url + "/v1/openapi.json") as resp:
        assert (await resp.json())["openapi"].startswith("3.1")


async def test_stop_with_live_streams_is_prompt(network: Any) -> None:
    """Open peer streams must not hold a stopping node (or its peers) hostage."""
    nodes = await network(3)
    await peer_line(nodes)
    started = time.monotonic()
    await nodes[1].stop()  # the middle one: two streams in, two out
    took = time.monotonic() - started
    print(f"\nstop with 4 live streams: {took * 1000:.0f} ms")
    assert took < 3.0


SERVE = (
    "from podlink.node.app import run_node; from podlink.node.config import load_config; "
    "import sys; from pathlib import Path; run_node(load_config(Path(sys.argv[1])))"
)


async def test_sigterm_stops_gracefully(network: Any, tmp_path: Path) -> None:
    [local] = await network(1)
    served = await make_node(tmp_path / "served", "Served")  # not started here: a subprocess
    env = {k: v for k, v in os.environ.items() if not k.startswith("PODLINK_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        SERVE,
        str(served.home),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    try:
        await wait_for(lambda: _answers(served.url), within=15, what="the node to serve")
        # Peer it, so live streams run both ways when the signal comes, and write to it.
        await join(local, served)
        await wait_linked([(local, served)])
        await served.open_request("written before the stop")
        await local.open_request("pulled before the stop")
        await wait_converged([local, served])
        events = await served.event_count()

        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(proc.communicate(), 20)
        took = time.monotonic() - started
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await served.close_client()
    print(f"\nSIGTERM to exit: {took * 1000:.0f} ms")
    assert proc.returncode == 0, err.decode()[-2000:]
    assert b"Traceback" not in err, err.decode()[-2000:]
    assert took < 8.0, "the node waited out its shutdown timeout"
    with sqlite3.connect(served.config.ledger_path) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert db.execute("SELECT count(*) FROM events").fetchone() == (events,)
    db.close()
    # The peer that was streaming from it notices and keeps serving its own organizers.
    assert (await local.status())["name"] == "Alder"


async def _answers(url: str) -> bool:
    try:
        async with aiohttp.ClientSession() as s, s.get(url + "/v1/info") as resp:
            return resp.status == 200
    except aiohttp.ClientError:
        return False
