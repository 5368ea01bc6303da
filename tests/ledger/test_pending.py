"""Out-of-order delivery: gaps wait in the bounded pending area, then apply."""

from __future__ import annotations

from pathlib import Path

from podlink.ledger.authoring import Author
from podlink.ledger.ledger import Ledger, Limits
from podlink.protocol import clock, kinds
from podlink.protocol.keys import Keypair
from tests.ledger.conftest import OpenLedger
from tests.ledger.helpers import (
    World,
    bodiless,
    count,
    one,
    query,
    reasons,
    statuses,
    stored_ids,
    wires,
)


def needs(author: Author, n: int, lane: str = "network") -> list:
    return [
        author.write(kinds.RequestOpened(title=f"Need {i}", category="food"), lane)  # type: ignore[arg-type]
        for i in range(n)
    ]


async def test_gaps_wait_across_batches_and_apply_when_filled(
    make_ledger: OpenLedger, world: World
) -> None:
    pod, genesis = world.pod()
    feed = genesis + needs(pod.author, 4)
    ledger = await make_ledger()
    assert statuses(await ledger.ingest(wires(feed[3:]))) == ["pending", "pending"]
    assert reasons(await ledger.ingest(wires(feed[2:3]))) == ["pending"]
    assert await count(ledger, "pending") == 3 and await count(ledger, "events") == 0
    assert ledger.pending_count("peer") == 3
    # A pending event sent again is still pending (not a duplicate: it is not stored yet).
    assert statuses(await ledger.ingest(wires(feed[4:]))) == ["pending"]
    assert await count(ledger, "pending") == 3

    assert statuses(await ledger.ingest(wires(feed[1:2]))) == ["pending"]
    assert statuses(await ledger.ingest(wires(feed[:1]))) == ["stored"]
    assert await stored_ids(ledger) == {e.id for e in feed}
    assert await count(ledger, "pending") == 0 and ledger.pending_count("peer") == 0
    assert await count(ledger, "requests") == 4
    order = [r[0] for r in await query(ledger, "SELECT id FROM events ORDER BY pos")]
    assert order == [e.id for e in feed]
    assert (await ledger.verify()).ok


async def test_gaps_within_one_batch(make_ledger: OpenLedger, world: World) -> None:
    pod, genesis = world.pod()
    _, other_genesis = world.pod("Oak")
    feed = genesis + needs(pod.author, 5)
    mixed = [feed[5], *other_genesis, feed[3], feed[1], feed[4], feed[0], feed[2]]
    ledger = await make_ledger()
    results = await ledger.ingest(wires(mixed))
    # Events released inside the batch report their final fate.
    assert statuses(results) == ["stored"] * len(mixed)
    order = [r[0] for r in await query(ledger, "SELECT id FROM events ORDER BY pos")]
    mine = [i for i in order if i in {e.id for e in feed}]
    assert mine == [e.id for e in feed]
    assert await count(ledger, "pending") == 0


async def test_an_organizers_event_before_its_roster_add_waits(
    make_ledger: OpenLedger, world: World
) -> None:
    pod, genesis = world.pod()
    org, add = world.organizer(pod)
    req = org.write(kinds.RequestOpened(title="Soup", category="food"), "network")
    upd = org.write(kinds.RequestUpdated(urgency="high"), "network", [req.id])
    ledger = await make_ledger()
    assert statuses(await ledger.ingest(wires([*genesis, req]))) == ["stored", "pending"]
    assert await one(ledger, "SELECT why FROM pending") == "roster"
    assert statuses(await ledger.ingest([upd.to_wire()])) == ["pending"]
    assert await count(ledger, "requests") == 0
    assert statuses(await ledger.ingest([add.to_wire()])) == ["stored"]
    assert await stored_ids(ledger) == {genesis[0].id, add.id, req.id, upd.id}
    assert await one(ledger, "SELECT urgency FROM requests WHERE id = ?", (req.id,)) == "high"
    assert await count(ledger, "pending") == 0


async def test_append_refuses_gaps_and_unknown_authors(
    make_ledger: OpenLedger, world: World
) -> None:
    pod, genesis = world.pod()
    org, add = world.organizer(pod)
    req = org.write(kinds.RequestOpened(title="Soup", category="food"), "network")
    info = pod.author.write(kinds.PodInfoChanged(name="Elm St"), "network")
    ledger = await make_ledger(pod=pod.id)
    results = await ledger.append(wires([info, req]))  # both have their predecessor missing
    assert [(r.status, r.reason) for r in results] == [("refused", "pending")] * 2
    assert all(r.message for r in results)
    assert await count(ledger, "pending") == 0 and await count(ledger, "events") == 0
    assert statuses(await ledger.append(wires(genesis))) == ["stored"]
    (res,) = await ledger.append([req.to_wire()])  # chained, but not on the roster yet
    assert (res.status, res.reason) == ("refused", "pending")
    assert statuses(await ledger.append(wires([add, info, req]))) == ["stored"] * 3
    assert await count(ledger, "pending") == 0


