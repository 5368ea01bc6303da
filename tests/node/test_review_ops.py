"""Review: operating a node (serve/stop, backup, /metrics, config, status/sync).

Five tests failed because of a bug each describes (fixed with it); the others pin corners
found correct: backup while the node writes, and SIGINT/SIGTERM under load."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import psutil
import pytest

from podlink.ledger.authoring import Author
from podlink.node.config import ConfigError, load_config
from podlink.protocol import kinds
from tests.node.helpers import (
    FakePeer,
    join,
    make_node,
    peer_line,
    wait_converged,
    wait_for,
)
from tests.reliability.served import ServedNode


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PODLINK_")}
    env.update(extra)
    return env


async def _metrics(url: str) -> str:
    async with aiohttp.ClientSession() as s, s.get(url + "/metrics") as resp:
        assert resp.status == 200
        return await resp.text()


def _value(text: str, series: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


# ---------------------------------------------------------------- (d) config


async def test_serve_negative_verify_workers_exits_with_one_line(tmp_path: Path) -> None:
    """PODLINK_VERIFY_WORKERS=-1: expected a one-line error and a prompt non-zero exit."""
    pod = await make_node(tmp_path / "a", "A")
    code, err = await asyncio.to_thread(_serve_briefly, pod.home, PODLINK_VERIFY_WORKERS="-1")
    assert code != 0
    assert b"Traceback" not in err, err.decode()[-800:]


def _serve_briefly(home: Path, **env: str) -> tuple[int, bytes]:
    """`podlink serve` with ``env``: its exit status and stderr; fails the test if it is
    still running after 8 s."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "podlink.cli", "serve", "--home", str(home)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env(**env),
    )  # fmt: skip
    try:
        try:
            _, err = proc.communicate(timeout=8)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
            pytest.fail("serve hung after a bad setting:\n" + err.decode()[-800:])
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, err


def test_unknown_log_level_is_refused(tmp_path: Path) -> None:
    """docs: log_level is DEBUG, INFO, WARNING or ERROR, and values are checked at start."""
    home = tmp_path / "h"
    home.mkdir()
    (home / "config.toml").write_text('name = "x"\n')
    with pytest.raises(ConfigError):
        load_config(home, env={"PODLINK_LOG_LEVEL": "LOUD"})



@pytest.mark.parametrize("name", ["PODLINK_INVITE_TTL_S", "PODLINK_PENDING_TTL_S"])
def test_a_ttl_beyond_a_century_is_refused(tmp_path: Path, name: str) -> None:
    """An expiry is a clock plus the TTL in SQLite: 2**62 seconds overflowed its 64 bits
    (OverflowError on the first invite or parked event), not a refusal at start."""
    home = tmp_path / "h"
    home.mkdir()
    (home / "config.toml").write_text('name = "x"\n')
    with pytest.raises(ConfigError, match="at most"):
        load_config(home, env={name: str(2**62)})
    assert load_config(home, env={name: str(30 * 24 * 3600)}) is not None


# ---------------------------------------------------------------- (c) metrics


async def test_metrics_ledger_events_after_restart(network: Any) -> None:
    [a] = await network(1)
    await a.open_request("one")
    await a.open_request("two")
    count = await a.event_count()
    await a.restart()
    text = await _metrics(a.url)
    assert _value(text, "podlink_ledger_events") == count, text


async def test_metrics_count_events_released_from_pending(network: Any) -> None:
    """A peer sends e2 before e1: e2 parks (pending 1), then both are stored: stored{peer}
    must count 2, as the ledger holds 2 more events."""
    [a] = await network(1)
    fake = FakePeer()
    author = Author(fake.keypair, fake.keypair.public)
    e1 = author.write(kinds.PodFounded(name="Fake"), "network")
    e2 = author.write(kinds.RequestOpened(title="second", category="food"), "network")
    fake.events = [e2.to_wire()]
    await fake.start()
    try:
        before = await a.event_count()
        await a.client.post("/v1/peers", {"url": fake.url, "key": fake.key, "name": "Fake"})

        async def parked() -> bool:
            return (await a.status())["pending"] == 1

        await wait_for(parked, what="e2 parked")
        fake.events = [e2.to_wire(), e1.to_wire()]
        await a.client.post("/v1/sync")

        async def both() -> bool:
            return await a.event_count() == before + 2

        await wait_for(both, what="both stored")
        text = await _metrics(a.url)
        assert _value(text, "podlink_events_pending_total") == 1, text
        assert _value(text, 'podlink_events_stored_total{source="peer"}') == 2, text
    finally:
        await fake.stop()


