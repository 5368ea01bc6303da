"""Review of session 9's two features: fork evidence gossip, and paged organizer lists
and inbox. Each failing test names a real bug in its docstring.

Real nodes on 127.0.0.1, real SQLite files, real Ed25519 signatures; nothing mocked."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Awaitable, Callable
from contextlib import closing
from pathlib import Path
from typing import Any

from podlink.ledger import forks as fork_rows
from podlink.ledger.authoring import Author
from podlink.ledger.ledger import Ledger
from podlink.node.api_types import msgpack_encoder
from podlink.protocol import boxes, kinds
from podlink.protocol.envelope import Event
from podlink.protocol.errors import ProtocolError
from podlink.protocol.evidence import Evidence, check_evidence, decode_evidence
from podlink.protocol.keys import Keypair
from podlink.protocol.text import b64e
from tests.cli.conftest import run
from tests.ledger.helpers import World, wires
from tests.node.helpers import BACK_TO_V7, FakePeer, PodNode, join, wait_converged, wait_for

Network = Any


def db_rows(node: PodNode, sql: str, params: tuple = ()) -> list[tuple]:
    """What the node's database file holds (not what it says)."""
    with sqlite3.connect(node.config.ledger_path) as db:
        return db.execute(sql, params).fetchall()


async def fork_new_organizer(node: PodNode, name: str) -> tuple[Keypair, Event, Event]:
    """A new organizer of ``node`` signs one need through the API and another at the
    same place (a second laptop) offered to the ledger: refused as a fork, proof kept."""
    sam = Keypair.generate()
    await node.write(kinds.OrganizerAdded(key=sam.public, name=name))
    kept = await node.write(
        kinds.RequestOpened(title=f"{name} kept", category="food"), "network", as_key=sam
    )
    twin = Author(sam, node.pod)
    other = twin.write(kinds.RequestOpened(title=f"{name} other", category="food"), "network")
    [res] = await node.ledger.ingest([other.to_wire()], source="laptop")
    assert (res.status, res.reason) == ("refused", "fork"), res
    return sam, kept, other


