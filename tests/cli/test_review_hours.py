"""Review of `podlink hours` (GET /v1/hours) and of the --needed-by time frames: real
`podlink serve` nodes on 127.0.0.1, real signatures; dates with a fixed "today"."""

from __future__ import annotations

import datetime as dt
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from podlink.cli import params
from podlink.cli.params import NeededBy
from podlink.cli.session import Target
from tests.cli.conftest import Pair, Pod, eventually, make_pod, running


def seen(pod: Pod, request_id: str) -> bool:
    return any(r["id"] == request_id for r in pod.json("request", "list"))


def status_of(pod: Pod, request_id: str) -> str | None:
    return next((r["status"] for r in pod.json("request", "list") if r["id"] == request_id),
                None)  # fmt: skip


def api_hours(pod: Pod) -> list[dict[str, Any]]:
    """GET /v1/hours, signed by the pod's organizer key."""
    return Target(pod.home).call(lambda s: s.get("/v1/hours"))


def fulfilled_with(pod: Pod, title: str, hours: str) -> str:
    """A request of the pod's own, met by the pod itself, with ``hours``."""
    req = pod.json("request", "add", title, "--category", "food")
    pod("fulfil", req["id"], "--hours", hours)
    return str(req["id"])


@pytest.fixture()
def lone(tmp_path: Path) -> Iterator[Pod]:
    """One pod of its own, served for the test: its hours start at nothing."""
    pod = make_pod(tmp_path, "Ash")
    with running(pod):
        yield pod


def needed_by_on(monkeypatch: pytest.MonkeyPatch, today: dt.date, text: str) -> dt.date:
    """--needed-by TEXT converted as if the CLI ran on ``today``."""

    class Fixed(dt.date):
        @classmethod
        def today(cls) -> Fixed:
            return cls(today.year, today.month, today.day)

    monkeypatch.setattr(params, "dt", types.SimpleNamespace(date=Fixed, timedelta=dt.timedelta))
    return dt.date.fromisoformat(NeededBy().convert(text, None, None))


# ---------------------------------------------------------------- hours: arithmetic


def test_json_hours_add_up_without_floating_point_noise(lone: Pod) -> None:
    """BUG: `podlink hours --json` sums binary floats (cli/hours.py:30,32,37,46), so 0.1 h and
    0.2 h (6 and 12 minutes) are reported as 0.30000000000000004 hours, in the total and
    in the member's row, while the text output says 0.3. A time bank's ledger must add up
    exactly: scripts comparing balances see 0.30000000000000004 != 0.3."""
    fulfilled_with(lone, "Six minutes", "0.1")
    fulfilled_with(lone, "Twelve minutes", "0.2")
    data = lone.json("hours")
    assert "In all: 0.3 hours." in lone("hours").stdout
    assert data["given"][0]["hours"] == 0.3
    assert data["total"] == 0.3


def test_text_totals_do_not_drop_digits(lone: Pod) -> None:
    """BUG: the text output formats hours with `:g` (cli/hours.py:85,90,92), which keeps
    6 significant digits: 10,000.25 hours recorded (each fulfilment may carry up to 1000)
    are printed "10000.2", and the JSON says 10000.25; from 1,000,000 hours it prints
    "1e+06". The table and the "In all" line must show the hours that were recorded."""
    for i in range(10):
        fulfilled_with(lone, f"A thousand hours {i}", "1000")
    fulfilled_with(lone, "A quarter hour", "0.25")
    assert lone.json("hours")["total"] == 10000.25
    shown = lone("hours").stdout
    assert "In all: 10000.25 hours." in shown, shown


# ---------------------------------------------------------------- hours: who and where


def test_a_third_pods_helper_is_not_reported_as_the_asking_pod_itself(tmp_path: Path) -> None:
    """BUG: GET /v1/hours says a need was met by its own pod (helper_pod null) when the
    node holds the request's acceptance but not the accepted claim. Elm (peered with Oak
    and Pine) shares a need in `peers`; Oak's claim, in Oak's `peers` lane, never reaches
    Pine, but Elm's accept and fulfil do (the protocol: "an answer ... reaches every reader
    of the request"). Pine then serves {pod: Elm, helper_pod: null, by_member: null} for
    Oak's help: ledger/queries.py:256 LEFT JOINs the claim row, and a missing row is
    indistinguishable from "no accepted claim" (cli/hours.py:28 reads it as "the pod that
    asked met the need itself"). The row should say a claim was accepted (e.g. carry
    `accepted_claim`, and the helper as unknown) rather than credit the asking pod."""
    elm, oak, pine = (make_pod(tmp_path, n) for n in ("Elm", "Oak", "Pine"))
    with running(elm, oak, pine):
        oak("peer", "join", elm.json("invite")["invite"])
        pine("peer", "join", elm.json("invite")["invite"])
        need = elm.json("request", "add", "Peers: a ride", "--category", "transport",
                        "--share", "peers")["id"]  # fmt: skip
        eventually(lambda: seen(oak, need) and seen(pine, need), 20)
        claim = oak.json("claim", need)["id"]
        eventually(lambda: elm.json("request", "show", need)["claims"], 20)
        elm("accept", claim)
        elm("fulfil", need, "--hours", "2")
        eventually(lambda: status_of(pine, need) == "fulfilled", 20)
        assert pine.json("request", "show", need)["accepted_claim"] == claim
        assert "No hours recorded yet" in pine("hours").stdout  # not Pine's: fine
        row = next(r for r in api_hours(pine) if r["request"] == need)
        assert row["helper_pod"] is not None or row.get("accepted_claim") == claim, row


