"""Review: the store's life over time — schema migrations, backup, restore, rebuild, verify.

Real SQLite files under tmp_path, real Ed25519 signatures; pods made by the real
`podlink init`, the CLI run through click's runner. Each test's docstring tells the bug it
found (fixed since: the test holds the fix); the ones marked as passing pin corners found
correct.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import shutil
import sqlite3
import traceback
from collections.abc import Callable
from pathlib import Path

from click.testing import CliRunner, Result

from podlink.cli.main import main
from podlink.ledger.authoring import Author
from podlink.ledger.ledger import Ledger
from podlink.ledger.projections import POSITIONED
from podlink.ledger.schema import MIGRATIONS, SCHEMA_VERSION
from podlink.ledger.store import _statements
from podlink.protocol import boxes, kinds
from podlink.protocol.envelope import Event
from podlink.protocol.keys import load_keypair
from podlink.protocol.text import b64e
from tests.cli.conftest import make_pod, serve, stop, wait_up
from tests.ledger.conftest import OpenLedger
from tests.ledger.helpers import World, query, statuses, stored_ids, wires
from tests.ledger.scenario import Scenario, deliveries

# ---------------------------------------------------------------- helpers


def invoke(*args: str, home: Path) -> Result:
    """`podlink ARGS --home HOME`; an uncaught exception is kept in the result."""
    env = {"PODLINK_HOME": None, "COLUMNS": "80", "NO_COLOR": "1"}
    return CliRunner().invoke(main, [*args, "--home", str(home)], env=env)


def ok(result: Result) -> Result:
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        tb = "".join(traceback.format_exception(*result.exc_info))  # type: ignore[misc]
        raise AssertionError(f"uncaught exception:\n{tb}")
    assert result.exit_code == 0, result.output
    return result


def one_line_error(result: Result) -> str:
    """The command failed with exit 1 and one 'Error: ...' line, no traceback."""
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        tb = "".join(traceback.format_exception(*result.exc_info))  # type: ignore[misc]
        raise AssertionError(f"uncaught exception instead of a one-line error:\n{tb}")
    assert result.exit_code == 1, (result.exit_code, result.output)
    lines = result.stderr.strip().splitlines()
    assert lines and lines[-1].startswith("Error: "), result.stderr
    return lines[-1]


def sql(path: Path, statement: str) -> list[tuple]:
    with contextlib.closing(sqlite3.connect(path)) as db:
        return list(db.execute(statement).fetchall())


async def organizer_of(ledger: Ledger, home: Path) -> Author:
    """The CLI's organizer key, chained on its feeds as stored."""
    assert ledger.pod is not None
    author = Author(load_keypair(home / "organizer.key"), ledger.pod)
    for lane, seq, id_, ts in await query(
        ledger, "SELECT lane, seq, id, ts FROM feeds WHERE author = ?", (author.keypair.public,)
    ):
        author.set_head(lane, seq, id_, ts)
    return author


Write = Callable[[Author], list[Event]]


def write_offline(home: Path, write: Write, member_keys: dict[bytes, bytes] | None = None) -> None:
    """Append the organizer's events to a stopped pod's ledger (as the node would)."""

    async def go() -> None:
        async with await Ledger.open(home / "ledger.db") as ledger:
            events = write(await organizer_of(ledger, home))
            assert statuses(await ledger.append(wires(events))) == ["stored"] * len(events)
            for member, key in (member_keys or {}).items():
                await ledger.put_member_key(member, key)

    asyncio.run(go())


def member_join(author: Author, name: str) -> tuple[Event, bytes]:
    key = boxes.new_member_key()
    details = kinds.MemberDetails(name=name, contact="555 0134", notes="door code 4471")
    return author.write(kinds.MemberJoined(box=boxes.lock(key, kinds.encode_body(details))),
                        "pod"), key  # fmt: skip


