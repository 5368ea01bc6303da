"""POST /v1/events: what an organizer's CLI submits is verified, chained and stored once."""

from __future__ import annotations

from typing import Any

import pytest

from podlink.node.client import ClientError
from podlink.protocol import boxes, kinds
from podlink.protocol.envelope import encode_wire
from podlink.protocol.keys import Keypair
from podlink.protocol.text import b64e
from tests.node.helpers import ledger_bytes


async def test_forged_event_is_refused_and_nothing_stored(network: Any) -> None:
    [node] = await network(1)
    before = await node.event_count()
    author = await node.author()
    good = author.write(kinds.RequestOpened(title="Soup", category="food"), "network")
    bad_sig = bytes([good.sig[0] ^ 1]) + good.sig[1:]
    forged = encode_wire(good.payload, bad_sig, good.body)

    with pytest.raises(ClientError) as err:
        await node.client.post("/v1/events", {"events": [b64e(forged)]})
    assert (err.value.status, err.value.reason) == (401, "forged")
    assert err.value.body["results"][0]["reason"] == "forged"
    assert await node.event_count() == before

    # Signed by a key that is not the header's author: forged too.
    stranger = Keypair.generate()
    resigned = encode_wire(
        good.payload, stranger.sign(b"podlink/event/v1\x00" + good.payload), good.body
    )
    with pytest.raises(ClientError) as err:
        await node.client.post("/v1/events", {"events": [b64e(resigned)]})
    assert (err.value.status, err.value.reason) == (401, "forged")
    assert await node.event_count() == before

    # The genuine event still goes in afterwards.
    assert (await node.client.submit([good]))[0]["status"] == "stored"
    assert await node.event_count() == before + 1


async def test_event_by_a_key_off_the_roster_is_refused(network: Any) -> None:
    [node] = await network(1)
    before = await node.event_count()
    outsider = node.client_for(Keypair.generate())
    # The outsider cannot even reach the API...
    with pytest.raises(ClientError) as err:
        await outsider.get("/v1/heads")
    assert (err.value.status, err.value.reason) == (401, "unauthorised")
    await outsider.close()
    # ...and an event it signed, brought by an organizer, is not stored.
    from podlink.ledger.authoring import Author

    rogue = Author(Keypair.generate(), node.pod).write(
        kinds.RequestOpened(title="Rogue", category="food"), "network"
    )
    with pytest.raises(ClientError) as err:
        await node.client.submit([rogue])
    assert err.value.status == 409 and err.value.reason == "pending"
    assert await node.event_count() == before


async def test_gap_in_a_local_feed_is_409_pending(network: Any) -> None:
    [node] = await network(1)
    author = await node.author()
    first = author.write(kinds.RequestOpened(title="First", category="food"), "network")
    second = author.write(kinds.RequestOpened(title="Second", category="food"), "network")
    with pytest.raises(ClientError) as err:
        await node.client.submit([second])
    assert (err.value.status, err.value.reason) == (409, "pending")
    assert err.value.body["results"][0]["status"] == "refused"
    assert await node.titles() == set()
    # In order, both go in, and nothing of the refused attempt was kept.
    results = await node.client.submit([first, second])
    assert [r["status"] for r in results] == ["stored", "stored"]
    assert await node.titles() == {"First", "Second"}
    assert (await node.status())["pending"] == 0


async def test_duplicate_submit_says_duplicate(network: Any) -> None:
    [node] = await network(1)
    event = await node.open_request("Bread")
    count = await node.event_count()
    again = await node.client.submit([event])
    assert again == [{"status": "duplicate", "id": event.id_text}]
    both = await node.client.submit([event, event])
    assert [r["status"] for r in both] == ["duplicate", "duplicate"]
    assert await node.event_count() == count


async def test_member_join_with_key_shows_the_decrypted_name(network: Any) -> None:
    [node] = await network(1)
    details = kinds.MemberDetails(
        name="Winifred Oyelaran-Baptiste",
        contact="+44 7700 900461",
        can=["transport"],
        languages=["Yoruba"],
    )
    key = boxes.new_member_key()
    author = await node.author()
    join = author.write(kinds.MemberJoined(box=boxes.lock(key, kinds.encode_body(details))), "pod")
    results = await node.client.submit([join], member_keys={join.id: key})
    assert results[0]["status"] == "stored"

    [member] = await node.client.get("/v1/members")
    assert member["id"] == join.id_text
    assert member["name"] == "Winifred Oyelaran-Baptiste"
    assert member["contact"] == "+44 7700 900461"
    assert member["can"] == ["transport"]
    assert (await node.status())["members"] == 1
    key_reply = await node.client.get(f"/v1/members/{join.id_text[:10]}/key")
    assert key_reply == {"member": join.id_text, "key": b64e(key)}
    # The name is stored sealed: not even this node's own files hold it in the clear.
    assert b"Winifred" not in ledger_bytes(node.home)


async def test_member_join_outside_the_pod_lane_is_invalid(network: Any) -> None:
    [node] = await network(1)
    key = boxes.new_member_key()
    author = await node.author()
    box = boxes.lock(key, kinds.encode_body(kinds.MemberDetails(name="Leaky")))
    leaky = author.write(kinds.MemberJoined(box=box), "network")
    with pytest.raises(ClientError) as err:
        await node.client.submit([leaky], member_keys={leaky.id: key})
    assert (err.value.status, err.value.reason) == (400, "invalid")
    assert await node.client.get("/v1/members") == []
