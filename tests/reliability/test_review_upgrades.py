"""Review of upgrades and mixed versions: files of older schemas, old backups restored
into new software, and a CLI of this version talking to a node of the release before it
(schema 9). Each failing test names a real bug in its docstring.

Real SQLite files, real nodes on 127.0.0.1 and real Ed25519 signatures. A node of the
release before is reproduced here, not installed: a relay in front of a node of this
version answers as the old one did, by what changed between them (the old node ignores
query parameters it does not know, and names no keys in its rows of ``/v1/forks``)."""

from __future__ import annotations

import asyncio
import json
import shutil
import sqlite3
import threading
from collections.abc import Awaitable, Callable
from contextlib import closing
from pathlib import Path

import aiohttp
from aiohttp import web
from click.testing import CliRunner, Result

from podlink.cli.main import main
from podlink.cli.restore import carry_over
from podlink.ledger import forks as fork_rows
from podlink.ledger.authoring import Author
from podlink.ledger.ledger import Ledger
from podlink.ledger.schema import SCHEMA_VERSION
from podlink.node.client import NodeClient
from podlink.protocol import kinds
from podlink.protocol.clock import now_ms
from podlink.protocol.envelope import Event, decode_event
from podlink.protocol.evidence import Evidence, parse_evidence
from podlink.protocol.keys import Keypair, load_keypair
from podlink.protocol.text import b64d, b64e
from tests.cli.conftest import make_pod, running
from tests.ledger.helpers import World, wires
from tests.node.helpers import BACK_TO_V7, BACK_TO_V9, free_port

# ---------------------------------------------------------------- a node of the release before

HOP_HEADERS = {"host", "content-length", "transfer-encoding", "connection"}
Answer = Callable[[web.Request, bytes], Awaitable[web.Response | None]]


class OldNode:
    """A node of the release before this one (schema 9), at ``url``: every request is
    relayed as it came (signatures cover no host) to a node of this version, and
    ``answer`` may answer one itself, as the old node did, or return None to relay it.
    Runs in a thread with its own event loop, so that the CLI (which runs its own) can
    be invoked from the test."""

    def __init__(self, target: str, answer: Answer) -> None:
        self.target = target.rstrip("/")
        self.answer = answer
        self.url = f"http://127.0.0.1:{free_port()}"
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.runner: web.AppRunner | None = None

    def __enter__(self) -> OldNode:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(5)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.runner is not None:
            asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", int(self.url.rsplit(":", 1)[1])).start()

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        own = await self.answer(request, body)
        if own is not None:
            return own
        status, raw, ctype = await self.relay(request, body)
        return web.Response(status=status, body=raw, content_type=ctype)

    async def relay(self, request: web.Request, body: bytes) -> tuple[int, bytes, str]:
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_HEADERS}
        async with (
            aiohttp.ClientSession() as session,
            session.request(request.method, self.target + request.path_qs,
                            data=body or None, headers=headers) as resp,
        ):  # fmt: skip
            return resp.status, await resp.read(), resp.content_type


def invoke(*args: str, home: Path) -> Result:
    """`podlink ARGS --home HOME`, exceptions caught: a traceback is a failed command."""
    env = {"PODLINK_HOME": None, "COLUMNS": "120", "NO_COLOR": "1"}
    return CliRunner().invoke(main, [*args, "--home", str(home)], env=env)


def ingest_offline(home: Path, *batches: list[Event]) -> list[list[tuple[str, str | None]]]:
    """Store events in a stopped pod's ledger, batch by batch, as a peer's pages would."""

    async def go() -> list[list[tuple[str, str | None]]]:
        async with await Ledger.open(home / "ledger.db") as ledger:
            out = []
            for batch in batches:
                results = await ledger.ingest(wires(batch), source=b64e(b"p" * 32))
                out.append([(r.status, r.reason) for r in results])
            return out

    return asyncio.run(go())


# ---------------------------------------------------------------- a new CLI, an old node


