"""Review of `podlink request update`, `podlink pod list|update` and `podlink log --forks`:
real pods served by `podlink serve`, through the real CLI."""

from __future__ import annotations

from collections.abc import Iterator
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
from tests.node.helpers import stable_port


@pytest.fixture
def solo(tmp_path: Path) -> Iterator[Pod]:
    """A pod of its own (renamed by the tests that use it: kept out of `pair`)."""
    pod = make_pod(tmp_path, "Birch")
    with running(pod):
        yield pod


def entry(pod: Pod, key: str) -> dict[str, Any] | None:
    return next((p for p in pod.json("pod", "list") if p["pod"] == key), None)


# ---------------------------------------------------------------- pod update: the name


def test_status_shows_the_name_and_zone_pod_update_gave(solo: Pod) -> None:
    """`pod update --name/--zone` changes the directory, but `podlink status` still shows
    the name and zone of config.toml: the organizer is told the change was made and
    `status` (the command that "shows the pod: name...") says it was not."""
    solo("pod", "update", "--name", "Birch Lane", "--zone", "Birch Ln 1-40")
    assert (entry(solo, solo.key) or {}).get("name") == "Birch Lane"
    status = solo.json("status")
    assert (status["name"], status["zone"]) == ("Birch Lane", "Birch Ln 1-40")


def test_a_pod_that_joins_after_a_rename_is_told_the_new_name(solo: Pod, tmp_path: Path) -> None:
    """After `pod update --name`, the invite handshake still hands out config.toml's old
    name (node/peer_api.py redeem and node/invites.py use node.config.name), so a pod
    that peers afterwards lists the renamed pod under its old name in `peer list`, while
    its own `pod list` and the renamed pod's /v1/info say the new one."""
    solo("pod", "update", "--name", "Birch Lane")
    ash = make_pod(tmp_path / "other", "Ash")
    serve(ash)
    try:
        wait_up(ash)
        ash("peer", "join", solo.json("invite")["invite"])
        eventually(lambda: (e := entry(ash, solo.key)) and e["name"] == "Birch Lane", 20)
        [peer] = ash.json("peer", "list")
        assert peer["name"] == "Birch Lane"
    finally:
        stop(ash)


def test_a_peers_peer_list_follows_its_rename(solo: Pod, tmp_path: Path) -> None:
    """Ash peers with Birch, then Birch runs `pod update --name`: Ash's `pod list` and
    `request list` show 'Birch Lane', but its `peer list` keeps 'Birch' for ever (the
    peers table holds the name from the invite handshake and nothing refreshes it), so
    two commands name the same pod differently."""
    ash = make_pod(tmp_path / "other", "Ash")
    serve(ash)
    try:
        wait_up(ash)
        ash("peer", "join", solo.json("invite")["invite"])
        solo("pod", "update", "--name", "Birch Lane")
        eventually(lambda: (e := entry(ash, solo.key)) and e["name"] == "Birch Lane", 20)
        [peer] = ash.json("peer", "list")
        assert peer["name"] == "Birch Lane"
    finally:
        stop(ash)


def test_pod_update_warns_about_personal_details_in_the_description(solo: Pod) -> None:
    """The entry goes to every pod in the network, and README promises "If shared text
    looks like a phone number, an e-mail or an address, podlink warns you" (request add
    and request update do, through warn_if_personal); `pod update --description` stores a
    neighbour's phone number and e-mail network-wide without a word."""
    done = solo("pod", "update", "--description", "ask Agatha, 555 0134 0000, agatha@example.org")
    assert "phone number" in done.stderr


# ---------------------------------------------------------------- request update


def test_an_urgent_update_moves_the_need_up_the_list_and_the_matches(pair: Pair) -> None:
    """Pins: request list and match order by the urgency the update gave, on this pod and
    on the pod the need was shared with; `--details ""` empties the details."""
    elm, oak = pair.elm, pair.oak
    elm("offer", "add", "Review: van rides", "--category", "review-rides", "--share", "network")
    first = elm.json("request", "add", "Review: ride A", "--category", "review-rides",
                     "--share", "network", "--details", "two bags")  # fmt: skip
    second = elm.json("request", "add", "Review: ride B", "--category", "review-rides",
                      "--share", "network")  # fmt: skip

    def order(pod: Pod) -> list[str]:
        return [r["id"] for r in pod.json("request", "list", "--category", "review-rides")]

    eventually(lambda: order(oak) == [first["id"], second["id"]], 20)
    elm("request", "update", second["id"], "--urgency", "urgent", "--details", "")
    assert order(elm) == [second["id"], first["id"]]
    matched = [m["request"] for m in elm.json("match") if m["category"] == "review-rides"]
    assert matched[:2] == [second["id"], first["id"]]
    eventually(lambda: order(oak) == [second["id"], first["id"]], 20)
    assert oak.json("request", "show", second["id"])["details"] == ""