async def chained_ledger(make_ledger: OpenLedger, world: World) -> Ledger:
    """A pod, an organizer, and five network requests: seven events, positions 1..7."""
    pod, events = world.pod()
    org, add = world.organizer(pod)
    events.append(add)
    events += [org.write(kinds.RequestOpened(title=f"Need {i}", category="food"), "network")
               for i in range(5)]  # fmt: skip
    ledger = await make_ledger()
    assert statuses(await ledger.ingest(wires(events))) == ["stored"] * 7
    assert (await ledger.verify()).ok
    return ledger


async def tamper(ledger: Ledger, statement: str) -> None:
    await ledger.db.execute(statement)
    await ledger.db.commit()


# ---------------------------------------------------------------- verify


async def test_verify_reports_a_damaged_header(
    make_ledger: OpenLedger, world: World
) -> None:
    """A header cut short (a damaged row, exactly what `podlink log --verify` is for) makes
    ``Ledger.verify`` raise ProtocolError('malformed header: Input data was truncated')
    instead of listing 'event at position 4: id is not the hash of its header': the
    per-row check (_verify_rows) reports it, but the chain loop right after calls
    ``decode_header(payload)`` unguarded (ledger/ledger.py, Ledger.verify). Over HTTP,
    POST /v1/verify answers 500 and the CLI prints no report."""
    ledger = await chained_ledger(make_ledger, world)
    await tamper(ledger, "UPDATE events SET payload = substr(payload, 1, 10) WHERE pos = 4")
    report = await ledger.verify()
    assert not report.ok
    assert "event at position 4: id is not the hash of its header" in (report.problems or [])


async def test_verify_reports_columns_that_contradict_their_signed_header(
    make_ledger: OpenLedger, world: World
) -> None:
    """Every read (lists, lanes served to peers, folds) trusts the indexed columns of an
    event row (kind, pod, ts, lane, seq...), but verify only re-checks payload, sig and
    body against the id and author columns: a row whose ``kind``, ``pod`` or ``ts`` was
    changed is reported sound ('All 7 events verify'). verify should decode the header and
    compare it with the row's columns."""
    ledger = await chained_ledger(make_ledger, world)
    await tamper(ledger, "UPDATE events SET kind = 'request.cancel' WHERE pos = 4")
    await tamper(ledger, "UPDATE events SET pod = author WHERE pos = 5")
    await tamper(ledger, "UPDATE events SET ts = 5 WHERE pos = 6")
    report = await ledger.verify()
    assert len(report.problems or []) == 3, report


async def test_verify_reports_a_feed_whose_newest_events_are_missing(
    make_ledger: OpenLedger, world: World
) -> None:
    """The newest event of a feed deleted from ``events`` (a damaged or hand-edited file):
    ``feeds`` still names it as the head (seq 5 and its id), the node serves that head to
    peers and chains the organizer's next event on it, yet verify says the ledger is
    sound: it checks each chain link it finds but never that the chain reaches the feed's
    recorded head."""
    ledger = await chained_ledger(make_ledger, world)
    await tamper(ledger, "DELETE FROM events WHERE pos = 7")
    report = await ledger.verify()
    assert not report.ok, "a feed head points at an event that is not in the log"


# ---------------------------------------------------------------- restore


def test_restore_of_a_copy_with_its_wal_keeps_what_the_wal_holds(tmp_path: Path) -> None:
    """docs/operations.md: 'or stop the node, then copy ledger.db (and ledger.db-wal if it
    exists)'. The WAL exists after a crash or a kill (the node checkpoints only every ~40
    MB). _check_backup opens the copy read-only, so SQLite reads its -wal and the check
    passes; then restore copies ledger.db alone (shutil.copyfile, cli/pods.py restore):
    every transaction in the -wal is silently dropped. Here 'Restored 2 events' of the 7
    the backup holds; the 5 lost are pod-lane, so no peer can repair them."""
    pod = make_pod(tmp_path, "Copied")
    copy = tmp_path / "usb"
    copy.mkdir()

    async def write_then_copy_as_after_a_crash() -> None:
        ledger = await Ledger.open(pod.home / "ledger.db")
        try:
            author = await organizer_of(ledger, pod.home)
            events = [author.write(kinds.RequestOpened(title=f"Need {i}", category="food"),
                                   "pod") for i in range(5)]  # fmt: skip
            assert statuses(await ledger.append(wires(events))) == ["stored"] * 5
            for name in ("ledger.db", "ledger.db-wal"):  # the node still has them open
                shutil.copyfile(pod.home / name, copy / name)
        finally:
            await ledger.close()

    asyncio.run(write_then_copy_as_after_a_crash())
    assert (copy / "ledger.db-wal").stat().st_size > 0
    ok(invoke("restore", str(copy / "ledger.db"), home=pod.home))
    assert sql(pod.home / "ledger.db", "SELECT count(*) FROM events") == [(7,)]


