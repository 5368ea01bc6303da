"""Who may do what, and for how long: what tests/node does not already prove.

(tests/node/test_peering.py proves that a removed organizer loses access at once, that a
removed peer stops receiving, that invites are one-time and expire; test_api_errors.py that
every route refuses unsigned, unknown, replayed, stale, tampered and wrong-role requests.)
"""

from __future__ import annotations

import asyncio
import time
from functools import partial
from typing import Any

import aiohttp
import pytest
import yarl

from podlink.ledger.authoring import Author
from podlink.node import auth
from podlink.node.client import ClientError
from podlink.protocol import kinds
from podlink.protocol.http_auth import NonceCache, sign_request
from podlink.protocol.keys import Keypair
from tests.ledger.helpers import World, open_ledger, request_row, statuses, wires
from tests.node.helpers import PodNode, join, signed, wait_linked


async def peer_get(node: PodNode, key: Keypair, path: str) -> int:
    async with aiohttp.ClientSession() as session:
        url = yarl.URL(node.url + path)
        headers = sign_request(key, "GET", url.raw_path_qs, pod=node.pod)
        async with session.get(url, headers=headers) as resp:
            return resp.status


async def test_strangers_cannot_fill_the_replay_memory(
    network: Any, session: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Anyone can sign a request with a key of their own. Such requests used to be
    remembered (before the key's role was checked); once the bounded replay memory was full
    of them, stamped minutes ahead, its floor passed the present and every organizer and
    peer was refused as stale. 60 strangers against a memory of 50 show it."""
    monkeypatch.setattr(auth, "NonceCache", partial(NonceCache, capacity=50))
    [node] = await network(1)
    ahead = int(time.time()) + 290  # within the 300 s window
    for _ in range(60):
        status, raw, _ = await signed(
            session, Keypair.generate(), "GET", node.url + "/v1/status", when=ahead
        )
        assert status == 401 and b"unauthorised" in raw, raw
    assert (await node.status())["name"] == node.name  # the organizer still gets in
    # ...and the replay memory still works for keys that have a role here.
    status, _, headers = await signed(session, node.organizer, "GET", node.url + "/v1/status")
    assert status == 200
    status, raw, _ = await signed(session, None, "GET", node.url + "/v1/status", headers=headers)
    assert (status, b"replayed" in raw) == (401, True)


async def test_a_request_captured_before_a_restart_is_stale_after_it(
    network: Any, session: aiohttp.ClientSession
) -> None:
    [node] = await network(1)
    status, _, headers = await signed(session, node.organizer, "POST", node.url + "/v1/invites")
    assert status == 201
    await asyncio.sleep(1.05)  # times are whole seconds: restart in a later one
    await node.restart()
    status, raw, _ = await signed(session, None, "POST", node.url + "/v1/invites", headers=headers)
    assert status == 401 and b"stale" in raw, raw  # no second invite for an eavesdropper


async def test_a_removed_peer_cannot_rejoin_with_its_old_invite(network: Any) -> None:
    a, b = await network(2)
    code = (await a.client.post("/v1/invites"))["invite"]
    await b.client.post("/v1/peers/join", {"invite": code})
    await wait_linked([(a, b)])
    await a.client.request("DELETE", f"/v1/peers/{b.key}")
    assert await peer_get(a, b.keypair, "/v1/peer/changes") == 401

    # Birch presents the same invite again (it was "used by" Birch, once).
    with pytest.raises(ClientError) as err:
        await b.client.post("/v1/peers/join", {"invite": code})
    assert err.value.reason == "invalid" and "already used" in err.value.message
    assert b.key not in await a.peers()
    assert await peer_get(a, b.keypair, "/v1/peer/changes") == 401
    # Only a new invite, from an organizer of Alder, peers them again.
    await join(a, b)
    assert await peer_get(a, b.keypair, "/v1/peer/changes") == 200


async def test_a_removed_organizer_can_only_backdate_into_its_tenure(tmp_path: Any) -> None:
    """The documented limit: a removed organizer still holds its key, and an event it stamps
    between its own last event and its removal counts (that was its tenure). Anything
    stamped after the removal is stored but never applied (soft-failed: its feed goes on,
    its content counts for nothing); nothing can be stamped before its last event."""
    world = World()
    pod, events = world.pod("Elm")
    org, add = world.organizer(pod, "Ana")
    world.tick(1000)
    last = org.write(kinds.RequestOpened(title="before", category="food"), "network")
    world.tick(60_000)
    removal_ts = world.clock.now()
    remove = pod.author.write(kinds.OrganizerRemoved(key=org.keypair.public), "network")
    world.tick(60_000)

    def key_holder(heads: dict[str, tuple[int, bytes]]) -> Author:
        """The removed organizer's key, writing on from the given feed heads."""
        return Author(org.keypair, pod.id, world.clock, dict(heads))

    def need(title: str) -> kinds.RequestOpened:
        return kinds.RequestOpened(title=title, category="food")

    ledger = await open_ledger(tmp_path / "elm.db", pod=pod.id)
    try:
        results = await ledger.ingest(wires([*events, add, last, remove]))
        assert set(statuses(results)) == {"stored"}
        backdated = key_holder(org.heads).write(need("backdated"), "network", ts=removal_ts - 1)
        [res] = await ledger.ingest([backdated.to_wire()])
        assert res.status == "stored"  # NOT promised otherwise: see docs/security.md
        assert await request_row(ledger, backdated.id) is not None

        on_top = {"network": (backdated.seq, backdated.id)}
        late = key_holder(on_top).write(need("after"), "network", ts=removal_ts + 1)
        [res] = await ledger.ingest([late.to_wire()])
        assert res.status == "stored"
        assert await request_row(ledger, late.id) is None  # soft-failed: never applied

        on_top = {"network": (late.seq, late.id)}
        too_early = key_holder(on_top).write(need("too early"), "network", ts=last.ts)
        [res] = await ledger.ingest([too_early.to_wire()])
        assert (res.status, res.reason) == ("refused", "invalid")  # a feed never goes back
        assert (await ledger.verify()).ok
    finally:
        await ledger.close()


async def test_a_request_signed_for_one_pod_is_refused_at_another(
    network: Any, session: aiohttp.ClientSession
) -> None:
    """Alder peers with Birch and with Cedar, so Alder's key has a role at both. A request
    Alder signed for Birch, captured on the way, is refused at Cedar (version 1 of the
    signed request named no receiver: it could be replayed once at Cedar), and still
    works, once, at Birch."""
    a, b, c = await network(3)
    await join(a, b)
    await join(a, c)
    url_b = yarl.URL(b.url + "/v1/peer/changes").with_query({"since": "0", "limit": "1"})
    captured = sign_request(a.keypair, "GET", url_b.raw_path_qs, pod=b.pod)
    url_c = yarl.URL(c.url + "/v1/peer/changes").with_query({"since": "0", "limit": "1"})
    async with session.get(url_c, headers=captured) as resp:
        status, body = resp.status, await resp.json()
    assert (status, body["error"]) == (401, "unauthorised")
    assert "signed for the pod" in body["message"] and b.key in body["message"]
    # Re-addressed to Cedar without Alder's key: the signature no longer verifies.
    async with session.get(url_c, headers={**captured, "Podlink-Pod": c.key}) as resp:
        assert (resp.status, (await resp.json())["error"]) == (401, "forged")
    async with session.get(url_b, headers=captured) as resp:
        assert resp.status == 200
    async with session.get(url_b, headers=captured) as resp:
        assert (resp.status, (await resp.json())["error"]) == (401, "replayed")
