"""Running a pod from the CLI: init, status, invites and peers, sync, log, backup, restore,
and what the user sees when something is wrong."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import click

from podlink.cli.reference import commands
from tests.cli.conftest import Network, make_pod, run


def one_error_line(result) -> str:  # type: ignore[no-untyped-def]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: ")
    return lines[0]


def test_every_command_has_help_with_an_example() -> None:
    for path, command in commands():
        help_text = command.get_help(click.Context(command, info_name=path))
        assert command.help, path
        if not isinstance(command, click.Group):
            assert "Example" in help_text, f"{path} --help shows no example"


def test_version() -> None:
    assert run("--version").stdout.startswith("podlink, version ")


def test_init_makes_a_pod_and_refuses_a_second(tmp_path: Path) -> None:
    home = tmp_path / "pod"
    data = run("init", "--name", "Maple Street", "--json", home=home).stdout
    assert '"name": "Maple Street"' in data
    for name in ("config.toml", "node.key", "organizer.key", "ledger.db"):
        assert (home / name).exists()
    again = run("init", "--name", "Other", home=home, code=1)
    assert "already holds a pod" in one_error_line(again)


def test_init_refuses_a_public_url_that_is_not_one(tmp_path: Path) -> None:
    home = tmp_path / "p"
    result = run("init", "--name", "X", "--url", "not a url", home=home, code=1)
    assert "--url must start with http:// or https://" in result.stderr
    assert not home.exists()  # nothing half-made is left to block the next init


def test_backup_without_a_database_creates_nothing(tmp_path: Path) -> None:
    home = tmp_path / "p"
    run("init", "--name", "X", home=home)
    (home / "ledger.db").unlink()
    result = run("backup", str(tmp_path / "copy.db"), home=home, code=1)
    assert "nothing to back up" in result.stderr
    assert not (home / "ledger.db").exists() and not (tmp_path / "copy.db").exists()


def test_backup_into_a_folder_that_is_a_file_is_one_line(tmp_path: Path) -> None:
    home = tmp_path / "p"
    run("init", "--name", "X", home=home)
    (tmp_path / "backups").write_text("not a folder")
    result = run("backup", str(tmp_path / "backups" / "x.db"), home=home, code=1)
    assert "cannot create" in one_error_line(result) and "Traceback" not in result.stderr


def test_init_refuses_a_bad_listen_address(tmp_path: Path) -> None:
    result = run("init", "--name", "X", "--listen", "nowhere", home=tmp_path / "p", code=1)
    assert "HOST:PORT" in one_error_line(result)


def test_no_pod_in_home_says_to_init(tmp_path: Path) -> None:
    result = run("status", home=tmp_path / "empty", code=1)
    assert "podlink init" in one_error_line(result)


def test_node_down_says_to_serve(tmp_path: Path) -> None:
    pod = make_pod(tmp_path, "Sleepy")
    for args in (("status",), ("request", "list"), ("member", "add", "Ann"), ("sync",)):
        line = one_error_line(pod(*args, code=1))
        assert "not running" in line and f"podlink serve --home {pod.home}" in line


def test_status(network: Network) -> None:
    data = network.maple.json("status")
    for key in ("pod", "name", "url", "events", "peers", "version"):
        assert key in data
    assert data["name"] == "Maple Street" and data["url"] == network.maple.url
    assert len(data["pod"]) == 43
    human = network.maple("status").stdout
    assert "Maple Street" in human and data["pod"][:8] in human


def test_invites_peer_pods_in_a_line(network: Network) -> None:
    peers = network.riverside.json("peer", "list")
    assert {p["name"] for p in peers} == {"Maple Street", "Hilltop"}
    for p in peers:
        for key in ("pod", "name", "url", "status", "last_sync", "behind"):
            assert key in p
    assert [p["name"] for p in network.maple.json("peer", "list")] == ["Riverside"]
    table = network.riverside("peer", "list").stdout
    assert "Hilltop" in table and max(map(len, table.splitlines())) <= 80


def test_invite_human_output_shows_the_join_command(network: Network) -> None:
    out = network.lonely("invite").stdout
    assert "podlink peer join podlink1." in out


def test_peer_join_with_a_damaged_code(network: Network) -> None:
    line = one_error_line(network.lonely("peer", "join", "podlink1.garbage!!", code=1))
    assert "invite" in line


def test_peer_add_by_url_and_key_then_remove(tmp_path: Path, network: Network) -> None:
    lonely, maple = network.lonely, network.maple
    added = lonely.json("peer", "add", maple.url, "--key", maple.key, "--name", "Maple")
    assert added["pod"] == maple.key
    assert "they must add you too" in lonely("peer", "add", maple.url, "--key", maple.key
                                             ).stdout.lower()  # fmt: skip
    assert [p["pod"] for p in lonely.json("peer", "list")] == [maple.key]
    lonely("peer", "remove", maple.key[:6])
    assert lonely.json("peer", "list") == []
    bad = one_error_line(lonely("peer", "add", maple.url, "--key", "short", code=1))
    assert "key" in bad


def test_sync_reports_each_peer(network: Network) -> None:
    report = network.riverside.json("sync")
    assert {p["name"] for p in report} == {"Maple Street", "Hilltop"}
    assert all(p["ok"] for p in report)
    assert "No peers yet" in network.lonely("sync").stdout


def test_log_and_verify(network: Network) -> None:
    entries = network.maple.json("log", "--limit", "3")
    assert 1 <= len(entries) <= 3 and {"id", "kind", "lane", "ts"} <= set(entries[0])
    assert "roster.add" in network.maple("log", "--limit", "100").stdout
    report = network.maple.json("log", "--verify")
    assert report["ok"] and report["events"] >= 2
    assert "verify" in network.maple("log", "--verify").stdout


def test_backup_then_restore_rotates_the_epoch(tmp_path: Path) -> None:
    pod = make_pod(tmp_path, "Saved")
    backup = tmp_path / "backups" / "saved.db"
    run("backup", str(backup), home=pod.home)
    assert backup.stat().st_mode & 0o077 == 0
    assert "exists" in one_error_line(run("backup", str(backup), home=pod.home, code=1))

    def epoch() -> bytes:
        with sqlite3.connect(pod.home / "ledger.db") as db:
            return db.execute("SELECT value FROM meta WHERE key = 'epoch'").fetchone()[0]

    before = epoch()
    out = run("restore", str(backup), home=pod.home).stdout
    assert "epoch was rotated" in out and epoch() != before
    assert list(pod.home.glob("ledger.db.before-restore-*"))
    # Reading the backup (a WAL database) left no -shm or -wal beside it.
    assert sorted(p.name for p in backup.parent.iterdir()) == ["saved.db"]

    other = make_pod(tmp_path, "Other")
    line = one_error_line(run("restore", str(backup), home=other.home, code=1))
    assert "another pod" in line


def test_restore_refuses_while_the_node_runs(tmp_path: Path, network: Network) -> None:
    backup = tmp_path / "maple.db"
    network.maple("backup", str(backup))
    assert "stop it" in one_error_line(network.maple("restore", str(backup), code=1))


def test_serve_says_when_the_port_is_taken(tmp_path: Path, network: Network) -> None:
    pod = make_pod(tmp_path, "Twin")
    taken = network.lonely.url.rsplit(":", 1)[1]
    (pod.home / "config.toml").write_text(
        f'name = "Twin"\nlisten = "127.0.0.1:{taken}"\nlog_level = "ERROR"\n')
    result = pod("serve", code=1)
    assert "Ctrl-C stops it" in result.stderr  # the banner, then one error line
    assert "already running" in result.stderr.strip().splitlines()[-1]
