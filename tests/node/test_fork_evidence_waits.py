"""Fork evidence that arrives before its feed waits for it (ledger/ledger.py store_forks,
table forks_waiting, schema V10) rather than being lost for good once the peer's evidence
cursor moved past it: the author's events parked for their roster entry, coming from a
third pod, or in a lane we get later.

What waits is bounded (per source, and by the pending TTL), unchecked until its feed
reaches it, then checked like a piece that just came: a forged one is never stored.

Real ledgers in tmp_path and real nodes on 127.0.0.1, real Ed25519 signatures.
"""

from __future__ import annotations

import logging
import sqlite3
from collections import Counter
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from podlink.ledger import forks as fork_rows
from podlink.ledger.authoring import Author
from podlink.ledger.ledger import Ledger, Limits
from podlink.ledger.schema import SCHEMA_VERSION
from podlink.node.api_types import msgpack_encoder
from podlink.node.config import Config, ConfigError, _check_ranges
from podlink.protocol import clock, kinds
from podlink.protocol.envelope import Event, Lane
from podlink.protocol.errors import ProtocolError
from podlink.protocol.evidence import Evidence, Fork, parse_evidence
from podlink.protocol.keys import Keypair
from podlink.protocol.text import b64e
from tests.ledger.helpers import World, wires
from tests.node.helpers import BACK_TO_V9, FakePeer, join, wait_for

Network = Any
PEER = b64e(b"p" * 32)  # a peer's source name, as gossip gives it (its key in base64url)


# ---------------------------------------------------------------- helpers


def twin_of(keypair: Keypair, pod: bytes, lane: Lane, at: Event, name: str) -> Event:
    """Another event by ``keypair`` at ``at``'s place: a second laptop's."""
    author = Author(keypair, pod)
    if at.header.prev is not None:
        author.set_head(lane, at.seq - 1, at.header.prev, at.header.ts)
    return author.write(kinds.PodInfoChanged(name=name), lane)


def piece(a: Event, b: Event, *, forge: bool = False) -> bytes:
    """Two headers as one piece of evidence (``forge``: the second signature broken)."""
    sig = bytes([b.sig[0] ^ 1]) + b.sig[1:] if forge else b.sig
    return msgpack_encoder.encode(Evidence(a.payload, a.sig, b.payload, sig))


async def offer(ledger: Ledger, raws: list[bytes], source: str = PEER) -> list[str]:
    """What gossip does with a page of evidence: check it against our feeds, store it."""
    sender = b"s" * 32  # a pod neither piece's peers lane names: network-lane pieces only
    checked = await fork_rows.check_from_peer(ledger, raws, sender)
    assert not [c for c in checked if isinstance(c, ProtocolError)], checked
    good = [c for c in checked if isinstance(c, Fork)]
    later = [c.fork for c in checked if isinstance(c, fork_rows.Unplaced)]
    return await ledger.store_forks(good, source=source, unplaced=later)


def counted(ledger: Ledger) -> Counter[str]:
    """The ledger's reports of evidence leaving the waiting area (the node's metric)."""
    seen: Counter[str] = Counter()
    ledger.evidence_listeners.append(lambda outcome, n: seen.update({outcome: n}))
    return seen


async def table(ledger: Ledger, sql: str, params: tuple = ()) -> list[tuple]:
    return [tuple(r) for r in await ledger.reader.execute_fetchall(sql, params)]


def network_feed(key: Keypair, n: int) -> list[Event]:
    author = Author(key, key.public)
    return [author.write(kinds.PodInfoChanged(name=f"step {i}"), "network") for i in range(n)]


# ---------------------------------------------------------------- (1) stored once the feed comes


