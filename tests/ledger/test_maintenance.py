"""rebuild() equals the live projections; verify() finds tampered rows and broken chains."""

from __future__ import annotations

import random
import sqlite3
from pathlib import Path

import pytest

from podlink.ledger.authoring import Author
from podlink.ledger.ledger import INVITE_KEEP_S, Ledger, Limits
from podlink.ledger.schema import SCHEMA_VERSION, V1
from podlink.protocol import kinds
from podlink.protocol.keys import Keypair
from tests.ledger.conftest import OpenLedger
from tests.ledger.helpers import World, count, query, statuses, wires
from tests.ledger.scenario import Scenario, deliveries


async def test_rebuild_equals_live_after_a_long_mixed_scenario(make_ledger: OpenLedger) -> None:
    scenario = Scenario.build(random.Random(20240611), pods=3, steps=400)
    ledger = await make_ledger(pod=scenario.pods[0].id, limits=Limits(batch_size=50))
    for batch in deliveries(scenario.events, random.Random(7)):
        await ledger.ingest(batch)
    live = await ledger.dump()
    assert len(live["requests"]) > 20 and live["claims"] and live["members"]
    assert {r[11] for r in live["requests"]} >= {"open", "accepted", "fulfilled", "cancelled"}
    seen: list[tuple[int, int]] = []
    await ledger.rebuild(progress=lambda done, total: seen.append((done, total)))
    assert await ledger.dump() == live
    assert seen and seen[-1][0] == seen[-1][1]
    # Rebuilding from a wiped read model (as after a crash mid-migration) gives it back too.
    for table in ("requests", "claims", "roster", "pods", "members"):
        await ledger.db.execute(f"DELETE FROM {table}")
    await ledger.db.commit()
    await ledger.rebuild()
    assert await ledger.dump() == live
    report = await ledger.verify()
    assert report.ok and report.events == await count(ledger, "events")


@pytest.fixture
async def chained(make_ledger: OpenLedger, world: World) -> Ledger:
    pod, events = world.pod()
    org, add = world.organizer(pod)
    events.append(add)
    events += [
        org.write(kinds.RequestOpened(title=f"Need {i}", category="food"), "network")
        for i in range(5)
    ]
    ledger = await make_ledger()
    await ledger.ingest(wires(events))
    assert (await ledger.verify()).ok
    return ledger


async def position_of(ledger: Ledger, seq: int) -> int:
    sql = "SELECT pos FROM events WHERE kind = 'request.open' AND seq = ?"
    ((pos,),) = await query(ledger, sql, (seq,))
    return pos


async def test_verify_finds_a_forged_signature(chained: Ledger) -> None:
    pos = await position_of(chained, 3)
    await chained.db.execute("UPDATE events SET sig = ? WHERE pos = ?", (b"\x00" * 64, pos))
    await chained.db.commit()
    report = await chained.verify()
    assert not report.ok
    assert report.problems == [f"event at position {pos}: signature does not verify"]


async def test_verify_finds_a_tampered_body_and_header(chained: Ledger) -> None:
    body_pos, header_pos = await position_of(chained, 2), await position_of(chained, 4)
    await chained.db.execute("UPDATE events SET body = x'80' WHERE pos = ?", (body_pos,))
    ((payload,),) = await query(chained, "SELECT payload FROM events WHERE pos = ?", (header_pos,))
    tampered = payload[:-1] + bytes([payload[-1] ^ 1])
    await chained.db.execute("UPDATE events SET payload = ? WHERE pos = ?", (tampered, header_pos))
    await chained.db.commit()
    problems = (await chained.verify()).problems or []
    assert f"event at position {body_pos}: body does not match its header hash" in problems
    assert f"event at position {header_pos}: id is not the hash of its header" in problems


async def test_verify_finds_a_broken_chain(chained: Ledger) -> None:
    pos = await position_of(chained, 3)
    await chained.db.execute("DELETE FROM events WHERE pos = ?", (pos,))
    await chained.db.commit()
    report = await chained.verify()
    assert len(report.problems or []) == 1
    assert (report.problems or [""])[0].startswith("chain broken at network seq 4 of ")
    assert report.events == 7 - 1


async def test_verify_finds_a_reordered_chain(chained: Ledger) -> None:
    """Positions swapped: every row is genuine, but the store order is no longer causal."""
    a, b = await position_of(chained, 2), await position_of(chained, 3)
    await chained.db.execute("UPDATE events SET pos = -1 WHERE pos = ?", (a,))
    await chained.db.execute("UPDATE events SET pos = ? WHERE pos = ?", (a, b))
    await chained.db.execute("UPDATE events SET pos = ? WHERE pos = -1", (b,))
    await chained.db.commit()
    assert not (await chained.verify()).ok


