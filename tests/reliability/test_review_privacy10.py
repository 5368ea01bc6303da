"""Review of privacy across session 10's new paths: fork evidence waiting for its feed,
named forks and request steps, match, the copies a restore keeps aside, invites with
makers. Each failing test names a real bug in its docstring.

Real SQLite files in tmp_path, real Ed25519 signatures; nothing mocked."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

from podlink.cli.restore import carry_over, copy_backup
from podlink.ledger import forks as fork_rows
from podlink.ledger import queries
from podlink.ledger.authoring import Author
from podlink.ledger.ledger import Ledger
from podlink.ledger.store import private_file
from podlink.node.api_types import msgpack_encoder
from podlink.protocol import boxes
from podlink.protocol import kinds as k
from podlink.protocol.evidence import Evidence
from podlink.protocol.keys import Keypair
from podlink.protocol.text import b64d, b64e
from tests.cli.conftest import run
from tests.ledger.helpers import World, statuses, wires

Network = Any


def _copy(src: Path, dst: Path) -> None:
    with closing(sqlite3.connect(src)) as a, closing(sqlite3.connect(dst)) as b:
        a.backup(b)


def _damage_events(path: Path) -> None:
    """Overwrite the leaf pages of the events table with junk: the rest stays readable
    (a disk that lost a few sectors, the reason one restores)."""
    with closing(sqlite3.connect(path)) as db:
        size = db.execute("PRAGMA page_size").fetchone()[0]
        pages = [
            p
            for (p,) in db.execute(
                "SELECT pageno FROM dbstat WHERE name = 'events' AND pagetype = 'leaf'"
            )
        ]
    with path.open("r+b") as f:
        for page in pages:
            f.seek((page - 1) * size)
            f.write(b"\xa5" * size)


async def test_a_restore_over_a_partly_damaged_database_keeps_a_key_no_forget_reaches(
    tmp_path: Path,
) -> None:
    """A member who joined after the backup leaves their key in the restored database,
    where `member forget` can never reach it.

    `podlink restore` over a database that is damaged in part (the events table lost a
    page, the usual reason to restore) carries member keys first, all of them, and then
    the events until the damage (cli/restore.py _carry: keys before `_events`). The
    member's member.join lies past the damage, so the restored database holds their
    key in member_keys with no member row: `member list` does not show them, `member
    forget` cannot name them (ops.forget_member finds members through /v1/members), and
    nothing else ever deletes the key (forget_members and aside.scrub delete the keys of
    members whose forget is stored). The copy kept aside holds their box; the live file
    the key that opens it: the member asks to be forgotten and the pod cannot do it."""
    world = World()
    elm, setup = world.pod("Elm")
    ana, add = world.organizer(elm)
    live, backup = tmp_path / "ledger.db", tmp_path / "monday.db"
    key = boxes.new_member_key()
    details = k.encode_body(k.MemberDetails(name="Wilhelmina Oduya", contact="555 0177"))
    async with await Ledger.open(live) as ledger:
        await ledger.set_pod(elm.id)
        assert statuses(await ledger.ingest(wires([*setup, add]))) == ["stored"] * 2
        await ledger.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        _copy(live, backup)  # Monday's backup
        join = ana.write(k.MemberJoined(box=boxes.lock(key, details)), "pod")
        assert statuses(await ledger.append(wires([join]))) == ["stored"]
        await ledger.put_member_key(join.id, key)
    _damage_events(live)
    incoming = tmp_path / "ledger.db.restoring"
    private_file(incoming)
    copy_backup(backup, incoming)
    carried = await asyncio.to_thread(carry_over, live, incoming, elm.id)
    assert "in part" in carried.unreadable, carried
    with closing(sqlite3.connect(incoming)) as db:
        members = {m for (m,) in db.execute("SELECT id FROM members")}
        keys = {m for (m,) in db.execute("SELECT member FROM member_keys")}
    orphans = keys - members
    assert not orphans, (
        f"the restored database keeps {len(orphans)} member key(s) of member(s) it does "
        "not hold: no `member forget` can ever destroy them"
    )


async def test_a_restore_over_a_partly_damaged_database_brings_a_forgotten_member_back(
    tmp_path: Path,
) -> None:
    """A member forgotten after the backup is readable again, name and contact, once the
    backup is restored over a database damaged in part.

    cli/restore.py _carry promises "a member forgotten in either database stays
    forgotten", but learns of forgets only from the events it carries (the member.forget
    is one) and from the restored database's own members table. When the replaced
    database's events table is damaged (why one restores), the forget is not carried;
    yet that database's members table, still readable, says the member was forgotten and
    its member_keys no longer holds their key. The restored database keeps the backup's
    key and box: `member list` shows the person who asked to be forgotten, with their
    contact, and peers get nothing of it only because it is pod lane."""
    world = World()
    elm, setup = world.pod("Elm")
    ana, add = world.organizer(elm)
    live, backup = tmp_path / "ledger.db", tmp_path / "monday.db"
    key = boxes.new_member_key()
    details = k.encode_body(k.MemberDetails(name="Wilhelmina Oduya", contact="555 0177"))
    join = ana.write(k.MemberJoined(box=boxes.lock(key, details)), "pod")
    async with await Ledger.open(live) as ledger:
        await ledger.set_pod(elm.id)
        assert statuses(await ledger.ingest(wires([*setup, add, join]))) == ["stored"] * 3
        await ledger.put_member_key(join.id, key)
        await ledger.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        _copy(live, backup)  # Monday's backup: the member and their key
        forget = ana.write(k.MemberForgotten(), "pod", [join.id])
        assert statuses(await ledger.append(wires([forget]))) == ["stored"]
    _damage_events(live)
    with closing(sqlite3.connect(live)) as db:  # what the replaced database still says
        assert db.execute("SELECT status FROM members").fetchall() == [("forgotten",)]
    incoming = tmp_path / "ledger.db.restoring"
    private_file(incoming)
    copy_backup(backup, incoming)
    # (as `podlink restore` does: with the pod's node key, which signs the forget again)
    carried = await asyncio.to_thread(carry_over, live, incoming, elm.id, elm.key)
    assert "in part" in carried.unreadable, carried
    assert carried.forgets == 1, carried
    async with await Ledger.open(incoming) as restored:
        shown = await queries.list_members(restored.reader)
        everyone = await queries.list_members(restored.reader, include_forgotten=True)
        assert (await restored.verify()).ok
    assert not shown, f"the member forgotten is back in the restored pod: {shown}"
    assert [m["status"] for m in everyone] == ["forgotten"], everyone


def _files_holding(home: Path, needle: bytes) -> list[str]:
    return sorted(p.name for p in home.rglob("*") if p.is_file() and needle in p.read_bytes())


async def test_a_restore_cut_off_leaves_a_whole_ledger_that_no_forget_reaches(
    network: Network, tmp_path: Path
) -> None:
    """A member forgotten after a restore was cut off stays readable in the pod's folder.

    `podlink restore` first copies the backup into ledger.db.restoring, beside the live
    database (cli/pods.py _restore: private_file, copy_backup), then carries the current
    database's events into it, which takes minutes on a large ledger. Only its `finally`
    removes that file: a restore killed meanwhile (kill -9, the power, an OOM kill, a
    closed SSH session's SIGKILL) leaves a whole ledger there, every member key
    included. Nothing removes it afterwards (neither `podlink serve` nor the next
    forget), and a forget scrubs only the copies named ledger.db.before-restore-*
    (ledger/aside.py copies): the member's key and box stay side by side in the pod's
    folder, and in every backup of the folder, after the forget promised them destroyed.
    The state is made here with restore's own first step (copy_backup), as a restore
    killed right after it leaves it."""
    [alder] = await network(1)

    def cli(*args: str) -> Any:
        return json.loads(run(*args, "--json", home=alder.home).stdout)

    member = await asyncio.to_thread(
        cli, "member", "add", "Wilhelmina Oduya", "--contact", "555 0177"
    )
    with closing(sqlite3.connect(alder.home / "ledger.db")) as db:
        [(key,)] = db.execute(
            "SELECT key FROM member_keys WHERE member = ?", (b64d(member["id"]),)
        ).fetchall()
    backup = tmp_path / "alder.db"
    await asyncio.to_thread(run, "backup", str(backup), home=alder.home)
    await alder.stop()
    left = alder.home / "ledger.db.restoring"  # a restore killed after its first step
    private_file(left)
    copy_backup(backup, left)
    await alder.start()
    await asyncio.to_thread(cli, "member", "forget", member["id"], "--yes")
    await alder.stop()
    holding = _files_holding(alder.home, key)
    assert not holding, (
        f"the key of the member forgotten is still in {holding}, in the pod's own folder"
    )


async def test_a_peers_lane_fork_that_waited_is_served_and_counted_to_no_third_pod(
    tmp_path: Path,
) -> None:
    """PASSES: Birch serves us evidence of a fork of its own peers-lane feed before we
    hold that feed: it waits (forks_waiting), is checked and stored when Birch's events
    come, and from then on is served to no pod, not back to Birch and not to Cedar, a
    pod two hops from Birch; nor does it move the newest number Cedar's pages of changes
    and of evidence announce (Page.forks, ForkPage.head), so not even a count of
    Birch's peers lane reaches Cedar."""
    ours, birch, cedar = (Keypair.generate() for _ in range(3))
    author = Author(birch, birch.public)
    founded = author.write(k.PodFounded(name="Birch", zone="Birch"), "network")
    kept = author.write(k.RequestOpened(title="van to the depot", category="transport"), "peers")
    twin = Author(birch, birch.public)
    twin.set_head("network", founded.seq, founded.id, founded.header.ts)
    other = twin.write(k.RequestOpened(title="van to the clinic", category="transport"), "peers")
    raw = msgpack_encoder.encode(Evidence(kept.payload, kept.sig, other.payload, other.sig))
    async with await Ledger.open(tmp_path / "ledger.db") as ledger:
        await ledger.set_pod(ours.public)
        checked = await fork_rows.check_from_peer(ledger, [raw], birch.public)
        later = [c.fork for c in checked if isinstance(c, fork_rows.Unplaced)]
        assert len(later) == 1, checked
        source = b64e(birch.public)
        assert await ledger.store_forks([], source=source, unplaced=later) == ["waiting"]
        results = await ledger.ingest(wires([founded, kept]), source=source)
        assert statuses(results) == ["stored", "stored"]
        stored = await ledger.reader.execute_fetchall("SELECT lane, kept_pod FROM forks")
        assert [tuple(r) for r in stored] == [("peers", birch.public)]
        # Cedar: nothing, and no number that says something is there.
        pieces, _, head = await fork_rows.visible_after(
            ledger.reader, 0, 100, pod=ours.public, asker=cedar.public
        )
        assert (pieces, head) == ([], 0)
        # Birch: not its own piece back (its head may count it: an upper bound, its own).
        pieces, _, _ = await fork_rows.visible_after(
            ledger.reader, 0, 100, pod=ours.public, asker=birch.public
        )
        assert pieces == []