async def test_metrics_removed_peer_series_dropped(network: Any) -> None:
    a, b = nodes = await network(2)
    await peer_line(nodes)
    await a.client.request("DELETE", f"/v1/peers/{b.key}")
    text = await _metrics(a.url)
    assert f'peer="{b.key[:8]}"' not in text, text


# ---------------------------------------------------------------- (b) backup


async def test_backup_while_node_writes(network: Any, tmp_path: Path) -> None:
    [a] = await network(1, rate_per_s=10_000.0)
    author = await a.author()
    for i in range(10):  # a database of several MiB (well over one backup step)
        events = [
            author.write(kinds.RequestOpened(title=f"r{i}-{j} " + "x" * 180, category="food"),
                         "network")
            for j in range(500)
        ]
        results = await a.client.submit(events)
        assert all(r["status"] == "stored" for r in results)
    stop = asyncio.Event()
    written = 0

    async def writer() -> None:
        nonlocal written
        while not stop.is_set():
            await a.open_request(f"live {written}")
            written += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(writer())
    target = tmp_path / "backup.db"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "podlink.cli", "backup", str(target), "--home", str(a.home),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=_env(),
    )  # fmt: skip
    try:
        try:
            _, err = await asyncio.wait_for(proc.communicate(), 8)
        except TimeoutError:
            pytest.fail(f"backup did not finish in 8 s while the node wrote ({written} writes)")
    finally:
        stop.set()
        await task
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, err.decode()[-800:]
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    with sqlite3.connect(target) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert db.execute("SELECT count(*) FROM events").fetchone()[0] >= 3000
    db.close()


# ---------------------------------------------------------------- (a) stop under load


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
async def test_stop_under_load_with_workers(network: Any, tmp_path: Path, sig: int) -> None:
    [local] = await network(1)
    pod = await make_node(tmp_path / "served", "Served")
    served = ServedNode(pod)
    await served.start(within=8)
    acked: set[str] = set()
    stop = asyncio.Event()
    try:
        await join(local, pod)
        # A large batch written at the peer: the served node checks it in worker processes.
        author = await local.author()
        events = [author.write(kinds.RequestOpened(title=f"bulk {j}", category="food"),
                               "network") for j in range(600)]  # fmt: skip
        await local.client.submit(events)
        await wait_converged([local, pod], within=8)
        assert served.proc is not None
        children = psutil.Process(served.proc.pid).children(recursive=True)

        async def writer() -> None:
            i = 0
            while not stop.is_set():
                try:
                    e = await pod.open_request(f"acked {i}")
                except Exception:
                    return
                acked.add(e.id.hex())
                i += 1

        async def peer_writer() -> None:
            while not stop.is_set():
                await local.client.submit([author.write(
                    kinds.RequestOpened(title="p", category="food"), "network")])  # fmt: skip
                await asyncio.sleep(0.005)

        tasks = [asyncio.create_task(writer()), asyncio.create_task(peer_writer())]
        await asyncio.sleep(0.5)
        started = time.monotonic()
        served.proc.send_signal(sig)
        await asyncio.wait_for(served.proc.wait(), 12)
        took = time.monotonic() - started
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        stop.set()
        await served.stop(within=5)
    log_text = served.log_tail(20000)
    assert served.proc.returncode == 0, log_text[-1500:]
    assert "Traceback" not in log_text, log_text[-2500:]
    assert took < 10, took
    assert not [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
    for extra in ("-wal",):
        path = pod.config.ledger_path.with_name("ledger.db" + extra)
        assert not path.exists() or path.stat().st_size == 0, "WAL left behind"
    uri = f"file:{pod.config.ledger_path}?mode=ro"
    with sqlite3.connect(uri, uri=True) as db:
        ids = {bytes(r[0]).hex() for r in db.execute("SELECT id FROM events")}
    db.close()
    assert acked <= ids, len(acked - ids)