def test_restore_replaces_a_damaged_database(tmp_path: Path) -> None:
    """docs/operations.md: '`podlink log --verify` reports problems | the database file was
    damaged: restore from a backup'. But restore first copies the live database aside
    with SQLite's backup API (cli/pods.py restore, ``old.backup(copy)``), which fails on
    a damaged file, and the restore is abandoned: 'Error: restore failed, the pod's
    database is unchanged: file is not a database'. The one case restore exists for is the
    one it refuses; a damaged live file should be moved aside as bytes instead."""
    pod = make_pod(tmp_path, "Damaged")
    backup = tmp_path / "backup.db"
    ok(invoke("backup", str(backup), home=pod.home))
    live = pod.home / "ledger.db"
    damaged = bytearray(live.read_bytes())
    damaged[:100] = bytes(100)  # the header page's first bytes zeroed
    live.write_bytes(bytes(damaged))
    ok(invoke("restore", str(backup), home=pod.home))
    assert sql(live, "SELECT count(*) FROM events") == [(2,)]


def test_restore_keeps_a_member_forgotten_after_the_backup_forgotten(
    tmp_path: Path,
) -> None:
    """README: '`podlink member forget` destroys the key, so the details are gone for good'.
    Restore a backup taken before the forget and the member's key and details are back
    ('active', key in member_keys): the member.forget is a pod-lane event, so no peer ever
    re-sends it, and restore discards it although the live database it replaces (and
    reads, to keep it aside) holds it. Restore should carry the live file's forgets over
    (or at least refuse / warn); here nothing tells the organizer."""
    pod = make_pod(tmp_path, "Forgetful")
    joined: dict[str, Event] = {}
    keys: dict[bytes, bytes] = {}

    def join(author: Author) -> list[Event]:
        event, key = member_join(author, "Wilma")
        joined["wilma"], keys[event.id] = event, key
        return [event]

    write_offline(pod.home, join, keys)
    backup = tmp_path / "backup.db"
    ok(invoke("backup", str(backup), home=pod.home))
    member = joined["wilma"].id
    write_offline(pod.home, lambda a: [a.write(kinds.MemberForgotten(), "pod", [member])])
    live = pod.home / "ledger.db"
    assert sql(live, "SELECT status FROM members") == [("forgotten",)]
    ok(invoke("restore", str(backup), home=pod.home))
    assert sql(live, "SELECT count(*) FROM member_keys") == [(0,)], "the key is back"
    assert sql(live, "SELECT status FROM members") == [("forgotten",)]


def test_restore_reads_backup_paths_with_uri_characters(tmp_path: Path) -> None:
    """_check_backup (cli/pods.py) opens ``f"file:{file}?mode=ro"`` as a URI without
    quoting the path: a '#' (or '?') cuts the file name there and drops ``mode=ro``, a
    '%41' is decoded. A sound backup at 'week#2/maple.db' is refused ('not a podlink
    database: no such table: meta') and the "read-only" check creates an empty database
    file 'week' beside the folder. Fix: ``file.resolve().as_uri() + "?mode=ro"``."""
    pod = make_pod(tmp_path, "Quoted")
    backup = tmp_path / "week#2" / "maple.db"
    ok(invoke("backup", str(backup), home=pod.home))
    result = invoke("restore", str(backup), home=pod.home)
    assert not (tmp_path / "week").exists(), "the read-only check created a file"
    ok(result)


