"""Invites and peering: one-time codes, expiry, peering by URL and key, removing peers and
organizers (access ends at once)."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest
import yarl

from podlink.node import invites
from podlink.node.client import ClientError
from podlink.protocol import kinds
from podlink.protocol.http_auth import sign_request
from podlink.protocol.keys import Keypair
from tests.node.helpers import PodNode, join, peer_line, wait_converged, wait_for, wait_linked


async def peer_get(node: PodNode, key: Keypair, path: str) -> int:
    async with aiohttp.ClientSession() as session:
        url = yarl.URL(node.url + path)
        headers = sign_request(key, "GET", url.raw_path_qs, pod=node.pod)
        async with session.get(url, headers=headers) as resp:
            return resp.status


async def test_join_peers_both_sides(network: Any) -> None:
    a, b = await network(2)
    invite = await a.client.post("/v1/invites")
    assert invite["invite"].startswith("podlink1.")
    joined = await b.client.post("/v1/peers/join", {"invite": invite["invite"]})
    assert joined["pod"] == a.key and joined["name"] == "Alder" and joined["url"] == a.url
    assert (await a.peers())[b.key]["url"] == b.url
    assert (await b.peers())[a.key]["name"] == "Alder"
    await wait_linked([(a, b)])
    event = await a.open_request("hello Birch")
    await wait_for(lambda: _has(b, event.id_text), what="the request at Birch")


async def test_invite_is_one_time(network: Any) -> None:
    a, b, c = await network(3)
    invite = (await a.client.post("/v1/invites"))["invite"]
    await b.client.post("/v1/peers/join", {"invite": invite})
    with pytest.raises(ClientError) as err:
        await c.client.post("/v1/peers/join", {"invite": invite})
    assert err.value.reason == "invalid" and "already used" in err.value.message
    assert err.value.status < 500
    assert c.key not in await a.peers() and a.key not in await c.peers()
    # The same pod presenting it again is harmless (a retry after a lost reply).
    await b.client.post("/v1/peers/join", {"invite": invite})
    assert set(await a.peers()) == {b.key}


async def test_expired_invite_is_refused(network: Any) -> None:
    a, b = await network(2)
    a.reconfigure(invite_ttl_s=-1)
    await a.restart()
    code = (await a.client.post("/v1/invites"))["invite"]
    with pytest.raises(ClientError) as err:  # the joining node sees the date itself
        await b.client.post("/v1/peers/join", {"invite": code})
    assert (err.value.status, err.value.reason) == (400, "invalid")
    assert "expired" in err.value.message

    # A code whose date was pushed forward by hand: the inviting node checks its own record.
    parsed = invites.decode(code)
    forged = invites.encode(parsed.url, parsed.pod, parsed.secret, parsed.expires + 86400)
    with pytest.raises(ClientError) as err:
        await b.client.post("/v1/peers/join", {"invite": forged})
    assert err.value.reason == "invalid" and "expired" in err.value.message
    assert await a.peers() == {} and await b.peers() == {}


async def test_invite_for_another_node_is_refused(network: Any) -> None:
    """The node at the invite's URL must be the pod the code names: the redeem request is
    signed for the pod the code names, which the node at the URL refuses as not its own."""
    a, b, c = await network(3)
    parsed = invites.decode((await a.client.post("/v1/invites"))["invite"])
    wrong = invites.encode(parsed.url, c.pod, parsed.secret, parsed.expires)
    with pytest.raises(ClientError) as err:
        await b.client.post("/v1/peers/join", {"invite": wrong})
    assert (err.value.status, err.value.reason) == (400, "invalid")
    assert f"signed for the pod {c.key}" in err.value.message
    assert c.key not in await b.peers() and a.key not in await b.peers()


async def test_peer_by_url_and_key(network: Any) -> None:
    a, b = await network(2)
    reply = await a.client.post("/v1/peers", {"url": b.url + "/", "key": b.key, "name": "B"})
    assert reply["pod"] == b.key and reply["url"] == b.url
    await b.client.post("/v1/peers", {"url": a.url, "key": a.key})
    await wait_linked([(a, b)])
    event = await b.open_request("by key")
    await wait_for(lambda: _has(a, event.id_text), what="Birch's request at Alder")


async def test_removed_peer_stops_receiving(network: Any) -> None:
    a, b, c = nodes = await network(3)
    await peer_line(nodes)
    assert await peer_get(a, b.keypair, "/v1/peer/changes") == 200

    removed = await a.client.request("DELETE", f"/v1/peers/{b.key[:10]}")
    assert removed == {"removed": b.key}
    assert b.key not in await a.peers()
    for path in ("/v1/peer/changes", "/v1/peer/heads", "/v1/peer/stream"):
        assert await peer_get(a, b.keypair, path) == 401, path

    # Nothing new reaches Birch, not even over the stream it had open before the removal.
    secret = await a.open_request("not for Birch any more")
    mine = await b.open_request("Birch still writes")
    await wait_for(lambda: _has(c, mine.id_text), what="Birch's request at Cedar")
    await asyncio.sleep(0.5)
    assert not await _has(b, secret.id_text)
    assert not await _has(c, secret.id_text)  # Cedar hears of Alder only through Birch
    status = (await b.peers())[a.key]
    assert not status["connected"]
    # Removing it again: it is gone.
    with pytest.raises(ClientError) as err:
        await a.client.request("DELETE", f"/v1/peers/{b.key[:10]}")
    assert (err.value.status, err.value.reason) == (404, "not-found")

    # Peering again (a new invite) restores the flow, from where Birch's cursor stood.
    await join(a, b)
    await wait_for(lambda: _has(b, secret.id_text), what="the request once peered again")
    await wait_converged(nodes)


async def test_removed_organizer_loses_access_at_once(network: Any) -> None:
    [a] = await network(1)
    second = Keypair.generate()
    await a.write(kinds.OrganizerAdded(key=second.public, name="Sam"))
    other = a.client_for(second)
    try:
        assert (await other.get("/v1/status"))["organizers"] == 2
        await other.get("/v1/members")
        event = (await other.author()).write(
            kinds.RequestOpened(title="from Sam", category="food"), "network"
        )
        assert (await other.submit([event]))[0]["status"] == "stored"

        await a.write(kinds.OrganizerRemoved(key=second.public, reason="moved away"))
        with pytest.raises(ClientError) as err:
            await other.get("/v1/status")
        assert (err.value.status, err.value.reason) == (401, "unauthorised")
        roster = {r["key"]: r for r in await a.client.get("/v1/roster")}
        assert roster[second.public_text]["active"] is False
        assert (await a.status())["organizers"] == 1
    finally:
        await other.close()


async def test_organizer_added_elsewhere_is_no_organizer_here(network: Any) -> None:
    """Roster events travel the network, but give rights only in their own pod."""
    a, b = nodes = await network(2)
    await peer_line(nodes)
    sam = Keypair.generate()
    added = await a.write(kinds.OrganizerAdded(key=sam.public, name="Sam"))
    await wait_for(lambda: _has(b, added.id_text), what="the roster entry at Birch")
    at_b = b.client_for(sam)
    try:
        with pytest.raises(ClientError) as err:
            await at_b.get("/v1/status")
        assert (err.value.status, err.value.reason) == (401, "unauthorised")
    finally:
        await at_b.close()
    # And Alder's organizer is not Birch's peer either.
    assert await peer_get(b, a.organizer, "/v1/peer/changes") == 401


async def _has(node: PodNode, event_id: str) -> bool:
    return event_id in await node.event_ids()


async def test_feed_heads_come_in_pages_that_cover_every_feed_once(network: Any) -> None:
    """GET /v1/peer/heads?limit=N&after_author=K&after_lane=L: pages in (author, lane)
    order which, walked to the end, hold exactly what the unpaged answer holds."""
    from podlink.node.api_types import heads_decoder
    from podlink.protocol.text import b64e

    a, b = nodes = await network(2)
    await peer_line(nodes)
    for i in range(6):
        await a.open_request(f"need {i}")
        await b.open_request(f"offer {i}", "peers")
    await wait_converged(nodes)

    async def heads(path: str) -> list:
        async with aiohttp.ClientSession() as session:
            url = yarl.URL(a.url + path)
            headers = sign_request(b.node.keypair, "GET", url.raw_path_qs, pod=a.pod)
            async with session.get(url, headers=headers) as resp:
                assert resp.status == 200, await resp.text()
                return heads_decoder.decode(await resp.read())

    whole = await heads("/v1/peer/heads")
    assert len(whole) >= 4  # pod keys and organizers, network and peers lanes
    walked, query = [], "limit=1"
    for _ in range(len(whole) + 1):
        page = await heads("/v1/peer/heads?" + query)
        assert len(page) <= 1
        if not page:
            break
        walked += page
        last = page[-1]
        query = f"limit=1&after_author={b64e(last.author)}&after_lane={last.lane}"
    assert walked == sorted(whole, key=lambda h: (h.author, h.lane))
