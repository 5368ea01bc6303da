"""Adversarial review of session 10's changes: fork evidence waiting for its feed, bounded
answers, invites that die with their maker, forgets that reach the copies aside, clocks,
and restores. Each failing test names a real bug in its docstring.

Real nodes on 127.0.0.1, real SQLite files, real Ed25519 signatures; nothing of storage,
network or crypto is mocked."""

from __future__ import annotations

import time
from typing import Any

import pytest

from podlink.node.client import ClientError
from podlink.protocol import kinds
from podlink.protocol.keys import Keypair
from podlink.protocol.text import b64e

Network = Any


async def test_an_invite_of_a_removed_organizer_comes_back_to_life_when_they_are_re_added(
    network: Network,
) -> None:
    """A code taken back by removing its maker works again once the same key is added
    back, though nobody made it again.

    docs/security.md: a removed organizer's unused codes "are refused from then on". But
    node/peer_api.py redeem asks only whether ``made_by`` is an organizer *now*
    (``node.roles_of``, the roster's open tenures), not whether the tenure the code was
    made in is still open. Sam is removed after a falling-out (his codes may have been
    handed to anyone meanwhile) and re-added months later: every code he made before the
    removal, still unexpired, peers whoever holds it. A code should live only as long
    as the tenure it was made in (compare ``invites.created`` with the maker's current
    tenure's start)."""
    alder, birch = await network(2)
    sam = Keypair.generate()
    await alder.write(kinds.OrganizerAdded(key=sam.public, name="Sam"))
    as_sam = alder.client_for(sam)
    try:
        code = (await as_sam.post("/v1/invites"))["invite"]
    finally:
        await as_sam.close()
    await alder.write(kinds.OrganizerRemoved(key=sam.public, reason="falling-out"))
    try:  # taken back, as documented
        await birch.client.post("/v1/peers/join", {"invite": code})
        raise AssertionError("the code of a removed organizer peered a pod")
    except ClientError as e:
        assert e.status < 500, e
    assert birch.key not in await alder.peers()
    await alder.write(kinds.OrganizerAdded(key=sam.public, name="Sam"))  # months later
    try:
        await birch.client.post("/v1/peers/join", {"invite": code})
    except ClientError as e:
        assert e.status < 500, e
    assert birch.key not in await alder.peers(), (
        "a code taken back by its maker's removal peered a pod once the maker was re-added"
    )


async def test_after_a_fast_clock_is_put_right_new_organizers_stamp_before_their_tenure(
    network: Network, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An organizer added while the pod's machine ran three hours fast has everything they
    write stored and silently ignored, for three hours, once the clock is put right.

    Their roster.add is stamped three hours ahead. Since this session the node's clock
    resumes only within the future limit (ledger/ledger.py Ledger.open:
    ``self.clock.observe(own or 0, clock.FUTURE_LIMIT_MS)`` ignores a newest own event
    further ahead, it does not follow it), and the CLI follows that clock
    (node/client.py ``author.clock.advance(heads["clock"])``); the new organizer's own
    feeds have no head, so Author.floors holds nothing back. Their first need is stamped
    now, before their tenure starts: the node stores it (``stored``), the fold treats it
    as written by a key not in office and never applies it, and no request appears.
    Before, the node refused it by name (too-far-ahead); now nobody is told anything.
    The author of a pod's event must stamp after the start of its own tenure (the
    roster's ``from_ts`` of its key, returned with the heads), or be refused by name."""
    [alder] = await network(1)
    sam = Keypair.generate()
    real = time.time_ns
    monkeypatch.setattr(time, "time_ns", lambda: real() + 3 * 3600 * 10**9)
    await alder.write(kinds.OrganizerAdded(key=sam.public, name="Sam"))  # 3 h ahead
    monkeypatch.undo()  # NTP puts the clock right; the node restarts with it
    await alder.restart()
    as_sam = alder.client_for(sam)
    try:
        need = (await as_sam.author()).write(
            kinds.RequestOpened(title="Firewood", category="food"), "network"
        )
        try:
            await as_sam.submit([need])
        except ClientError as e:  # refused by name: what a writer can act on
            assert e.status < 500 and "tenure as organizer begins" in str(e), e
            return
        roster = await alder.client.get_all("/v1/roster")
    finally:
        await as_sam.close()
    [tenure] = [r for r in roster if r["key"] == b64e(sam.public)]
    assert "Firewood" in await alder.titles(), (
        f"the new organizer's need was stored, stamped at {need.header.ts}, before their "
        f"tenure starts ({tenure['from_ts']}), and ignored: nobody is told"
    )


async def test_after_a_fast_clock_is_put_right_a_feed_ahead_is_refused_by_name_never_reordered(
    network: Network, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pins Author.floors at a real node: once the clock is put right, the next event of
    a feed whose head was stamped three hours ahead follows that head (and is refused by
    name, too-far-ahead), never stamped before it; another lane of the same organizer
    writes at once."""
    [alder] = await network(1)
    real = time.time_ns
    monkeypatch.setattr(time, "time_ns", lambda: real() + 3 * 3600 * 10**9)
    ahead = await alder.open_request("Firewood", "network")
    monkeypatch.undo()
    await alder.restart()
    author = await alder.author()
    later = author.write(kinds.RequestOpened(title="Soup", category="food"), "network")
    assert later.header.ts > ahead.header.ts and later.header.prev == ahead.id
    with pytest.raises(ClientError) as refused:
        await alder.client.submit([later])
    assert "in the future" in str(refused.value) and refused.value.status < 500
    await alder.open_request("Bread", "pod")  # the pod lane is not held back
    assert await alder.titles() == {"Firewood", "Bread"}