def test_restore_without_a_live_database_names_no_aside_copy(tmp_path: Path) -> None:
    """ledger.db lost (deleted, disk trouble): restore works but ends with 'the old
    database is in ledger.db.before-restore-TIME', a file it did not write (cli/pods.py
    restore: ``aside`` is only written ``if live.exists()``, the message always names it).
    An operator who then looks for, or deletes, that copy is misled."""
    pod = make_pod(tmp_path, "Lost")
    backup = tmp_path / "backup.db"
    ok(invoke("backup", str(backup), home=pod.home))
    (pod.home / "ledger.db").unlink()
    out = ok(invoke("restore", str(backup), home=pod.home)).stdout
    for name in [w.strip(".;,") for w in out.split() if "before-restore" in w]:
        assert (pod.home / name).exists(), f"restore says {name!r} holds the old database"


# ---------------------------------------------------------------- serve on an old/new file


def test_serve_on_a_database_from_a_newer_podlink_is_one_line(tmp_path: Path) -> None:
    """docs/operations.md: 'a database written by a newer podlink is refused by an older
    one rather than damaged' — refused it is, but `podlink serve` (cli/pods.py serve
    catches KeyFileError, ConfigError and OSError only) dies with a 30-line traceback
    ending in podlink.ledger.errors.SchemaTooNew instead of the one line that says
    'upgrade podlink'. The same for a damaged ledger.db (StorageError)."""
    pod = make_pod(tmp_path, "Downgraded")
    with contextlib.closing(sqlite3.connect(pod.home / "ledger.db")) as db:
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
        db.commit()
    line = one_line_error(invoke("serve", home=pod.home))
    assert "upgrade podlink" in line


# ---------------------------------------------------------------- corners found correct


def downgrade(live: Path, old: Path, version: int) -> None:
    """A file as podlink at schema ``version`` left it: MIGRATIONS[:version] applied, the
    same log and local state (pending, forks, member keys), its read model copied over."""
    con = sqlite3.connect(old, isolation_level=None)
    for script in MIGRATIONS[:version]:
        for statement in _statements(script):
            con.execute(statement)
    con.execute(f"PRAGMA user_version={version}")
    con.execute("ATTACH ? AS live", (str(live),))
    for table in ("meta", "events", "feeds", "forks", "pending", "member_keys", "peers",
                  "invites", "pods", "requests", "claims", "fulfilments", "offers",
                  "members", "resources", "roster"):  # fmt: skip
        # The columns that version had (later versions add some, e.g. V7's reasons).
        names = ", ".join(f'"{r[1]}"' for r in con.execute(f"PRAGMA main.table_info({table})"))
        if table in POSITIONED:  # rows sit at their event's store position (V3)
            names = f"rowid, {names}"
        con.execute(f"INSERT OR IGNORE INTO main.{table} ({names}) "
                    f"SELECT {names} FROM live.{table}")  # fmt: skip
    con.execute("DETACH live")
    con.close()


