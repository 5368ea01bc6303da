"""Fork evidence is gossiped (DESIGN.md: both signed headers are kept as a proof that
anyone can check and that is itself gossiped): a pod that never received both branches
of a forked feed still learns that the key signed two histories.

Real nodes on 127.0.0.1 (tests/node/helpers.py), real SQLite files, real signatures.
A fork is made the way a second laptop with the same organizer key makes one: an event
stored through the API, and another signed from the same heads, offered to the node's
ledger, which refuses it as a ``fork`` and keeps the proof.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import msgspec

from podlink.ledger.authoring import Author
from podlink.ledger.forks import FORKS_PAGE, check_pieces
from podlink.node.api_types import ForkPage, Page, fork_page_decoder, msgpack_encoder, page_decoder
from podlink.protocol import kinds
from podlink.protocol.envelope import Event, Lane
from podlink.protocol.errors import ProtocolError
from podlink.protocol.evidence import Evidence, check_evidence, decode_evidence
from podlink.protocol.keys import Keypair
from tests.cli.conftest import run
from tests.node.helpers import (
    BACK_TO_V7,
    FakePeer,
    PodNode,
    forks_by,
    join,
    ledger_bytes,
    peer_line,
    signed,
    wait_for,
)

Network = Any


# ---------------------------------------------------------------- helpers


async def fork_at(node: PodNode, lane: Lane, title: str) -> tuple[Event, Event]:
    """The organizer's key signs two events at one place of its ``lane`` feed: one stored
    through the API, the other (from the same heads, a second laptop's) offered to the
    ledger directly and refused as a fork. Returns (kept, other)."""
    twin = await node.author()
    kept = await node.write(kinds.RequestOpened(title=f"{title} kept", category="food"), lane)
    other = twin.write(kinds.RequestOpened(title=f"{title} other", category="food"), lane)
    [res] = await node.ledger.ingest([other.to_wire()], source="laptop")
    assert (res.status, res.reason) == ("refused", "fork"), res
    return kept, other


def piece(a: Event, b: Event) -> bytes:
    return msgpack_encoder.encode(Evidence(a.payload, a.sig, b.payload, b.sig))


def db_rows(node: PodNode, sql: str, params: tuple = ()) -> list[tuple]:
    """Read the node's database file itself (what it stored, not what it says)."""
    with sqlite3.connect(node.config.ledger_path) as db:
        return db.execute(sql, params).fetchall()


async def forks(node: PodNode) -> list[dict[str, Any]]:
    return await node.client.get("/v1/forks")


async def ask_forks(
    session: Any, asker: PodNode | Keypair, node: PodNode, **query: object
) -> tuple[int, bytes]:
    """GET /v1/peer/forks of ``node``, signed by ``asker``'s pod key (or that key)."""
    qs = "&".join(f"{k}={v}" for k, v in query.items())
    key = asker.keypair if isinstance(asker, PodNode) else asker
    status, body, _ = await signed(
        session, key, "GET", f"{node.url}/v1/peer/forks" + (f"?{qs}" if qs else "")
    )
    return status, body


async def changes_page(session: Any, asker: PodNode, node: PodNode) -> Page:
    status, body, _ = await signed(session, asker.keypair, "GET", f"{node.url}/v1/peer/changes")
    assert status == 200, body
    return page_decoder.decode(body)


# ---------------------------------------------------------------- crossing a line


async def test_evidence_crosses_a_line_of_three_pods(network: Network) -> None:
    """Alder - Birch - Cedar. Alder's organizer key forks; only Alder ever holds the
    other event. Birch learns the fork from Alder, Cedar from Birch (forwarded), each
    with both signed headers, and each shows where the proof came from."""
    alder, birch, cedar = nodes = await network(3)
    await peer_line(nodes)
    kept, other = await fork_at(alder, "network", "soup")

    async def at_cedar() -> list[dict[str, Any]]:
        return await forks(cedar)

    [row] = await wait_for(at_cedar, within=10, what="the evidence at Cedar")
    assert (row["author"], row["lane"], row["kept_id"], row["other_id"]) == (
        alder.organizer.public_text, "network", kept.id_text, other.id_text)  # fmt: skip
    assert row["gossiped"] is True and row["source"] == birch.key
    [at_birch] = await forks(birch)
    assert at_birch["gossiped"] is True and at_birch["source"] == alder.key
    [at_alder] = await forks(alder)
    assert at_alder["gossiped"] is False and at_alder["source"] == "laptop"
    assert (await cedar.status())["forks"] == 1

    # Cedar never received the other event: it holds the proof only, both headers whole.
    assert other.id_text not in await cedar.event_ids()
    assert not db_rows(cedar, "SELECT 1 FROM events WHERE id = ?", (other.id,))
    assert not db_rows(cedar, "SELECT 1 FROM pending WHERE id = ?", (other.id,))
    [(kp, ks, op, os_)] = db_rows(
        cedar, "SELECT kept_payload, kept_sig, other_payload, other_sig FROM forks")
    fork = check_evidence(Evidence(kp, ks, op, os_))  # anyone can check it
    assert (fork.kept.id, fork.other.id) == (kept.id, other.id)

    # Nobody sends it back where it came from, and nothing is stored twice.
    await asyncio.sleep(0.3)
    for node in nodes:
        assert len(await forks(node)) == 1

    # `podlink log --forks` and `podlink status` at Cedar (the real CLI, its own thread).
    shown = await asyncio.to_thread(run, "log", "--forks", home=cedar.home)
    assert kept.id_text[:8] in shown.stdout and other.id_text[:8] in shown.stdout
    assert "proof from Birch" in shown.stdout
    shown = await asyncio.to_thread(run, "log", "--forks", home=alder.home)
    assert "seen here, from laptop" in shown.stdout
    status = await asyncio.to_thread(run, "status", home=cedar.home)
    assert "1 fork(s) recorded" in status.stderr


# ---------------------------------------------------------------- lanes


async def test_pod_lane_evidence_never_leaves_the_pod(network: Network, session: Any) -> None:
    """A fork on Alder's pod lane stays at Alder: not in any answer to a peer, not in the
    peer's database. A network fork made after it does travel (the control)."""
    alder, birch = nodes = await network(2)
    await peer_line(nodes)
    pod_kept, pod_other = await fork_at(alder, "pod", "private")
    _, net_other = await fork_at(alder, "network", "public")
    assert [r["lane"] for r in await forks(alder)] == ["pod", "network"]

    async def at_birch() -> list[dict[str, Any]]:
        return await forks(birch)

    [row] = await wait_for(at_birch, within=10, what="the network evidence at Birch")
    assert (row["lane"], row["other_id"]) == ("network", net_other.id_text)

    # What Alder answers Birch: one piece, the network one; the changes page counts it.
    status, body = await ask_forks(session, birch, alder)
    assert status == 200
    page = fork_page_decoder.decode(body)
    assert [check_evidence(decode_evidence(bytes(p))).lane for p in page.forks] == ["network"]
    assert page.head == page.cursor == 2  # its number at Alder; the pod-lane one is 1
    for secret in (pod_kept.payload, pod_other.payload, pod_other.sig):
        assert secret not in body
    assert (await changes_page(session, birch, alder)).forks == 2
    # Asked from just before the pod-lane piece, or for one piece at a time: never it.
    status, body = await ask_forks(session, birch, alder, after=0, limit=1)
    page = fork_page_decoder.decode(body)
    assert len(page.forks) == 1 and pod_other.payload not in body

    await asyncio.sleep(0.3)
    assert db_rows(birch, "SELECT lane, other_id FROM forks") == [("network", net_other.id)]
    await birch.stop()
    on_disk = ledger_bytes(birch.home)
    assert pod_other.payload not in on_disk and pod_kept.payload not in on_disk
    assert net_other.payload in on_disk


async def test_peers_lane_evidence_goes_one_hop(network: Network, session: Any) -> None:
    """Alder's peers-lane fork reaches Birch (its peer) but not Cedar, Birch's peer: a
    peers lane goes one hop, its evidence too. The network fork after it reaches all."""
    alder, birch, cedar = nodes = await network(3)
    await peer_line(nodes)
    _, peers_other = await fork_at(alder, "peers", "neighbours")
    _, net_other = await fork_at(alder, "network", "everyone")

    async def both_at_birch() -> bool:
        return len(await forks(birch)) == 2

    async def network_at_cedar() -> list[dict[str, Any]]:
        return await forks(cedar)

    await wait_for(both_at_birch, within=10, what="both pieces at Birch")
    [row] = await wait_for(network_at_cedar, within=10, what="the network piece at Cedar")
    assert row["other_id"] == net_other.id_text
    status, body = await ask_forks(session, cedar, birch)
    assert status == 200 and peers_other.payload not in body
    assert len(fork_page_decoder.decode(body).forks) == 1
    await asyncio.sleep(0.3)
    assert db_rows(cedar, "SELECT lane FROM forks") == [("network",)]


# ---------------------------------------------------------------- hostile evidence


def _feed(keypair: Keypair, pod: bytes, lane: Lane, n: int) -> list[Event]:
    author = Author(keypair, pod)
    return [author.write(kinds.PodInfoChanged(name=f"step {i}"), lane) for i in range(n)]


def _twin(keypair: Keypair, pod: bytes, lane: Lane, at: Event, title: str) -> Event:
    """Another event by ``keypair`` at ``at``'s place (chained on the same prev)."""
    author = Author(keypair, pod)
    if at.header.prev is not None:
        author.set_head(lane, at.seq - 1, at.header.prev)
    return author.write(kinds.RequestOpened(title=title, category="food"), lane)


async def test_forged_and_inconsistent_evidence_is_refused_and_stores_nothing(
    network: Network,
) -> None:
    """A peer serving evidence that proves nothing: each piece is refused, counted
    against the peer, and stores nothing. Of the three sound pieces, the one about a feed
    this node holds is stored; the ones about a feed it never saw (of a key it knows) and
    about a key it holds nothing of are not (keys and positions cost nothing to make: they
    would fill the disk), nor counted against the peer: they wait, unchecked and bounded,
    for their feeds (tests/node/test_fork_evidence_waits.py). Its events still replicate."""
    [alder] = await network(1)
    fake = FakePeer()
    mallory, other_key = fake.keypair, Keypair.generate()
    pod = mallory.public
    feed = _feed(mallory, pod, "network", 3)
    twin2 = _twin(mallory, pod, "network", feed[1], "second laptop")
    forged_sig = bytes([twin2.sig[0] ^ 1]) + twin2.sig[1:]
    forged_kept_sig = bytes([feed[1].sig[0] ^ 1]) + feed[1].sig[1:]
    stranger = _feed(other_key, pod, "network", 2)  # another key, same positions
    pod_lane = _feed(mallory, pod, "pod", 2)
    pod_twin = _twin(mallory, pod, "pod", pod_lane[1], "private")
    unseen = _feed(mallory, pod, "peers", 2)  # a feed Alder never sees, of a key it knows
    unseen_twin = _twin(mallory, pod, "peers", unseen[1], "elsewhere")
    unknown_key = Keypair.generate()  # a key Alder holds nothing of
    far = _feed(unknown_key, unknown_key.public, "network", 2)
    far_twin = _twin(unknown_key, unknown_key.public, "network", far[1], "elsewhere")
    bad = {
        "bad signature": msgpack_encoder.encode(
            Evidence(feed[1].payload, feed[1].sig, twin2.payload, forged_sig)),
        "bad kept signature": msgpack_encoder.encode(
            Evidence(feed[1].payload, forged_kept_sig, twin2.payload, twin2.sig)),
        "two authors": piece(feed[1], stranger[1]),
        "same event twice": piece(feed[1], feed[1]),
        "chained, no fork": piece(feed[0], feed[1]),
        "two apart": piece(feed[0], feed[2]),
        "pod lane": piece(pod_lane[1], pod_twin),
        "not evidence": msgpack_encoder.encode(["not", "evidence"]),
        "a wire, not a header": msgpack_encoder.encode(
            [feed[1].to_wire(), feed[1].sig, twin2.payload, twin2.sig]),
    }
    for name, raw in bad.items():  # each fails on its own account
        [verdict] = check_pieces([raw], alder.pod, pod)
        assert isinstance(verdict, ProtocolError), name
    fake.forks = [*bad.values(), piece(far[1], far_twin), piece(unseen[1], unseen_twin),
                  piece(feed[1], twin2)]  # fmt: skip
    fake.events = [e.to_wire() for e in feed]
    await fake.start()
    try:
        await alder.client.post("/v1/peers", {"url": fake.url, "key": fake.key, "name": "Mallory"})

        async def taken() -> list[dict[str, Any]]:
            return await forks(alder)

        [row] = await wait_for(taken, within=10, what="the sound piece stored")
        assert (row["author"], row["lane"], row["other_id"], row["gossiped"], row["source"]) == (
            mallory.public_text, "network", twin2.id_text, True, fake.key)  # fmt: skip
        assert db_rows(alder, "SELECT count(*) FROM forks") == [(1,)]
        status = (await alder.peers())[fake.key]
        assert status["refused"] == len(bad)  # not the unknown key's piece
        ids = await alder.event_ids()
        assert {e.id_text for e in feed} <= ids  # replication went on
        metrics = alder.node.metrics
        assert metrics.get("fork_evidence_total", outcome="stored") == 1
        assert metrics.get("fork_evidence_total", outcome="waiting") == 2
        assert db_rows(alder, "SELECT count(*) FROM forks_waiting") == [(2,)]
        assert metrics.get("fork_evidence_total", outcome="forged") == 2
        assert metrics.get("fork_evidence_total", outcome="unauthorised") == 1
        assert metrics.get("fork_evidence_total", outcome="invalid") == len(bad) - 3
    finally:
        await fake.stop()


async def test_the_same_pair_in_either_order_is_stored_once(network: Network) -> None:
    """A pair served twice, in both orders, for both shapes (two events at one place, and
    an event whose prev is not its predecessor's id; on two keys' feeds): one row each,
    the second shape filed at the later event's place whichever order it came in."""
    [alder] = await network(1)
    fake = FakePeer()
    key, key_b = Keypair.generate(), Keypair.generate()
    feed = _feed(key, key.public, "network", 4)
    same_place = _twin(key, key.public, "network", feed[1], "same place")  # seq 2
    feed_b = _feed(key_b, key_b.public, "network", 4)
    hidden = _twin(key_b, key_b.public, "network", feed_b[1], "hidden")  # seq 2, not sent
    after_other = Author(key_b, key_b.public)
    after_other.set_head("network", 2, hidden.id)
    chained_elsewhere = after_other.write(kinds.PodInfoChanged(name="on"), "network")  # seq 3
    fake.forks = [
        piece(feed[1], same_place), piece(same_place, feed[1]),
        piece(chained_elsewhere, feed_b[1]), piece(feed_b[1], chained_elsewhere),
    ]  # fmt: skip
    fake.events = [e.to_wire() for e in (*feed, *feed_b)]  # keys Alder holds events of
    await fake.start()
    try:
        await alder.client.post("/v1/peers", {"url": fake.url, "key": fake.key, "name": "F"})

        async def all_taken() -> bool:
            return alder.node.metrics.get("fork_evidence_total", outcome="held") == 2

        await wait_for(all_taken, within=10, what="the four pieces taken")
        got = db_rows(alder, "SELECT seq, kept_id, other_id FROM forks ORDER BY seq")
        assert got == [(2, feed[1].id, same_place.id), (3, feed_b[1].id, chained_elsewhere.id)]
        assert (await alder.peers())[fake.key]["refused"] == 0
    finally:
        await fake.stop()


# ---------------------------------------------------------------- the Page, and paging


class OldPage(msgspec.Struct, kw_only=True, array_like=True):
    """A Page as nodes from before fork evidence know it: four elements."""

    epoch: bytes
    cursor: int
    head: int
    events: list[msgspec.Raw]


async def test_pages_stay_readable_by_old_and_new_nodes(network: Network, session: Any) -> None:
    alder, birch = nodes = await network(2)
    await peer_line(nodes)
    await fork_at(alder, "network", "soup")
    new = await changes_page(session, birch, alder)
    assert new.forks == 1 and new.events
    _, raw, _ = await signed(session, birch.keypair, "GET", f"{alder.url}/v1/peer/changes")
    old = msgspec.msgpack.decode(raw, type=OldPage)  # an old node reads a new page
    assert (old.epoch, old.cursor, old.head) == (new.epoch, new.cursor, new.head)
    assert [bytes(e) for e in old.events] == [bytes(e) for e in new.events]
    # A new node reads an old node's page: no evidence said, nothing asked.
    old_bytes = msgpack_encoder.encode(OldPage(epoch=b"e" * 16, cursor=3, head=5, events=[]))
    assert page_decoder.decode(old_bytes) == Page(epoch=b"e" * 16, cursor=3, head=5, events=[])
    assert page_decoder.decode(old_bytes).forks == 0


async def test_evidence_pages_past_one_page(network: Network, session: Any) -> None:
    """More evidence than one page holds: a peer takes it all, page by page; the
    endpoint's parameters are bounded."""
    alder, birch = await network(2)
    n = FORKS_PAGE + 20
    others = await forks_by(alder, alder.organizer, n)
    await join(alder, birch)

    # By hand first: a full page, then the rest; the bounds refused.
    status, body = await ask_forks(session, birch, alder)
    first = fork_page_decoder.decode(body)
    assert status == 200 and len(first.forks) == FORKS_PAGE and first.head == n
    assert first.cursor < first.head
    _, body = await ask_forks(session, birch, alder, after=first.cursor)
    second = fork_page_decoder.decode(body)
    assert len(second.forks) == n - FORKS_PAGE and second.cursor == second.head == n
    seen = {check_evidence(decode_evidence(bytes(p))).other.id for p in
            [*first.forks, *second.forks]}  # fmt: skip
    assert seen == {e.id for e in others}
    for query in ({"limit": FORKS_PAGE + 1}, {"limit": 0}, {"after": -1}, {"after": "x"}):
        status, body = await ask_forks(session, birch, alder, **query)
        assert status == 400 and b"invalid" in body, query
    status, body = await ask_forks(session, Keypair.generate(), alder)  # no peer's key
    assert status == 401 and b"unauthorised" in body

    async def all_at_birch() -> bool:
        return db_rows(birch, "SELECT count(*) FROM forks") == [(n,)]

    await wait_for(all_at_birch, within=10, what=f"{n} pieces at Birch")
    assert (await birch.peers())[alder.key]["refused"] == 0
    assert db_rows(birch, "SELECT forks_cursor FROM peers WHERE pod = ?", (alder.pod,)) == [(n,)]


def test_fork_page_is_a_documented_array(tmp_path: Path) -> None:
    """docs/protocol.md spells out ForkPage and Evidence field by field, in order."""
    import re

    text = (Path(__file__).parents[2] / "docs" / "protocol.md").read_text()
    for struct in (ForkPage, Evidence):
        names = "".join(f"{n}:.*" for n in struct.__struct_fields__)
        assert re.search(r"\[ ?" + names + r"\]", text), struct.__name__
    assert "`GET /v1/peer/forks?after=N&limit=M`" in text
    assert "version 1 does not gossip it" not in text


async def test_a_restore_written_on_reaches_the_far_end_as_evidence(
    network: Network, tmp_path: Path
) -> None:
    """Alder - Birch - Cedar. Alder is backed up, shares a need, is restored and its
    organizer writes another need in its place before syncing. Birch, holding the lost
    need, records the fork; Cedar never receives Alder's rewrite (Birch refuses it, and
    Cedar does not peer with Alder) yet holds the proof, from Birch."""
    from tests.reliability.test_review_forks import restore_and_write

    alder, birch, cedar = nodes = await network(3)
    await peer_line(nodes)
    await restore_and_write(alder, [birch, cedar], tmp_path / "backup", lost=1, rewrites=1)
    rewrite = {r["id"] for r in await alder.log() if r["kind"] == "request.open"}
    rewrite -= await cedar.event_ids()
    assert len(rewrite) == 1  # the need written on the restored store

    async def at_cedar() -> list[dict[str, Any]]:
        return await forks(cedar)

    [row] = await wait_for(at_cedar, within=10, what="the evidence at Cedar")
    assert row["gossiped"] is True and row["source"] == birch.key
    assert row["author"] == alder.organizer.public_text and row["seq"] == 2
    assert rewrite <= {row["kept_id"], row["other_id"]}
    assert not rewrite & await cedar.event_ids()  # only the proof came


async def test_fork_rows_from_before_v8_keep_both_headers(tmp_path: Path) -> None:
    """A V7 file's fork row (the other header only) is migrated with the kept header taken
    from the events table, a number, and the pods that decide who may see it; it is then
    served like any other."""
    from contextlib import closing

    from podlink.ledger.forks import visible_after
    from podlink.ledger.ledger import Ledger

    key = Keypair.generate()
    feed = _feed(key, key.public, "network", 2)
    twin = _twin(key, key.public, "network", feed[1], "other")
    path = tmp_path / "old.db"
    async with await Ledger.open(path) as ledger:
        results = await ledger.ingest([e.to_wire() for e in [*feed, twin]], source="peer-x")
        assert [r.status for r in results] == ["stored", "stored", "refused"]
    with closing(sqlite3.connect(path)) as db:  # back to what V7 wrote
        db.executescript(BACK_TO_V7)
    async with await Ledger.open(path) as ledger:
        got = await ledger.reader.execute_fetchall(
            "SELECT num, seq, kept_id, kept_pod, kept_payload, kept_sig, other_id, other_pod, "
            "source, gossiped FROM forks")
        assert [tuple(r) for r in got] == [(
            1, 2, feed[1].id, key.public, feed[1].payload, feed[1].sig, twin.id, key.public,
            "peer-x", 0)]  # fmt: skip
        pieces, cursor, head = await visible_after(
            ledger.reader, 0, 10, pod=b"p" * 32, asker=b"q" * 32)
        assert (cursor, head) == (1, 1)
        fork = check_evidence(pieces[0])
        assert (fork.kept.id, fork.other.id) == (feed[1].id, twin.id)
        columns = [r[1] for r in await ledger.reader.execute_fetchall("PRAGMA table_info(peers)")]
        assert "forks_cursor" in columns
