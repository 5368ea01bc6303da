"""`podlink hours`: time-bank hours given and received, inside the pod and across pods,
with other pods' members never named. Elm and Oak, real nodes."""

from __future__ import annotations

from typing import Any

from tests.cli.conftest import Pair, Pod, eventually


def fulfilled(pod: Pod, request_id: str) -> bool:
    return any(r["id"] == request_id and r["status"] == "fulfilled"
               for r in pod.json("request", "list"))  # fmt: skip


def seen(pod: Pod, request_id: str) -> bool:
    return any(r["id"] == request_id for r in pod.json("request", "list"))


def test_hours_given_and_received_here_and_across_pods(pair: Pair) -> None:
    elm, oak = pair.elm, pair.oak
    assert "No hours recorded yet" in elm("hours").stdout
    elm("member", "add", "Ada Hours", "--needs", "food")
    elm("member", "add", "Ben Hours", "--can", "food")
    oak("member", "add", "Cy Hours", "--can", "transport")

    own = elm.json("request", "add", "Hours: soup", "--category", "food", "--for", "Ada Hours")
    elm("claim", own["id"], "--by", "Ben Hours")  # our own: accepted at once
    elm("fulfil", own["id"], "--hours", "2")

    asked = elm.json("request", "add", "Hours: a ride", "--category", "transport",
                     "--for", "Ada Hours", "--share", "network")  # fmt: skip
    eventually(lambda: seen(oak, asked["id"]), 20)
    theirs = oak.json("claim", asked["id"], "--by", "Cy Hours")["id"]
    eventually(lambda: elm.json("request", "show", asked["id"])["claims"], 20)
    elm("accept", theirs)
    elm("fulfil", asked["id"], "--hours", "1.5")

    other = oak.json("request", "add", "Hours: a ladder", "--category", "tools",
                     "--share", "network")  # fmt: skip
    eventually(lambda: seen(elm, other["id"]), 20)
    ours = elm.json("claim", other["id"], "--by", "Ben Hours")["id"]
    eventually(lambda: oak.json("request", "show", other["id"])["claims"], 20)
    oak("accept", ours)
    oak("fulfil", other["id"], "--hours", "3")
    no_hours = elm.json("request", "add", "Hours: none kept", "--category", "food")
    elm("fulfil", no_hours["id"])  # help that keeps no score counts for nothing
    eventually(lambda: fulfilled(elm, other["id"]) and fulfilled(oak, asked["id"]), 20)

    mine: dict[str, Any] = elm.json("hours")
    assert mine["total"] == 6.5
    assert [(p["name"], p["hours"], p["here"], p["away"]) for p in mine["given"]] == [
        ("Ben Hours", 5.0, 2.0, 3.0)]  # fmt: skip
    assert [(p["name"], p["here"], p["away"]) for p in mine["received"]] == [
        ("Ada Hours", 2.0, 1.5)]  # fmt: skip
    assert [(p["name"], p["to_us"], p["from_us"]) for p in mine["pods"]] == [("Oak", 1.5, 3.0)]

    theirs_view = oak.json("hours")
    assert theirs_view["total"] == 4.5
    assert [(p["name"], p["away"]) for p in theirs_view["given"]] == [("Cy Hours", 1.5)]
    assert [(p["name"], p["to_us"], p["from_us"]) for p in theirs_view["pods"]] == [
        ("Elm", 3.0, 1.5)]  # fmt: skip
    shown = oak("hours").stdout
    assert "Ada" not in shown and "Ben" not in shown  # another pod's members: never named
    assert "Cy Hours" in shown and "In all: 4.5 hours." in shown