async def test_every_older_schema_opens_to_the_state_of_a_fresh_ledger(tmp_path: Path) -> None:
    """Files at schema 1..5 holding a mixed history, a fork, a parked event and a forgotten
    member open at the current schema with the same log, local state and read model as
    a fresh ledger fed the same events; the forgotten member stays forgotten."""
    scenario = Scenario.build(random.Random(77), pods=2, steps=120)
    pod = scenario.pods[0]
    org = pod.author  # the pod's own key: never removed from the roster by the scenario
    member, key = member_join(org, "Wilma")
    forget = org.write(kinds.MemberForgotten(), "pod", [member.id])
    head = org.heads["peers"]
    fork_a = org.write(kinds.RequestOpened(title="A", category="food"), "peers")
    org.heads["peers"] = head
    fork_b = org.write(kinds.RequestOpened(title="B", category="food"), "peers")
    org.write(kinds.RequestOpened(title="withheld", category="food"), "network")
    parked = org.write(kinds.RequestOpened(title="parked", category="food"), "network")
    live_path = tmp_path / "live.db"
    async with await Ledger.open(live_path) as live:
        await live.set_pod(pod.id)
        for batch in deliveries(scenario.events, random.Random(1)):
            await live.ingest(batch)
        assert statuses(await live.ingest(wires([member]))) == ["stored"]
        await live.put_member_key(member.id, key)
        assert statuses(await live.ingest(wires([forget, fork_a, parked]))) == [
            "stored", "stored", "pending"]  # fmt: skip
        assert statuses(await live.ingest(wires([fork_b]))) == ["refused"]  # kept as a fork
        want = await live.dump()
        events = await stored_ids(live)
        local = {t: await query(live, f"SELECT * FROM {t}")
                 for t in ("forks", "pending", "member_keys", "feeds")}  # fmt: skip
    assert local["forks"] and local["pending"] and not local["member_keys"]
    for version in range(1, SCHEMA_VERSION):
        old = tmp_path / f"v{version}.db"
        downgrade(live_path, old, version)
        async with await Ledger.open(old) as upgraded:
            assert await query(upgraded, "PRAGMA user_version") == [(SCHEMA_VERSION,)]
            assert await stored_ids(upgraded) == events
            for table, rows in local.items():
                assert await query(upgraded, f"SELECT * FROM {table}") == rows, (version, table)
            assert await upgraded.dump() == want, version
            assert (await upgraded.verify()).ok


async def test_rebuild_keeps_a_forgotten_members_data_gone(
    make_ledger: OpenLedger, world: World
) -> None:
    """A rebuild replays member.join, whose body (the box) was dropped by the forget: the
    member comes back 'forgotten' with no box, no key, and the log keeps no body."""
    pod, events = world.pod()
    org, add = world.organizer(pod)
    member, key = member_join(org, "Wilma")
    ledger = await make_ledger(pod=pod.id)
    assert statuses(await ledger.ingest(wires([*events, add, member]))) == ["stored"] * 3
    await ledger.put_member_key(member.id, key)
    forget = org.write(kinds.MemberForgotten(), "pod", [member.id])
    assert statuses(await ledger.ingest(wires([forget]))) == ["stored"]
    live = await ledger.dump()
    await ledger.rebuild()
    assert await ledger.dump() == live
    assert await query(ledger, "SELECT status, box FROM members") == [("forgotten", None)]
    assert await query(ledger, "SELECT count(*) FROM member_keys") == [(0,)]
    assert await query(
        ledger, "SELECT count(*) FROM events WHERE kind LIKE 'member.%' AND body IS NOT NULL"
    ) == [(0,)]


def test_restore_keeps_a_peer_removed_after_the_backup_removed(tmp_path: Path) -> None:
    """`podlink peer remove` cuts a pod off (it stops pulling our peers-lane events).
    The removal lives only in the local ``peers`` table, so restoring a backup taken
    before it brings the peer back as live: the node pulls from it and serves it again,
    and nothing says so (restore's output mentions only events and the epoch). The live
    database being replaced knows of the removal; restore should carry such local
    decisions (peer removals, used invites) over, or list them."""
    pod = make_pod(tmp_path, "Careful")
    gone = load_keypair(make_pod(tmp_path, "Gone").home / "node.key").public
    serve(pod)
    try:
        wait_up(pod)
        ok(invoke("peer", "add", "http://127.0.0.1:9", "--key", b64e(gone), home=pod.home))
        backup = tmp_path / "backup.db"
        ok(invoke("backup", str(backup), home=pod.home))
        ok(invoke("peer", "remove", b64e(gone)[:10], home=pod.home))
    finally:
        stop(pod)
    live = pod.home / "ledger.db"
    assert sql(live, "SELECT removed IS NOT NULL FROM peers") == [(1,)]
    ok(invoke("restore", str(backup), home=pod.home))
    assert sql(live, "SELECT removed IS NOT NULL FROM peers") == [(1,)], "the peer is back"
