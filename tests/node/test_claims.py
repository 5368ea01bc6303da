"""Help across pods: a claim made two hops away reaches the request's pod, whose answer
reaches everyone, and every node ends in the same state."""

from __future__ import annotations

from typing import Any

from podlink.protocol import kinds
from tests.node.helpers import PodNode, peer_line, wait_converged, wait_for


async def request_state(node: PodNode, request_id: str) -> tuple[str, list[tuple[str, str]]]:
    reply = await node.client.get(f"/v1/requests/{request_id}")
    return reply["status"], sorted((c["id"], c["status"]) for c in reply["claims"])


async def test_claim_two_hops_away_accept_and_fulfil_converge(network: Any) -> None:
    a, b, c = nodes = await network(3)
    await peer_line(nodes)
    need = await a.open_request("Medicine pickup", category="medicine", urgency="urgent")
    rid = need.id_text
    await wait_for(lambda: _titles_include(c, "Medicine pickup"), what="the need at Cedar")

    # Cedar claims it, and so does Birch: both claims travel to Alder.
    claim = await c.write(kinds.ClaimMade(note="Cedar can drive"), "network", [need.id])
    other = await b.write(kinds.ClaimMade(note="Birch has a bike"), "network", [need.id])

    async def both_claims_at_owner() -> bool:
        claims = await a.client.get("/v1/claims", request=rid[:12])
        return {x["id"] for x in claims} == {claim.id_text, other.id_text}

    await wait_for(both_claims_at_owner, what="the claims at Alder")
    [row] = [x for x in await a.client.get("/v1/claims") if x["id"] == claim.id_text]
    assert row["pod"] == c.key and row["pod_name"] == "Cedar" and row["status"] == "pending"

    author = await a.author()
    accept = author.write(kinds.ClaimAccepted(), "network", [claim.id])
    done = author.write(kinds.RequestFulfilled(note="delivered", hours=1.5), "network", [need.id])
    results = await a.client.submit([accept, done])
    assert [r["status"] for r in results] == ["stored", "stored"]

    async def settled_everywhere() -> bool:
        states = [await request_state(n, rid) for n in nodes]
        return all(s[0] == "fulfilled" for s in states) and len(set(map(str, states))) == 1

    await wait_for(settled_everywhere, what="the fulfilled request everywhere")
    await wait_converged(nodes)

    _, claims = await request_state(c, rid)
    assert dict(claims)[claim.id_text] == "accepted"
    assert dict(claims)[other.id_text] == "closed"  # the request was met by another claim
    views = [await n.client.get(f"/v1/requests/{rid}") for n in nodes]
    for view in views[1:]:
        assert view == views[0]
    assert views[0]["accepted_claim"] == claim.id_text
    assert [f["note"] for f in views[0]["fulfilments"]] == ["delivered"]
    # Only network events were written: the whole read model is identical on every node.
    dumps = [await n.ledger.dump() for n in nodes]
    for dump in dumps[1:]:
        assert dump == dumps[0]
    for n in nodes:
        assert (await n.client.post("/v1/verify"))["ok"] is True


async def test_only_the_owner_decides(network: Any) -> None:
    """An accept or fulfil written by another pod is stored and forwarded but changes
    nothing: a request belongs to its pod."""
    a, _, c = nodes = await network(3)
    await peer_line(nodes)
    need = await a.open_request("Ladder")
    await wait_for(lambda: _titles_include(c, "Ladder"), what="the need at Cedar")
    claim = await c.write(kinds.ClaimMade(note="mine"), "network", [need.id])
    await c.write(kinds.ClaimAccepted(), "network", [claim.id])  # Cedar has no say
    await c.write(kinds.RequestFulfilled(note="says Cedar"), "network", [need.id])
    await wait_for(lambda: _has_claim(a, claim.id_text), what="the claim at Alder")
    await wait_converged(nodes)
    for n in nodes:
        status, claims = await request_state(n, need.id_text)
        assert status == "open" and claims == [(claim.id_text, "pending")], n.name
    dumps = [await n.ledger.dump() for n in nodes]
    assert dumps[1] == dumps[0] and dumps[2] == dumps[0]


async def _titles_include(node: PodNode, title: str) -> bool:
    return title in await node.titles()


async def _has_claim(node: PodNode, claim_id: str) -> bool:
    return claim_id in {x["id"] for x in await node.client.get("/v1/claims")}
