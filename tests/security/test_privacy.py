"""Sealed messages: a contact handoff from pod A to pod C travels through pod B, which
stores, verifies and forwards it but cannot read it; only C opens it (GET /v1/inbox), and
no node's files hold it in the clear.

(What the peer API shows — never the pod lane, never a third pod's peers lane, never
member details, over changes, the stream, heads and every feed — and that no other node's
files hold a pod's member data is proven by tests/node/test_lanes.py.)
"""

from __future__ import annotations

from typing import Any

import pytest

from podlink.protocol import boxes, kinds
from podlink.protocol.errors import ProtocolError
from tests.node.helpers import PodNode, ledger_bytes, peer_line, wait_converged, wait_for

HANDOFF = kinds.ContactHandoff(
    name="Oluwaseun Achterberg-Ruiz",
    contact="+44 7700 900318, back door of the launderette",
    prefers="text",
    note="has the spare key for flat 4",
)


async def _has(node: PodNode, event_id: str) -> bool:
    return event_id in await node.event_ids()


async def test_a_sealed_handoff_is_opaque_to_every_pod_but_its_recipient(
    network: Any,
) -> None:
    a, b, c = nodes = await network(3)
    await peer_line(nodes)  # A - B - C: C is two hops from A
    box = boxes.seal_to(c.pod, kinds.encode_body(HANDOFF))
    sealed = await a.write(kinds.SealedMessage(to=c.pod, box=box), "network")
    await wait_for(lambda: _has(c, sealed.id_text), what="the sealed message at Cedar")
    await wait_converged(nodes)

    # Cedar, and only Cedar, reads it.
    [item] = await c.client.get("/v1/inbox")
    assert item["id"] == sealed.id_text and item["from"] == a.key
    assert item["message"] == {
        "name": HANDOFF.name, "contact": HANDOFF.contact, "prefers": HANDOFF.prefers,
        "note": HANDOFF.note, "about": None,  # no request named: this one links none
    }  # fmt: skip
    assert await b.client.get("/v1/inbox") == []
    assert await a.client.get("/v1/inbox") == []

    # Birch carried it, byte for byte, and cannot open it with its own key.
    assert await _has(b, sealed.id_text)
    with pytest.raises(ProtocolError) as err:
        boxes.open_sealed(b.keypair, box)
    assert err.value.reason == "forged"
    assert boxes.open_sealed(c.keypair, box) == kinds.encode_body(HANDOFF)

    # Nobody's disk holds the handoff in the clear: not the carrier, not even the
    # recipient (the inbox opens it when asked), nor the sender's node.
    for node in nodes:
        data = ledger_bytes(node.home)
        assert box in data, node.name  # the ciphertext is there, whole
        for secret in (HANDOFF.name, HANDOFF.contact, HANDOFF.note):
            assert secret.encode() not in data, (node.name, secret)
    for node in nodes:
        assert (await node.client.post("/v1/verify"))["ok"] is True