def minted_evidence(key: Keypair, seqs: range) -> list[bytes]:
    """Sound evidence signed by ``key``: two headers at each of ``seqs`` of its network
    feed (chained on made-up predecessors)."""
    out = []
    clock_src = Author(key, key.public)
    for seq in seqs:
        pair = []
        for side in ("a", "b"):
            twin = Author(key, key.public, clock_src.clock)
            twin.set_head("network", seq - 1, bytes([seq % 256, seq // 256 % 256]) * 16)
            pair.append(twin.write(kinds.PodInfoChanged(name=f"{side}{seq}"), "network"))
        out.append(
            msgpack_encoder.encode(
                Evidence(pair[0].payload, pair[0].sig, pair[1].payload, pair[1].sig)
            )
        )
    return out


def twin_evidence(key: Keypair, events: list[Event]) -> list[bytes]:
    """For each of ``events`` (network feed of ``key``'s pod), a second event at its
    place, and the pair as evidence."""
    out = []
    for ev in events:
        twin = Author(key, key.public)
        if ev.header.prev is not None:
            twin.set_head("network", ev.seq - 1, ev.header.prev)
        other = twin.write(kinds.PodInfoChanged(name=f"twin {ev.seq}"), "network")
        out.append(msgpack_encoder.encode(Evidence(ev.payload, ev.sig, other.payload, other.sig)))
    return out


# ---------------------------------------------------------------- fork evidence


async def test_evidence_is_lost_when_it_comes_before_its_authors_events(
    network: Network,
) -> None:
    """A new peer learns nothing of a fork whose author's events are past its first page.

    Birch pulls Alder's changes page by page (5 events a page here). The first page
    already says Alder holds evidence (Page.forks = 1), so Birch fetches it at once,
    before the forked organizer's events have reached it: store_forks keeps it as
    ``unknown`` (ledger/ledger.py store_forks: author not in feeds) and the evidence
    cursor moves past it (gossip.py _pull_forks). The events arrive on the next pages,
    and the evidence is never asked for again. Birch ends up holding the forked key's
    events and no proof: exactly what the gossip was for (docs/protocol.md says a node
    "learns of the fork when a branch reaches it", but a branch alone proves nothing)."""
    alder, birch = await network(2, page_events=5)
    for i in range(12):  # events before the organizer's: Birch's first pages
        await alder.open_request(f"filler {i}")
    sam, kept, other = await fork_new_organizer(alder, "Sam")
    assert len(db_rows(alder, "SELECT 1 FROM forks")) == 1
    await join(alder, birch)
    await wait_converged([alder, birch])

    async def kept_at_birch() -> bool:
        return bool(db_rows(birch, "SELECT 1 FROM events WHERE id = ?", (kept.id,)))

    await wait_for(kept_at_birch, within=10, what="the forked key's event at Birch")

    async def evidence_taken() -> bool:  # Birch's cursor into Alder's evidence moved on
        return db_rows(birch, "SELECT forks_cursor FROM peers WHERE pod = ?", (alder.pod,)) == [
            (1,)
        ]

    await wait_for(evidence_taken, within=10, what="Birch taking Alder's evidence")
    assert db_rows(birch, "SELECT 1 FROM feeds WHERE author = ?", (sam.public,))
    assert db_rows(birch, "SELECT other_id FROM forks") == [(other.id,)]


async def test_a_peer_fills_the_forks_table_with_evidence_about_its_own_key(
    network: Network,
) -> None:
    """A peer stores without bound evidence it mints about its own key.

    store_forks (ledger/ledger.py) keeps a sound piece whenever its author has any feed
    here; a peer's own pod key always has (its directory entry). The peer signs two
    headers at seq 1000, 1001, ... of its network feed, positions no event of it ever
    took, and serves them: every piece is stored (one row per position, and positions
    run to 2^53), counted nowhere against the peer, listed whole by the unpaged
    /v1/forks, and, being network-lane, passed on to every peer of ours. docs/protocol.md
    says the evidence kept "is bounded by the feed positions of the authors a node
    admitted, as their events are": these positions were never admitted. Here the peer
    holds 3 events and gets 300 rows stored."""
    [alder] = await network(1)
    fake = FakePeer()
    mallory = fake.keypair
    author = Author(mallory, mallory.public)
    feed = [author.write(kinds.PodInfoChanged(name=f"step {i}"), "network") for i in range(3)]
    fake.events = [e.to_wire() for e in feed]
    minted = minted_evidence(mallory, range(1000, 1300))
    fake.forks = minted
    await fake.start()
    try:
        await alder.client.post("/v1/peers", {"url": fake.url, "key": fake.key, "name": "M"})

        async def all_taken() -> bool:
            return db_rows(
                alder, "SELECT forks_cursor FROM peers WHERE pod = ?", (mallory.public,)
            ) == [(len(minted),)]

        await wait_for(all_taken, within=10, what="the minted evidence taken")
        [(stored,)] = db_rows(alder, "SELECT count(*) FROM forks")
        hostile = (await alder.peers())[fake.key]["refused"]
        assert stored <= len(feed) or hostile > 0, (stored, hostile)
    finally:
        await fake.stop()


async def vm_steps(ledger: Ledger, call: Callable[[], Awaitable[object]]) -> int:
    """SQLite virtual-machine steps (in hundreds) the reader runs for ``call``: the rows
    it reads, counted by SQLite itself."""
    steps = [0]

    def tick() -> int:
        steps[0] += 1
        return 0

    conn = ledger.reader
    await conn._execute(conn._conn.set_progress_handler, tick, 100)
    try:
        await call()
    finally:
        await conn._execute(conn._conn.set_progress_handler, None, 0)
    return steps[0]


async def test_each_page_of_changes_reads_every_piece_the_asking_peer_sent(
    tmp_path: Path,
) -> None:
    """Every page of changes (and every stream wake-up) a peer gets reads every piece of
    evidence that peer sent us, however few it may see.

    page_since (node/peer_api.py) asks forks.newest_visible for Page.forks: ``SELECT num
    FROM forks WHERE <visible> ORDER BY num DESC LIMIT 1`` (ledger/forks.py). The rows a
    peer may not see (what it sent us, ``source`` = it; pod-lane ones; rows without a kept
    header) are passed over one by one from the newest down. A peer that sent 1,000
    pieces makes each of its pages read 1,000 rows, ten times what 100 cost: the cost of
    a page grows with the evidence held, not with the page."""
    path = tmp_path / "ledger.db"
    key, peer = Keypair.generate(), Keypair.generate()
    author = Author(key, key.public)
    feed = [author.write(kinds.PodInfoChanged(name=f"s{i}"), "network") for i in range(1000)]
    async with await Ledger.open(path) as ledger:
        results = await ledger.ingest([e.to_wire() for e in feed])
        assert {r.status for r in results} == {"stored"}
        found = [check_evidence(decode_evidence(p)) for p in twin_evidence(key, feed)]
        small = await ledger.store_forks(found[:100], source=b64e(peer.public))
        assert set(small) == {"stored"}

        async def newest() -> object:
            return await fork_rows.newest_visible(ledger.reader, pod=None, asker=peer.public)

        few = await vm_steps(ledger, newest)
        assert set(await ledger.store_forks(found[100:], source=b64e(peer.public))) == {"stored"}
        many = await vm_steps(ledger, newest)
        assert many <= 2 * few + 5, (few, many)
        # The head may count what the peer sent (an upper bound); its pages leave it out.
        pieces, cursor, head = await fork_rows.visible_after(
            ledger.reader, 0, fork_rows.FORKS_PAGE, pod=None, asker=peer.public)
        assert (pieces, cursor) == ([], head) and head == await newest()


async def test_v8_keeps_the_fork_row_it_cannot_serve_and_drops_the_one_it_can(
    tmp_path: Path,
) -> None:
    """Migrating a V7 file with two rows at one feed position keeps the unservable one.

    V7's forks key was (author, lane, seq, other_id), so a position could hold two rows:
    a restore merged the replaced database's row (it held the other branch: kept = the
    twin, other = our event) next to ours (kept = our event, other = the twin). V8
    (ledger/schema.py) keeps one per position by ``ORDER BY f.received`` alone: here the
    older row, whose kept event this node never stored, so its kept header is NULL and
    forks.visible_clause never serves it. The row that held both headers is dropped, and
    the fork this node can prove is never gossiped. The migration should prefer a row
    whose kept header it finds."""
    key = Keypair.generate()
    author = Author(key, key.public)
    feed = [author.write(kinds.PodInfoChanged(name=f"step {i}"), "network") for i in range(2)]
    twin_author = Author(key, key.public, author.clock)
    twin_author.set_head("network", 1, feed[0].id)
    twin = twin_author.write(kinds.PodInfoChanged(name="other laptop"), "network")
    path = tmp_path / "old.db"
    async with await Ledger.open(path) as ledger:
        results = await ledger.ingest([e.to_wire() for e in [*feed, twin]], source="peer-x")
        assert [r.status for r in results] == ["stored", "stored", "refused"]
    with closing(sqlite3.connect(path)) as db:  # what V7 held after the restore's merge
        [(received,)] = db.execute("SELECT received FROM forks").fetchall()
        db.executescript(BACK_TO_V7)
        db.execute(
            "INSERT INTO forks VALUES (?, 'network', 2, ?, ?, ?, ?, 'replaced database', ?)",
            (key.public, twin.id, feed[1].id, feed[1].payload, feed[1].sig, received - 60_000),
        )
        db.commit()
    async with await Ledger.open(path) as ledger:
        pieces, _, head = await fork_rows.visible_after(
            ledger.reader, 0, 10, pod=b"p" * 32, asker=b"q" * 32
        )
        assert len(pieces) == 1, ("no evidence served", head)


# ---------------------------------------------------------------- the inbox


def key_starting(prefix: str) -> Keypair:
    """A pod key whose base64url text starts with ``prefix`` (ground: keys cost nothing)."""
    for _ in range(200_000):
        key = Keypair.generate()
        if key.public_text.startswith(prefix):
            return key
    raise AssertionError(f"no key starting {prefix!r}")


def sealed_to(to: bytes, name: str) -> kinds.SealedMessage:
    plain = kinds.encode_body(kinds.ContactHandoff(name=name, contact="555-0100"))
    return kinds.SealedMessage(to=to, box=boxes.seal_to(to, plain))


async def test_inbox_from_a_pod_by_name_is_taken_by_a_key_that_starts_with_it(
    network: Network,
) -> None:
    """`podlink inbox --from Oz` lists a stranger's messages instead of Oz's.

    cli/handoff.py _sender tries the text as a key prefix first (s.resolve("pods", ...))
    and returns the first pod whose key starts with it, never looking at names: any pod
    can make a key that starts with another pod's name (a 2-letter name takes ~4,000
    tries, 4 letters ~16 million) and so take over `inbox --from NAME`, hiding the
    real pod's contacts behind its own. `podlink pod show` treats the very same clash as
    an ambiguity ("both matching is an ambiguity, never a pick", cli/directory.py)."""
    [node] = await network(1)
    world = World()
    oz, oz_genesis = world.pod("Oz")
    impostor, imp_genesis = world.pod("Mallory", key=key_starting("Oz"))
    world.tick()
    events = [*oz_genesis, *imp_genesis, oz.author.write(sealed_to(node.pod, "from Oz"), "network")]
    world.tick()
    events.append(impostor.author.write(sealed_to(node.pod, "from Mallory"), "network"))
    results = await node.ledger.ingest(wires(events), source="gossip")
    assert {r.status for r in results} == {"stored"}
    shown = await asyncio.to_thread(
        run, "inbox", "--from", "Oz", "--json", home=node.home, code=None
    )
    names = [i["message"]["name"] for i in json.loads(shown.stdout)] if not shown.exit_code else []
    # Oz's contact, or a refusal naming the clash; never Mallory's as if it were Oz's.
    assert names == ["from Oz"] or (shown.exit_code == 1 and "Oz" in shown.stderr), names


# ---------------------------------------------------------------- pinned (passing)


async def test_a_peer_that_numbers_its_evidence_anew_is_read_from_the_start(
    network: Network,
) -> None:
    """Pinned: a Page whose ``forks`` is below our evidence cursor for that peer (its
    store was restored, its numbers start again) makes us read its evidence from 0, and
    what is new among it is stored (gossip.py _take_forks)."""
    [alder] = await network(1)
    fake = FakePeer()
    mallory = fake.keypair
    author = Author(mallory, mallory.public)
    feed = [author.write(kinds.PodInfoChanged(name=f"s{i}"), "network") for i in range(4)]
    fake.events = [e.to_wire() for e in feed]
    first, later = twin_evidence(mallory, feed[1:]), twin_evidence(mallory, feed[:1])
    fake.forks = first
    await fake.start()
    try:
        await alder.client.post("/v1/peers", {"url": fake.url, "key": fake.key, "name": "M"})

        async def cursor_at(n: int) -> bool:
            return db_rows(
                alder, "SELECT forks_cursor FROM peers WHERE pod = ?", (mallory.public,)
            ) == [(n,)]

        await wait_for(lambda: cursor_at(3), within=10, what="the first evidence taken")
        fake.forks = later  # numbered anew: 1 piece, below our cursor of 3
        await alder.client.post("/v1/sync")
        await wait_for(lambda: cursor_at(1), within=10, what="the evidence read anew")
        assert [r[0] for r in db_rows(alder, "SELECT seq FROM forks ORDER BY num")] == [2, 3, 4, 1]
        assert (await alder.peers())[fake.key]["refused"] == 0
    finally:
        await fake.stop()


def test_a_sound_piece_about_a_third_pods_peers_lane_is_refused_on_receipt() -> None:
    """Pinned: the receiving side of the peers lane's one hop (ledger/forks.py
    check_pieces): a sound piece about a peers-lane feed is taken only when both headers
    were written for the sender's pod or ours; a third pod's is ``unauthorised``."""
    ours, sender, third = (Keypair.generate() for _ in range(3))
    author = Keypair.generate()

    def peers_piece(pod: bytes) -> bytes:
        a = Author(author, pod)
        twin = Author(author, pod, a.clock)
        one = a.write(kinds.PodInfoChanged(name="one"), "peers")
        two = twin.write(kinds.PodInfoChanged(name="two"), "peers")
        return msgpack_encoder.encode(Evidence(one.payload, one.sig, two.payload, two.sig))

    verdicts = fork_rows.check_pieces(
        [peers_piece(sender.public), peers_piece(ours.public), peers_piece(third.public)],
        ours.public,
        sender.public,
    )
    assert [type(v).__name__ for v in verdicts[:2]] == ["Fork", "Fork"]
    assert isinstance(verdicts[2], ProtocolError) and verdicts[2].reason == "unauthorised"
