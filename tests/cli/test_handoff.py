"""`podlink handoff` and `podlink inbox`: after a cross-pod claim is accepted, each pod hands
its person's contact to the other, sealed; the pod in between carries it and cannot read
it. Maple Street — Riverside — Hilltop, real nodes, real sealed boxes."""

from __future__ import annotations

from typing import Any

from tests.cli.conftest import Network, Pod, eventually
from tests.cli.test_pod import one_error_line

PHONE = "555 0142 77"  # Hana's, findable in raw bytes
HELPER_PHONE = "555 0199 31"


def inbox_about(pod: Pod, request_id: str) -> list[dict[str, Any]]:
    return [i for i in pod.json("inbox") if i["message"].get("about") == request_id]


def claim_on(pod: Pod, request_id: str) -> str | None:
    shown = [r for r in pod.json("request", "list") if r["id"] == request_id]
    if not shown:
        return None
    claims = pod.json("request", "show", request_id)["claims"]
    return claims[0]["id"] if claims else None


def test_contacts_cross_sealed_and_the_pod_between_cannot_read_them(network: Network) -> None:
    maple, riverside, hilltop = network.maple, network.riverside, network.hilltop
    maple("member", "add", "Hana Handoff", "--contact", PHONE, "--prefers", "phone")
    need = maple.json("request", "add", "Handoff: pharmacy pickup", "--category", "medicine",
                      "--for", "Hana Handoff", "--share", "network")  # fmt: skip
    eventually(lambda: any(r["id"] == need["id"] for r in hilltop.json("request", "list")), 20)
    hilltop("member", "add", "Jon Helper", "--contact", HELPER_PHONE)
    claim = hilltop.json("claim", need["id"], "--by", "Jon Helper")["id"]
    eventually(lambda: claim_on(maple, need["id"]) == claim, 20)

    # Not before the help is agreed.
    early = one_error_line(maple("handoff", claim[:10], "--member", "Hana Handoff", code=1))
    assert "pending" in early and "podlink accept" in early
    maple("accept", claim[:10])

    sent = maple.json("handoff", claim[:10], "--member", "hana handoff", "--note", "ring twice")
    assert (sent["kind"], sent["lane"], sent["to"], sent["about"]) == (
        "sealed", "network", hilltop.key, need["id"])  # fmt: skip
    assert (sent["name"], sent["contact"], sent["prefers"]) == ("Hana Handoff", PHONE, "phone")

    # Hilltop, two hops away, opens it; it says who sent it and which need it is about.
    [got] = eventually(lambda: inbox_about(hilltop, need["id"]), 20)
    assert got["id"] == sent["id"] and got["from"] == maple.key
    assert got["message"] == {"name": "Hana Handoff", "contact": PHONE, "prefers": "phone",
                              "note": "ring twice", "about": need["id"]}  # fmt: skip
    assert (got["from_name"], got["about_title"]) == ("Maple Street", "Handoff: pharmacy pickup")
    shown = hilltop("inbox").stdout
    assert "Hana Handoff" in shown and PHONE in shown and "Maple Str" in shown

    # And the helper's contact goes back the other way.
    back = hilltop.json("handoff", claim, "--member", "Jon Helper")
    assert back["to"] == maple.key
    [got_back] = eventually(lambda: inbox_about(maple, need["id"]), 20)
    assert got_back["message"]["contact"] == HELPER_PHONE

    # Riverside stored and forwarded both sealed events but reads neither.
    logged = eventually(lambda: {sent["id"], back["id"]} <= {
        e["id"] for e in riverside.json("log", "--limit", "5000")}, 20)  # fmt: skip
    assert logged
    assert inbox_about(riverside, need["id"]) == []
    answers = (
        riverside("log", "--json", "--limit", "5000").stdout + riverside("inbox", "--json").stdout
    )
    for secret in (PHONE, HELPER_PHONE, "Hana Handoff", "ring twice"):
        assert secret not in answers
        for path in riverside.home.glob("ledger.db*"):
            assert secret.encode() not in path.read_bytes(), (secret, path.name)


def test_only_the_two_pods_of_an_accepted_claim_hand_over(network: Network) -> None:
    maple, riverside = network.maple, network.riverside
    maple("member", "add", "Olek Own", "--contact", "555 0111")
    mine = maple.json("request", "add", "Handoff: own need", "--category", "food",
                      "--share", "network")  # fmt: skip
    own_claim = maple.json("claim", mine["id"], "--by", "Olek Own")["id"]  # accepted at once
    same = one_error_line(maple("handoff", own_claim, "--member", "Olek Own", code=1))
    assert "both of this pod" in same

    # A claim between Maple and Riverside on another need, seen by Hilltop: Hilltop is
    # no party to it.
    other = maple.json("request", "add", "Handoff: a ladder", "--category", "tools",
                       "--share", "network")  # fmt: skip
    eventually(lambda: any(r["id"] == other["id"] for r in riverside.json("request", "list")), 20)
    riverside("member", "add", "Rita River", "--contact", "")
    theirs = riverside.json("claim", other["id"], "--by", "Rita River")["id"]
    eventually(lambda: claim_on(maple, other["id"]) == theirs, 20)
    maple("accept", theirs)
    eventually(lambda: claim_on(network.hilltop, other["id"]) == theirs, 20)
    outsider = one_error_line(network.hilltop("handoff", theirs, "--name", "X", "--contact", "1",
                                              code=1))  # fmt: skip
    assert "neither asked" in outsider

    # Riverside's own claim was accepted: whose contact, and a contact at all, are asked.
    eventually(lambda: riverside.json("request", "show", other["id"])["claims"][0]["status"]
               == "accepted", 20)  # fmt: skip
    before = riverside.json("status")["events"]
    assert "--member" in riverside("handoff", theirs, code=2).output
    empty = one_error_line(riverside("handoff", theirs, "--member", "Rita River", code=1))
    assert "no contact details for Rita River" in empty
    assert riverside.json("status")["events"] == before  # nothing was signed
