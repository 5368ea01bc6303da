"""`podlink resource withdraw`: a food bank closes; its pod takes it out of the directory,
and the pods it was shared with follow. Elm and Oak, real nodes."""

from __future__ import annotations

from tests.cli.conftest import Pair, Pod, eventually


def names(pod: Pod) -> set[str]:
    return {r["name"] for r in pod.json("resource", "list")}


def test_a_closed_food_bank_leaves_the_directory_everywhere(pair: Pair) -> None:
    elm, oak = pair.elm, pair.oak
    added = elm.json("resource", "add", "Withdraw: Mill Rd food bank", "--category", "food",
                     "--share", "network")  # fmt: skip
    eventually(lambda: "Withdraw: Mill Rd food bank" in names(oak), 20)
    assert added["id"][:8] in elm("resource", "list").stdout  # the id to withdraw it by

    theirs = oak("resource", "withdraw", added["id"][:10], code=1)
    assert "only Elm" in theirs.output
    gone = elm.json("resource", "withdraw", added["id"][:10], "--reason", "closed for good")
    assert (gone["kind"], gone["lane"], gone["resource"]) == (
        "resource.withdraw", "network", added["id"])  # fmt: skip
    assert "Withdraw: Mill Rd food bank" not in names(elm)
    eventually(lambda: "Withdraw: Mill Rd food bank" not in names(oak), 20)
    again = elm("resource", "withdraw", added["id"][:10], code=1)
    assert f"no resource with id starting {added['id'][:10]!r}" in again.output