async def test_pending_is_bounded_per_source(make_ledger: OpenLedger, world: World) -> None:
    pod, genesis = world.pod()
    feed = genesis + needs(pod.author, 9)
    ledger = await make_ledger(limits=Limits(pending_per_source=5))
    results = await ledger.ingest(wires(feed[1:8]), source="peer-a")
    assert statuses(results) == ["pending"] * 5 + ["refused"] * 2
    assert reasons(results)[5:] == ["rate-limited"] * 2
    assert await count(ledger, "pending") == 5 and ledger.pending_count("peer-a") == 5
    # Another source has its own allowance.
    assert statuses(await ledger.ingest(wires(feed[8:9]), source="peer-b")) == ["pending"]
    (res,) = await ledger.ingest(wires(feed[9:]), source="peer-a")
    assert (res.status, res.reason) == ("refused", "rate-limited")
    # Filling the gap empties the area and frees the allowance.
    assert statuses(await ledger.ingest(wires(feed[:1]), source="peer-a")) == ["stored"]
    assert ledger.pending_count("peer-a") == 0
    assert await count(ledger, "events") == 6  # seq 7 was refused: seq 9 (peer-b's) waits on
    assert ledger.pending_count("peer-b") == await count(ledger, "pending") == 1
    assert statuses(await ledger.ingest(wires(feed[6:]), source="peer-a")) == [
        "stored", "stored", "duplicate", "stored",
    ]  # fmt: skip
    assert await count(ledger, "events") == len(feed)


async def test_resending_a_pending_event_does_not_use_up_the_allowance(
    make_ledger: OpenLedger, world: World
) -> None:
    """Peers resend what they think we lack; one parked event counts once."""
    pod, genesis = world.pod()
    feed = genesis + needs(pod.author, 2)
    ledger = await make_ledger(limits=Limits(pending_per_source=3))
    for _ in range(6):
        assert statuses(await ledger.ingest([feed[2].to_wire()])) == ["pending"]
    assert ledger.pending_count("peer") == await count(ledger, "pending") == 1
    assert statuses(await ledger.ingest([feed[1].to_wire()])) == ["pending"]
    assert statuses(await ledger.ingest([feed[0].to_wire()])) == ["stored"]
    assert await count(ledger, "events") == 3
    assert ledger.pending_count("peer") == 0


async def test_a_body_arriving_while_its_event_waits_is_kept(
    make_ledger: OpenLedger, world: World
) -> None:
    pod, genesis = world.pod()
    feed = genesis + needs(pod.author, 2)
    ledger = await make_ledger()
    assert statuses(await ledger.ingest([bodiless(feed[2])])) == ["pending"]
    assert statuses(await ledger.ingest([feed[2].to_wire()])) == ["pending"]
    assert statuses(await ledger.ingest(wires(feed[:2]))) == ["stored", "stored"]
    assert await one(ledger, "SELECT body FROM events WHERE id = ?", (feed[2].id,)) == feed[2].body
    assert await count(ledger, "requests") == 2


async def test_pending_expires(make_ledger: OpenLedger, world: World) -> None:
    pod, genesis = world.pod()
    feed = genesis + needs(pod.author, 3)
    ledger = await make_ledger(limits=Limits(pending_ttl_s=60))
    await ledger.ingest(wires(feed[2:3]), source="peer-a")
    await ledger.ingest(wires(feed[3:]), source="peer-b")
    assert await ledger.purge_pending() == 0  # young entries stay
    assert await count(ledger, "pending") == 2
    later = clock.now_ms() + 61_000
    assert await ledger.purge_pending(later) == 2
    assert await count(ledger, "pending") == 0
    assert ledger.pending_count("peer-a") == ledger.pending_count("peer-b") == 0
    # The expired events are gone: filling the gap stores only what was sent since.
    assert statuses(await ledger.ingest(wires(feed[:2]))) == ["stored", "stored"]
    assert await count(ledger, "events") == 2
    assert statuses(await ledger.ingest(wires(feed[2:]))) == ["stored", "stored"]


