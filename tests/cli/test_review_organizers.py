"""Review of `podlink organizer` (commit 70782e6): co-organizers' laptops, the roster, and
what a laptop folder signs. Real pods (`podlink serve` subprocesses), real SQLite, real
Ed25519; the two helper servers below are real aiohttp servers on 127.0.0.1: a relay that
holds event submissions (a slow link) and a node that lies about which pod it is."""

from __future__ import annotations

import asyncio
import contextlib
import stat
import threading
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import click
import pytest
from aiohttp import web
from click.testing import CliRunner, Result

from podlink.cli.main import main
from podlink.node.client import NodeClient
from podlink.protocol import clock, kinds
from podlink.protocol.envelope import decode_event
from podlink.protocol.keys import load_keypair
from podlink.protocol.text import b64d, b64e
from tests.cli.conftest import Pod, make_pod, run, run_json, running
from tests.node.helpers import free_port


@dataclass
class Pods:
    """Elm (laptops join it), Oak (another pod) and Birch (left with no organizers)."""

    elm: Pod
    oak: Pod
    birch: Pod


@pytest.fixture(scope="module")
def pods(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pods]:
    root = tmp_path_factory.mktemp("review-organizers")
    served = [make_pod(root, n) for n in ("Elm", "Oak", "Birch")]
    with running(*served):
        yield Pods(*served)


def invoke(*args: str, home: Path) -> Result:
    """`podlink ARGS --home HOME`, catching what escapes the command (a traceback)."""
    env = {"PODLINK_HOME": None, "COLUMNS": "80", "NO_COLOR": "1"}
    return CliRunner().invoke(main, [*args, "--home", str(home)], env=env)


def one_line_error(result: Result) -> str:
    """The command's one-line error; fails on a traceback or another exit code."""
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        pytest.fail(f"traceback instead of a one-line error: {result.exception!r}")
    assert result.exit_code == 1, (result.exit_code, result.output)
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    return lines[0]


def laptop(root: Path, pod: Pod, name: str, *, add: bool = True) -> tuple[Path, str]:
    """A co-organizer's folder made by `organizer setup`, added by the pod's founder."""
    home = root / f"{name.lower()}-laptop"
    key = run_json("organizer", "setup", "--node", pod.url, "--name", name, home=home)["key"]
    if add:
        pod("organizer", "add", name, "--key", key)
    return home, key


async def as_pod(pod: Pod, path: str) -> Any:
    """GET ``path`` signed by the pod's own node key (always an organizer of its pod)."""
    async with NodeClient(pod.url, load_keypair(pod.home / "node.key")) as client:
        return await client.get(path)


class Server:
    """An aiohttp application served from a thread of its own on a free loopback port."""

    def __init__(self, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> None:
        self.handler = handler
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.loop = asyncio.new_event_loop()
        self.runner: web.AppRunner | None = None
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> Server:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(5)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handler)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    async def _stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


HOP_HEADERS = {"host", "content-length", "transfer-encoding", "connection"}


def holding_relay(target: str, hold: int) -> Server:
    """Relays every request to ``target`` unchanged (signatures cover no host), but holds
    each POST /v1/events until ``hold`` of them have arrived (at most 4 s): a slow link."""
    gate = asyncio.Event()
    arrived = 0

    async def handle(request: web.Request) -> web.Response:
        nonlocal arrived
        body = await request.read()
        if request.method == "POST" and request.path == "/v1/events":
            arrived += 1
            if arrived >= hold:
                gate.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(gate.wait(), 4)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_HEADERS}
        async with (
            aiohttp.ClientSession() as session,
            session.request(
                request.method, target + request.path_qs, data=body or None, headers=headers
            ) as resp,
        ):
            return web.Response(status=resp.status, body=await resp.read(),
                                content_type=resp.content_type)  # fmt: skip

    return Server(handle)


def in_thread(args: list[str], out: dict[str, str]) -> threading.Thread:
    """Run `podlink ARGS` in a thread (click's context stack is per thread); ``out`` gets
    'ok' or the error."""

    def go() -> None:
        try:
            main.main(args, standalone_mode=False)
            out[args[2]] = "ok"
        except click.ClickException as e:
            out[args[2]] = e.message

    return threading.Thread(target=go)


