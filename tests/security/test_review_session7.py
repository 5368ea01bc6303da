"""Session 7 review: the last-organizer guard, GET /v1/roster?pod=, the BY column's names,
set_name, `pod show` and a laptop whose node is down. Real nodes on 127.0.0.1, real
SQLite files and Ed25519 keys."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from podlink.cli.main import main
from podlink.node.client import ClientError
from podlink.protocol import kinds
from podlink.protocol.keys import Keypair, load_keypair
from tests.cli.conftest import Pod, eventually, running
from tests.node.helpers import PodNode, free_port, make_node


@pytest.fixture
async def elm(tmp_path: Path) -> AsyncIterator[PodNode]:
    node = await make_node(tmp_path / "elm", "Elm")
    await node.start()
    try:
        yield node
    finally:
        await node.stop()


def _active(node: PodNode) -> set[bytes]:
    return node.ledger.roster.active_keys(node.pod)


@pytest.mark.parametrize("order", ["remove-self-then-add", "add-pod-key-then-remove-self"])
async def test_guard_is_blind_to_order_and_to_adds_that_change_nothing(
    elm: PodNode, order: str
) -> None:
    """e2e0970's guard (organizer_api.submit_events) computes `(active - removed) | added`
    from the batch's roster events without folding them: a roster.add counts even when it
    changes nothing. (1) An organizer rotating its key writes 'remove me' then 'add the
    new key': the add is stamped after its author's tenure ended, so the fold ignores it;
    (2) 'add the pod's own key' changes nothing (protocol.md). Both batches pass the guard
    and leave the pod with no organizer, which the guard promises to refuse."""
    a = elm.organizer
    author = await elm.client.author(elm.pod)
    if order == "remove-self-then-add":
        events = [author.write(kinds.OrganizerRemoved(key=a.public, reason="rotated"), "network"),
                  author.write(kinds.OrganizerAdded(key=Keypair.generate().public, name="New"),
                               "network")]  # fmt: skip
    else:
        events = [author.write(kinds.OrganizerAdded(key=elm.pod, name="pod"), "network"),
                  author.write(kinds.OrganizerRemoved(key=a.public), "network")]  # fmt: skip
    assert _active(elm) == {a.public}
    try:
        results = await elm.client.submit(events)
    except ClientError as err:
        assert err.reason == "invalid"
        results = []
    assert _active(elm), f"the pod has no organizer left: {results}"


async def test_pinned_an_honest_rotation_in_one_batch_passes_the_guard(elm: PodNode) -> None:
    """Pins: 'add the new key, then remove the old one' in one submission is accepted (the
    guard must not refuse a rotation), and the new key is the pod's organizer after it."""
    a, new = elm.organizer, Keypair.generate()
    author = await elm.client.author(elm.pod)
    events = [author.write(kinds.OrganizerAdded(key=new.public, name="New"), "network"),
              author.write(kinds.OrganizerRemoved(key=a.public, reason="rotated"), "network")]
    results = await elm.client.submit(events)
    assert [r["status"] for r in results] == ["stored", "stored"]
    assert _active(elm) == {new.public}


async def test_pinned_roster_with_a_junk_pod_is_a_400_with_a_json_body(elm: PodNode) -> None:
    """Pins: GET /v1/roster?pod= takes a whole key or `all`; anything else is `invalid`
    (400, JSON), never a 500; a well-formed key nobody knows is an empty list."""
    for junk in ("", "ALL", "all ", "x", "A" * 44, "AAAA=", "%00"):
        with pytest.raises(ClientError) as caught:
            await elm.client.get("/v1/roster", pod=junk)
        assert (caught.value.status, caught.value.reason) == (400, "invalid"), junk
    assert await elm.client.get("/v1/roster", pod="A" * 43) == []
    everyone = await elm.client.get("/v1/roster", pod="all")
    assert [(r["pod"], r["key"]) for r in everyone] == [(elm.key, elm.organizer.public_text)]


# ------------------------------------------------------------------ through the CLI


def cli(home: Path, *args: str, code: int = 0) -> Result:
    """`podlink ARGS --home HOME`, wide enough that no column is shortened (``code`` -1:
    any exit code)."""
    env = {"PODLINK_HOME": None, "COLUMNS": "250", "NO_COLOR": "1"}
    result = CliRunner().invoke(main, [*args, "--home", str(home)], env=env,
                                catch_exceptions=False)  # fmt: skip
    assert code == -1 or result.exit_code == code, (args, result.exit_code, result.output)
    return result


