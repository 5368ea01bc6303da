"""`podlink member update`: a member's details change (a new phone, new needs), locked with
their own key, in the pod lane only: through the real CLI against real nodes."""

from __future__ import annotations

from typing import Any

from tests.cli.conftest import Pair, Pod, eventually


def member(pod: Pod, member_id: str) -> dict[str, Any]:
    return next(m for m in pod.json("member", "list") if m["id"] == member_id)


def events(pod: Pod) -> int:
    return pod.json("status")["events"]


def test_only_what_is_given_changes(pair: Pair) -> None:
    elm = pair.elm
    added = elm.json("member", "add", "Agatha", "--contact", "555 0134", "--prefers", "phone",
                     "--needs", "medicine", "--can", "translation", "--language", "Polish",
                     "--notes", "fourth floor")  # fmt: skip
    before = member(elm, added["id"])
    changed = elm.json("member", "update", "agatha", "--contact", " 555 0177 ")
    assert (changed["kind"], changed["lane"], changed["member"]) == (
        "member.update", "pod", added["id"])  # fmt: skip
    after = member(elm, added["id"])
    assert after["contact"] == "555 0177" == changed["contact"]
    keep = ("name", "prefers", "can", "needs", "role", "languages", "notes", "joined_ts")
    assert {k: after[k] for k in keep} == {k: before[k] for k in keep}
    assert after["updated_ts"] > before["updated_ts"]
    # The summary is what was recorded.
    assert {k: changed[k] for k in keep[:-1]} == {k: after[k] for k in keep[:-1]}


def test_lists_are_replaced_cleared_and_the_role_set(pair: Pair) -> None:
    elm = pair.elm
    added = elm.json("member", "add", "Jonny", "--can", "transport", "--needs", "food")
    elm("member", "update", added["id"][:10], "--can", "transport", "--can", "translation",
        "--co-organizer", "--clear", "needs")  # fmt: skip
    now = member(elm, added["id"])
    assert (now["can"], now["needs"], now["role"]) == (
        ["transport", "translation"], [], "co-organizer")  # fmt: skip
    elm("member", "update", "Jonny", "--participant")
    assert member(elm, added["id"])["role"] == "participant"


def test_a_new_name_finds_them_and_the_old_one_no_longer_does(pair: Pair) -> None:
    elm = pair.elm
    added = elm.json("member", "add", "Zofia K")
    elm("member", "update", "Zofia K", "--name", "Zofia Kowalska")
    assert member(elm, added["id"])["name"] == "Zofia Kowalska"
    assert "no member called 'Zofia K'" in elm("member", "update", "Zofia K", "--notes", "x",
                                               code=1).output  # fmt: skip
    elm("member", "update", "zofia kowalska", "--notes", "bakes")
    assert member(elm, added["id"])["notes"] == "bakes"


def test_nothing_to_change_signs_nothing(pair: Pair) -> None:
    elm = pair.elm
    elm.json("member", "add", "Ruth", "--contact", "555 0101")
    count = events(elm)
    assert "nothing to change" in elm("member", "update", "Ruth", code=2).output
    same = elm("member", "update", "Ruth", "--contact", "555 0101", code=1)
    assert "nothing to change" in same.output
    both = elm("member", "update", "Ruth", "--contact", "1", "--clear", "contact", code=2)
    assert "--clear contact" in both.output
    long = elm("member", "update", "Ruth", "--notes", "n" * 5000, code=1)
    assert "--notes is too long" in long.output
    assert events(elm) == count


def test_a_forgotten_member_cannot_be_updated(pair: Pair) -> None:
    elm = pair.elm
    added = elm.json("member", "add", "Gone Soon")
    elm("member", "forget", added["id"], "--yes")
    result = elm("member", "update", added["id"], "--contact", "555", code=1)
    assert "forgotten" in result.output and len(result.output.strip().splitlines()) == 1


def test_the_new_details_stay_in_the_pod_and_are_encrypted_at_rest(pair: Pair) -> None:
    elm, oak = pair.elm, pair.oak
    added = elm.json("member", "add", "Hidden Person", "--contact", "555 0000")
    elm("member", "update", added["id"], "--contact", "Flat 9 Quietlane 4471",
        "--notes", "door code 4471")  # fmt: skip
    elm("request", "add", "A shared need", "--category", "food", "--share", "network")
    # The peer has what was shared after the update (so it synced past it), and nothing
    # of the member or of their update.
    eventually(lambda: any(r["title"] == "A shared need" for r in oak.json("request", "list")))
    peer_log = oak("log", "--json", "--limit", "5000").stdout
    assert added["id"] not in peer_log and "member.update" not in peer_log
    assert "Quietlane" not in peer_log
    # On disk, the pod's database holds the new details only inside the member's box.
    for path in elm.home.glob("ledger.db*"):
        assert b"Quietlane" not in path.read_bytes(), path.name
