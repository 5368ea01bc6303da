"""Review of the newest fixes: the organizer API's change check (node/organizer_api.py
_check_changes) with the CLI's stamping after the newest change (cli/session.py), and
restore's forget signed again and its removal of a stale ledger.db.restoring
(cli/restore.py, cli/pods.py _restore). Each failing test names a real bug in its
docstring.

Real SQLite files in tmp_path, real `podlink` commands, real Ed25519 signatures; nothing
mocked."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

import pytest

from tests.cli.conftest import make_pod, run, run_json, running

MINUTE_NS = 60 * 10**9


def _copy(src: Path, dst: Path) -> None:
    with closing(sqlite3.connect(src)) as a, closing(sqlite3.connect(dst)) as b:
        a.backup(b)


def test_restoring_from_the_file_a_cut_off_restore_left_does_not_destroy_it(
    tmp_path: Path,
) -> None:
    """`podlink restore HOME/ledger.db.restoring` destroys the very file it was asked to
    restore from, then never returns.

    A restore cut off leaves ledger.db.restoring, a whole ledger (the backup, and what
    was carried into it). An operator who finds it, or whose only other copy is that
    one, restores from it. cli/pods.py _restore checks it (`_check_backup`: a good
    database of this pod), then removes the stale file by that very name (pods.py:550,
    "A restore cut off left its whole ledger here"), creates it again empty
    (private_file, :553) and copies the file onto itself (copy_backup, :554): SQLite's
    backup of a database onto its own file stays busy, and sqlite3's backup() retries
    for ever. The command hangs; killed, it leaves an empty file where the operator's
    only copy was. A restore must never destroy its source: it should refuse that name
    (saying to move it elsewhere first) or restore from it, and never hang."""
    pod = make_pod(tmp_path, "Rowan")
    live = pod.home / "ledger.db"
    left = pod.home / "ledger.db.restoring"
    _copy(live, left)  # as a restore cut off after its first steps leaves it
    before = left.read_bytes()
    env = {k: v for k, v in os.environ.items() if k != "PODLINK_HOME"}
    try:  # a process of its own: the restore may never return (copy_backup onto itself)
        done = subprocess.run(
            [sys.executable, "-m", "podlink.cli", "restore", str(left), "--home", str(pod.home)],
            capture_output=True, text=True, env=env, timeout=4,
        )  # fmt: skip
        said = f"exit {done.returncode}: {(done.stdout + done.stderr).strip()}"
    except subprocess.TimeoutExpired:
        said = "still at work after 4 s, copying the file onto itself"
    assert left.exists() and left.stat().st_size > 0, (
        f"the file named to restore from is gone or emptied ({said})"
    )
    assert left.read_bytes() == before or said.startswith("exit 0"), said


def test_two_organizers_with_skewed_laptop_clocks_change_one_need_in_quick_succession(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PASSES: the change check (node/organizer_api.py _check_changes) refuses none of an
    ordinary morning's commands: Ann on the pod's folder and Sam on his laptop, whose
    clock runs 4 minutes behind, then 4 minutes ahead (within the signed-request
    window), take turns on one need with `request update`, `claim --by`, `decline`,
    `claim`, `fulfil`, each right after the other's. The CLI stamps each after the
    newest change it read (cli/session.py write(after=)); every one is applied, and the
    need ends fulfilled by the second claim. (The CLI runs in this process; the wall
    clock, time.time_ns, is shifted for Sam's commands only, as session 10's tests do.)"""
    pod = make_pod(tmp_path, "Elm")
    real = time.time_ns

    def sam(skew_min: int, *args: str) -> str:
        monkeypatch.setattr(time, "time_ns", lambda: real() + skew_min * MINUTE_NS)
        try:
            return run(*args, home=laptop).output
        finally:
            monkeypatch.undo()

    with running(pod):
        laptop = tmp_path / "sam-laptop"
        key = run_json("organizer", "setup", "--node", pod.url, "--name", "Sam",
                       home=laptop)["key"]  # fmt: skip
        pod("organizer", "add", "Sam", "--key", key)
        pod("member", "add", "Wilma", "--contact", "555 0134")
        need = pod.json("request", "add", "Ride to the clinic", "--category", "transport")["id"]
        for skew in (-4, 4):
            sam(skew, "request", "update", need, "--title", f"Ride, Sam {skew}")
            pod("request", "update", need, "--title", f"Ride, Ann {skew}")
        first = pod.json("claim", need, "--by", "Wilma")
        assert first["status"] == "accepted", first
        sam(-4, "decline", first["id"])
        second = pod.json("claim", need)
        assert second["status"] == "accepted", second
        sam(-4, "fulfil", need)
        shown = json.loads(pod("request", "show", need, "--json").output)
    assert shown["status"] == "fulfilled", shown["status"]
    assert shown["accepted_claim"] == second["id"]
    assert shown["title"] == "Ride, Ann 4"
    outcomes = [step["outcome"] for step in shown["history"]]
    assert outcomes == ["applied"] * 9, shown["history"]
