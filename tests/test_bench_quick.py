"""The benchmark harness runs and writes sane JSON. No timing is asserted: machines are noisy."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

FLOOR_NAMES = {
    "ed25519.sign",
    "ed25519.verify.raw",
    "ed25519.verify.VerifyKey",
    "ed25519.verify.podlink",
    "msgpack.header.encode",
    "msgpack.header.decode",
    "msgpack.wire.encode",
    "msgpack.wire.decode",
    "envelope.decode_event",
    "blake2b.payload",
    "blake2b.body",
    "decode+verify.raw",
    "decode+verify.podlink",
    "verify.threads1",
    "verify.threads2.batch1",
    "verify.threads2.batch16",
    "verify.threads2.batch128",
    "verify.split2.batch8",
    "verify.split2.batch16",
    "verify.split2.batch32",
    "verify.split2.batch64",
    "verify.split2.batch256",
    "verify.raw.threads1",
    "verify.raw.threads2.batch128",
}


def _bench(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PODLINK_BENCH_RESULTS=str(tmp_path / "results"))
    return subprocess.run(
        [sys.executable, "-m", "bench", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_quick_floor_writes_results(tmp_path: Path) -> None:
    out = tmp_path / "floor.json"
    done = _bench(tmp_path, "--quick", "--only", "floor", "--json", str(out))
    assert done.returncode == 0, done.stdout + done.stderr

    document = json.loads(out.read_text())
    assert json.loads((tmp_path / "results" / "latest.json").read_text()) == document
    assert document["meta"]["quick"] is True
    floor = document["figures"]["floor"]
    assert floor["error"] is None
    assert floor["peak_rss_mb"] > 0
    by_name = {r["name"]: r for r in floor["results"]}
    assert set(by_name) == FLOOR_NAMES
    for r in by_name.values():
        assert r["runs"] == 3, r
        assert 0 < r["min"] <= r["median"] <= r["max"] < math.inf, r
        if r["baseline"] is not None:
            assert r["baseline"] in by_name and r["ratio"] > 0, r
        if r["target"] is not None:
            assert isinstance(r["ok"], bool), r
    assert "decode+verify.podlink" in done.stdout  # the table was printed


def test_unknown_figure_is_a_usage_error(tmp_path: Path) -> None:
    done = _bench(tmp_path, "--only", "no-such-figure")
    assert done.returncode == 2
    assert "floor" in done.stderr  # names the figures there are
