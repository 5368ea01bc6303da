"""Review: a busy day at one pod's node.

Organizers' CLIs submitting at once, peers pulling, `podlink backup` taken mid-ingest, the
node stopped and started again. Real nodes on 127.0.0.1, real SQLite files in tmp_path,
real Ed25519 signatures, the real `podlink` command in a subprocess; every wait is bounded
by a timeout, and every loop by a count and a deadline.
"""

from __future__ import annotations

import asyncio
import os
import random
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

from podlink.node.client import ClientError
from podlink.protocol import kinds
from podlink.protocol.envelope import Lane
from podlink.protocol.keys import Keypair
from tests.node.helpers import join, wait_converged, wait_event

LANES: tuple[Lane, ...] = ("network", "peers", "pod")
LIMIT_S = 20.0  # no step of these tests may take longer: a hang fails, never blocks


def _pad(db: Path, megabytes: int) -> None:
    """Grow the ledger file by ``megabytes`` of table pages, as the events of a pod that
    has been running a while would (a pod ingesting a large peer's history reaches this
    size in minutes); the node never reads the table."""
    con = sqlite3.connect(db)
    try:
        con.execute("CREATE TABLE review_padding (b BLOB)")
        blob = os.urandom(4000)
        con.executemany("INSERT INTO review_padding VALUES (?)",
                        ((blob,) for _ in range(megabytes * 256)))  # fmt: skip
        con.commit()
    finally:
        con.close()


