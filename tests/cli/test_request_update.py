"""`podlink request update`: a need becomes urgent, gets a date or new details; the pods
it was shared with see the change; only its own pod may change it. Real nodes."""

from __future__ import annotations

from tests.cli.conftest import Pair, eventually


def test_the_change_reaches_the_pods_it_was_shared_with(pair: Pair) -> None:
    elm, oak = pair.elm, pair.oak
    need = elm.json("request", "add", "Update: soup for Ruth", "--category", "food",
                    "--share", "network", "--details", "one pot")  # fmt: skip
    eventually(lambda: any(r["id"] == need["id"] for r in oak.json("request", "list")), 20)
    changed = elm.json("request", "update", need["id"][:10], "--urgency", "urgent",
                       "--needed-by", "2031-01-02", "--details", "two pots")  # fmt: skip
    assert changed["changed"] == {"urgency": "urgent", "needed_by": "2031-01-02",
                                  "details": "two pots"}  # fmt: skip
    shown = elm.json("request", "show", need["id"])
    assert (shown["urgency"], shown["needed_by"], shown["details"], shown["title"]) == (
        "urgent", "2031-01-02", "two pots", "Update: soup for Ruth")  # fmt: skip
    step = next(h for h in shown["history"] if h["id"] == changed["id"])
    assert (step["kind"], step["outcome"]) == ("request.update", "applied")
    eventually(lambda: oak.json("request", "show", need["id"])["urgency"] == "urgent", 20)
    line = elm("request", "update", need["id"], "--title", "Update: soup for Ruth and Bo").stdout
    assert "title 'Update: soup for Ruth and Bo'" in line


def test_only_the_requests_own_pod_changes_it_while_it_is_open(pair: Pair) -> None:
    elm, oak = pair.elm, pair.oak
    need = elm.json("request", "add", "Update: a ladder", "--category", "tools",
                    "--share", "network")  # fmt: skip
    eventually(lambda: any(r["id"] == need["id"] for r in oak.json("request", "list")), 20)
    theirs = oak("request", "update", need["id"], "--urgency", "high", code=1)
    assert "only Elm" in theirs.output and "change" in theirs.output
    elm("request", "cancel", need["id"])
    closed = elm("request", "update", need["id"], "--urgency", "high", code=1)
    assert "already cancelled" in closed.output


def test_nothing_to_change_signs_nothing_and_shared_text_is_checked(pair: Pair) -> None:
    elm = pair.elm
    need = elm.json("request", "add", "Update: a ride", "--category", "transport",
                    "--share", "network")  # fmt: skip
    before = elm.json("status")["events"]
    assert "nothing to change" in elm("request", "update", need["id"], code=2).output
    same = elm("request", "update", need["id"], "--category", "transport", code=1)
    assert "nothing to change" in same.output
    assert "too long" in elm("request", "update", need["id"], "--title", "t" * 300,
                             code=1).output  # fmt: skip
    assert elm.json("status")["events"] == before
    warned = elm("request", "update", need["id"], "--details", "call me on 555 0134 0000")
    assert "phone number" in warned.stderr
    assert elm.json("request", "show", need["id"])["details"] == "call me on 555 0134 0000"
