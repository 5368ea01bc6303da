"""A long feed delivered newest first: every event waits, then all are stored at once.

Storing an event released its waiting successor by calling back into the offer of that
successor, one Python call level per event: a feed of ~1,000 events that arrived newest
first raised RecursionError when its first event came, the batch rolled back, and the
events parked in the pending table stayed there, the feed wedged for good (each later
ingest that brought the first event failed the same way). Releases now queue.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from podlink.ledger.ledger import Ledger, Limits
from podlink.protocol import kinds
from podlink.protocol.envelope import Event
from tests.ledger.helpers import World, count, statuses, stored_ids, wires


def long_feed(n: int) -> tuple[bytes, list[Event], list[Event]]:
    """A pod with one organizer (setup events) and ``n`` offers in her feed."""
    world = World()
    pod, setup = world.pod()
    ana, add = world.organizer(pod, "Ana")
    feed = []
    for i in range(n):
        world.tick()
        feed.append(ana.write(kinds.OfferOpened(
            title=f"soup {i}", category="food", details="a pot", availability="x"), "network"))
    return pod.id, [*setup, add], feed


@pytest.mark.parametrize("batch", [3000, 200], ids=["one-batch", "across-batches"])
async def test_a_feed_of_3000_delivered_newest_first_is_stored_whole(
    tmp_path: Path, batch: int
) -> None:
    pod, setup, feed = long_feed(3000)
    ledger = await Ledger.open(tmp_path / "pod.db", limits=Limits(batch_size=batch))
    in_order = await Ledger.open(tmp_path / "in-order.db")
    try:
        for led in (ledger, in_order):
            await led.set_pod(pod)
            assert statuses(await led.ingest(wires(setup))) == ["stored"] * 2
        assert statuses(await in_order.ingest(wires(feed))) == ["stored"] * 3000
        results = await ledger.ingest(wires(feed[::-1]))
        # The last batch holds seq 1: it is stored, and with it everything parked before.
        assert statuses(results[-batch:]) == ["stored"] * batch
        assert {r.status for r in results[:-batch]} <= {"pending"}
        assert await stored_ids(ledger) == {e.id for e in [*setup, *feed]}
        assert await count(ledger, "pending") == 0
        assert await ledger.dump() == await in_order.dump()
    finally:
        await ledger.close()
        await in_order.close()


async def test_a_parked_feed_is_released_by_a_later_ingest_of_its_first_event(
    tmp_path: Path,
) -> None:
    """Parked in earlier ingests, 2,999 events wait in the pending table; the ingest
    that brings seq 1 releases them all (that ingest itself is one event)."""
    pod, setup, feed = long_feed(3000)
    ledger = await Ledger.open(tmp_path / "pod.db", limits=Limits(batch_size=500))
    try:
        await ledger.set_pod(pod)
        await ledger.ingest(wires(setup))
        parked = await ledger.ingest(wires(feed[:0:-1]))
        assert statuses(parked) == ["pending"] * 2999
        assert await count(ledger, "pending") == 2999
        assert statuses(await ledger.ingest(wires(feed[:1]))) == ["stored"]
        assert await count(ledger, "pending") == 0
        assert await count(ledger, "offers") == 3000
        report = await ledger.verify()
        assert report.ok and report.events == 3002, report.problems
    finally:
        await ledger.close()


async def test_a_gap_in_a_parked_run_stops_the_release_there(tmp_path: Path) -> None:
    """Parked: seq 2-10 and 12-20. Seq 1 releases 2-10 only; seq 11 then the rest."""
    pod, setup, feed = long_feed(20)
    ledger = await Ledger.open(tmp_path / "pod.db")
    try:
        await ledger.set_pod(pod)
        await ledger.ingest(wires(setup))
        parked = [*feed[1:10], *feed[11:]]
        assert statuses(await ledger.ingest(wires(parked))) == ["pending"] * 18
        assert statuses(await ledger.ingest(wires(feed[:1]))) == ["stored"]
        assert await stored_ids(ledger) == {e.id for e in [*setup, *feed[:10]]}
        assert await count(ledger, "pending") == 9
        assert statuses(await ledger.ingest(wires(feed[10:11]))) == ["stored"]
        assert await stored_ids(ledger) == {e.id for e in [*setup, *feed]}
        assert await count(ledger, "pending") == 0
    finally:
        await ledger.close()


async def test_more_parked_copies_at_one_seq_than_one_read_takes_are_all_released(
    tmp_path: Path,
) -> None:
    """700 different events signed at seq 2 (an equivocating key) and parked, more than
    one read of parked successors takes: when seq 1 comes, one of them is stored and the
    others are refused as forks, none left waiting."""
    world = World()
    pod, setup = world.pod()
    ana, add = world.organizer(pod, "Ana")
    first = ana.write(kinds.OfferOpened(title="soup", category="food"), "network")
    copies = []
    for i in range(700):
        world.tick()
        copies.append(ana.write(kinds.OfferOpened(title=f"bread {i}", category="food"),
                                "network"))  # fmt: skip
        ana.set_head("network", 1, first.id)  # the next one again at seq 2
    ledger = await Ledger.open(tmp_path / "pod.db")
    try:
        await ledger.set_pod(pod.id)
        await ledger.ingest(wires([*setup, add]))
        assert statuses(await ledger.ingest(wires(copies))) == ["pending"] * 700
        assert statuses(await ledger.ingest(wires([first]))) == ["stored"]
        assert await count(ledger, "pending") == 0
        assert len(await stored_ids(ledger)) == 4  # genesis, roster.add, seq 1, one seq 2
        assert await count(ledger, "forks") == 1  # one piece of evidence per position
    finally:
        await ledger.close()
