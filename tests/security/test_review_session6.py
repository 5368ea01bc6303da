"""Review of the session-6 changes (7d6ab90..a224eaa): signed requests v2 naming the
receiving pod, the replay memory, repairs of refused-for-now events, the request fold with
answers before their claims, verify, restore carrying over the replaced database.

Every test runs real nodes on 127.0.0.1, real SQLite files in tmp_path and real Ed25519
signatures. Each test's docstring tells the bug it found (all fixed since, in the commits
after a224eaa); the test holds the fix.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import sqlite3
import time
from functools import partial
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from click.testing import CliRunner, Result

from podlink.cli.main import main
from podlink.ledger.authoring import Author
from podlink.ledger.ledger import Ledger
from podlink.node import auth, gossip
from podlink.node.api_types import FeedHead, Page, msgpack_encoder
from podlink.protocol import clock, kinds
from podlink.protocol.http_auth import NonceCache
from podlink.protocol.keys import Keypair
from podlink.protocol.text import b64e
from tests.ledger.helpers import World, reasons, statuses, wires
from tests.node.helpers import FakePeer, join, signed, wait_for


def cli(*args: str, home: Path) -> Result:
    """`podlink ARGS --home HOME` through click's runner (no exit code check)."""
    env = {"PODLINK_HOME": None, "COLUMNS": "80", "NO_COLOR": "1"}
    return CliRunner().invoke(main, [*args, "--home", str(home)], env=env)


def sql(path: Path, statement: str, params: tuple = ()) -> list[tuple]:
    with contextlib.closing(sqlite3.connect(path)) as db:
        return list(db.execute(statement, params).fetchall())


# ---------------------------------------------------------------- signed requests v2


async def test_an_organizer_away_from_the_server_needs_no_pod_secret_key(
    network: Any, tmp_path: Path
) -> None:
    """docs/cli.md: "`--node URL` talks to a node elsewhere, for example the pod's node on a
    home server reached over a VPN; the organizer key must then be on that pod's roster."
    Since c155720 the CLI reads the pod's key for Podlink-Pod from ``node.key`` in the
    local folder (cli/session.py:107, ``load_keypair(config.node_key_path)``): the *secret*
    key of the pod (security.md: "A lost node key is the pod itself"). An organizer's
    laptop holding only config.toml and organizer.key, as it should, can no longer use
    the CLI at all: "no key file at .../node.key". Only the pod's public key is needed."""
    [node] = await network(1)
    laptop = tmp_path / "laptop"
    laptop.mkdir(mode=0o700)
    for name in ("config.toml", "organizer.key"):
        shutil.copy2(node.home / name, laptop / name)
    result = await asyncio.to_thread(cli, "status", "--json", "--node", node.url, home=laptop)
    assert result.exit_code == 0, result.output
    assert node.key in result.output


