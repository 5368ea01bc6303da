"""`GET /v1/requests/{id}` answers a bounded request: another pod can make thousands of
claims on one shared need, and one `request show` must not carry them all.

A real node on 127.0.0.1 with a real SQLite file; the other pods' events are signed by
real keys and ingested as a peer would deliver them; the CLI runs against the node.
"""

from __future__ import annotations

import asyncio
import json

import pytest

from podlink.ledger.authoring import Author
from podlink.node.client import ClientError
from podlink.protocol import kinds
from podlink.protocol.envelope import Event
from podlink.protocol.keys import Keypair
from podlink.protocol.text import b64d, b64e
from tests.cli.conftest import run
from tests.node.conftest import Network

MANY = 120  # claims by a stranger: more than the 100 an answer holds


def pod_author(name: str) -> tuple[Author, Event]:
    key = Keypair.generate()
    author = Author(key, key.public)
    return author, author.write(kinds.PodFounded(name=name), "network")


async def test_a_request_answers_its_newest_claims_and_pages_the_rest(network: Network) -> None:
    """Oak shares a need; Elm's member Kit claims it (through the CLI); then Bea, Ash's
    organizer, makes MANY claims. The answer holds the newest 100 claims, counts them all, and GET
    /v1/claims pages through every one; Kit's claim, now hidden from the answer, still
    stops a second claim by Kit; once Oak accepts it, it is in every answer. The history
    holds its opening and the newest steps, each author named; ``event`` finds a step
    anywhere in it."""
    [elm] = await network(1)
    oak, oak_founded = pod_author("Oak")
    ash, ash_founded = pod_author("Ash")
    bea_key = Keypair.generate()
    bea = Author(bea_key, ash.pod, ash.clock)  # Ash's organizer
    add_bea = ash.write(kinds.OrganizerAdded(key=bea_key.public, name="Bea"), "network")
    need = oak.write(kinds.RequestOpened(title="Lift", category="transport"), "network")
    stored = await elm.ledger.ingest(
        [e.to_wire() for e in (oak_founded, ash_founded, add_bea, need)], source="peer")
    assert {r.status for r in stored} == {"stored"}
    rid = need.id_text

    await asyncio.to_thread(run, "member", "add", "Kit", "--can", "transport", home=elm.home)
    kit_claim = json.loads((await asyncio.to_thread(
        run, "claim", rid[:8], "--by", "Kit", "--json", home=elm.home)).stdout)["id"]  # fmt: skip
    theirs = [bea.write(kinds.ClaimMade(note=f"van {i}"), "network", [need.id])
              for i in range(MANY)]  # fmt: skip
    assert {r.status for r in await elm.ledger.ingest([e.to_wire() for e in theirs],
                                                      source="peer")} == {"stored"}  # fmt: skip

    shown = await elm.client.get(f"/v1/requests/{rid}")
    assert shown["claims_total"] == MANY + 1
    assert [c["id"] for c in shown["claims"]] == [e.id_text for e in theirs[-100:]]
    assert shown["history_total"] == MANY + 2 and len(shown["history"]) == MANY + 2
    assert {h["author_name"] for h in shown["history"][2:]} == {"Bea"}

    # Every claim, page by page, in store order; one pod's only.
    every = await elm.client.get_all("/v1/claims", request=rid, page=50)
    assert len(every) == MANY + 1 and every[0]["id"] == kit_claim
    ours = await elm.client.get("/v1/claims", request=rid, pod=elm.key)
    assert [c["id"] for c in ours] == [kit_claim]

    # A smaller window: the opening and the newest steps; the step of an event anywhere.
    small = await elm.client.get(f"/v1/requests/{rid}", claims=3, history=10,
                                 event=kit_claim)  # fmt: skip
    assert len(small["claims"]) == 3 and small["claims_total"] == MANY + 1
    assert [h["kind"] for h in small["history"]][:1] == ["request.open"]
    assert [h["id"] for h in small["history"][1:]] == [e.id_text for e in theirs[-9:]]
    assert small["step"]["id"] == kit_claim and small["step"]["outcome"] == "applied"
    assert small["step"]["author"] == (await elm.client.get("/v1/roster"))[0]["key"]
    for query, word in (({"claims": MANY * 50}, "claims"), ({"history": 0}, "history"),
                        ({"event": "not-an-id"}, "event")):  # fmt: skip
        with pytest.raises(ClientError) as err:
            await elm.client.get(f"/v1/requests/{rid}", **query)
        assert err.value.status == 400 and word in str(err.value), query

    # Kit's claim is not in the answer, and still stops Kit claiming twice.
    again = await asyncio.to_thread(run, "claim", rid[:8], "--by", "Kit", home=elm.home, code=1)
    assert "already offered" in again.output and kit_claim[:8] in again.output

    # The CLI says how many are not shown, and shows them all when asked.
    text = (await asyncio.to_thread(run, "request", "show", rid[:8], home=elm.home)).stdout
    assert f"{MANY + 1 - 100} older claims not shown" in text and "--all" in text
    everything = json.loads((await asyncio.to_thread(
        run, "request", "show", rid[:8], "--all", "--json", home=elm.home)).stdout)  # fmt: skip
    assert len(everything["claims"]) == MANY + 1
    assert len(everything["history"]) == everything["history_total"] == MANY + 2

    # Accepted by Oak, Kit's claim is in every answer, however old.
    accept = oak.write(kinds.ClaimAccepted(), "network",
                       [b64d(kit_claim, length=32), need.id])  # fmt: skip
    assert (await elm.ledger.ingest([accept.to_wire()], source="peer"))[0].status == "stored"
    shown = await elm.client.get(f"/v1/requests/{rid}", claims=5)
    assert shown["status"] == "accepted" and shown["accepted_claim"] == kit_claim
    assert shown["claims"][0]["id"] == kit_claim and len(shown["claims"]) == 6
    assert b64e(accept.id) in {h["id"] for h in shown["history"]}