async def test_evidence_about_a_feed_parked_for_its_roster_entry_is_stored_when_it_comes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Sam's events wait in pending (his roster.add has not come), so this node holds no
    feed of his: evidence of his fork at seq 2 and at seq 4 waits. The roster.add releases
    seqs 1-2: the seq-2 piece is checked and stored, from its peer, with the usual log
    line; the seq-4 one waits on until seqs 3-4 come."""
    world = World()
    pod, genesis = world.pod("Elm")
    sam, add = world.organizer(pod, "Sam")
    feed = [sam.write(kinds.RequestOpened(title=f"need {i}", category="food"), "network")
            for i in range(4)]  # fmt: skip
    at2 = twin_of(sam.keypair, pod.id, "network", feed[1], "second laptop")
    at4 = twin_of(sam.keypair, pod.id, "network", feed[3], "third laptop")
    async with await Ledger.open(tmp_path / "ledger.db") as ledger:
        seen = counted(ledger)
        await ledger.ingest(wires(genesis))
        assert {r.status for r in await ledger.ingest(wires(feed[:2]))} == {"pending"}
        assert await offer(ledger, [piece(feed[1], at2), piece(feed[3], at4)]) == [
            "waiting", "waiting"]  # fmt: skip
        assert await table(ledger, "SELECT count(*) FROM forks") == [(0,)]
        assert await table(ledger, "SELECT seq FROM forks_waiting ORDER BY seq") == [(2,), (4,)]

        caplog.set_level(logging.WARNING, "podlink.ledger")
        assert [r.status for r in await ledger.ingest(wires([add]))] == ["stored"]
        got = await table(ledger, "SELECT seq, kept_id, other_id, source, gossiped FROM forks")
        assert got == [(2, feed[1].id, at2.id, PEER, 1)]
        assert await table(ledger, "SELECT seq FROM forks_waiting") == [(4,)]
        assert seen == Counter(stored=1)
        assert any("evidence from " + PEER in r.getMessage() for r in caplog.records)

        await ledger.ingest(wires(feed[2:]))
        got = await table(ledger, "SELECT seq, other_id, source FROM forks ORDER BY seq")
        assert got == [(2, at2.id, PEER), (4, at4.id, PEER)]
        assert await table(ledger, "SELECT count(*) FROM forks_waiting") == [(0,)]
        assert ledger.waiting_feeds == {} and ledger.waiting_by_source == Counter()
        assert seen == Counter(stored=2)


async def test_evidence_before_its_feed_from_another_pod_reaches_it_and_goes_on(
    network: Network,
) -> None:
    """Cedar hears of a fork of Alder's organizer from a relay before it peers with Alder:
    the piece waits. Cedar then joins Alder, whose events bring the feed: the relay's piece
    is stored (its source says so: not Alder's own copy, served later) and goes on to
    Birch, Cedar's peer, as any evidence does."""
    alder, cedar, birch = await network(3)
    twin = await alder.author()
    kept = await alder.write(kinds.RequestOpened(title="soup", category="food"), "network")
    other = twin.write(kinds.RequestOpened(title="stew", category="food"), "network")
    [res] = await alder.ledger.ingest([other.to_wire()], source="laptop")
    assert res.reason == "fork"
    relay = FakePeer()
    relay.forks = [piece(kept, other)]
    await relay.start()
    try:
        await cedar.client.post("/v1/peers", {"url": relay.url, "key": relay.key, "name": "R"})

        async def waiting() -> bool:
            return cedar.node.metrics.get("fork_evidence_total", outcome="waiting") == 1

        await wait_for(waiting, within=5, what="the piece waiting at Cedar")
        assert await table(cedar.ledger, "SELECT count(*) FROM forks") == [(0,)]

        await join(alder, cedar)
        await join(cedar, birch)

        async def at(node: Any) -> list[dict[str, Any]]:
            return await node.client.get("/v1/forks")

        [row] = await wait_for(lambda: at(cedar), within=5, what="the evidence at Cedar")
        assert (row["other_id"], row["source"], row["gossiped"]) == (
            other.id_text, relay.key, True)  # fmt: skip
        assert await table(cedar.ledger, "SELECT count(*) FROM forks_waiting") == [(0,)]
        assert cedar.node.metrics.get("fork_evidence_total", outcome="stored") == 1
        [onward] = await wait_for(lambda: at(birch), within=5, what="the evidence at Birch")
        assert (onward["other_id"], onward["source"]) == (other.id_text, cedar.key)
    finally:
        await relay.stop()


# ---------------------------------------------------------------- (2) bounds


async def test_each_source_has_a_bounded_share_of_the_waiting_room(tmp_path: Path) -> None:
    """With room for 3 pieces a source, a fourth and fifth from one source are not kept
    (the newcomers: what waits stays); another source has its own room; the counts hold
    across a restart, and a resent piece takes no second row."""
    key = Keypair.generate()  # a key this node holds nothing of
    feed = network_feed(key, 6)
    raws = [piece(e, twin_of(key, key.public, "network", e, f"twin {e.seq}")) for e in feed]
    path, other = tmp_path / "ledger.db", b64e(b"q" * 32)
    limits = Limits(evidence_per_source=3)
    async with await Ledger.open(path, limits=limits) as ledger:
        assert await offer(ledger, raws[:5]) == ["waiting"] * 3 + ["overflow"] * 2
        assert await offer(ledger, raws[:1] + raws[5:], source=other) == ["waiting"] * 2
        assert await offer(ledger, raws[:1], source=other) == ["waiting"]  # resent: one row
    async with await Ledger.open(path, limits=limits) as ledger:
        assert await offer(ledger, raws[5:]) == ["overflow"]  # still full after a restart
        got = await table(ledger, "SELECT source, count(*) FROM forks_waiting GROUP BY 1")
        assert sorted(got) == sorted([(PEER, 3), (other, 2)])
        assert await table(ledger, "SELECT seq FROM forks_waiting WHERE source = ? "
                           "ORDER BY seq", (PEER,)) == [(1,), (2,), (3,)]  # fmt: skip
        # The feed comes: what waited is stored (one row per position), room comes back.
        await ledger.ingest(wires(feed))
        assert await table(ledger, "SELECT seq FROM forks ORDER BY seq") == [(1,), (2,), (3,),
                                                                          (6,)]  # fmt: skip
        assert await table(ledger, "SELECT count(*) FROM forks_waiting") == [(0,)]
        assert ledger.waiting_by_source == Counter()


async def test_waiting_evidence_expires_with_the_pending_ttl(tmp_path: Path) -> None:
    """Pieces that waited longer than the pending TTL are dropped and counted ``expired``;
    their feed coming afterwards stores nothing. Younger ones stay."""
    key = Keypair.generate()
    feed = network_feed(key, 3)
    raws = [piece(e, twin_of(key, key.public, "network", e, f"twin {e.seq}")) for e in feed]
    async with await Ledger.open(tmp_path / "ledger.db", limits=Limits(pending_ttl_s=60)) as ledger:
        seen = counted(ledger)
        assert await offer(ledger, raws[:2]) == ["waiting"] * 2
        await ledger.purge_pending(clock.now_ms() + 30_000)  # half the TTL: nothing goes
        assert await table(ledger, "SELECT count(*) FROM forks_waiting") == [(2,)]
        await ledger.purge_pending(clock.now_ms() + 61_000)
        assert await table(ledger, "SELECT count(*) FROM forks_waiting") == [(0,)]
        assert seen == Counter(expired=2)
        assert ledger.waiting_feeds == {} and ledger.waiting_by_source == Counter()
        assert await offer(ledger, raws[2:]) == ["waiting"]  # room came back
        await ledger.ingest(wires(feed))
        assert await table(ledger, "SELECT seq FROM forks") == [(3,)]


# ---------------------------------------------------------------- (3) lanes


async def test_pod_lane_evidence_never_waits(tmp_path: Path) -> None:
    """A piece about a pod-lane feed is refused on receipt, before any feed position is
    looked at: it never waits, so it can never be released and passed on."""
    key = Keypair.generate()
    author = Author(key, key.public)
    private = author.write(kinds.PodInfoChanged(name="inside"), "pod")
    raw = piece(private, twin_of(key, key.public, "pod", private, "also inside"))
    async with await Ledger.open(tmp_path / "ledger.db") as ledger:
        [verdict] = await fork_rows.check_from_peer(ledger, [raw], b"s" * 32)
        assert isinstance(verdict, ProtocolError) and verdict.reason == "unauthorised"
        assert await table(ledger, "SELECT count(*) FROM forks_waiting") == [(0,)]


# ---------------------------------------------------------------- (4) the migration


async def test_a_v9_file_opens_at_v10_with_every_row_kept(tmp_path: Path) -> None:
    """A file from before V10 (events, a fork, a parked event, a peer) opens with every
    row of every table as it was (but each peer's evidence cursor, back to 0 to read once
    more what was skipped before), and an empty waiting room that works."""
    key = Keypair.generate()
    feed = network_feed(key, 4)
    twin = twin_of(key, key.public, "network", feed[1], "other laptop")
    path = tmp_path / "ledger.db"
    async with await Ledger.open(path) as ledger:
        results = await ledger.ingest(wires([*feed[:2], twin, feed[3]]), source="peer-x")
        assert [r.status for r in results] == ["stored", "stored", "refused", "pending"]
        await ledger.write("INSERT INTO peers (pod, url, name, added, forks_cursor) "
                           "VALUES (?, 'http://x', 'X', 1, 7)", (b"x" * 32,))  # fmt: skip
    with closing(sqlite3.connect(path)) as db:
        db.executescript(BACK_TO_V9)
        tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = "
                                           "'table' ORDER BY name")]  # fmt: skip
        before = {t: sorted(db.execute(f"SELECT * FROM {t}").fetchall()) for t in tables}
    assert "forks_waiting" not in tables and before["forks"] and before["pending"]
    async with await Ledger.open(path) as ledger:
        assert await table(ledger, "PRAGMA user_version") == [(SCHEMA_VERSION,)]
        assert SCHEMA_VERSION >= 10
        for name, rows in before.items():
            if name == "peers":  # each peer's evidence is read again once, from its start
                rows = [(*r[:-1], 0) for r in rows]
                assert await table(ledger, "SELECT forks_cursor FROM peers") == [(0,)]
            assert sorted(await table(ledger, f"SELECT * FROM {name}")) == rows, name
        assert (await ledger.verify()).ok
        other = Keypair.generate()
        [at1] = network_feed(other, 1)
        raw = piece(at1, twin_of(other, other.public, "network", at1, "b"))
        assert await offer(ledger, [raw]) == ["waiting"]
        await ledger.ingest(wires([at1]))
        assert await table(ledger, "SELECT count(*) FROM forks WHERE author = ?",
                           (other.public,)) == [(1,)]  # fmt: skip


