"""Equivocation: a second signed event at an occupied feed position is refused as a fork,
and both signed headers are kept as evidence anyone can check."""

from __future__ import annotations

from podlink.ledger.authoring import Author
from podlink.protocol import kinds
from podlink.protocol.envelope import SIGN_PREFIX, blake2b256
from podlink.protocol.keys import verify_signature
from tests.ledger.conftest import OpenLedger
from tests.ledger.helpers import World, count, query, statuses, wires


def restored_backup(author: Author, seq: int, id_: bytes | None) -> Author:
    """The same key writing from an older copy of its feed heads (a restored laptop)."""
    twin = Author(author.keypair, author.pod, author.clock)
    twin.set_head("network", seq, id_)
    return twin


async def events_table(ledger) -> list[tuple]:
    return await query(ledger, "SELECT * FROM events ORDER BY pos")


async def test_a_second_event_at_an_occupied_position_is_a_fork(
    make_ledger: OpenLedger, world: World
) -> None:
    pod, events = world.pod()
    twin = restored_backup(pod.author, 1, events[0].id)
    kept = pod.author.write(kinds.RequestOpened(title="Soup", category="food"), "network")
    other = twin.write(kinds.RequestOpened(title="Bread", category="food"), "network")
    assert (kept.seq, other.seq) == (2, 2) and kept.id != other.id
    ledger = await make_ledger()
    assert statuses(await ledger.ingest(wires([*events, kept]))) == ["stored", "stored"]
    before = await events_table(ledger)
    dump = await ledger.dump()

    (res,) = await ledger.ingest([other.to_wire()])
    assert (res.status, res.reason, res.id) == ("refused", "fork", other.id_text)
    assert await events_table(ledger) == before
    assert await ledger.dump() == dump
    fork = await query(ledger, "SELECT author, lane, seq, kept_id, other_id, other_payload, "
                               "other_sig, source FROM forks")  # fmt: skip
    assert fork == [(pod.id, "network", 2, kept.id, other.id, other.payload, other.sig, "peer")]
    # The evidence checks out with nothing but the two stored headers.
    (kept_payload, kept_sig), = await query(
        ledger, "SELECT payload, sig FROM events WHERE id = ?", (kept.id,))  # fmt: skip
    for payload, sig in ((kept_payload, kept_sig), (other.payload, other.sig)):
        assert verify_signature(pod.id, SIGN_PREFIX + payload, sig)
    assert blake2b256(other.payload) == other.id != kept.id == blake2b256(kept_payload)

    # Sent again: refused again, recorded once. Replication of the kept branch goes on.
    (res,) = await ledger.ingest([other.to_wire()])
    assert res.reason == "fork" and await count(ledger, "forks") == 1
    nxt = pod.author.write(kinds.PodInfoChanged(name="Elm St"), "network")
    assert statuses(await ledger.ingest([nxt.to_wire()])) == ["stored"]
    assert (await ledger.verify()).ok


async def test_both_sides_of_a_fork_in_one_batch(make_ledger: OpenLedger, world: World) -> None:
    pod, events = world.pod()
    twin = restored_backup(pod.author, 1, events[0].id)
    a = pod.author.write(kinds.RequestOpened(title="Soup", category="food"), "network")
    b = twin.write(kinds.RequestOpened(title="Bread", category="food"), "network")
    ledger = await make_ledger()
    results = await ledger.ingest(wires([*events, a, b]))
    assert [(r.status, r.reason) for r in results] == [
        ("stored", None), ("stored", None), ("refused", "fork"),
    ]  # fmt: skip
    assert await query(ledger, "SELECT kept_id, other_id FROM forks") == [(a.id, b.id)]


async def test_prev_mismatch_at_head_plus_one_is_a_fork(
    make_ledger: OpenLedger, world: World
) -> None:
    """The next seq, chained on an event we do not hold at our head's position: the author
    signed two different events at that position."""
    pod, events = world.pod()
    twin = restored_backup(pod.author, 1, events[0].id)
    head = pod.author.write(kinds.RequestOpened(title="Soup", category="food"), "network")
    hidden = twin.write(kinds.RequestOpened(title="Bread", category="food"), "network")
    after_hidden = twin.write(kinds.PodInfoChanged(name="Elm St"), "network")
    assert (head.seq, hidden.seq, after_hidden.seq) == (2, 2, 3)
    ledger = await make_ledger()
    await ledger.ingest(wires([*events, head]))
    before = await events_table(ledger)
    (res,) = await ledger.ingest([after_hidden.to_wire()])
    assert (res.status, res.reason) == ("refused", "fork")
    assert await events_table(ledger) == before
    assert await query(ledger, "SELECT seq, kept_id, other_id, other_payload FROM forks") == [
        (3, head.id, after_hidden.id, after_hidden.payload)
    ]
    assert await count(ledger, "pending") == 0


async def test_a_forked_successor_waiting_in_pending_is_refused_when_released(
    make_ledger: OpenLedger, world: World
) -> None:
    pod, events = world.pod()
    twin = restored_backup(pod.author, 1, events[0].id)
    head = pod.author.write(kinds.RequestOpened(title="Soup", category="food"), "network")
    twin.write(kinds.RequestOpened(title="Bread", category="food"), "network")
    after_hidden = twin.write(kinds.PodInfoChanged(name="Elm St"), "network")
    ledger = await make_ledger()
    assert statuses(await ledger.ingest([after_hidden.to_wire()])) == ["pending"]
    assert statuses(await ledger.ingest(wires([*events, head]))) == ["stored", "stored"]
    assert await count(ledger, "pending") == 0
    assert await query(ledger, "SELECT other_id FROM forks") == [(after_hidden.id,)]
    assert await count(ledger, "events") == 2
