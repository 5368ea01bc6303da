"""`podlink pod list` and `podlink pod update`: the directory of pods, and this pod's own
entry in it, travelling to peers and beyond. Real nodes, through the real CLI."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from tests.cli.conftest import Pair, Pod, eventually, make_pod, serve, stop, wait_up


def entry(pod: Pod, key: str) -> dict[str, Any] | None:
    return next((p for p in pod.json("pod", "list") if p["pod"] == key), None)


def test_the_directory_lists_this_pod_its_peers_and_pods_beyond(pair: Pair, tmp_path: Path) -> None:
    elm, oak = pair.elm, pair.oak
    pine = make_pod(tmp_path, "Pine")
    serve(pine)
    try:
        wait_up(pine)
        pine("peer", "join", oak.json("invite")["invite"])  # Elm — Oak — Pine
        listed = eventually(lambda: (rows := elm.json("pod", "list")) and len(rows) == 3 and rows,
                            30)  # fmt: skip
        assert [(p["pod"], p["relation"]) for p in listed] == [
            (elm.key, "this pod"), (oak.key, "peer"), (pine.key, "network")]  # fmt: skip
        assert listed[2]["name"] == "Pine"
        table = elm("pod", "list").stdout
        assert "this pod" in table and "network" in table and pine.key[:8] in table
    finally:
        stop(pine)


def test_an_update_reaches_the_peers_and_changes_only_what_is_given(pair: Pair) -> None:
    elm, oak = pair.elm, pair.oak
    sent = elm.json("pod", "update", "--zone", " Elm St & 3rd ", "--category", "food",
                    "--category", "transport", "--contact", "phone tree: 555 0100",
                    "--description", "Ten households on Elm St")  # fmt: skip
    assert (sent["kind"], sent["lane"], sent["pod"]) == ("pod.info", "network", elm.key)
    mine = entry(elm, elm.key)
    assert mine is not None
    assert {k: mine[k] for k in ("name", "zone", "categories", "contact", "description")} == {
        "name": "Elm", "zone": "Elm St & 3rd", "categories": ["food", "transport"],
        "contact": "phone tree: 555 0100", "description": "Ten households on Elm St",
    }  # fmt: skip
    assert {k: sent[k] for k in mine if k in sent and k != "pod"} == {
        k: mine[k] for k in mine if k in sent and k != "pod"}  # fmt: skip
    eventually(lambda: (e := entry(oak, elm.key)) and e["zone"] == "Elm St & 3rd", 20)

    elm("pod", "update", "--clear", "categories", "--name", "Elm Street")
    after = entry(elm, elm.key)
    assert after is not None
    assert (after["name"], after["categories"], after["zone"]) == ("Elm Street", [], "Elm St & 3rd")
    # The node says the new name everywhere, and the pod's folder keeps it for `serve`.
    assert elm.json("status")["name"] == "Elm Street"
    assert tomllib.loads((elm.home / "config.toml").read_text())["name"] == "Elm Street"
    eventually(lambda: (e := entry(oak, elm.key)) and e["name"] == "Elm Street", 20)


def test_update_refusals_sign_nothing(pair: Pair) -> None:
    elm = pair.elm
    before = elm.json("status")["events"]
    assert "nothing to change" in elm("pod", "update", code=2).output
    assert "--clear zone" in elm("pod", "update", "--zone", "x", "--clear", "zone", code=2).output
    assert "must not be empty" in elm("pod", "update", "--name", "  ", code=1).output
    assert "too long" in elm("pod", "update", "--zone", "z" * 500, code=1).output
    current = entry(elm, elm.key)
    assert current is not None
    same = elm("pod", "update", "--name", current["name"], code=1)
    assert "nothing to change" in same.output
    assert elm.json("status")["events"] == before


def test_pod_show_finds_by_name_or_key_and_says_what_it_cannot_find(pair: Pair) -> None:
    elm, oak = pair.elm, pair.oak
    eventually(lambda: entry(elm, oak.key), 20)
    by_key = elm.json("pod", "show", oak.key[:6])
    assert (by_key["pod"], by_key["relation"]) == (oak.key, "peer")
    assert elm.json("pod", "show", "oak")["pod"] == oak.key  # a name, any case
    assert "no pod called 'Nowhere'" in elm("pod", "show", "Nowhere", code=1).output
