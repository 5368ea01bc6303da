"""Review of the incremental folds: requests continued from a kept fold (FoldCache,
RequestFold.extend) and rosters continued in memory (Roster.extend_pod) must give what
one ingest of the same events, and a rebuild, give.

No divergence was found by this review (randomized histories with skewed clocks, one- and
two-ref answers, one key on two pods' rosters, bodiless copies, reopen, rebuild and
rolled-back commits between batches). The tests below pin corners nobody tested before.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

from podlink.ledger.authoring import Author
from podlink.ledger.errors import StorageError
from podlink.ledger.ledger import Ledger
from podlink.protocol import kinds as k
from podlink.protocol.envelope import Event
from podlink.protocol.keys import Keypair
from tests.ledger.helpers import World, claim_status, diff, query, request_row, statuses, wires


async def stream_and_compare(
    tmp_path: Path, pod: bytes, batches: Sequence[Sequence[Event]], *, reopen: bool = False
) -> Ledger:
    """Ingest ``batches`` one by one into ``parts.db`` (closing and reopening it between
    batches if ``reopen``), all of them at once into ``whole.db``; both dumps must be
    equal, and equal to a rebuild of ``whole.db``. Returns the open ``parts`` ledger
    (the caller closes it)."""
    whole = await Ledger.open(tmp_path / "whole.db")
    parts = await Ledger.open(tmp_path / "parts.db")
    try:
        for led in (whole, parts):
            await led.set_pod(pod)
        for batch in batches:
            assert set(statuses(await parts.ingest(wires(batch)))) <= {"stored", "duplicate"}
            if reopen:
                await parts.close()
                parts = await Ledger.open(tmp_path / "parts.db")
        await whole.ingest(wires([e for batch in batches for e in batch]))
        expected = await whole.dump()
        await whole.rebuild()
        assert await whole.dump() == expected
        live = await parts.dump()
        assert live == expected, diff(live, expected)
    except BaseException:
        await parts.close()
        raise
    finally:
        await whole.close()
    return parts


async def test_an_answer_naming_its_request_before_its_claim_is_continued_from_a_kept_fold(
    tmp_path: Path,
) -> None:
    """Elm accepts Oak's second claim (refs [claim, request]) with a timestamp before
    the claim's (Oak's clock runs ahead), and the accept arrives first: the request,
    kept since the first claim, is accepted for a claim it does not hold yet. The claim
    then sorts after everything folded, so the kept fold is continued, and the claim
    must take the decision waiting for it (RequestState.decisions)."""
    world = World()
    elm, setup = world.pod("Elm")
    oak, oak_setup = world.pod("Oak")
    need = elm.author.write(k.RequestOpened(title="Soup", category="food"), "network")
    world.tick()
    first = oak.author.write(k.ClaimMade(note="me"), "network", [need.id])
    world.tick(1000)
    ahead = need.header.ts + (5000 << 16)
    second = oak.author.write(k.ClaimMade(note="me too"), "network", [need.id], ts=ahead)
    accept = elm.author.write(
        k.ClaimAccepted(), "network", [second.id, need.id], ts=ahead - (10 << 16)
    )
    parts = await stream_and_compare(
        tmp_path, elm.id, [[*setup, *oak_setup, need], [first], [accept], [second]]
    )
    try:
        assert await claim_status(parts, second.id) == "accepted"
        assert await claim_status(parts, first.id) == "pending"
        row = await request_row(parts, need.id)
        assert row is not None and row["status"] == "accepted"
        assert row["accepted_claim"] == second.id
    finally:
        await parts.close()


async def test_a_late_removal_from_one_pod_leaves_the_same_keys_other_pod_alone(
    tmp_path: Path,
) -> None:
    """Kai organizes Elm and Oak (one key, one feed, two pods). Oak removes Kai with a
    timestamp before Kai's claim for Oak, and the removal arrives last, in a batch of its
    own, after the claims were folded from kept requests: Kai's Oak claim soft-fails,
    his Elm request and his Elm claim still count."""
    world = World()
    elm, setup = world.pod("Elm")
    oak, oak_setup = world.pod("Oak")
    kai_key = Keypair.generate()
    kai, add_elm = world.organizer(elm, "Kai", key=kai_key)
    world.tick()
    add_oak = oak.author.write(k.OrganizerAdded(key=kai_key.public, name="Kai"), "network")
    # One feed: the Oak-side author shares the Elm-side author's feed heads.
    kai_oak = Author(kai_key, oak.id, world.clock, kai.heads)
    world.tick()
    need = kai.write(k.RequestOpened(title="Soup", category="food"), "network")
    world.tick()
    other = elm.author.write(k.RequestOpened(title="Lift", category="transport"), "network")
    world.tick()
    removal_ts = world.clock.now()
    world.tick()
    oak_claim = kai_oak.write(k.ClaimMade(note="Oak helps"), "network", [other.id])
    world.tick()
    elm_claim = kai.write(k.ClaimMade(note="Elm helps"), "network", [need.id])
    removal = oak.author.write(k.OrganizerRemoved(key=kai_key.public), "network", ts=removal_ts)
    parts = await stream_and_compare(
        tmp_path, elm.id,
        [[*setup, *oak_setup, add_elm, add_oak, need, other], [oak_claim], [elm_claim],
         [removal]],
    )  # fmt: skip
    try:
        assert await claim_status(parts, oak_claim.id) is None  # soft-failed
        assert await claim_status(parts, elm_claim.id) == "accepted"  # Elm's own: at once
        assert await request_row(parts, need.id) is not None
    finally:
        await parts.close()


async def test_a_commit_failing_while_a_kept_request_is_continued_is_folded_again_after(
    tmp_path: Path,
) -> None:
    """A batch of claims on a kept request fails on a full disk after the fold in memory
    was continued with them (RequestFold.extend changes it in place). The rollback must
    not leave those claims in the kept fold: the same batch again, and the claims after
    it, give the state of one ingest."""
    world = World()
    elm, setup = world.pod("Elm")
    oak, oak_setup = world.pod("Oak")
    need = elm.author.write(k.RequestOpened(title="Soup", category="food"), "network")
    claims = []
    for i in range(60):
        world.tick()
        claims.append(oak.author.write(k.ClaimMade(note=f"{i} " + "x" * 400), "network",
                                       [need.id]))  # fmt: skip
    world.tick()
    accept = elm.author.write(k.ClaimAccepted(), "network", [claims[30].id, need.id])
    head, failing, tail = [*setup, *oak_setup, need, claims[0]], claims[1:50], claims[50:]
    parts = await Ledger.open(tmp_path / "parts.db")
    whole = await Ledger.open(tmp_path / "whole.db")
    try:
        for led in (parts, whole):
            await led.set_pod(elm.id)
        await parts.ingest(wires(head))
        await parts.ingest(wires([claims[1]]))  # folded from the table: kept from here
        pages = (await query(parts, "PRAGMA page_count"))[0][0]
        await parts.db.execute(f"PRAGMA max_page_count = {pages}")
        with pytest.raises(StorageError):
            await parts.ingest(wires(failing[1:]))
        await parts.db.execute("PRAGMA max_page_count = 1073741823")
        assert await claim_status(parts, failing[-1].id) is None
        await parts.ingest(wires(failing[1:]))
        for event in [*tail, accept]:
            assert statuses(await parts.ingest(wires([event]))) == ["stored"]
        await whole.ingest(wires([*head, *failing, *tail, accept]))
        live = await parts.dump()
        assert live == await whole.dump(), diff(live, await whole.dump())
        row = await request_row(parts, need.id)
        assert row is not None and row["claims"] == 60 and row["status"] == "accepted"
    finally:
        await parts.close()
        await whole.close()


async def test_a_roster_and_claims_streamed_across_reopens_equal_one_ingest(
    tmp_path: Path,
) -> None:
    """Reopened between every batch (no kept folds, no roster folded in memory: the
    first roster event after each open folds the pod's roster from the table), a roster
    that adds, removes and re-adds Ana, with her answers in between, equals one ingest."""
    world = World()
    elm, setup = world.pod("Elm")
    oak, oak_setup = world.pod("Oak")
    ana, add_ana = world.organizer(elm, "Ana")
    world.tick()
    need = ana.write(k.RequestOpened(title="Soup", category="food"), "network")
    world.tick()
    c1 = oak.author.write(k.ClaimMade(note="one"), "network", [need.id])
    world.tick()
    remove = elm.author.write(k.OrganizerRemoved(key=ana.keypair.public), "network")
    world.tick()
    refused = ana.write(k.ClaimAccepted(), "network", [c1.id, need.id])  # soft-fails
    world.tick()
    readd = elm.author.write(k.OrganizerAdded(key=ana.keypair.public, name="Ana"), "network")
    world.tick()
    c2 = oak.author.write(k.ClaimMade(note="two"), "network", [need.id])
    world.tick()
    accepted = ana.write(k.ClaimAccepted(), "network", [c2.id])  # one ref, as older podlink
    stream: list[list[Event]] = [[*setup, *oak_setup, add_ana, need]]
    stream += [[e] for e in (c1, remove, refused, readd, c2, accepted)]
    parts = await stream_and_compare(tmp_path, elm.id, stream, reopen=True)
    try:
        assert await claim_status(parts, c1.id) == "pending"
        assert await claim_status(parts, c2.id) == "accepted"
        assert len(parts.roster.active_keys(elm.id)) == 1
    finally:
        await parts.close()
