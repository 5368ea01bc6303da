"""Review of resource.withdraw (commit 1bc5fb5): tests that fail because the code is
wrong, and a few that pin behaviour not tested before."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from podlink.ledger import state as st
from podlink.ledger.authoring import Author
from podlink.ledger.ledger import Ledger
from podlink.protocol import kinds as k
from podlink.protocol.envelope import Event, sign_event
from tests.ledger.helpers import Scene, World, bodiless, query, statuses, wires

BANK = k.ResourceShared(name="Mill Rd food bank", category="food", where="12 Mill Rd")


async def listed(ledger: Ledger) -> list[str]:
    return [name for (name,) in await query(ledger, "SELECT name FROM resources")]


@pytest.fixture
def before_the_kind(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """podlink as it was before resource.withdraw was a known kind: check_kind passes it
    through unchecked (no KINDS entry), root_of files it under nothing (not a follower),
    and a ledger records the kinds it knows without it. ``.undo()`` is the upgrade."""
    monkeypatch.setattr(k, "KINDS", {kd: c for kd, c in k.KINDS.items()
                                     if kd != "resource.withdraw"})  # fmt: skip
    monkeypatch.setattr(st, "FOLLOWERS", st.FOLLOWERS - {"resource.withdraw"})
    return monkeypatch


def raw_withdraw(by: Author, body: bytes, refs: list[bytes]) -> Event:
    """The next network-lane event of ``by``: a resource.withdraw signed with whatever
    ``body`` (what a node that does not know the kind stores unchecked)."""
    seq, prev = by.heads.get("network", (0, None))
    event = sign_event(
        by.keypair, pod=by.pod, lane="network", seq=seq + 1, prev=prev, ts=by.clock.now(),
        kind="resource.withdraw", body=body, refs=refs,
    )  # fmt: skip
    by.heads["network"] = (seq + 1, event.id)
    return event


# ------------------------------------------------------------------ upgrade from before


async def test_a_withdrawal_stored_before_the_upgrade_counts_after_it(
    tmp_path: Path, world: World, before_the_kind: pytest.MonkeyPatch
) -> None:
    """A node from before the kind stores a peer's resource.withdraw as an unknown kind,
    with root NULL. After the upgrade nothing re-filed it (the event is a duplicate when it
    comes again): the entry stayed listed live and went away on `podlink rebuild`, live !=
    rebuild, and this node differed from every other. Fixed: a ledger records the kinds
    its code knows, and rebuilds when it opens with code that knows more, and holds events
    of them."""
    elm, setup = world.pod("Elm")
    ana, add_ana = world.organizer(elm, "Ana")
    entry = ana.write(BANK, "network")
    gone = ana.write(k.ResourceWithdrawn(reason="closed"), "network", [entry.id])
    old = await Ledger.open(tmp_path / "elm.db")
    try:
        await old.set_pod(elm.id)
        assert statuses(await old.ingest(wires([*setup, add_ana, entry, gone]))) == ["stored"] * 4
        assert await listed(old) == ["Mill Rd food bank"]  # before: the kind means nothing
    finally:
        await old.close()
    before_the_kind.undo()  # the upgrade
    ledger = await Ledger.open(tmp_path / "elm.db")
    try:
        assert statuses(await ledger.ingest(wires([gone]))) == ["duplicate"]
        assert await listed(ledger) == []
        live = await ledger.dump()
        await ledger.rebuild()
        assert await ledger.dump() == live
    finally:
        await ledger.close()


async def test_a_bad_body_stored_before_the_upgrade_does_not_break_rebuild(
    tmp_path: Path, world: World, before_the_kind: pytest.MonkeyPatch
) -> None:
    """A node from before the kind stores a resource.withdraw whose body today's podlink
    would refuse (a reason over 200 characters): unknown kinds are stored with their
    bodies unchecked. Once upgraded, rebuild re-files the event under the entry and
    view_from_row decoded its body, raising ProtocolError: rebuild (and the one the
    upgrade asks for as the ledger opens) failed for good. Fixed: such a body is read as
    a dropped one."""
    elm, setup = world.pod("Elm")
    ana, add_ana = world.organizer(elm, "Ana")
    entry = ana.write(BANK, "network")
    bad = raw_withdraw(ana, msgspec.msgpack.encode({"reason": "x" * 300}), [entry.id])
    old = await Ledger.open(tmp_path / "elm.db")
    try:
        await old.set_pod(elm.id)
        assert statuses(await old.ingest(wires([*setup, add_ana, entry, bad]))) == ["stored"] * 4
    finally:
        await old.close()
    before_the_kind.undo()
    ledger = await Ledger.open(tmp_path / "elm.db")  # rebuilds: it knows the kind now
    try:
        assert await listed(ledger) == ["Mill Rd food bank"]
        await ledger.rebuild()
        assert await listed(ledger) == ["Mill Rd food bank"]
        assert (await ledger.verify()).ok
    finally:
        await ledger.close()


# ------------------------------------------------------------------ pinned behaviour


async def test_a_withdrawal_by_an_organizer_removed_before_it_soft_fails_in_any_order(
    scene: Scene,
) -> None:
    """Counted until the removal that predates it arrives; then the entry is back."""
    s = scene
    cat, add_cat = s.world.organizer(s.elm, "Cat", by=s.ana)
    await s.feed(add_cat)
    entry = s.ana.write(BANK, "network")
    remove = s.ana.write(k.OrganizerRemoved(key=cat.keypair.public), "network")
    gone = cat.write(k.ResourceWithdrawn(), "network", [entry.id])
    await s.feed(entry, gone)
    assert await listed(s.ledger) == []
    await s.feed(remove)
    assert await listed(s.ledger) == ["Mill Rd food bank"]
    await s.rebuild_equals_live()


async def test_a_withdrawal_naming_a_request_offer_claim_or_pod_changes_nothing(
    scene: Scene,
) -> None:
    """refs[0] of the wrong kind: the request, offer and pod folds (Writer dispatch by the
    anchor) ignore it; no row changes, live or rebuilt."""
    s = scene
    need = s.need()
    offer = s.ana.write(k.OfferOpened(title="Van", category="transport"), "network")
    claim = s.ben.write(k.ClaimMade(), "network", [need.id])
    await s.feed(need, offer, claim)
    before = await s.ledger.dump()
    await s.feed(
        s.ana.write(k.ResourceWithdrawn(), "network", [need.id]),
        s.ana.write(k.ResourceWithdrawn(), "network", [offer.id]),
        s.ana.write(k.ResourceWithdrawn(), "network", [claim.id]),
        s.ana.write(k.ResourceWithdrawn(), "network", [s.elm.id]),
    )
    assert await s.ledger.dump() == before
    await s.rebuild_equals_live()


async def test_a_bodiless_withdrawal_counts_once_its_body_is_refilled(scene: Scene) -> None:
    """Without its body it changes nothing; the refill re-folds the entry away."""
    s = scene
    entry = s.ana.write(BANK, "network")
    gone = s.ana.write(k.ResourceWithdrawn(), "network", [entry.id])
    await s.feed(entry)
    r = await s.ledger.ingest([bodiless(gone)])
    assert statuses(r) == ["stored"]
    live = await listed(s.ledger)
    await s.rebuild_equals_live()
    await s.ledger.ingest(wires([gone]))
    assert await listed(s.ledger) == []
    await s.rebuild_equals_live()
    assert live == ["Mill Rd food bank"]


async def test_a_wider_withdrawal_of_a_bodiless_share_in_one_batch(scene: Scene) -> None:
    """A peers entry withdrawn in the network lane, its body refilled later: still gone."""
    s = scene
    entry = s.ana.write(BANK, "peers")
    gone = s.ana.write(k.ResourceWithdrawn(), "network", [entry.id])
    r = await s.ledger.ingest([bodiless(entry), gone.to_wire()])
    assert statuses(r) == ["stored", "stored"]
    assert await listed(s.ledger) == []
    await s.ledger.ingest(wires([entry]))
    assert await listed(s.ledger) == []
    await s.rebuild_equals_live()


async def test_stray_followers_of_an_entry_do_not_hide_it_or_its_withdrawal(scene: Scene) -> None:
    """An offer.withdraw and a claim.make naming the entry: the anchor keeps it a resource."""
    s = scene
    entry = s.ana.write(BANK, "network")
    await s.feed(entry)
    await s.feed(
        s.ana.write(k.OfferWithdrawn(), "network", [entry.id]),
        s.ben.write(k.ClaimMade(), "network", [entry.id]),
    )
    assert await listed(s.ledger) == ["Mill Rd food bank"]
    await s.feed(s.ana.write(k.ResourceWithdrawn(), "network", [entry.id]))
    assert await listed(s.ledger) == []
    await s.rebuild_equals_live()