async def test_ingest_expires_pending_on_its_own(make_ledger: OpenLedger, world: World) -> None:
    pod, genesis = world.pod()
    feed = genesis + needs(pod.author, 2)
    ledger = await make_ledger(limits=Limits(pending_ttl_s=0))
    await ledger.ingest(wires(feed[2:]))
    await ledger.db.execute("UPDATE pending SET received = received - 5000")
    ledger._last_purge = -1e9  # the once-a-minute check is due
    await ledger.ingest(wires(feed[:2]))
    assert await count(ledger, "pending") == 0
    assert await count(ledger, "events") == 2


async def test_pending_survives_a_restart(tmp_path: Path, world: World) -> None:
    pod, genesis = world.pod()
    feed = genesis + needs(pod.author, 2)
    org, add = world.organizer(pod)  # the pod's fourth event
    req = org.write(kinds.RequestOpened(title="Soup", category="food"), "network")
    async with await Ledger.open(tmp_path / "pod.db") as ledger:
        assert statuses(await ledger.ingest(wires([feed[2], req]))) == ["pending"] * 2
    async with await Ledger.open(tmp_path / "pod.db") as ledger:
        assert ledger.pending_count("peer") == 2
        assert statuses(await ledger.ingest(wires(feed[:2]))) == ["stored"] * 2
        assert await count(ledger, "events") == 3  # the third was waiting for them
        assert statuses(await ledger.ingest([add.to_wire()])) == ["stored"]
        assert await count(ledger, "events") == 5 and await count(ledger, "pending") == 0


async def test_a_released_roster_waiter_chains_on_its_stored_predecessor(
    make_ledger: OpenLedger, world: World
) -> None:
    """One organizer key serving two pods: its second event (for pod B) waits for B's
    roster.add, while its first (for pod A) is stored. When B's roster.add arrives in a
    later batch, the waiter must chain on the stored head, not on an empty feed."""
    a, a_genesis = world.pod("Elm")
    b, b_genesis = world.pod("Oak")
    key = Keypair.generate()
    for_a = Author(key, a.id, world.clock)
    for_b = Author(key, b.id, world.clock, heads=for_a.heads)  # one feed per (key, lane)
    add_a = a.author.write(kinds.OrganizerAdded(key=key.public), "network")
    add_b = b.author.write(kinds.OrganizerAdded(key=key.public), "network")
    e1 = for_a.write(kinds.RequestOpened(title="Elm's", category="food"), "network")
    e2 = for_b.write(kinds.RequestOpened(title="Oak's", category="food"), "network")
    ledger = await make_ledger()
    results = await ledger.ingest(wires([*a_genesis, add_a, e1, e2]))
    assert statuses(results) == ["stored", "stored", "stored", "pending"]
    assert statuses(await ledger.ingest(wires([*b_genesis, add_b]))) == ["stored", "stored"]
    assert e2.id in await stored_ids(ledger)
    assert await count(ledger, "pending") == 0
    assert await count(ledger, "requests") == 2


def early_writer(world: World, pod) -> tuple[Author, object, object]:  # type: ignore[no-untyped-def]
    """An organizer's first event, then the roster.add naming them, stamped after it."""
    key = Keypair.generate()
    org = Author(key, pod.id, world.clock)
    early = org.write(kinds.RequestOpened(title="Soup", category="food"), "network")
    world.tick(1000)
    add = pod.author.write(kinds.OrganizerAdded(key=key.public, name="Late"), "network")
    return org, early, add


async def test_an_event_older_than_its_authors_tenure_is_stored_soft_failed_once_named(
    make_ledger: OpenLedger, world: World
) -> None:
    """It waits while its author is on no roster; once a roster.add names the author it
    is stored (its feed goes on) but never applied, whether a peer's batch or a local
    append brought the add, and it no longer counts against its sender's allowance."""
    for by_append in (False, True):
        pod, genesis = world.pod()
        org, early, add = early_writer(world, pod)
        ledger = await make_ledger(f"{by_append}.db", pod=pod.id)
        assert statuses(await ledger.append(wires(genesis))) == ["stored"]
        assert statuses(await ledger.ingest([early.to_wire()], source="peer-a")) == ["pending"]
        assert ledger.pending_count("peer-a") == 1
        if by_append:
            assert statuses(await ledger.append([add.to_wire()])) == ["stored"]
        else:
            assert statuses(await ledger.ingest([add.to_wire()], source="peer-b")) == ["stored"]
        assert await count(ledger, "pending") == 0 and ledger.pending_count("peer-a") == 0
        assert early.id in await stored_ids(ledger)
        assert await count(ledger, "requests") == 0  # stamped before the tenure: soft-failed
        world.tick()
        later = org.write(kinds.RequestOpened(title="Soup again", category="food"), "network")
        assert statuses(await ledger.ingest([later.to_wire()], source="peer-a")) == ["stored"]
        assert await one(ledger, "SELECT title FROM requests") == "Soup again"