async def test_verify_reports_progress(chained: Ledger) -> None:
    seen: list[tuple[int, int]] = []
    report = await chained.verify(progress=lambda done, total: seen.append((done, total)))
    assert report.ok and seen[-1] == (7, 7)


async def test_upgrading_a_v2_file_rebuilds_the_replaced_tables(tmp_path: Path) -> None:
    """Schema V3 drops four projection tables for new ones; the next open refills them."""
    scenario = Scenario.build(random.Random(5), pods=2, steps=120)
    path = tmp_path / "pod.db"
    async with await Ledger.open(path) as ledger:
        await ledger.set_pod(scenario.pods[0].id)
        for batch in deliveries(scenario.events, random.Random(3)):
            await ledger.ingest(batch)
        live = await ledger.dump()
    assert live["requests"] and live["claims"] and live["offers"]
    # Put the file back as version 2 left it: the V1 tables, holding nothing (and V8's
    # fork evidence table, empty here, and peers column undone; V10's waiting room and V11's
    # invite makers gone).
    with sqlite3.connect(path) as con:
        for table in ("requests", "claims", "offers", "resources", "forks"):
            con.execute(f"DROP TABLE {table}")
        for statement in V1.split(";"):
            if any(f"TABLE {t} " in statement or f"ON {t} " in statement
                   for t in ("requests", "claims", "offers", "resources", "forks")):  # fmt: skip
                con.execute(statement)
        con.execute("DROP INDEX fulfilments_request")  # V4's
        con.execute("ALTER TABLE peers DROP COLUMN forks_cursor")  # V8's
        con.execute("DROP TABLE forks_waiting")  # V10's
        con.execute("ALTER TABLE invites DROP COLUMN made_by")  # V11's
        con.execute("ALTER TABLE invites DROP COLUMN made_in")  # V11's
        con.execute("PRAGMA user_version=2")
    con.close()
    async with await Ledger.open(path) as ledger:
        assert await ledger.dump() == live
        assert await count(ledger, "meta WHERE key = 'rebuild'") == 0
        assert await query(ledger, "PRAGMA user_version") == [(SCHEMA_VERSION,)]


async def test_rebuild_keeps_a_pod_whose_events_share_another_pods_feed(
    make_ledger: OpenLedger, world: World
) -> None:
    """One key can act for two pods on one feed: P's key is an organizer of Q (Q's info
    event), then founds P in the same network feed, whose row in feeds names Q."""
    q, q_genesis = world.pod("Q")
    key = Keypair.generate()
    world.tick()
    add = q.author.write(kinds.OrganizerAdded(key=key.public, name="P's key"), "network")
    writer = Author(key, q.id, world.clock)
    world.tick()
    info = writer.write(kinds.PodInfoChanged(name="Q2", zone="Q"), "network")
    writer.pod = key.public
    world.tick()
    founding = writer.write(kinds.PodFounded(name="P", zone="P"), "network")
    ledger = await make_ledger()
    assert set(statuses(await ledger.ingest(wires([*q_genesis, add, info])))) == {"stored"}
    assert statuses(await ledger.ingest(wires([founding]))) == ["stored"]
    live = await ledger.dump()
    assert len(live["pods"]) == 2
    await ledger.rebuild()
    assert await ledger.dump() == live


async def test_the_purge_drops_invites_unused_a_month_after_they_expired(tmp_path: Path) -> None:
    """Expired invite codes nobody used would pile up for good; the periodic purge drops
    them a month after they expired (the late joiner hears "expired" till then), and
    never a used one (a removed peer must not rejoin with its old code)."""
    now_s = 1_800_000_000
    async with await Ledger.open(tmp_path / "pod.db") as ledger:
        for name, expires, used in (
            (b"old", now_s - INVITE_KEEP_S - 1, None),  # unused, expired over a month ago
            (b"recent", now_s - INVITE_KEEP_S + 60, None),  # unused, expired lately
            (b"used", now_s - 10 * INVITE_KEEP_S, b"p" * 32),  # used long ago
            (b"open", now_s + 3600, None),  # still good
        ):
            await ledger.write("INSERT INTO invites (secret_hash, created, expires, used_by) "
                               "VALUES (?, 1, ?, ?)", (name * 8, expires, used))  # fmt: skip
        await ledger.purge_pending(now_s * 1000)
        left = {bytes(h) for (h,) in await query(ledger, "SELECT secret_hash FROM invites")}
    assert left == {b"recent" * 8, b"used" * 8, b"open" * 8}