def init_pod_cli(root: Path, name: str, organizer: str) -> Pod:
    port = free_port()
    home = root / name.lower()
    cli(home, "init", "--name", name, "--listen", f"127.0.0.1:{port}", "--organizer", organizer)
    return Pod(name, home, f"http://127.0.0.1:{port}")


@pytest.fixture(scope="module")
def two(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Pod, Pod]]:
    """Ash (organizer Ann) and Yew (organizer Yan), peered by invite."""
    root = tmp_path_factory.mktemp("two")
    ash, yew = init_pod_cli(root, "Ash", "Ann"), init_pod_cli(root, "Yew", "Yan")
    with running(ash, yew):
        yew("peer", "join", ash.json("invite")["invite"])
        yield ash, yew


def test_another_pod_renames_our_organizer_in_the_by_column(two: tuple[Pod, Pod]) -> None:
    """PodSession.key_names (cli/session.py) maps a key to the name of the LATEST roster.add
    naming it, in ANY pod's roster (GET /v1/roster?pod=all). Yew's organizer adds Ash's
    organizer's key to Yew's roster as "Mallory"; the event reaches Ash, and Ash's own
    `podlink log` then says Mallory did what Ann did in Ash. Another pod rewrites who did
    what in a pod's transparency log (DOMAIN.md); a name should come from the roster of
    the pod the event belongs to."""
    ash, yew = two
    ann = load_keypair(ash.home / "organizer.key").public_text
    ash("pod", "update", "--zone", "North end")  # a pod.info signed by Ann
    yew("organizer", "add", "Mallory", "--key", ann)
    yew_key = yew.key
    eventually(lambda: any(e["kind"] == "roster.add" and e["pod"] == yew_key
                           for e in ash.json("log")))  # fmt: skip
    rows = [line for line in cli(ash.home, "log").output.splitlines() if "pod.info" in line]
    assert rows and all("Ann" in row for row in rows), rows


def test_pod_update_name_keeps_the_operators_comments_in_config_toml(
    two: tuple[Pod, Pod],
) -> None:
    """`pod update --name` in the pod's own folder calls node/config.py set_name, which
    parses config.toml and dumps it again with tomli_w: every comment the operator wrote
    (why the node listens where it does, who runs the proxy) is silently deleted, and the
    keys are reordered. Only the `name = ...` line should change."""
    ash, _ = two
    path = ash.home / "config.toml"
    before = path.read_text(encoding="utf-8")
    note = "# behind the caddy proxy on the library's server: ask Sam before changing\n"
    path.write_text(note + before, encoding="utf-8")
    ash("pod", "update", "--name", "Ash Grove")
    after = path.read_text(encoding="utf-8")
    assert 'name = "Ash Grove"' in after
    assert note in after, after


def test_pinned_a_laptop_whose_node_is_down_is_told_where_the_node_runs(
    tmp_path: Path,
) -> None:
    """Pins: a laptop folder whose node does not answer exits 1 with one line that sends
    the organizer to the machine hosting the pod, never to `podlink serve` here (which
    serve refuses in a laptop folder)."""
    pine = init_pod_cli(tmp_path, "Pine", "Pia")
    laptop = tmp_path / "lap"
    with running(pine):
        key = json.loads(cli(laptop, "organizer", "setup", "--node", pine.url, "--name", "Lu",
                             "--json").output)["key"]  # fmt: skip
        pine("organizer", "add", "Lu", "--key", key)
        assert json.loads(cli(laptop, "status", "--json").output)["name"] == "Pine"
    down = cli(laptop, "status", code=1)
    assert down.output.count("\n") == 1 and "does not answer" in down.output, down.output
    assert "podlink serve --home" not in down.output



def test_a_pod_named_like_another_pods_key_takes_its_place_in_pod_show(
    two: tuple[Pod, Pod],
) -> None:
    """`pod show POD` (cli/directory.py pod_show) looks for a NAME first and tries key
    prefixes only when no name matches. A pod's name is whatever its own organizers
    publish: Yew renames itself to the short key `pod list` shows for Ash, and
    `pod show <that short key>` then prints Yew's entry (its contact) as if it were the
    pod the organizer copied the key of. A key prefix that matches a pod should win, or
    a string matching one pod's name and another's key should be ambiguous."""
    ash, yew = two
    ash_key, yew_key = ash.key, yew.key
    yew("pod", "update", "--name", ash_key[:8], "--contact", "call 555 0100")
    eventually(lambda: any(p["pod"] == yew_key and p["name"] == ash_key[:8]
                           for p in ash.json("pod", "list")))  # fmt: skip
    shown = cli(ash.home, "pod", "show", ash_key[:8], "--json", code=-1)
    assert shown.exit_code == 1 or json.loads(shown.output)["pod"] == ash_key, shown.output