def test_log_forks_of_a_node_from_the_release_before_is_no_traceback(tmp_path: Path) -> None:
    """BUG: `podlink log --forks` of this version against a node of the release before
    (schema 9) that holds any fork evidence dies with a traceback (KeyError:
    'source_name').

    This release's node names the keys of each /v1/forks row (``pod``, ``pod_name``,
    ``author_name``, ``source_name``: ledger/queries.py list_forks) and the CLI stopped
    naming them itself; cli/pods.py _forks (line 432) reads ``f["source_name"]`` as
    if every node sent it. Pods upgrade one laptop at a time, and `log --forks` is the
    command docs/operations.md sends an organizer to when `forks` is above 0: the one
    moment it matters, it crashes. (Reproduced by hand against a real node of 7137159:
    the same traceback.) Read the names with .get, as the history rows are."""
    pod = make_pod(tmp_path, "Alder")
    world = World()
    ash, genesis = world.pod("Ash")
    world.tick()
    kept = ash.author.write(kinds.PodInfoChanged(name="Ash"), "network")
    twin = Author(ash.author.keypair, ash.id, world.clock)
    twin.set_head("network", 1, genesis[0].id)
    world.tick()
    other = twin.write(kinds.PodInfoChanged(name="Ash on a second laptop"), "network")
    stored, refused = ingest_offline(pod.home, [*genesis, kept], [other])
    assert [s for s, _ in stored] == ["stored", "stored"] and refused == [("refused", "fork")]

    names = ("pod", "pod_name", "author_name", "source_name")  # new in this release's rows

    async def as_before(request: web.Request, body: bytes) -> web.Response | None:
        if request.path != "/v1/forks":
            return None
        status, raw, _ = await old.relay(request, body)
        rows = [{k: v for k, v in row.items() if k not in names} for row in json.loads(raw)]
        return web.json_response(rows, status=status)

    with running(pod), OldNode(pod.url, as_before) as old:
        result = invoke("log", "--forks", "--node", old.url, home=pod.home)
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        f"{type(result.exception).__name__}: {result.exception}"
    )
    assert result.exit_code == 0, result.output
    assert "seen here" in result.output and kept.id_text[:8] in result.output


def test_claim_through_a_node_from_the_release_before_is_not_refused_for_another_pods(
    tmp_path: Path,
) -> None:
    """BUG: `podlink claim NEED` of this version, talking to a node of the release before,
    refuses with "this pod already offered to help with it: claim X, pending", X being
    ANOTHER pod's claim, whenever any pod has claimed the need without naming a member.

    cli/ops.py make_claim (lines 220-221) asks GET /v1/claims?request=R&pod=OURS and then
    matches only ``c["by_member"] == member`` (None for "this pod"), trusting the node
    to have filtered by pod. ``pod`` on /v1/claims is new in this release; the old node
    ignores query parameters it does not know (node/organizer_api.py list_claims at
    7137159) and answers every pod's claims. The old CLI matched ``c["pod"] == pod``
    itself. So an organizer who upgraded their laptop before the pod's node cannot help
    with a need once another pod has offered. (Reproduced by hand against a real node of
    7137159: same message, naming the other pod's claim.) Check ``c["pod"] == pod`` here
    too; it costs nothing."""
    pod = make_pod(tmp_path, "Alder")
    world = World()
    ash, ash_genesis = world.pod("Ash")
    birch, birch_genesis = world.pod("Birch")
    world.tick()
    need = ash.author.write(kinds.RequestOpened(title="Soup for two", category="food"),
                            "network")  # fmt: skip
    world.tick()
    theirs = birch.author.write(kinds.ClaimMade(), "network", [need.id])
    [stored] = ingest_offline(pod.home, [*ash_genesis, *birch_genesis, need, theirs])
    assert {s for s, _ in stored} == {"stored"}
    organizer = load_keypair(pod.home / "organizer.key")

    async def as_before(request: web.Request, body: bytes) -> web.Response | None:
        if request.path != "/v1/claims" or "pod" not in request.query:
            return None
        # The old node ignored `pod`: it answered what it answers without it.
        query = {k: v for k, v in request.query.items() if k != "pod"}
        async with NodeClient(pod.url, organizer) as client:
            found = await client.request("GET", "/v1/claims", query=query)
        return web.json_response(found)

    with running(pod), OldNode(pod.url, as_before) as old:
        result = invoke("claim", need.id_text[:10], "--node", old.url, home=pod.home)
        claims = invoke("request", "show", need.id_text[:10], "--json", home=pod.home)
    assert result.exit_code == 0, result.output
    assert "Claimed" in result.output
    assert claims.exit_code == 0, claims.output