def test_an_accepted_need_keeps_its_helper_through_an_update(pair: Pair) -> None:
    """Pin: updating an accepted need keeps it accepted with the same claim, on both
    pods; after it is fulfilled the update is refused with exit 1 and nothing signed."""
    elm, oak = pair.elm, pair.oak
    need = elm.json("request", "add", "Review: a stroller", "--category", "review-kids",
                    "--share", "peers")  # fmt: skip
    eventually(lambda: any(r["id"] == need["id"] for r in oak.json("request", "list")), 20)
    offered = oak.json("claim", need["id"])
    eventually(lambda: elm.json("request", "show", need["id"])["claims"], 20)
    elm("accept", offered["id"])
    changed = elm.json("request", "update", need["id"], "--needed-by", "2031-03-04")
    assert changed["status"] == "accepted"
    shown = elm.json("request", "show", need["id"])
    assert (shown["status"], shown["accepted_claim"]) == ("accepted", offered["id"])
    eventually(lambda: oak.json("request", "show", need["id"])["needed_by"] == "2031-03-04", 20)
    elm("fulfil", need["id"])
    before = elm.json("status")["events"]
    assert "already fulfilled" in elm("request", "update", need["id"], "--urgency", "low",
                                      code=1).output  # fmt: skip
    assert elm.json("status")["events"] == before


def test_pod_update_from_an_organizers_laptop(solo: Pod, tmp_path: Path) -> None:
    """Pin: a second organizer's laptop folder (organizer setup) changes the entry."""
    laptop = tmp_path / "laptop"
    setup = run_json("organizer", "setup", "--node", solo.url, "--name", "Bo", home=laptop)
    solo("organizer", "add", "Bo", "--key", setup["key"])
    sent = run_json("pod", "update", "--zone", "Birch Ln", home=laptop)
    assert sent["pod"] == solo.key
    assert (entry(solo, solo.key) or {}).get("zone") == "Birch Ln"
    listed = run_json("pod", "list", home=laptop)
    assert [p["relation"] for p in listed] == ["this pod"]


# ---------------------------------------------------------------- log --forks


def organized_pod(root: Path, name: str, organizer: str) -> Pod:
    """A pod made by `podlink init --organizer`, on a port it can be restarted on."""
    port = stable_port()
    home = root / name.lower()
    run("init", "--name", name, "--organizer", organizer, "--listen", f"127.0.0.1:{port}",
        home=home)  # fmt: skip
    return Pod(name, home, f"http://127.0.0.1:{port}")


def forked_after_restore(root: Path, writes: int) -> tuple[Pod, Pod, str]:
    """Fir and Yew peered; Yew backs up, shares a need Fir receives, loses its disk,
    restores the backup and shares ``writes`` needs before it syncs (Fir is down), the
    case docs/operations.md names for a fork. Both nodes running again; Yew's organizer
    key is returned."""
    fir, yew = organized_pod(root, "Fir", "Ann"), organized_pod(root, "Yew", "Bea")
    try:
        for pod in (fir, yew):
            serve(pod)
            wait_up(pod)
        yew("peer", "join", fir.json("invite")["invite"])
        bea = yew.json("organizer", "list")[0]["key"]
        eventually(lambda: any(p["pod"] == yew.key for p in fir.json("pod", "list")), 20)
        yew("backup", str(root / "yew.db"))
        kept = yew.json("request", "add", "Fork: kept", "--category", "food", "--share", "network")
        eventually(lambda: any(r["id"] == kept["id"] for r in fir.json("request", "list")), 20)
        stop(fir, yew)
        for f in yew.home.glob("ledger.db*"):
            f.unlink()  # the disk that failed: nothing to carry over
        yew("restore", str(root / "yew.db"))
        serve(yew)
        wait_up(yew)
        for n in range(writes):
            yew("request", "add", f"Fork: other {n}", "--category", "food", "--share", "network")
        serve(fir)
        wait_up(fir)
    except BaseException:
        stop(fir, yew)
        raise
    return fir, yew, bea


def test_log_forks_names_another_pods_organizer(tmp_path: Path) -> None:
    """Fir records the fork of Yew's organizer key (Yew wrote on after a restore). Fir
    knows that key's name (Yew's roster.add 'Bea' reached it in the network lane), and
    the commit promises the listing "names the organizer or pod behind the key where
    this pod knows it", but `_forks` (cli/pods.py) reads only /v1/roster, which lists
    this pod's own organizers: the fork shows a bare key prefix, author_name ''."""
    fir, yew, bea = forked_after_restore(tmp_path, writes=2)
    try:
        [fork] = eventually(lambda: fir.json("log", "--forks"), 8)
        assert fork["author"] == bea
        assert fork["author_name"] == "Bea of Yew"  # another pod's organizer: its pod named too
    finally:
        stop(fir, yew)


def test_a_restore_written_on_before_syncing_shows_up_in_log_forks(tmp_path: Path) -> None:
    """docs/operations.md (as changed by 2c6f707) says a restored backup written on before
    syncing makes `forks` above 0 and `podlink log --forks` shows the proof. When the
    restored pod writes as many events as it lost, neither pod ever records the fork:
    Fir keeps 'Fork: kept', Yew keeps 'Fork: other 0' at the same feed position, each
    says "No forks recorded: every key has signed one history", and they never converge.
    Cause: node/gossip.py PeerLink._take discards the page that shows the new epoch and
    repair() compares feed heads by seq only (equal seq: nothing to fetch), and Fir does
    not send Yew its own events back, so the clash is never ingested."""
    fir, yew, bea = forked_after_restore(tmp_path, writes=1)
    try:
        fir("sync")
        yew("sync")
        found = eventually(lambda: fir.json("log", "--forks") + yew.json("log", "--forks"), 4)
        assert found[0]["author"] == bea
    finally:
        stop(fir, yew)