# ---------------------------------------------------------------- failing: real bugs


def test_add_with_a_mistyped_last_character_is_a_one_line_error(pods: Pods) -> None:
    """BUG: a key of 43 base64url characters whose last one carries stray bits (a typo in
    the last character of a pasted key does, 3 times in 4) passes KEY_TEXT, then
    ``b64d`` raises ProtocolError outside ``run_sync`` (cli/organizers.py:126): a
    traceback, not the one-line "--key must be ..." error."""
    before = pods.elm.json("status")["events"]
    result = invoke("organizer", "add", "Kim", "--key", "A" * 42 + "B", home=pods.elm.home)
    assert "--key" in one_line_error(result)
    assert pods.elm.json("status")["events"] == before


@pytest.mark.parametrize(
    "node",
    ["HTTP://127.0.0.1:{port}", " http://127.0.0.1:{port}"],
    ids=["upper-case-scheme", "leading-blank"],
)
def test_setup_writes_a_node_url_its_own_config_then_refuses(
    pods: Pods, tmp_path: Path, node: str
) -> None:
    """BUG: setup checks --node with yarl (scheme case-insensitive, surrounding blanks
    ignored: a pasted URL), reaches the node and reports success, but writes --node
    as typed (cli/organizers.py:271, Target.url returns ``given`` unnormalised,
    cli/session.py:104); load_config's stricter pattern (node/config.py:156) then refuses
    it, so every later command in the new folder, `organizer key` included, fails with
    "node must be a URL like http://HOST:PORT"."""
    home = tmp_path / "laptop"
    port = pods.elm.url.rsplit(":", 1)[1]
    data = run_json("organizer", "setup", "--node", node.format(port=port), home=home)
    assert run_json("organizer", "key", home=home) == {"key": data["key"]}


def test_restore_in_a_laptop_folder_is_a_one_line_error(tmp_path: Path) -> None:
    """BUG: Target.url now returns the config's ``node`` (cli/session.py:93), and restore's
    _node_answers (cli/pods.py:512) splits it as HOST:PORT: an https node without a
    port (a pod behind a reverse proxy) crashes with "ValueError: not enough values to
    unpack"; with a port, restore tells the laptop to stop the pod's remote node, naming
    127.0.0.1:7654. It should refuse a laptop folder in one line, as serve does."""
    home = tmp_path / "laptop"
    home.mkdir(mode=0o700)
    (home / "config.toml").write_text(
        f'name = "Elm"\nnode = "https://elm.example.org"\npod = "{b64e(bytes(32))}"\n'
    )
    backup = tmp_path / "elm-backup.db"
    backup.write_bytes(b"")
    line = one_line_error(invoke("restore", str(backup), home=home))
    assert "organizer's folder" in line


def test_remove_with_an_empty_name_removes_nobody(pods: Pods, tmp_path: Path) -> None:
    """BUG: _one (cli/organizers.py:202) compares WHO as a name before anything else, and
    an empty (or blank) WHO (`podlink organizer remove "$NAME"` with NAME unset) equals the
    name of every unnamed organizer: the founder of a pod made without --organizer is
    removed, and the command says so as if asked to."""
    oak = pods.oak
    home, key = laptop(tmp_path, oak, "Quinn")
    founder = run_json("organizer", "key", home=oak.home)["key"]
    try:
        result = invoke("organizer", "remove", "", home=home)
        assert result.exit_code == 1, result.output
        assert founder in {r["key"] for r in run_json("organizer", "list", home=home)}
    finally:
        active = {r["key"] for r in run_json("organizer", "list", home=home)}
        if founder not in active:  # put Oak's founder back
            run("organizer", "add", "Founder", "--key", founder, home=home)
        oak("organizer", "remove", key[:12])