def test_a_fulfil_that_changed_nothing_says_so_through_a_node_from_the_release_before(
    tmp_path: Path,
) -> None:
    """BUG: against a node of the release before, `podlink fulfil` (and claim, accept,
    decline, cancel: every write that calls check_applied) reports success for an event
    that was stored but changed nothing, where the old CLI said "recorded, but it changed
    nothing: ...".

    cli/session.py check_applied (lines 428-432) now asks GET /v1/requests/R?event=ID
    and reads only ``step``, new in this release's answer, and takes its absence for
    "applied"; the old node ignores ``event`` and answers the whole history without a
    ``step``. Here another organizer's cancel lands just before the fulfil (a race the
    check exists for): through this release's node the CLI says the fulfil changed
    nothing; through the old node it prints "Fulfilled" and exits 0, and the organizer
    believes a cancelled need was met. When ``step`` is missing, look the event up in
    ``history`` as before (or fail saying the node is too old)."""
    pod = make_pod(tmp_path, "Alder")
    organizer = load_keypair(pod.home / "organizer.key")
    node_key = load_keypair(pod.home / "node.key")

    async def cancel_first(body: bytes) -> None:
        """Another organizer (here the pod's own key) cancels the need the fulfil names,
        stamped just before it: the fulfil arrives second and changes nothing."""
        fulfil = decode_event(b64d(json.loads(body)["events"][0]))
        if fulfil.header.kind != "request.fulfil":
            return
        async with NodeClient(pod.url, node_key) as client:
            author = await client.author(node_key.public)
            cancel = author.write(kinds.RequestCancelled(reason="moved away"), "pod",
                                  [fulfil.header.refs[0]], ts=fulfil.header.ts - 1)  # fmt: skip
            [result] = await client.submit([cancel])
            assert result["status"] == "stored", result

    def relay(before: bool) -> Answer:
        async def answer(request: web.Request, body: bytes) -> web.Response | None:
            if request.method == "POST" and request.path == "/v1/events":
                await cancel_first(body)
            elif before and request.method == "GET" and request.path.startswith("/v1/requests/"):
                # The old node ignored `event`, `claims` and `history`.
                async with NodeClient(pod.url, organizer) as client:
                    return web.json_response(await client.request("GET", request.path))
            return None

        return answer

    said = {}
    with running(pod):
        for before in (False, True):
            need = pod.json("request", "add", f"Soup {before}", "--category", "food")["id"]
            with OldNode(pod.url, relay(before)) as node:
                result = invoke("fulfil", need[:10], "--node", node.url, home=pod.home)
            status = pod.json("request", "show", need[:10])["status"]
            said[before] = (result.exit_code, result.output.strip(), status)
    assert said[False][0] == 1 and "changed nothing" in said[False][1], said  # the race
    assert said[False][2] == said[True][2] == "cancelled", said
    assert said[True][0] == 1 and "changed nothing" in said[True][1], said[True]


# ---------------------------------------------------------------- restore over an old file


