"""resource.withdraw: an entry of the shared directory goes away when its own pod
withdraws it, as widely as it shared it; in any order of arrival; live as in rebuild."""

from __future__ import annotations

from podlink.protocol import kinds as k
from tests.ledger.helpers import Scene, query, statuses, wires

BANK = k.ResourceShared(name="Mill Rd food bank", category="food", where="12 Mill Rd")


async def listed(s: Scene) -> list[str]:
    return [name for (name,) in await query(s.ledger, "SELECT name FROM resources")]


async def test_its_own_pod_withdraws_it(scene: Scene) -> None:
    s = scene
    entry = s.ana.write(BANK, "network")
    await s.feed(entry)
    assert await listed(s) == ["Mill Rd food bank"]
    await s.feed(s.ana.write(k.ResourceWithdrawn(reason="closed"), "network", [entry.id]))
    assert await listed(s) == []
    await s.rebuild_equals_live()


async def test_a_withdrawal_that_arrives_first_still_counts(scene: Scene) -> None:
    s = scene
    entry = s.ana.write(BANK, "network")
    gone = s.ana.write(k.ResourceWithdrawn(), "network", [entry.id])
    results = await s.ledger.ingest(wires([gone, entry]))  # the feed's second event first
    assert statuses(results) == ["stored", "stored"]
    assert await listed(s) == []
    await s.rebuild_equals_live()


async def test_another_pod_or_a_narrower_lane_changes_nothing(scene: Scene) -> None:
    s = scene
    entry = s.ana.write(BANK, "network")
    await s.feed(entry)
    await s.feed(s.ben.write(k.ResourceWithdrawn(reason="not yours"), "network", [entry.id]))
    # Withdrawn in the pod lane only: the pods that hold the entry would never see it.
    await s.feed(s.ana.write(k.ResourceWithdrawn(), "pod", [entry.id]))
    assert await listed(s) == ["Mill Rd food bank"]
    await s.rebuild_equals_live()