def test_two_organizers_stepping_down_at_once_leave_the_pod_without_one(
    pods: Pods, tmp_path: Path
) -> None:
    """BUG: "the last organizer cannot be removed" is checked only by the client, from a
    roster read before signing (cli/organizers.py:172-178). Two organizers who step down
    at once (each with --yes, over a link slow enough that both read the roster before
    either removal lands) both pass the check and both removals count: the pod is left
    with no organizer at all, and its own folder can do nothing. Nothing on the node
    refuses a roster.remove that empties the roster."""
    birch = pods.birch
    founder = birch.json("organizer", "list")[0]["key"]
    home, ada = laptop(tmp_path, birch, "Ada")
    out: dict[str, str] = {}
    with holding_relay(birch.url, hold=2) as relay:
        threads = [
            in_thread(["organizer", "remove", founder[:12], "--yes", "--home", str(birch.home),
                       "--node", relay.url], out),
            in_thread(["organizer", "remove", ada[:12], "--yes", "--home", str(home),
                       "--node", relay.url], out),
        ]  # fmt: skip
        for t in threads:
            t.start()
        for t in threads:
            t.join(15)
    active = [r for r in asyncio.run(as_pod(birch, "/v1/roster")) if r["active"]]
    assert active, f"no organizer left: both removals succeeded ({out})"


def test_a_laptop_folder_signs_events_for_its_own_pod_only(pods: Pods, tmp_path: Path) -> None:
    """BUG: the folder's ``pod`` pins the pod that *requests* sign for, but the events the
    folder signs take their header ``pod`` from whatever the node answers at /v1/heads
    (PodSession.write calls client.author() with no pod, cli/session.py:347, and
    NodeClient.author uses heads["pod"], node/client.py:148). A machine now answering at
    the folder's node URL (a reassigned LAN address, a wrong --node) gets an organizer
    event validly signed for the pod of its choice, here Oak, instead of a refusal."""
    home, _ = laptop(tmp_path, pods.elm, "Noor")
    oak = pods.oak.key
    captured: list[bytes] = []

    async def liar(request: web.Request) -> web.Response:
        if request.path == "/v1/heads":
            return web.json_response({"pod": oak, "heads": {}, "clock": 0})
        if request.path == "/v1/roster":
            return web.json_response([])
        if request.path == "/v1/events":
            body = await request.json()
            captured.extend(b64d(e) for e in body["events"])
            ids = [b64e(decode_event(w).id) for w in captured]
            return web.json_response({"results": [{"status": "stored", "id": i} for i in ids]})
        return web.json_response({"error": "not-found", "message": "no"}, status=404)

    with Server(liar) as fake:
        invoke("organizer", "add", "Mallory", "--key", b64e(bytes(range(32))), "--node",
               fake.url, home=home)  # fmt: skip
    signed_for = {b64e(decode_event(w).pod) for w in captured}
    assert signed_for <= {pods.elm.key}, "the laptop signed a roster.add for Oak"


def test_setup_in_an_existing_folder_makes_it_private(pods: Pods, tmp_path: Path) -> None:
    """BUG (minor): setup makes --home 0700 only when it creates it
    (cli/organizers.py:308-310); a folder that exists already (`mkdir ~/elm` first, as for
    any folder) stays 0755, so config.toml and the lock file are readable by others,
    where `podlink init` chmods an existing folder to 0700 (node/home.py) and
    docs/operations.md asks to keep pod folders 0700."""
    home = tmp_path / "elm"
    home.mkdir(mode=0o755)
    home.chmod(0o755)
    run_json("organizer", "setup", "--node", pods.elm.url, home=home)
    assert stat.S_IMODE(home.stat().st_mode) == 0o700


def test_the_add_command_setup_prints_works_for_a_name_starting_with_a_dash(
    pods: Pods, tmp_path: Path
) -> None:
    """BUG (minor): setup prints `podlink organizer add NAME --key KEY` with NAME
    shlex-quoted (cli/organizers.py:289), but quoting does not stop click reading "-Jo"
    as options: the printed command fails with "No such option '-J'". Printing
    `podlink organizer add --key KEY -- NAME` would work for every name."""
    home = tmp_path / "jo-laptop"
    add = run_json("organizer", "setup", "--node", pods.elm.url, "--name", "-Jo", home=home)["add"]
    words = add.split()[1:]  # what the shell hands podlink (no quotes needed here)
    result = invoke(*words, home=pods.elm.home)
    try:
        assert result.exit_code == 0, result.output
    finally:
        if result.exit_code == 0:
            pods.elm("organizer", "remove", words[words.index("--key") + 1][:12])