# ---------------------------------------------------------------- (5) forged


async def test_a_waiting_piece_with_a_forged_signature_is_never_stored(tmp_path: Path) -> None:
    """A piece whose signature is broken waits like any other (its signatures are not
    checked on receipt: junk costs no Ed25519). When its feed comes it is checked, found
    forged and dropped, counted, stored nowhere; a sound piece at the same position from
    another source is stored."""
    key = Keypair.generate()
    feed = network_feed(key, 2)
    twin = twin_of(key, key.public, "network", feed[1], "other laptop")
    honest = b64e(b"h" * 32)
    async with await Ledger.open(tmp_path / "ledger.db") as ledger:
        seen = counted(ledger)
        assert await offer(ledger, [piece(feed[1], twin, forge=True)]) == ["waiting"]
        assert await offer(ledger, [piece(twin, feed[1])], source=honest) == ["waiting"]
        await ledger.ingest(wires(feed))
        got = await table(ledger, "SELECT kept_id, other_id, source FROM forks")
        assert got == [(twin.id, feed[1].id, honest)]  # the honest sender's, as it sent it
        assert await table(ledger, "SELECT count(*) FROM forks_waiting") == [(0,)]
        assert seen == Counter(forged=1, stored=1)


# ---------------------------------------------------------------- restart


