"""Review at adversarial-but-valid scale, the organizer's side: the organizer API, the CLI
run against a real node (`podlink ... --home DIR`, a `podlink serve` subprocess), and
maintenance (open, rebuild, verify, restore).

No test asserts on time: each counts work done by the real code (entries scanned, SQL
commits) through thin wrappers, on real SQLite files, real signatures and a real node.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from podlink.ledger.authoring import Author
from podlink.ledger.ledger import Ledger
from podlink.node.client import NodeClient
from podlink.protocol import boxes, kinds
from podlink.protocol.envelope import Event
from podlink.protocol.keys import Keypair
from podlink.protocol.text import b64e
from tests.cli.conftest import make_pod, running
from tests.ledger.helpers import World, wires
from tests.node.conftest import Network


def roster_and_forks(n: int) -> tuple[bytes, list[Event]]:
    """A pod that names ``n`` organizers (valid roster.adds), one of whom signs two
    histories of ``n`` events on their network feed: ``n`` forks, one per feed position."""
    world = World()
    pod, events = world.pod("Sprawl")
    forker = Keypair.generate()
    for i in range(n):
        world.tick()
        key = forker.public if i == 0 else Keypair.generate().public
        events.append(pod.author.write(kinds.OrganizerAdded(key=key, name=f"org {i}"), "network"))
    for history in ("a", "b"):  # the same key, the same positions, other events
        author = Author(forker, pod.id, world.clock)
        for i in range(n):
            world.tick()
            body = kinds.OfferOpened(title=f"soup {history}{i}", category="food")
            events.append(author.write(body, "network"))
    return forker.public, events


async def _ingest(path: Path, events: list[Event]) -> int:
    ledger = await Ledger.open(path)
    try:
        await ledger.ingest(wires(events))
        return len(await ledger.reader.execute_fetchall("SELECT 1 FROM forks"))
    finally:
        await ledger.close()


def test_log_forks_names_each_fork_by_scanning_every_organizer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`podlink log --forks` named each fork's author with ``KeyNames.anywhere``, which
    walked every (pod, key) -> name of ``GET /v1/roster?pod=all`` for each fork: forks x
    organizers of work in the CLI (600 forks among 601 organizers here), after reading
    every roster and directory page of the network. The node now names each row of
    ``GET /v1/forks`` as it names the log's (the page's keys only), and the CLI reads no
    roster or directory at all."""
    pod = make_pod(tmp_path, "Maple")
    n = 600
    forker, events = roster_and_forks(n)
    forks = asyncio.run(_ingest(pod.home / "ledger.db", events))
    assert forks == n
    asked: list[str] = []
    real = NodeClient.request

    async def counted(self: NodeClient, method: str, path: str, **kw: Any) -> Any:
        asked.append(path)
        return await real(self, method, path, **kw)

    monkeypatch.setattr(NodeClient, "request", counted)
    with running(pod):
        found = pod.json("log", "--forks")
    assert len(found) == n and {f["author"] for f in found} == {b64e(forker)}
    assert all(f["author_name"] == "org 0 of Sprawl" for f in found)
    assert not {"/v1/roster", "/v1/pods"} & set(asked), asked


def handoff(to: bytes, name: str) -> kinds.SealedMessage:
    plain = kinds.encode_body(kinds.ContactHandoff(name=name, contact="555-0100"))
    return kinds.SealedMessage(to=to, box=boxes.seal_to(to, plain))


async def test_one_stranger_hides_every_earlier_contact_from_the_inbox(network: Network) -> None:
    """`GET /v1/inbox` answers the newest 100 sealed messages to this pod and nothing
    else: no paging, no `before`, no filter by sender (node/organizer_api.py:316,
    ledger/queries.py:483, limit=100). Any pod may seal any number of messages to any pod,
    so one stranger that sends 100 (valid, each a real sealed box) after the contact a
    helper handed over puts that contact out of reach of every API call and of `podlink
    inbox` for good: the honest handoff is stored, but the organizer can never read it.
    (sealed_for's docstring guards against *other pods'* messages crowding ours out, not
    against messages to us.) Fix: page the inbox (``before=pos``) and/or cap what one
    sender fills (newest k per sender), and say in `podlink inbox` that more are older."""
    [node] = await network(1)
    world = World()
    helper, events = world.pod("Helper")
    stranger, genesis = world.pod("Stranger")
    events += genesis
    world.tick()
    events.append(helper.author.write(handoff(node.pod, "Jonny"), "network"))
    for i in range(100):
        world.tick()
        events.append(stranger.author.write(handoff(node.pod, f"spam {i}"), "network"))
    results = await node.ledger.ingest(wires(events))
    assert {r.status for r in results} == {"stored"}
    inbox = await node.client.get("/v1/inbox")
    senders = {item["from"] for item in inbox}
    names = {item["message"].get("name") for item in inbox}
    assert "Jonny" in names or b64e(helper.id) in senders, (
        f"the helper's contact is stored but the inbox shows only {len(inbox)} messages, "
        f"all from {len(senders)} sender(s)"
    )