async def test_a_peer_bursting_into_the_replay_memory_locks_out_only_itself(
    network: Any, session: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    """security.md ("Replay around a restart"): a peer "can still fill that memory (it is
    rate-limited to `rate_per_s`, but entries stamped minutes ahead stay): that would take
    it some minutes of flooding at full rate". But node/auth.py:118 remembers the nonce
    *before* the rate check, so requests refused as rate-limited fill the memory too: one
    burst, at whatever speed HTTP allows, fills it with entries stamped 290 s ahead, the
    earliest-signed go first (the honest ones), the floor passes the present, and every
    organizer and peer is refused as stale. Here: rate 1/s (burst 5), a memory of 60, and
    a burst of 80 requests (most refused as rate-limited) lock the organizer out."""
    monkeypatch.setattr(auth, "NonceCache", partial(NonceCache, capacity=60))
    a, b = await network(2, rate_per_s=1.0)
    await join(a, b)
    ahead = int(time.time()) + 290
    statuses = [
        (await signed(session, b.keypair, "GET", a.url + "/v1/peer/heads", when=ahead,
                      pod=a.pod))[0]
        for _ in range(80)
    ]  # fmt: skip
    assert statuses.count(429) >= 50, str(statuses)  # the rate limit did refuse them...
    status, raw, _ = await signed(session, a.organizer, "GET", a.url + "/v1/status", pod=a.pod)
    assert status == 200, raw  # ...yet the organizer is locked out: 401 stale


# ---------------------------------------------------------------- repairs of refused events


class ChattyPeer(FakePeer):
    """A fake peer whose live stream pushes a page every ``every`` seconds (its cursor
    moving on, as a busy node's does when it stores events this pod may not see), and
    whose first page holds an event stamped 20 minutes ahead (refused as too-far-ahead)."""

    every = 0.1

    async def _stream(self, request: web.Request) -> web.StreamResponse:
        if self._check(request) is None:
            return web.json_response({"error": "unauthorised", "message": "sign"}, status=401)
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self._sockets.add(ws)
        try:
            await ws.receive(timeout=5)  # the hello
            cursor = len(self.events)
            for _ in range(200):
                if self.every:
                    cursor += 1
                page = Page(epoch=self.epoch, cursor=cursor, head=cursor, events=[])
                if self.every:
                    await ws.send_bytes(msgpack_encoder.encode(page))
                await asyncio.sleep(self.every or 0.1)
        except ConnectionError:
            pass
        finally:
            self._sockets.discard(ws)
        return ws


def serve_an_event_ahead(fake: FakePeer, name: str) -> None:
    """The fake peer's genesis, stamped 20 minutes ahead (refused as too-far-ahead), in its
    pages, its heads and its feed, as a real peer would serve it."""
    author = Author(fake.keypair, fake.keypair.public)
    ahead = clock.pack(clock.now_ms() + 20 * 60 * 1000)
    genesis = author.write(kinds.PodFounded(name=name), "network", ts=ahead)
    fake.events = fake.feed_events = [genesis.to_wire()]
    head = FeedHead(fake.keypair.public, "network", 1, genesis.id)
    fake.raw_heads = msgpack_encoder.encode([head])


async def test_a_busy_peer_does_not_starve_the_repair_of_events_refused_for_now(
    network: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """2a349d0: "a live stream repairs every 30 s while one is due". It does not: the
    stream repairs only when ``ws.receive(REPAIR_RETRY_S)`` times out (node/gossip.py:263),
    i.e. after REPAIR_RETRY_S seconds *without a page*. A peer that pushes a page more
    often than that (any busy node: its cursor moves with every event it stores) starves
    the repair for as long as the stream lasts, and the refused event's feed waits (its
    later events pending until they expire). Here REPAIR_RETRY_S is 0.3 s and a page
    comes every 0.1 s: no repair (GET /v1/peer/heads) in 3 s."""
    monkeypatch.setattr(gossip, "REPAIR_RETRY_S", 0.3)
    [a] = await network(1)
    fake = ChattyPeer()
    serve_an_event_ahead(fake, "Busy")
    await fake.start()
    try:
        await a.client.post("/v1/peers", {"url": fake.url, "key": fake.key, "name": "Busy"})

        async def streaming() -> bool:
            return any(path.startswith("/v1/peer/stream") for _, path, _ in fake.calls)

        await wait_for(streaming, what="the live stream")
        peer = (await a.peers())[fake.key]
        assert peer["refused"] >= 1  # the event ahead was refused for now
        assert a.node.peers[fake.keypair.public].repair  # and a repair is due
        opened = len(fake.calls)
        await asyncio.sleep(3.0)
        repairs = [p for _, p, _ in fake.calls[opened:] if p.startswith("/v1/peer/heads")]
        assert repairs, "no repair in 3 s (10 retry periods) while pages kept coming"
    finally:
        await fake.stop()


# ---------------------------------------------------------------- restore


def test_restore_keeps_the_fork_evidence_the_replaced_database_kept(tmp_path: Path) -> None:
    """0797213: restore "carries over what the replaced database holds and the backup
    lacks". Not the fork evidence (cli/restore.py: events, member keys, peers, invites
    only): a peer's equivocation recorded after the backup (the second signed header,
    operations.md: "The proof is kept (/v1/forks)") is gone after a restore, and only the
    equivocating pod itself could ever send the other branch again. The kept branch is
    carried over as an event, its rival is lost."""
    from tests.cli.conftest import make_pod

    pod = make_pod(tmp_path, "Maple")
    backup = tmp_path / "backup.db"
    assert cli("backup", str(backup), home=pod.home).exit_code == 0
    world = World()
    elm, events = world.pod("Elm")
    kept = elm.author.write(kinds.RequestOpened(title="Soup", category="food"), "network")
    elm.author.heads["network"] = (1, events[0].id)  # the same seq 2, signed again
    rival = elm.author.write(kinds.RequestOpened(title="Bread", category="food"), "network")
    peer = b64e(Keypair.generate().public)  # the peer that served them

    async def receive() -> None:
        async with await Ledger.open(pod.home / "ledger.db") as ledger:
            assert statuses(await ledger.ingest(wires([*events, kept]), source=peer)) == [
                "stored", "stored"]  # fmt: skip
            assert reasons(await ledger.ingest(wires([rival]), source=peer)) == ["fork"]

    asyncio.run(receive())
    assert sql(pod.home / "ledger.db", "SELECT count(*) FROM forks") == [(1,)]
    result = cli("restore", str(backup), home=pod.home)
    assert result.exit_code == 0, result.output
    assert sql(pod.home / "ledger.db", "SELECT count(*) FROM forks") == [(1,)], (
        "the proof of Elm's equivocation is gone"
    )


# ---------------------------------------------------------------- clocks


async def test_an_organizer_added_by_a_fast_clock_can_write_at_once(
    network: Any,
) -> None:
    """2a349d0: clocks follow received timestamps only up to OBSERVE_LIMIT_MS (14 min)
    ahead, while events up to 15 min ahead are accepted; only claim answers were given a
    way round the 14-15 minute band (the fold defers them). A roster.add stamped 14.5 min
    ahead (Ana's laptop runs fast: within the rules) is stored, but the node's clock does
    not follow it, so GET /v1/heads gives Sam's CLI a clock 14.5 min *before* Sam's tenure:
    every event Sam writes for the next 14.5 minutes is stored, answered "stored", and
    soft-failed for good (not on the roster at its timestamp). Before 2a349d0 the node's
    clock followed the roster.add and Sam's events were stamped after it."""
    [node] = await network(1)
    ana = await node.author()
    sam = Keypair.generate()
    fast = clock.pack(clock.now_ms() + clock.OBSERVE_LIMIT_MS + 30_000)
    added = ana.write(kinds.OrganizerAdded(key=sam.public, name="Sam"), "network", ts=fast)
    assert (await node.client.submit([added]))[0]["status"] == "stored"
    await node.write(kinds.RequestOpened(title="Ride to clinic", category="transport"),
                     as_key=sam)  # stored (answered so), and not soft-failed: below  # fmt: skip
    titles = await node.titles()
    assert "Ride to clinic" in titles, (
        "Sam's need is stored but soft-failed (stamped before Sam's tenure)"
    )


def test_restore_never_puts_a_forgotten_members_key_back(
    tmp_path: Path,
) -> None:
    """cli/restore.py copies every member key of the replaced database that the backup
    lacks with a raw ``INSERT OR IGNORE`` (``_carry``), not through put_member_key, which
    refuses a forgotten member's key ("a forgotten member's key stays destroyed"). The
    module assumes the backup is older than the database it replaces; when it is newer
    (the pod ran for a while on an older backup, restored by mistake, and the right one
    is restored now) the backup has the member forgotten, the replaced database still has
    the key, and the key comes back: the forget event is a duplicate, so no fold runs to
    destroy it again. README: a forget "destroys the key, so the details are gone for
    good"."""
    from tests.cli.conftest import make_pod
    from tests.ledger.test_review_lifecycle import member_join, write_offline

    pod = make_pod(tmp_path, "Forgetful")
    keys: dict[bytes, bytes] = {}
    joined: list[Any] = []

    def join(author: Author) -> list[Any]:
        event, key = member_join(author, "Wilma")
        joined.append(event)
        keys[event.id] = key
        return [event]

    write_offline(pod.home, join, keys)
    before, after = tmp_path / "before-forget.db", tmp_path / "after-forget.db"
    assert cli("backup", str(before), home=pod.home).exit_code == 0
    write_offline(pod.home, lambda a: [a.write(kinds.MemberForgotten(), "pod", [joined[0].id])])
    assert cli("backup", str(after), home=pod.home).exit_code == 0
    assert sql(after, "SELECT count(*) FROM member_keys") == [(0,)]
    live = pod.home / "ledger.db"
    for name in ("ledger.db", "ledger.db-wal", "ledger.db-shm"):  # the disk lost it
        (pod.home / name).unlink(missing_ok=True)
    assert cli("restore", str(before), home=pod.home).exit_code == 0  # the wrong one first
    assert sql(live, "SELECT count(*) FROM member_keys") == [(1,)]
    result = cli("restore", str(after), home=pod.home)  # then the right one
    assert result.exit_code == 0, result.output
    assert sql(live, "SELECT status FROM members") == [("forgotten",)]
    assert sql(live, "SELECT count(*) FROM member_keys") == [(0,)], (
        "Wilma was forgotten, and her key is back"
    )


class QuietPeer(ChattyPeer):
    """The same peer, with a stream that stays silent after the hello."""

    every = 0.0


async def test_a_quiet_stream_repairs_refused_for_now_events_every_retry_period(
    network: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pins 2a349d0's live-stream repair where it works: an event refused as too-far-ahead
    flags a repair, and a silent stream runs it after REPAIR_RETRY_S (GET /v1/peer/heads),
    again and again while the event stays refused (the flag is kept)."""
    monkeypatch.setattr(gossip, "REPAIR_RETRY_S", 0.3)
    [a] = await network(1)
    fake = QuietPeer()
    serve_an_event_ahead(fake, "Quiet")
    await fake.start()
    try:
        await a.client.post("/v1/peers", {"url": fake.url, "key": fake.key, "name": "Quiet"})

        async def repaired_twice() -> bool:
            paths = [p for _, p, _ in fake.calls]
            streamed = [i for i, p in enumerate(paths) if p.startswith("/v1/peer/stream")]
            heads = [i for i, p in enumerate(paths) if p.startswith("/v1/peer/heads")]
            return bool(streamed) and len([i for i in heads if i > streamed[0]]) >= 2

        await wait_for(repaired_twice, within=15.0, what="two repairs on the quiet stream")
        assert a.node.peers[fake.keypair.public].repair  # still due: the event is still ahead
    finally:
        await fake.stop()
