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


# Every other figure, by the names its --quick run reports (quick corpora are smaller, so
# size-labelled names differ from a full run's: queries at 2k/5k, scale at 1k/3k).
QUICK_NAMES = {
    "append": {
        f"append.{side}.{shape}{stat}"
        for side in ("ledger", "http")
        for shape in ("serial", "concurrent8")
        for stat in ("", ".p50", ".p99")
    },
    "ingest": {
        "ingest.raw",
        "ingest.ledger.workers1",
        "ingest.ledger.workers2",
        "ingest.raw.cpu",
        "ingest.ledger.workers1.cpu",
        "ingest.ledger.workers2.cpu",
        "ingest.ledger.unchecked",
        "ingest.ledger.unchecked.cpu",
        *(f"ingest.ledger.batch{b}{c}" for b in (1, 10, 100, 1000) for c in ("", ".cpu")),
        "rebuild",
        "ingest.rss.peak",
        "ingest.rss.peak.onecall",
    },
    "propagation": {
        f"propagation.{shape}{stat}" for shape in ("line5", "ring10") for stat in ("", ".p99")
    },
    "queries": {
        f"queries.{q}.{n}"
        for q in ("open_requests", "request", "members", "match")
        for n in ("2k", "5k")
    },
    "scale": {
        f"scale.{what}.{n}"
        for what in ("ingest", "db_bytes", "open_requests", "ingest.rss", "sync.rss")
        for n in ("1k", "3k")
    },
    "shapes": {
        f"shapes.{s}"
        for s in ("ordinary", "roster", "backwards", "one-request", "ordinary.streamed",
                  "roster.streamed", "one-request.streamed")
    },
    "sync": {
        "sync.ingest",
        "sync.pull",
        "sync.ingest.cpu",
        "sync.pull.cpu.b",
        "sync.pull.cpu.a",
        "sync.wire.raw",
        "sync.wire",
        "sync.idle",
        "sync.rss.peak",
    },
}
UNITS = {"ops/s", "us/event", "us/op", "ms", "MB", "B", "B/event"}


def _bench(tmp_path: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PODLINK_BENCH_RESULTS=str(tmp_path / "results"))
    env.pop("PODLINK_BENCH_SCALE", None)  # never the million-event series here
    return subprocess.run(
        [sys.executable, "-m", "bench", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _check_results(name: str, figure: dict) -> dict[str, dict]:
    """A figure ran, and every line is well formed with positive, finite numbers."""
    assert figure["error"] is None, figure["error"]
    assert figure["peak_rss_mb"] > 0
    by_name = {r["name"]: r for r in figure["results"]}
    assert len(by_name) == len(figure["results"]), f"{name}: duplicate result names"
    for r in by_name.values():
        assert r["unit"] in UNITS, r
        assert r["runs"] >= 1, r
        assert 0 < r["min"] <= r["median"] <= r["max"] < math.inf, r
        if r["baseline"] is not None:
            assert r["baseline"] in by_name, r
            assert r["ratio"] is not None and 0 < r["ratio"] < math.inf, r
        if r["target"] is not None:
            assert isinstance(r["ok"], bool), r
    return by_name


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


def test_quick_every_figure_runs(tmp_path: Path) -> None:
    """--quick of every figure but floor (tested above) in one run: the CI smoke test.

    The budget is well under a minute on 2 shared vCPUs; the timeout only stops a hang."""
    listed = _bench(tmp_path, "--list").stdout.split()
    others = [name for name in listed if name != "floor"]
    assert set(others) == set(QUICK_NAMES), "a new figure? add its quick names above"
    out = tmp_path / "all.json"
    done = _bench(tmp_path, "--quick", "--only", *others, "--json", str(out), timeout=240)
    assert done.returncode == 0, done.stdout[-5000:] + done.stderr[-5000:]

    document = json.loads(out.read_text())
    assert document["meta"]["quick"] is True
    assert set(document["figures"]) == set(others)
    for name, figure in document["figures"].items():
        by_name = _check_results(name, figure)
        assert set(by_name) == QUICK_NAMES[name], name
    assert (tmp_path / "results" / "scale.md").exists()  # the scale table and chart
    assert (tmp_path / "results" / "scale.svg").read_text().startswith("<svg")