async def test_pieces_due_when_the_ledger_opens_are_checked_then(tmp_path: Path) -> None:
    """A piece left waiting although its feed reached it (the node stopped between the
    ingest and the check, or a restore carried it) is checked when the ledger opens."""
    key = Keypair.generate()
    feed = network_feed(key, 2)
    twin = twin_of(key, key.public, "network", feed[1], "other laptop")
    path = tmp_path / "ledger.db"
    async with await Ledger.open(path) as ledger:
        await ledger.ingest(wires(feed))
    with closing(sqlite3.connect(path)) as db:
        fork = parse_evidence(Evidence(feed[1].payload, feed[1].sig, twin.payload, twin.sig))
        db.execute(fork_rows.INSERT_WAITING, fork_rows.waiting_row(fork, PEER, clock.now_ms()))
        db.commit()
    async with await Ledger.open(path) as ledger:
        assert await table(ledger, "SELECT seq, other_id, source FROM forks") == [
            (2, twin.id, PEER)]  # fmt: skip
        assert await table(ledger, "SELECT count(*) FROM forks_waiting") == [(0,)]


async def test_more_pieces_due_than_one_round_checks_are_all_stored(tmp_path: Path) -> None:
    """One ingest brings a feed 150 pieces waited for: a transaction checks at most
    RELEASE_AT_ONCE of them, and the ingest checks the rest before it returns."""
    n = fork_rows.RELEASE_AT_ONCE + 50
    key = Keypair.generate()
    feed = network_feed(key, n)
    raws = [piece(e, twin_of(key, key.public, "network", e, f"twin {e.seq}")) for e in feed]
    async with await Ledger.open(tmp_path / "ledger.db") as ledger:
        seen = counted(ledger)
        assert set(await offer(ledger, raws)) == {"waiting"}
        await ledger.ingest(wires(feed))
        assert await table(ledger, "SELECT count(*) FROM forks") == [(n,)]
        assert await table(ledger, "SELECT count(*) FROM forks_waiting") == [(0,)]
        assert seen == Counter(stored=n) and not ledger.waiting_due


