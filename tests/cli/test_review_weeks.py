"""A few weeks of pods played through the real CLI, as their organizers would: a
co-organizer on a second home folder (a laptop), members changing phones and needs, a need
turning urgent, a pod two hops away helping and contacts handed over, the founder stepping
down, a laptop lost, the pod renamed. Real `podlink serve` nodes on 127.0.0.1."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.cli.conftest import Pod, eventually, make_pod, run, run_json, serve, stop, wait_up


def laptop(tmp_path: Path, pod: Pod, name: str) -> Path:
    """A co-organizer's folder made by `organizer setup` and added to ``pod``'s roster."""
    home = tmp_path / f"{name.lower()}-laptop"
    data = run_json("organizer", "setup", "--node", pod.url, "--name", name, home=home)
    pod("organizer", "add", name, "--key", data["key"])
    return home


def start(*pods: Pod) -> None:
    for pod in pods:
        serve(pod)
    for pod in pods:
        wait_up(pod)


def peer_name(pod: Pod, other: Pod) -> str:
    return next(p["name"] for p in pod.json("peer", "list") if p["pod"] == other.key)


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.loads(resp.read())


@dataclass
class Weeks:
    """Maple Street — Riverside — Hilltop, peered in a line; Jonny's laptop for Maple."""

    maple: Pod
    riverside: Pod
    hilltop: Pod
    jonny: Path


@pytest.fixture(scope="module")
def weeks(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Weeks]:
    root = tmp_path_factory.mktemp("weeks")
    pods = [make_pod(root, n) for n in ("Maple Street", "Riverside", "Hilltop")]
    try:
        start(*pods)
        maple, riverside, hilltop = pods
        riverside("peer", "join", maple.json("invite")["invite"])
        hilltop("peer", "join", riverside.json("invite")["invite"])
        yield Weeks(maple, riverside, hilltop, laptop(root, maple, "Jonny"))
    finally:
        stop(*pods)


# ------------------------------------------------------------------ what pins behaviour


def test_weeks_of_help_across_two_hops_leave_nothing_personal_in_the_pod_between(
    weeks: Weeks,
) -> None:
    """Jonny, from his laptop, records Agatha; her phone and needs change; her need turns
    urgent and goes to the network; Hilltop (two hops away) claims it, Maple accepts, both
    hand over contacts. Hilltop reads Agatha's NEW phone; Riverside, in between, never has
    a name, phone or note in its database files or in any answer of its API."""
    maple, riverside, hilltop, jonny = weeks.maple, weeks.riverside, weeks.hilltop, weeks.jonny
    run("member", "add", "Agatha", "--contact", "555 0134", "--prefers", "phone",
        "--needs", "medicine", "--notes", "hard of hearing", home=jonny)  # fmt: skip
    maple("member", "update", "Agatha", "--contact", "555 0177")
    run("member", "update", "Agatha", "--needs", "medicine", "--needs", "food", home=jonny)
    hilltop("member", "add", "Hank", "--contact", "555 0300", "--prefers", "text",
            "--can", "transport")  # fmt: skip
    need = run_json("request", "add", "Prescription pickup", "--category", "medicine",
                    "--for", "Agatha", "--share", "network", home=jonny)["id"]  # fmt: skip
    maple("request", "update", need[:8], "--urgency", "urgent", "--needed-by", "today")
    eventually(lambda: [r for r in hilltop.json("request", "list")
                        if r["id"] == need and r["urgency"] == "urgent"])  # fmt: skip
    claim = hilltop.json("claim", need[:8], "--by", "Hank", "--note", "this afternoon")["id"]
    eventually(lambda: maple.json("request", "show", need)["claims"])
    run("accept", claim[:8], home=jonny)
    eventually(lambda: hilltop.json("request", "show", need)["status"] == "accepted")
    run("handoff", claim[:8], "--member", "Agatha", "--note", "ring twice", home=jonny)
    hilltop("handoff", claim[:8], "--member", "Hank")

    got = eventually(lambda: hilltop.json("inbox"))
    assert [(m["message"]["name"], m["message"]["contact"], m["message"]["note"], m["party"])
            for m in got] == [("Agatha", "555 0177", "ring twice", True)]  # fmt: skip
    back = eventually(lambda: run_json("inbox", home=jonny))
    assert [(m["message"]["name"], m["message"]["contact"]) for m in back] == [
        ("Hank", "555 0300")]  # fmt: skip
    run("fulfil", need[:8], "--note", "delivered", "--hours", "1.5", home=jonny)
    eventually(lambda: riverside.json("request", "show", need)["status"] == "fulfilled")

    secrets = ["Agatha", "555 0134", "555 0177", "hard of hearing", "ring twice", "Hank",
               "555 0300"]  # fmt: skip
    answers = [riverside(*args, "--json").stdout for args in (
        ("request", "list"), ("request", "show", need), ("inbox",), ("member", "list"),
        ("log", "--limit", "100"), ("pod", "list"), ("match",), ("offer", "list"))]  # fmt: skip
    answers.append(json.dumps(get_json(riverside.url + "/v1/info")))
    for secret in secrets:
        for path in riverside.home.glob("ledger.db*"):
            assert secret.encode() not in path.read_bytes(), (secret, path.name)
        for text in answers:
            assert secret not in text, (secret, text[:300])