def test_declined_helper_gets_no_hours_and_another_pods_members_stay_unnamed(
    pair: Pair,
) -> None:
    """Pins: a need whose accepted claim (Oak's) was declined and that the pod then met
    itself counts for the pod, not for Oak; and Oak's member ids never appear in Elm's
    `hours --json` (only Oak's pod key, under "pods")."""
    elm, oak = pair.elm, pair.oak
    elm("member", "add", "Dee Review", "--needs", "food")
    cy = oak.json("member", "add", "Cy Review", "--can", "food")["id"]
    asked = elm.json("request", "add", "Review: soup", "--category", "food",
                     "--for", "Dee Review", "--share", "network")["id"]  # fmt: skip
    eventually(lambda: seen(oak, asked), 20)
    theirs = oak.json("claim", asked, "--by", "Cy Review")["id"]
    eventually(lambda: elm.json("request", "show", asked)["claims"], 20)
    elm("accept", theirs)
    elm("decline", theirs, "--reason", "could not come")
    elm("fulfil", asked, "--hours", "1.5")
    helped = oak.json("request", "add", "Review: ladder", "--category", "tools",
                      "--share", "network")["id"]  # fmt: skip
    eventually(lambda: seen(elm, helped), 20)
    ours = elm.json("claim", helped)["id"]
    eventually(lambda: oak.json("request", "show", helped)["claims"], 20)
    oak("accept", ours)
    oak("fulfil", helped, "--hours", "2")
    eventually(lambda: status_of(elm, helped) == "fulfilled", 20)

    mine = elm.json("hours")
    assert mine["total"] == 3.5
    assert [(p["name"], p["here"], p["away"]) for p in mine["received"]] == [
        ("Dee Review", 1.5, 0.0)]  # fmt: skip
    assert [(p["name"], p["to_us"], p["from_us"]) for p in mine["pods"]] == [("Oak", 0.0, 2.0)]
    assert cy not in str(mine) and "Cy Review" not in elm("hours").stdout


# ---------------------------------------------------------------- --needed-by


def test_within_1_2_days_the_domains_own_time_frame_is_accepted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """BUG: NeededBy's docstring and the commit cite DOMAIN.md's "within 1-2 days" as the
    time frame people say, but IN_DAYS (cli/params.py:70) takes one number only, so
    `--needed-by "within 1-2 days"` (and "within 1–2 days", the en dash DOMAIN.md prints)
    is a usage error. Expected: the later day of the range (a deadline: by the day after
    tomorrow)."""
    today = dt.date(2026, 11, 25)  # a Wednesday
    for text in ("within 1-2 days", "within 1\u20132 days"):
        assert needed_by_on(monkeypatch, today, text) == today + dt.timedelta(days=2)


def test_update_help_promises_anytime_when_left_out_but_the_date_stays(pair: Pair) -> None:
    """BUG: `request update --needed-by` shares NEEDED_BY_HELP with `request add`
    (cli/aid.py:36,232): "(leave it out for 'anytime')". On update, leaving it out keeps
    the old date (every RequestUpdated field is "unchanged" when nil, docs/protocol.md),
    and no value means "anytime" ('anytime' itself is refused), so the help promises what
    the command cannot do. The update help should say the date stays, and that a need
    cannot go back to 'anytime'."""
    elm = pair.elm
    need = elm.json("request", "add", "Review: by tomorrow", "--category", "food",
                    "--needed-by", "tomorrow")["id"]  # fmt: skip
    elm("request", "update", need, "--urgency", "high")
    assert elm.json("request", "show", need)["needed_by"] is not None  # the date stayed
    assert "anytime" in " ".join(elm("request", "add", "--help").stdout.split())
    elm("request", "update", need, "--needed-by", "anytime", code=2)
    shown = " ".join(elm("request", "update", "--help").stdout.split())
    assert "leave it out for 'anytime'" not in shown


def test_this_week_and_next_week_on_a_sunday_and_a_monday(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Pins the week boundaries docs/cli.md gives ("this week": by Sunday; "next week":
    by the Sunday after): on a Sunday "this week" is today, and "in 0 days" is today."""
    sunday, monday = dt.date(2026, 11, 29), dt.date(2026, 11, 30)
    assert needed_by_on(monkeypatch, sunday, "this week") == sunday
    assert needed_by_on(monkeypatch, sunday, "next week") == dt.date(2026, 12, 6)
    assert needed_by_on(monkeypatch, sunday, "sunday") == dt.date(2026, 12, 6)
    assert needed_by_on(monkeypatch, monday, "this week") == dt.date(2026, 12, 6)
    assert needed_by_on(monkeypatch, monday, "next week") == dt.date(2026, 12, 13)
    assert needed_by_on(monkeypatch, monday, "in 0 days") == monday
