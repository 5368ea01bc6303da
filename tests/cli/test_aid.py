"""Members, needs, offers, claims and matches through the CLI, across real peered nodes."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import pytest

from tests.cli.conftest import Network, Pod, eventually
from tests.cli.test_pod import one_error_line


def status_on(pod: Pod, request_id: str) -> str | None:
    found = [r for r in pod.json("request", "list") if r["id"] == request_id]
    return found[0]["status"] if found else None


def on_all(net: Network, request_id: str, status: str, *pods: Pod) -> None:
    for pod in pods or (net.maple, net.riverside, net.hilltop):
        eventually(lambda p=pod: status_on(p, request_id) == status)


# ---------------------------------------------------------------- members


def test_member_add_list_forget(network: Network) -> None:
    maple = network.maple
    added = maple.json("member", "add", "Marta", "--contact", "555 0101", "--prefers", "text",
                       "--can", "translation", "--can", "skills", "--needs", "food",
                       "--co-organizer")  # fmt: skip
    assert len(added["id"]) == 43 and added["role"] == "co-organizer"
    listed = {m["id"]: m for m in maple.json("member", "list")}
    assert listed[added["id"]]["can"] == ["translation", "skills"]
    assert listed[added["id"]]["contact"] == "555 0101"
    table = maple("member", "list").stdout
    assert added["id"][:8] in table and "Marta" in table and added["id"] not in table

    maple("member", "forget", "marta")  # by name, any case
    assert added["id"] not in {m["id"] for m in maple.json("member", "list")}
    gone = maple.json("member", "list", "--all")
    assert [m["status"] for m in gone if m["id"] == added["id"]] == ["forgotten"]
    assert "Marta" not in maple("member", "list", "--all").stdout
    assert "forgotten" in one_error_line(maple("member", "forget", added["id"][:10], code=1))


def test_member_details_never_leave_the_pod(network: Network) -> None:
    network.maple("member", "add", "Zbigniew Private", "--contact", "zb@example.org")
    network.riverside("sync")
    for pod in (network.riverside, network.hilltop):
        assert "Zbigniew" not in pod("log", "--json", "--limit", "5000").stdout
        assert all(m["name"] != "Zbigniew Private" for m in pod.json("member", "list"))


def test_member_errors(network: Network) -> None:
    maple = network.maple
    line = one_error_line(maple("request", "add", "x", "--category", "food", "--for",
                                "Nobody Atall", code=1))  # fmt: skip
    assert "no member called 'Nobody Atall'" in line
    maple("member", "add", "Sam")
    maple("member", "add", "Sam")
    line = one_error_line(maple("offer", "add", "x", "--category", "food", "--by", "sam",
                                code=1))  # fmt: skip
    assert "2 members are called" in line
    assert maple("member", "add", "X", "--prefers", "pigeon", code=2).exit_code == 2
    # details are sealed, so the node cannot check them: the CLI does, before signing
    assert "the name must not be empty" in one_error_line(maple("member", "add", " ", code=1))
    assert "--contact is too long (at most 200" in one_error_line(
        maple("member", "add", "Long", "--contact", "9" * 201, code=1)
    )
    assert "the title must not be empty" in one_error_line(
        maple("request", "add", "  ", "--category", "food", code=1)
    )


# ---------------------------------------------------------------- requests


def test_request_add_list_show_cancel(network: Network) -> None:
    maple = network.maple
    maple("member", "add", "Olga")
    made = maple.json("request", "add", "Firewood for the stove", "--category", "utilities",
                      "--urgency", "high", "--for", "Olga", "--details", "two bags",
                      "--needed-by", "2030-01-31")  # fmt: skip
    rid = made["id"]
    assert made["share"] == "pod" and made["status"] == "open" and made["for_member"]
    rows = {r["id"]: r for r in maple.json("request", "list", "--category", "utilities")}
    row = rows[rid]
    for key in ("id", "pod", "pod_name", "title", "category", "urgency", "status", "share"):
        assert key in row
    assert (row["pod_name"], row["share"], row["urgency"]) == ("Maple Street", "pod", "high")
    table = maple("request", "list").stdout
    assert rid[:8] in table and max(map(len, table.splitlines())) <= 80

    shown = maple.json("request", "show", rid[:6])
    assert shown["id"] == rid and shown["needed_by"] == "2030-01-31"
    assert shown["claims"] == [] and shown["history"][0]["kind"] == "request.open"
    human = maple("request", "show", rid[:6]).stdout
    assert "Olga" in human and "History" in human

    maple("request", "cancel", rid[:8], "--reason", "found some")
    assert status_on(maple, rid) == "cancelled"
    assert rid not in {r["id"] for r in maple.json("request", "list", "--status", "open")}
    listed = maple("request", "list").stdout.splitlines()
    states = ("open", "accepted", "fulfilled", "cancelled")
    statuses = [next(w for w in reversed(line.split()) if w in states) for line in listed[2:]]
    assert "cancelled" in statuses  # and open and accepted ones come first:
    assert statuses == sorted(statuses, key=lambda s: s not in ("open", "accepted"))
    assert "already cancelled" in one_error_line(maple("request", "cancel", rid, code=1))


@pytest.mark.parametrize("category", ["Food", "food stuff", "x" * 40, "émigré", "-x"])
def test_bad_category_is_a_usage_error(network: Network, category: str) -> None:
    result = network.maple("request", "add", "T", "--category", category, code=2)
    assert "is not a category" in result.stderr and "lowercase" in result.stderr


def test_new_categories_are_welcome_and_typos_get_a_hint(network: Network) -> None:
    made = network.maple.json("request", "add", "Seedlings", "--category", "gardening")
    assert made["category"] == "gardening"
    typo = network.maple("request", "add", "Pills", "--category", "medecine")
    assert "did you mean 'medicine'" in typo.stderr
    assert "did you mean 'food'" in network.maple("request", "add", "T", "--category", "Food",
                                                  code=2).stderr  # fmt: skip


def test_bad_values_say_what_to_do(network: Network) -> None:
    maple = network.maple
    assert "YYYY-MM-DD" in maple("request", "add", "T", "--category", "food", "--needed-by",
                                 "soonish", code=2).stderr  # fmt: skip
    assert maple("request", "add", "T", "--category", "food", "--urgency", "now",
                 code=2).exit_code == 2  # fmt: skip
    assert maple("fulfil", "abc", "--hours", "-1", code=2).exit_code == 2


def test_unknown_and_malformed_ids(network: Network) -> None:
    maple = network.maple
    assert "no request with id starting 'zzzzzzzz'" in one_error_line(
        maple("request", "show", "zzzzzzzz", code=1)
    )
    assert "not a request id" in one_error_line(maple("request", "show", "no/such", code=1))
    assert "no claim" in one_error_line(maple("accept", "zzzzzzzz", code=1))
    assert "no offer" in one_error_line(maple("offer", "withdraw", "zzzzzzzz", code=1))
    assert "no member" in one_error_line(maple("member", "forget", "zzzzzzzz", code=1))
    # one id in 64 starts with '-': it is an id, not an option
    for args in (("request", "show", "-9xhQ"), ("accept", "-hzz"), ("fulfil", "-a-b"),
                 ("offer", "withdraw", "-q"), ("peer", "remove", "-zz")):  # fmt: skip
        assert "starting '-" in one_error_line(maple(*args, code=1)), args


def test_ambiguous_prefix(network: Network) -> None:
    lonely = network.lonely
    # Lonely is shared by the session: other tests may have left requests there. Count
    # them, so that the clash found is one of exactly two requests whatever ran before.
    firsts: dict[str, int] = {}
    for row in lonely.json("request", "list"):
        firsts[row["id"][0]] = firsts.get(row["id"][0], 0) + 1
    for n in range(70):  # 64 first characters: a clash comes soon (a few earlier at most)
        rid = lonely.json("request", "add", f"Need {n}", "--category", "food")["id"]
        firsts[rid[0]] = firsts.get(rid[0], 0) + 1
        if firsts[rid[0]] == 2:
            break
    line = one_error_line(lonely("request", "show", rid[0], code=1))
    assert "matches 2 requests" in line and "type more characters" in line
    assert lonely.json("request", "show", rid[:12])["id"] == rid


def test_personal_details_shared_beyond_the_pod_get_a_warning(network: Network) -> None:
    maple = network.maple
    shared = maple(
        "request",
        "add",
        "Call Ann on 07700 900123",
        "--category",
        "food",
        "--share",
        "network",
        "--details",
        "ann@example.org, 14 Elm Street",
    )
    assert "phone number" in shared.stderr and "e-mail" in shared.stderr
    assert "street address" in shared.stderr and shared.exit_code == 0
    kept = maple("request", "add", "Call Ann on 07700 900123", "--category", "food")
    assert kept.stderr == ""
    dated = maple("request", "add", "Pickup on 2030-05-01", "--category", "food",
                  "--share", "network")  # fmt: skip
    assert dated.stderr == ""
    offer = maple("offer", "add", "Spare bike, ring 555-123-4567", "--category", "transport",
                  "--share", "peers")  # fmt: skip
    assert "phone number" in offer.stderr


def test_concurrent_commands_never_fork_the_organizer_feed(network: Network) -> None:
    lonely = network.lonely
    before = lonely.json("status")["events"]
    env = {**os.environ, "PODLINK_HOME": str(lonely.home)}
    procs = [subprocess.Popen([sys.executable, "-m", "podlink.cli", "request", "add",
                               f"Parallel {n}", "--category", "food"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
             for n in range(4)]  # fmt: skip
    for proc in procs:
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
    after = lonely.json("status")
    assert after["events"] == before + 4 and after["forks"] == 0


# ---------------------------------------------------------------- across pods


def test_a_need_crosses_two_pods_and_is_met(network: Network) -> None:
    maple, riverside, hilltop = network.maple, network.riverside, network.hilltop
    maple("member", "add", "Agatha", "--needs", "medicine")
    hilltop("member", "add", "Jonny", "--can", "transport", "--can", "medicine")
    rid = maple.json(
        "request",
        "add",
        "Prescription pickup",
        "--category",
        "medicine",
        "--urgency",
        "urgent",
        "--for",
        "Agatha",
        "--share",
        "network",
    )["id"]
    on_all(network, rid, "open")
    seen = next(r for r in hilltop.json("request", "list") if r["id"] == rid)
    assert seen["pod_name"] == "Maple Street" and seen["share"] == "network"

    line = one_error_line(hilltop("request", "cancel", rid[:8], code=1))
    assert "only Maple Street" in line
    claim = hilltop.json("claim", rid[:8], "--by", "Jonny", "--note", "tomorrow morning")
    assert claim["lane"] == "network" and claim["status"] == "pending"
    eventually(lambda: maple.json("request", "show", rid)["claims"])
    shown = maple.json("request", "show", rid)
    assert [(c["id"], c["pod"], c["status"]) for c in shown["claims"]] == [
        (claim["id"], hilltop.key, "pending")
    ]
    assert "only Maple Street" in one_error_line(hilltop("accept", claim["id"][:8], code=1))

    maple("accept", claim["id"][:8])
    on_all(network, rid, "accepted")
    maple("fulfil", rid[:8], "--note", "delivered", "--hours", "1.5")
    on_all(network, rid, "fulfilled")
    history = [h["kind"] for h in hilltop.json("request", "show", rid)["history"]]
    assert history == ["request.open", "claim.make", "claim.accept", "request.fulfil"]
    assert "Agatha" not in riverside("log", "--json", "--limit", "5000").stdout
    assert "already fulfilled" in one_error_line(hilltop("claim", rid, code=1))


def test_peers_lane_goes_one_hop_and_claims_follow_it(network: Network) -> None:
    maple, riverside, hilltop = network.maple, network.riverside, network.hilltop
    rid = maple.json("request", "add", "Ladder for a day", "--category", "tools",
                     "--share", "peers")["id"]  # fmt: skip
    on_all(network, rid, "open", maple, riverside)
    claim = riverside.json("claim", rid)
    assert claim["lane"] == "peers"
    eventually(lambda: maple.json("request", "show", rid)["claims"])
    maple("decline", claim["id"], "--reason", "found one")
    eventually(lambda: riverside.json("request", "show", rid)["claims"][0]["status"]
               == "declined")  # fmt: skip
    hilltop("sync")
    assert status_on(hilltop, rid) is None  # one hop only


def test_own_claim_is_accepted_at_once(network: Network) -> None:
    maple = network.maple
    maple("member", "add", "Pat", "--can", "food")
    rid = maple.json("request", "add", "Soup", "--category", "food")["id"]
    claim = maple.json("claim", rid, "--by", "Pat")
    assert claim["lane"] == "pod" and claim["status"] == "accepted"
    line = one_error_line(maple("accept", claim["id"], code=1))
    assert "already accepted" in line
    maple("decline", claim["id"])  # the helper fell through: the need is open again
    assert status_on(maple, rid) == "open"
    assert "accepted at once" in maple("claim", rid[:10], "--by", "Pat").stdout


# ---------------------------------------------------------------- offers, match, resources


def test_offers_and_matches(network: Network) -> None:
    hilltop = network.hilltop
    hilltop("member", "add", "Kit", "--can", "childcare")
    offer = hilltop.json("offer", "add", "Rides to the clinic", "--category", "transport",
                         "--by", "Kit")  # fmt: skip
    assert offer["share"] == "pod" and offer["by_member"]
    listed = {o["id"]: o for o in hilltop.json("offer", "list")}
    assert listed[offer["id"]]["status"] == "open"
    assert "Kit" in hilltop("offer", "list").stdout

    rid = hilltop.json("request", "add", "Babysitter Friday", "--category", "childcare")["id"]
    lift = hilltop.json("request", "add", "Lift to the clinic", "--category", "transport")["id"]
    suggestions: list[dict[str, Any]] = hilltop.json("match")
    pairs = {(m["request"], m["via"], m["match_label"]) for m in suggestions}
    assert (rid, "member", "Kit") in pairs
    assert (lift, "offer", "Rides to the clinic") in pairs
    assert "Babysitter" in hilltop("match").stdout

    hilltop("offer", "withdraw", offer["id"][:8])
    assert offer["id"] not in {o["id"] for o in hilltop.json("offer", "list")}
    withdrawn = {o["id"]: o for o in hilltop.json("offer", "list", "--status", "all")}
    assert withdrawn[offer["id"]]["status"] == "withdrawn"
    assert "already withdrawn" in one_error_line(hilltop("offer", "withdraw", offer["id"],
                                                         code=1))  # fmt: skip


def test_resources_shared_with_the_network(network: Network) -> None:
    made = network.maple.json("resource", "add", "Eastside Food Bank", "--category", "food",
                              "--where", "12 Mill Rd", "--when", "Tue 10-14",
                              "--share", "network")  # fmt: skip
    assert made["share"] == "network"
    found = eventually(lambda: [r for r in network.hilltop.json("resource", "list")
                                if r["id"] == made["id"]])  # fmt: skip
    assert found[0]["where"] == "12 Mill Rd" and found[0]["pod_name"] == "Maple Street"
    assert "Eastside" in network.hilltop("resource", "list", "--category", "food").stdout
