"""`podlink organizer`: a new organizer's laptop, adding and removing organizers, and the
roster travelling to a peer pod: succession through the real CLI against real nodes."""

from __future__ import annotations

import stat
import tomllib
from pathlib import Path
from typing import Any

import pytest

from tests.cli.conftest import (
    Pair,
    Pod,
    eventually,
    make_pod,
    run,
    run_json,
    running,
    serve,
    stop,
    wait_up,
)


def laptop(tmp_path: Path, pod: Pod, name: str) -> tuple[Path, dict[str, Any]]:
    """A new organizer's folder set up against ``pod``'s node, and setup's JSON."""
    home = tmp_path / f"{name.lower()}-laptop"
    data = run_json("organizer", "setup", "--node", pod.url, "--name", name, home=home)
    return home, data


def active(pod: Pod) -> dict[str, str]:
    """Active organizers' keys to names."""
    return {r["key"]: r["name"] for r in pod.json("organizer", "list")}


def test_a_new_organizer_joins_from_their_laptop_and_peers_accept_them(
    pair: Pair, tmp_path: Path
) -> None:
    elm, oak = pair.elm, pair.oak
    home, data = laptop(tmp_path, elm, "Jonny")
    assert data["pod"] == elm.key and data["node"] == elm.url and data["name"] == "Elm"
    assert data["add"] == f"podlink organizer add Jonny --key {data['key']}"
    # The folder: its own key (private), the node's address and the pod it is; no node key.
    assert stat.S_IMODE((home / "organizer.key").stat().st_mode) == 0o600
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    assert not (home / "node.key").exists() and not (home / "ledger.db").exists()
    config = tomllib.loads((home / "config.toml").read_text())
    assert (config["node"], config["pod"]) == (elm.url, elm.key)
    assert run_json("organizer", "key", home=home) == {"key": data["key"]}

    # Not an organizer yet: the node refuses, and the one line says what to do about it.
    refused = run("status", home=home, code=1)
    assert f"podlink organizer add NAME --key {data['key']}" in refused.output
    assert len(refused.output.strip().splitlines()) == 1

    added = elm.json("organizer", "add", "Jonny", "--key", data["key"])
    assert (added["kind"], added["key"], added["name"]) == ("roster.add", data["key"], "Jonny")
    assert active(elm)[data["key"]] == "Jonny"
    assert run_json("status", home=home)["pod"] == elm.key

    # What Jonny records from the laptop is the pod's, and a peer pod takes it as such.
    need = run_json("request", "add", "Ride to the clinic", "--category", "transport",
                    "--share", "network", home=home)  # fmt: skip
    shown = elm.json("request", "show", need["id"])
    assert shown["author"] == data["key"] and shown["pod"] == elm.key
    eventually(lambda: any(r["id"] == need["id"] for r in oak.json("request", "list")), 20)


def test_list_marks_this_folders_key_and_shows_past_organizers(pair: Pair, tmp_path: Path) -> None:
    elm = pair.elm
    home, data = laptop(tmp_path, elm, "Ruth")
    elm("organizer", "add", "Ruth", "--key", data["key"])
    mine = run("organizer", "list", home=home).output
    ruth = next(line for line in mine.splitlines() if line.startswith("Ruth"))
    assert ruth.rstrip().endswith("you") and data["key"][:8] in ruth
    founder = elm("organizer", "list").output
    assert "you" not in next(line for line in founder.splitlines() if line.startswith("Ruth"))

    elm("organizer", "remove", "ruth", "--reason", "moved away")  # any case
    assert data["key"] not in active(elm)
    past = elm.json("organizer", "list", "--all")
    gone = [r for r in past if r["key"] == data["key"]]
    assert len(gone) == 1 and not gone[0]["active"] and gone[0]["until_ts"] is not None
    assert "UNTIL" in elm("organizer", "list", "--all").output


def test_a_removed_organizer_can_no_longer_act(pair: Pair, tmp_path: Path) -> None:
    elm = pair.elm
    home, data = laptop(tmp_path, elm, "Sam")
    elm("organizer", "add", "Sam", "--key", data["key"])
    run("request", "add", "Soup for the week", "--category", "food", home=home)
    removed = elm.json("organizer", "remove", data["key"][:10], "--reason", "lost laptop")
    assert (removed["kind"], removed["key"], removed["reason"]) == (
        "roster.remove", data["key"], "lost laptop")  # fmt: skip
    refused = run("request", "add", "Another", "--category", "food", home=home, code=1)
    assert "organizer" in refused.output
    assert data["key"] not in active(elm)


def test_succession_the_founder_hands_over_and_leaves(tmp_path: Path) -> None:
    """A pod of its own (the founder's key goes away): the co-organizer removes the
    founder, who can then do nothing; the last organizer cannot be removed."""
    birch = make_pod(tmp_path, "Birch")
    serve(birch)
    try:
        wait_up(birch)
        founder = birch.json("organizer", "list")
        assert len(founder) == 1
        only = run("organizer", "remove", founder[0]["key"][:8], home=birch.home, code=1)
        assert "only organizer" in only.output

        home, data = laptop(tmp_path, birch, "Ada")
        birch("organizer", "add", "Ada", "--key", data["key"])
        run("organizer", "remove", founder[0]["key"][:8], home=home)
        now = run_json("organizer", "list", home=home)
        assert [(r["key"], r["name"]) for r in now] == [(data["key"], "Ada")]
        assert "organizer" in birch("status", code=1).output
        # Ada, now alone, cannot remove herself either.
        alone = run("organizer", "remove", "Ada", "--yes", home=home, code=1)
        assert "only organizer" in alone.output
    finally:
        stop(birch)