def test_restore_over_a_schema_7_database_keeps_its_peers_lane_fork_gossiped(
    tmp_path: Path,
) -> None:
    """BUG: restoring a backup over a database last written by podlink at schema 7 or
    older (upgrade, then restore before the node ever ran again: the usual order when
    the disk is what failed) carries that database's fork evidence of a ``peers`` feed,
    but never serves it to a peer again.

    A schema 7 row holds only the other header; V8 (ledger/schema.py) fills ``kept_*``
    from the events table and ``other_pod`` from the other header's bytes, and opening
    that same file at schema 12 serves the piece. cli/restore.py _carry (lines 146-150)
    copies the row's columns as they are and then fills ``kept_*`` from the carried
    events, but leaves ``other_pod`` NULL; forks.visible_clause serves a ``peers`` row
    only when ``other_pod`` is the pod's or the asker's, so this proof that the pod's
    own key signed two histories is kept and never gossiped, while it is the copy a
    peer cannot get from anywhere else. Fill ``other_pod`` there as V8 does."""
    key = Keypair.generate()
    asker = Keypair.generate().public
    author = Author(key, key.public)
    feed = [author.write(kinds.PodFounded(name="Elm", zone="Elm"), "network")]
    kept = author.write(kinds.RequestOpened(title="for the peers", category="food"), "peers")
    twin = Author(key, key.public, author.clock)
    other = twin.write(kinds.RequestOpened(title="second laptop", category="food"), "peers")
    backup, live, incoming = tmp_path / "backup.db", tmp_path / "ledger.db", tmp_path / "in.db"

    async def build() -> None:
        async with await Ledger.open(backup) as ledger:
            await ledger.set_pod(key.public)
            await ledger.ingest(wires(feed))
        shutil.copyfile(backup, live)
        async with await Ledger.open(live) as ledger:
            assert [r.status for r in await ledger.ingest(wires([kept]))] == ["stored"]
            assert [r.reason for r in await ledger.ingest(wires([other]))] == ["fork"]

    asyncio.run(build())
    with closing(sqlite3.connect(live)) as db:  # as podlink at schema 7 left it
        db.executescript(BACK_TO_V7)
    upgraded = tmp_path / "upgraded.db"
    shutil.copyfile(live, upgraded)
    assert served(upgraded, key.public, asker) == 1  # the file itself, opened: served

    shutil.copyfile(backup, incoming)
    carried = carry_over(live, incoming, key.public)
    assert not carried.unreadable and carried.events == 1
    assert served(incoming, key.public, asker) == 1, "the proof is kept but never served"


def served(path: Path, pod: bytes, asker: bytes) -> int:
    """How many pieces of fork evidence the ledger at ``path`` serves the peer ``asker``."""

    async def go() -> int:
        async with await Ledger.open(path) as ledger:
            pieces, _, _ = await fork_rows.visible_after(
                ledger.reader, 0, 10, pod=pod, asker=asker)  # fmt: skip
            return len(pieces)

    return asyncio.run(go())


# ---------------------------------------------------------------- pinned: passing


def test_a_schema_9_backup_restored_over_a_schema_12_database_keeps_what_v10_v11_added(
    tmp_path: Path,
) -> None:
    """Pinned: `podlink restore` of a backup made by the release before (schema 9: no
    forks_waiting table, no maker of an invite) over this release's database migrates the
    backup and carries into it the columns and tables it lacked: each invite's maker and
    tenure (so a removed organizer's unused code stays dead after the restore) and the
    fork evidence waiting for its feed; the read model is the live one's."""
    pod = make_pod(tmp_path, "Alder")
    live = pod.home / "ledger.db"
    backup = tmp_path / "backup.db"
    shutil.copyfile(live, backup)
    with closing(sqlite3.connect(backup)) as db:
        db.executescript(BACK_TO_V9)
    organizer = load_keypair(pod.home / "organizer.key").public
    key = Keypair.generate()
    author = Author(key, key.public)
    at1 = author.write(kinds.PodFounded(name="Far", zone="Far"), "network")
    twin = Author(key, key.public).write(kinds.PodFounded(name="Far 2", zone="Far"), "network")
    fork = parse_evidence(Evidence(at1.payload, at1.sig, twin.payload, twin.sig))
    with closing(sqlite3.connect(live)) as db:
        [(tenure,)] = db.execute("SELECT from_ts FROM roster WHERE key = ?", (organizer,))
        db.execute("INSERT INTO invites (secret_hash, created, expires, made_by, made_in) "
                   "VALUES (?, 1, 2000000000, ?, ?)", (b"h" * 32, organizer, tenure))  # fmt: skip
        db.execute(fork_rows.INSERT_WAITING, fork_rows.waiting_row(fork, "peer", now_ms()))
        db.commit()

    async def dump(path: Path) -> dict[str, list[list]]:
        async with await Ledger.open(path) as ledger:
            return await ledger.dump()

    want = asyncio.run(dump(live))
    result = invoke("restore", str(backup), home=pod.home)
    assert result.exit_code == 0, result.output
    with closing(sqlite3.connect(live)) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        invites = db.execute("SELECT secret_hash, made_by, made_in FROM invites").fetchall()
        assert invites == [(b"h" * 32, organizer, tenure)]
        waiting = db.execute("SELECT author, seq, other_payload FROM forks_waiting").fetchall()
        assert waiting == [(key.public, 1, twin.payload)]
    assert asyncio.run(dump(live)) == want