# ------------------------------------------------------------------ bugs


def test_sync_names_a_renamed_peer_by_its_old_name(tmp_path: Path) -> None:
    """After Maple renames itself (`pod update --name`), `peer list` on its peer shows the
    new name, but `podlink sync` still reports the peer under the name it had when it was
    joined: the two commands disagree about who the neighbour is.
    Cause: node/gossip.py:397 `name = link.record.name` (the PeerRecord from the join),
    where organizer_api.list_peers looks names up with queries.pod_names.
    Fix: name the row from queries.pod_names (the pod's latest pod.info), as `peer list` does."""
    maple, river = make_pod(tmp_path, "Maple Street"), make_pod(tmp_path, "Riverside")
    try:
        start(maple, river)
        river("peer", "join", maple.json("invite")["invite"])
        maple("pod", "update", "--name", "Maple & Elm")
        eventually(lambda: peer_name(river, maple) == "Maple & Elm")
        rows = river.json("sync")
        assert [r["name"] for r in rows if r["pod"] == maple.key] == ["Maple & Elm"]
    finally:
        stop(maple, river)


def test_node_down_from_a_laptop_folder_says_to_serve_in_the_laptop_folder(
    tmp_path: Path,
) -> None:
    """When the pod's node is down, a command run in a co-organizer's laptop folder says
    "start it with `podlink serve --home <laptop>`" -- and that very command is refused
    ("... is an organizer's folder ... `podlink serve` runs in the pod's own folder").
    The co-organizer is sent in a circle.
    Cause: cli/session.py:154-157 builds the hint from self.home without checking whether
    the folder is a laptop folder (config.node set, no node.key: see own_folder at :110).
    Fix: in a laptop folder say the node at URL is not answering and that it is started
    with `podlink serve` on the machine that hosts the pod."""
    maple = make_pod(tmp_path, "Maple Street")
    try:
        start(maple)
        jonny = laptop(tmp_path, maple, "Jonny")
    finally:
        stop(maple)
    down = run("status", home=jonny, code=1)
    suggested = f"podlink serve --home {jonny}"
    refused = run("serve", home=jonny, code=1)
    assert "organizer's folder" in refused.output  # the suggested command cannot work
    assert suggested not in down.output, down.output


def test_serve_shows_the_old_name_after_a_rename_from_a_laptop(tmp_path: Path) -> None:
    """The pod is renamed from a co-organizer's laptop (the usual case once the founder
    has stepped down). Every pod sees the new name, but on the pod's own machine
    `podlink serve` keeps greeting with the old one ("Maple Street: node on ...", and
    the log line "node up: pod ... (Maple Street)").
    Cause: cli/directory.py:124-127 writes the new name into config.toml only when the
    command runs in the node's own folder; cli/pods.py:108 and node/app.py:79 print
    config.name instead of the name in the ledger (node/runtime.py:64-68 has it).
    Fix: print the name from the ledger's latest pod.info (falling back to config.name)."""
    maple = make_pod(tmp_path, "Maple Street")
    try:
        start(maple)
        jonny = laptop(tmp_path, maple, "Jonny")
        run("pod", "update", "--name", "Maple & Elm", home=jonny)
        stop(maple)
        start(maple)
        assert get_json(maple.url + "/v1/info")["name"] == "Maple & Elm"
        banner = (maple.home / "serve.log").read_text().splitlines()[0]
        assert banner.startswith("Maple & Elm:"), banner
    finally:
        stop(maple)