def test_removing_your_own_key_needs_yes(pair: Pair, tmp_path: Path) -> None:
    elm = pair.elm
    home, data = laptop(tmp_path, elm, "Lee")
    elm("organizer", "add", "Lee", "--key", data["key"])
    asked = run("organizer", "remove", "Lee", home=home, code=1)
    assert "--yes" in asked.output and data["key"] in active(elm)
    run("organizer", "remove", "Lee", "--yes", home=home)
    assert data["key"] not in active(elm)


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (("Kim", "--key", "short"), "43 characters"),
        (("Kim", "--key", "A" * 44), "43 characters"),
        (("  ", "--key", "A" * 43), "name"),
        (("K" * 300, "--key", "A" * 43), "too long"),
    ],
)
def test_add_refuses_bad_input_before_signing(
    pair: Pair, args: tuple[str, ...], words: str
) -> None:
    before = pair.elm.json("status")["events"]
    result = pair.elm("organizer", "add", *args, code=1)
    assert words in result.output and len(result.output.strip().splitlines()) == 1
    assert pair.elm.json("status")["events"] == before


def test_add_refuses_the_pods_own_key_and_an_organizer_already_in_office(pair: Pair) -> None:
    elm = pair.elm
    own = elm("organizer", "add", "Node", "--key", elm.key, code=1)
    assert "pod's own key" in own.output
    founder = next(iter(active(elm)))
    again = elm("organizer", "add", "Again", "--key", founder, code=1)
    assert "organizer already" in again.output


def test_remove_names_what_it_cannot_find(pair: Pair, tmp_path: Path) -> None:
    elm = pair.elm
    missing = elm("organizer", "remove", "Nobody", code=1)
    assert "no organizer called 'Nobody'" in missing.output
    # Two organizers of one name: the command asks for a key instead of guessing.
    keys = []
    for i in range(2):
        _, data = laptop(tmp_path / str(i), elm, "Twin")
        elm("organizer", "add", "Twin", "--key", data["key"])
        keys.append(data["key"])
    both = elm("organizer", "remove", "twin", code=1)
    assert "2 organizers match" in both.output
    assert set(keys) <= set(active(elm))


def test_setup_refuses_and_leaves_nothing_behind(pair: Pair, tmp_path: Path) -> None:
    home = tmp_path / "laptop"
    # A node that is not there.
    down = run("organizer", "setup", "--node", "http://127.0.0.1:9", home=home, code=1)
    assert "cannot reach the node" in down.output and not home.exists()
    # A node that is another pod than the one the organizer was told.
    wrong = run("organizer", "setup", "--node", pair.elm.url, "--pod", pair.oak.key,
                home=home, code=1)  # fmt: skip
    assert "not " + pair.oak.key[:8] in wrong.output and not home.exists()
    bad = run("organizer", "setup", "--node", "elm.example", home=home, code=1)
    assert "--node must be a URL" in bad.output and not home.exists()
    # A folder that holds a pod already is left alone.
    held = run("organizer", "setup", "--node", pair.elm.url, home=pair.oak.home, code=1)
    assert "already" in held.output
    assert not (pair.oak.home / "organizer.key.tmp").exists()


def test_a_laptop_folder_signs_for_its_own_pod_only(pair: Pair, tmp_path: Path) -> None:
    """The pod key written at setup is what requests sign: pointed at another pod's node,
    the folder is refused there (it does not re-learn the pod from whoever answers)."""
    elm, oak = pair.elm, pair.oak
    home, data = laptop(tmp_path, elm, "Pat")
    elm("organizer", "add", "Pat", "--key", data["key"])
    moved = run("status", "--node", oak.url, home=home, code=1)
    assert "signed for the pod" in moved.output


def test_serve_refuses_a_laptop_folder(pair: Pair, tmp_path: Path) -> None:
    home, _ = laptop(tmp_path, pair.elm, "Max")
    result = run("serve", home=home, code=1)
    assert "organizer's folder" in result.output and pair.elm.url in result.output


def test_config_node_and_pod_are_checked(tmp_path: Path) -> None:
    home = tmp_path / "laptop"
    home.mkdir()
    (home / "config.toml").write_text('name = "x"\nnode = "elm.example"\n')
    assert "node must be a URL" in run("status", home=home, code=1).output
    (home / "config.toml").write_text('name = "x"\npod = "not-a-key"\n')
    assert "pod must be a pod's key" in run("status", home=home, code=1).output


def test_a_pod_whose_only_organizer_lost_their_key_adds_a_new_one_with_its_node_key(
    tmp_path: Path,
) -> None:
    cedar = make_pod(tmp_path, "Cedar")
    with running(cedar):
        (cedar.home / "organizer.key").unlink()
        lost = cedar("status", code=1)
        assert "organizer setup" in lost.output and "organizer add" in lost.output
        home, data = laptop(tmp_path, cedar, "Nia")
        added = cedar.json("organizer", "add", "Nia", "--key", data["key"])
        assert added["key"] == data["key"]
        assert run_json("status", home=home)["pod"] == data["pod"]  # Nia acts for the pod
        log = run_json("log", home=home)
        assert any(e["kind"] == "roster.add" and e["author"] == data["pod"] for e in log)
        # Other commands in that folder still say the key is missing: only adding one
        # falls back to the pod's key.
        assert "no organizer key" in cedar("request", "list", code=1).output