async def _podlink(*args: str, home: Path, within: float) -> tuple[int | None, str]:
    """Run the real `podlink` command in a subprocess; (exit code or None if it had not
    finished ``within`` seconds and was killed, its output)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "podlink.cli", *args, "--home", str(home),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "PODLINK_HOME": "", "NO_COLOR": "1"},
    )  # fmt: skip
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), within)
    except TimeoutError:
        proc.kill()
        out, _ = await proc.communicate()
        return None, out.decode(errors="replace")
    return proc.returncode, out.decode(errors="replace")


# ---------------------------------------------------------------- backup mid-ingest


async def test_a_backup_taken_while_organizers_write_finishes(network: Any, tmp_path: Path) -> None:
    """`podlink backup` does not finish while the node keeps committing.

    cli/pods.py ``backup`` copies with ``sqlite3.Connection.backup(target, pages=256)``:
    256 pages per step, on a connection of its own. SQLite restarts an online backup from
    the first page whenever another connection (the node's writer) commits between two
    steps. A ledger of ~128 MB is 128 steps; organizers submitting, or a peer sync
    committing a batch every few dozen milliseconds, land a commit inside nearly every
    copy, so the copy starts over and over, and the command hangs for as long as the
    node is busy (operations.md: "safe while the node runs"). Expected: the backup
    finishes while three organizers keep writing, and holds what was acknowledged before
    it began (with ``pages=-1``, one step on one read snapshot, it does in under a
    second). Actual: still copying when the test gives up, 6 s later."""
    [pod] = await network(1, start=False, rate_per_s=10_000.0)  # three busy CLIs, one key
    _pad(pod.config.ledger_path, 128)
    await pod.start()
    before = await pod.open_request("acknowledged before the backup")
    stop = asyncio.Event()
    busy = asyncio.Event()  # set once the node is committing steadily
    written = 0

    async def organizer(n: int) -> None:
        nonlocal written
        deadline = time.monotonic() + LIMIT_S
        for i in range(5000):  # bounded in count and time
            if stop.is_set() or time.monotonic() > deadline:
                return
            body = kinds.RequestOpened(title=f"busy {n}.{i}", category="food")
            await pod.write(body, LANES[n])  # a feed each: no two writers chain on one head
            written += 1
            if written >= 3:
                busy.set()

    writers = [asyncio.create_task(organizer(n)) for n in range(3)]
    try:
        async with asyncio.timeout(LIMIT_S):
            await busy.wait()
        target = tmp_path / "backup.db"
        code, out = await _podlink("backup", str(target), home=pod.home, within=6.0)
    finally:
        stop.set()
        async with asyncio.timeout(LIMIT_S):
            await asyncio.gather(*writers)
    assert code == 0, f"podlink backup did not finish within 6 s beside {written} appends: {out}"
    copy = sqlite3.connect(target)
    try:
        ids = {r[0] for r in copy.execute("SELECT id FROM events")}
    finally:
        copy.close()
    assert before.id in ids


# ---------------------------------------------------------------- two organizers, one need


async def test_an_acknowledged_accept_is_not_overturned_by_a_slower_organizer(
    network: Any,
) -> None:
    """Two organizers accept two different claims on one need; the one the node
    acknowledged first is silently overturned by the other, which arrives later.

    Ann and Sam (two organizers of Alder, two laptops) each run `podlink accept` on a
    different claim of one open need. Sam's CLI chains on the node's heads and clock and
    signs (cli/session.py ``write``), then its POST is slow to arrive (a laptop on a
    phone's link). Meanwhile Ann's accept is stored, the node folds it as applied, and her
    CLI's ``check_applied`` says "Accepted claim ...": she tells Birch's helper to go.
    Sam's accept then arrives: it is stamped before Ann's, the node stores it with a 200
    (node/organizer_api.py ``_submit`` appends it like any event: ledger/ingest.py
    ``_offer`` checks the feed chain and roster only), and the fold's (ts, id) order
    (ledger/state.py ``fold_request``) makes it the first accept: the need moves to
    Cedar's claim, Ann's acknowledged acceptance now "changed nothing", and Sam's CLI
    says "Accepted" too. Two helpers were told to go for one need: the double match
    DOMAIN.md warns about, made by the node that had already answered the first.
    For peers the (ts, id) order must stay (state is a function of the events), but
    these are this pod's own organizers, whose every answer goes through this node.
    Expected: Sam's late accept is refused with a 4xx naming the claim accepted
    meanwhile (his CLI then signs again, sees the need accepted, and says so). Actual:
    stored, and the accepted claim changes under Ann's feet."""
    alder, birch, cedar = await network(3)
    sam = Keypair.generate()
    await alder.write(kinds.OrganizerAdded(key=sam.public, name="Sam"))
    for other in (birch, cedar):
        await join(alder, other)
    need = await alder.open_request("Ride to the clinic", category="transport")
    claims = []
    for helper in (birch, cedar):
        await wait_event(helper, need.id_text)
        claims.append(await helper.write(kinds.ClaimMade(note=helper.name), "network",
                                         [need.id]))  # fmt: skip
    for claim in claims:
        await wait_event(alder, claim.id_text)
    ann_claim, sam_claim = claims
    sam_client = alder.client_for(sam)
    try:
        # Sam's CLI: heads, clock, sign; its POST is still on its way.
        sam_author = await sam_client.author()
        sam_accept = sam_author.write(kinds.ClaimAccepted(), "network", [sam_claim.id, need.id])
        # Ann's CLI: the whole `podlink accept`, acknowledged and applied.
        await asyncio.sleep(0.01)  # her laptop signs a moment later (HLC ms)
        ann_accept = await alder.write(kinds.ClaimAccepted(), "network",
                                       [ann_claim.id, need.id])  # fmt: skip
        assert sam_accept.ts < ann_accept.ts
        seen = await alder.client.get(f"/v1/requests/{need.id_text}", event=ann_accept.id_text)
        assert seen["accepted_claim"] == ann_claim.id_text  # what Ann's CLI reported
        assert seen["step"]["outcome"] == "applied"
        # Sam's POST arrives.
        try:
            results = await sam_client.submit([sam_accept])
        except ClientError as err:
            assert 400 <= err.status < 500, err
            results = []
    finally:
        await sam_client.close()
    after = await alder.client.get(f"/v1/requests/{need.id_text}")
    assert after["accepted_claim"] == ann_claim.id_text, (
        f"Ann's acknowledged accept was overturned by a later-arriving one ({results})"
    )


# ---------------------------------------------------------------- pinned: a busy hour


async def test_four_organizers_answering_at_once_leave_state_equal_to_a_rebuild(
    network: Any,
) -> None:
    """(passes: pins behaviour) Four organizers of Alder, each through their own signed
    client, answer at once for an hour's worth of work: accepts and declines of the same
    claims, requests updated, cancelled and fulfilled while claimed, offers withdrawn,
    all going through the node's group commit and its fold cache while Birch pulls
    and streams them. Every submission is answered (stored, or a 4xx refusal), and on
    both nodes the live read model equals ``Ledger.rebuild``'s."""
    alder, birch = await network(2, rate_per_s=10_000.0)
    organizers = [Keypair.generate() for _ in range(4)]
    for key in organizers:
        await alder.write(kinds.OrganizerAdded(key=key.public, name="co-organizer"))
    await join(alder, birch)
    needs = [await alder.open_request(f"need {i}", category="food") for i in range(4)]
    offers = [await alder.write(kinds.OfferOpened(title=f"offer {i}", category="food"))
              for i in range(3)]  # fmt: skip
    claims = []
    for need in needs:
        await wait_event(birch, need.id_text)
        for j in range(3):
            claim = await birch.write(kinds.ClaimMade(note=f"helper {j}"), "network", [need.id])
            claims.append((need, claim))
    for _, claim in claims:
        await wait_event(alder, claim.id_text)
    answered: list[str] = []

    def answer(r: random.Random, need: Any, claim: Any) -> tuple[kinds.Body, list[bytes]]:
        x = r.random()
        if x < 0.3:
            return kinds.ClaimAccepted(), [claim.id, need.id]
        if x < 0.5:
            return kinds.ClaimDeclined(reason="sorted"), [claim.id, need.id]
        if x < 0.65:
            return kinds.RequestUpdated(title=f"need, {x:.3f}"), [need.id]
        if x < 0.72:
            return kinds.RequestCancelled(), [need.id]
        if x < 0.8:
            return kinds.RequestFulfilled(hours=1.0), [need.id]
        return kinds.OfferWithdrawn(), [r.choice(offers).id]

    async def organizer(key: Keypair, seed: int) -> None:
        r = random.Random(seed)
        client = alder.client_for(key)
        try:
            for _ in range(20):
                author = await client.author()
                body, refs = answer(r, *r.choice(claims))
                event = author.write(body, "network", refs)
                await asyncio.sleep(r.random() * 0.005)  # CLIs interleave differently
                try:
                    [result] = await client.submit([event])
                    answered.append(result["status"])
                except ClientError as err:
                    assert 400 <= err.status < 500, err
                    answered.append(err.reason)
        finally:
            await client.close()

    async with asyncio.timeout(LIMIT_S):
        await asyncio.gather(*(organizer(k, i) for i, k in enumerate(organizers)))
    # Stored, or refused by name (organizer_api._check_changes): an accept of one claim
    # while another is accepted ("duplicate"), a change signed before another organizer's
    # change of the same need that was stored first ("invalid", 409).
    assert len(answered) == 80 and set(answered) <= {"stored", "duplicate", "invalid"}
    assert answered.count("stored") > 40, answered
    await wait_converged([alder, birch])
    for node in (alder, birch):
        live = await node.ledger.dump()
        await node.ledger.rebuild()
        assert await node.ledger.dump() == live, node.name
        assert (await node.ledger.verify()).ok