def test_a_restore_carries_the_evidence_waiting_for_its_feed(tmp_path: Path) -> None:
    """Restoring a backup carries what waits in the database it replaces (our cursors
    into the peers' evidence are carried too, so they would not send it again)."""
    from tests.cli.conftest import make_pod, run

    pod = make_pod(tmp_path, "Kept")
    backup = tmp_path / "backup.db"
    run("backup", str(backup), home=pod.home)
    key = Keypair.generate()
    [at1] = network_feed(key, 1)
    twin = twin_of(key, key.public, "network", at1, "other")
    fork = parse_evidence(Evidence(at1.payload, at1.sig, twin.payload, twin.sig))
    live = pod.home / "ledger.db"
    with closing(sqlite3.connect(live)) as db:
        db.execute(fork_rows.INSERT_WAITING, fork_rows.waiting_row(fork, PEER, clock.now_ms()))
        db.commit()
    run("restore", str(backup), home=pod.home)
    with closing(sqlite3.connect(live)) as db:
        got = db.execute("SELECT author, seq, source, other_payload FROM forks_waiting")
        assert got.fetchall() == [(key.public, 1, PEER, twin.payload)]


async def test_the_waiting_room_per_source_is_a_config_key(network: Any) -> None:
    """config.toml's evidence_per_source sets the room each peer has (docs/operations.md);
    0 is refused when the config is read, as for the other bounds."""
    [node] = await network(1, evidence_per_source=2)
    assert node.ledger.limits.evidence_per_source == 2
    with pytest.raises(ConfigError, match="evidence_per_source must be 1 or more"):
        _check_ranges(Config(home=node.home, name="x", evidence_per_source=0))