# ---------------------------------------------------------------- passing: pinned behaviour


def test_a_key_removed_and_added_again_acts_again_and_json_ids_are_the_events(
    pods: Pods, tmp_path: Path
) -> None:
    """(passes) remove then add again: a new tenure, the laptop acts again; `--all` shows
    both tenures; the ids that add and remove print with --json are roster events in the
    network lane of the pod's log."""
    elm = pods.elm
    home, key = laptop(tmp_path, elm, "Rio", add=False)
    first = elm.json("organizer", "add", "Rio", "--key", key)
    gone = elm.json("organizer", "remove", "rio", "--reason", "lost laptop")
    assert "organizer add NAME --key " + key in one_line_error(invoke("status", home=home))
    again = elm.json("organizer", "add", "Rio", "--key", key)
    assert run_json("status", home=home)["pod"] == elm.key
    tenures = [r for r in elm.json("organizer", "list", "--all") if r["key"] == key]
    assert sorted(r["active"] for r in tenures) == [False, True]
    log = {e["id"]: e for e in elm.json("log", "--limit", "200")}
    for data, kind in ((first, "roster.add"), (gone, "roster.remove"), (again, "roster.add")):
        assert (log[data["id"]]["kind"], log[data["id"]]["lane"]) == (kind, "network")
    mine = [line for line in run("organizer", "list", "--all", home=home).output.splitlines()
            if line.rstrip().endswith("you")]  # fmt: skip
    assert len(mine) == 1
    elm("organizer", "remove", key[:12])


def test_names_match_across_case_and_unicode_forms(pods: Pods, tmp_path: Path) -> None:
    """(passes) "Jose" + combining acute (NFD, as macOS sends it) is recorded as NFC, and
    `remove JOSÉ` (one character, upper case) finds it."""
    elm = pods.elm
    _, key = laptop(tmp_path, elm, "Jose", add=False)
    added = elm.json("organizer", "add", "Jose\u0301", "--key", key)
    assert added["name"] == "Jos\u00e9"
    assert {r["key"]: r["name"] for r in elm.json("organizer", "list")}[key] == "Jos\u00e9"
    removed = elm.json("organizer", "remove", "JOS\u00c9")
    assert removed["key"] == key
    assert key not in {r["key"] for r in elm.json("organizer", "list")}


def test_an_organizer_added_from_a_fast_laptop_writes_after_their_tenure_starts(
    pods: Pods, tmp_path: Path
) -> None:
    """(passes) The founder's laptop runs 10 minutes fast when it adds Vic: Vic's first need,
    written at once from a laptop with the right time, still falls inside the tenure (the
    CLI follows the node's clock) and is applied, not soft-failed."""
    elm = pods.elm
    home, key = laptop(tmp_path, elm, "Vic", add=False)
    ahead = clock.pack(clock.now_ms() + 10 * 60 * 1000)
    pod = b64d(elm.key)

    async def add_from_a_fast_laptop() -> None:
        organizer = load_keypair(elm.home / "organizer.key")
        async with NodeClient(elm.url, organizer, pod=pod) as client:
            author = await client.author()
            event = author.write(kinds.OrganizerAdded(key=b64d(key), name="Vic"), "network",
                                 ts=max(ahead, author.clock.now()))  # fmt: skip
            await client.submit([event])

    asyncio.run(add_from_a_fast_laptop())
    need = run_json("request", "add", "Bread run", "--category", "food", home=home)
    shown = elm.json("request", "show", need["id"])
    assert shown["status"] == "open"
    assert [h["outcome"] for h in shown["history"]] == ["applied"]
    elm("organizer", "remove", key[:12])