def test_the_directory_table_cuts_the_public_contact_and_never_shows_the_description(
    tmp_path: Path,
) -> None:
    """`pod update --help`'s own example sets the contact "phone tree: 555 0100", and
    --description is "for other pods and neighbours". `pod list` (the only view of the
    directory besides --json) shows the contact as "phone tree: 555 …" in 80 columns --
    the number, the one thing a neighbour needs, is cut -- and has no description column
    at all; there is no `pod show`. What a pod writes about itself cannot be read back.
    Cause: cli/directory.py:67-69: six columns in 80, contact shortened, description unused.
    Fix: a `pod show POD` (or one block per pod) printing every field whole, or wrap the
    contact instead of cutting it."""
    maple = make_pod(tmp_path, "Maple Street")
    try:
        start(maple)
        maple("pod", "update", "--zone", "Maple St & Elm St", "--category", "food",
              "--category", "transport", "--contact", "phone tree: 555 0100",
              "--description", "Neighbours helping neighbours")  # fmt: skip
        out = maple("pod", "list").output
        shown = maple("pod", "show", "maple street").output  # the fix: an entry whole
    finally:
        stop(maple)
    assert "phone tree: 555 0100" in out, out  # the list keeps a contact whole
    missing = [s for s in ("phone tree: 555 0100", "Neighbours helping neighbours", "Maple St")
               if s not in shown]  # fmt: skip
    assert not missing, (missing, shown)


def test_log_does_not_say_which_organizer_did_what(tmp_path: Path) -> None:
    """`podlink log` says it shows "who did what, when", and DOMAIN's transparency rests on
    it; with a second organizer, the table shows only the POD for every event, so nothing
    tells Ann's records from Jonny's (the JSON has "author", the table drops it).
    Cause: cli/pods.py:391-394: the table's columns are #, WHEN, POD, LANE, KIND, ID.
    Fix: add a BY column with the organizer's name from /v1/roster?pod=all (as `log
    --forks` does in _forks), or the short key."""
    maple = make_pod(tmp_path, "Maple Street")
    try:
        start(maple)
        jonny = laptop(tmp_path, maple, "Jonny")
        run("request", "add", "Soup for the week", "--category", "food", home=jonny)
        maple("organizer", "remove", "Jonny", "--reason", "moved away")
        rows = maple.json("log", "--limit", "3")
        assert rows[1]["kind"] == "request.open" and rows[1]["author"] != rows[0]["author"]
        out = maple("log", "--limit", "3").output
    finally:
        stop(maple)
    assert "Jonny" in out, out


def test_a_lost_organizer_key_on_the_pods_machine_gives_no_way_forward(
    tmp_path: Path,
) -> None:
    """docs/operations.md (home folder table): if `organizer.key` is lost, "another
    organizer removes the lost key ... and adds a new one (`podlink organizer setup`, then
    `podlink organizer add`)". On the pod's machine every command then says only
    "Error: no key file at .../organizer.key" -- not what to do -- and `organizer setup`
    in that folder is refused ("holds a pod's folder already").
    Cause: cli/session.py:127-132 passes KeyFileError's text through as is.
    Fix: say the folder has no organizer key and name the way back (a new key with
    `podlink organizer setup --node URL --home OTHER-FOLDER`, added by another organizer)."""
    maple = make_pod(tmp_path, "Maple Street")
    try:
        start(maple)
        (maple.home / "organizer.key").unlink()
        out = maple("status", code=1).output
        setup = run("organizer", "setup", "--node", maple.url, home=maple.home, code=1)
    finally:
        stop(maple)
    assert "pod's folder already" in setup.output
    assert "podlink organizer" in out, out


def test_a_lost_laptops_earlier_need_still_reaches_a_pod_that_joins_after_the_removal(
    tmp_path: Path,
) -> None:
    """Tom's laptop shares a need, then is lost and its key removed. A pod that peers only
    afterwards receives the roster with the removal and still applies the need (signed
    while Tom was an organizer); the lost laptop can record nothing more."""
    maple, river = make_pod(tmp_path, "Maple Street"), make_pod(tmp_path, "Riverside")
    try:
        start(maple, river)
        tom = laptop(tmp_path, maple, "Tom")
        need = run_json("request", "add", "Ladder for the gutter", "--category", "tools",
                        "--share", "network", home=tom)["id"]  # fmt: skip
        maple("organizer", "remove", "Tom", "--reason", "lost laptop")
        refused = run("request", "add", "Another", "--category", "food", home=tom, code=1)
        assert "not an organizer" in refused.output
        river("peer", "join", maple.json("invite")["invite"])
        seen = eventually(lambda: [r for r in river.json("request", "list") if r["id"] == need])
        assert seen[0]["status"] == "open"
        shown = river.json("request", "show", need)
        assert [h["outcome"] for h in shown["history"]] == ["applied"]
    finally:
        stop(maple, river)
