"""Output review: what `podlink status`, `peer list` and `sync` show when links are not
healthy, and relative times at their edges. Every test but the last failed on a genuine
bug its docstring describes (fixed with it); the last pins a corner found correct."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from podlink.cli.output import ago_ms
from tests.cli.conftest import Network, Pod, eventually, make_pod, running

NOW_MS = 1_750_000_000_000


def peer_row(pod: Pod, key: str) -> dict:
    return next(p for p in pod.json("peer", "list") if p["pod"] == key)


@contextlib.contextmanager
def silent_peer() -> Iterator[str]:
    """A 'node' on 127.0.0.1 that accepts connections and never answers a byte."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    held: list[socket.socket] = []
    done = threading.Event()

    def accept() -> None:
        server.settimeout(0.1)
        while not done.is_set():
            with contextlib.suppress(OSError):
                held.append(server.accept()[0])

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.getsockname()[1]}"
    finally:
        done.set()
        thread.join(2)
        for conn in held:
            conn.close()
        server.close()


# ---------------------------------------------------------------- peer list after sync


def test_sync_leaves_a_live_peer_shown_as_syncing(network: Network) -> None:
    """`podlink sync` on a pod whose link is live (streaming): afterwards `peer list` shows
    STATUS 'syncing' (with connected=true) for good, until the stream happens to drop.
    PeerLink.pull sets state='syncing' and nothing sets it back when the stream is up."""
    maple, riverside = network.maple, network.riverside
    key = riverside.key
    eventually(lambda: peer_row(maple, key)["status"] == "live")
    maple("sync")
    time.sleep(0.3)
    row = peer_row(maple, key)
    assert row["connected"] is True
    assert row["status"] == "live", row
    assert "syncing" not in maple("peer", "list").stdout


# ---------------------------------------------------------------- a peer that hangs


@pytest.fixture
def impatient(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Pod]:
    monkeypatch.setenv("PODLINK_PEER_TIMEOUT_S", "0.4")
    pod = make_pod(tmp_path, "Impatient")
    with running(pod):
        yield pod


def test_sync_with_a_hanging_peer_says_only_timeouterror(impatient: Pod) -> None:
    """A peer that accepts the connection and never answers: `podlink sync` ends with
    'Error: could not sync with 1 of 1 peer(s); Silent: TimeoutError: ' and `peer list`
    warns 'Silent: TimeoutError: ' -- an empty reason. asyncio.wait_for raises a
    TimeoutError with no message, formatted as f"{type(err).__name__}: {err}"."""
    with silent_peer() as url:
        impatient("peer", "add", url, "--key", "A" * 43, "--name", "Silent")
        result = impatient("sync", code=1)
        error = result.stderr.strip().splitlines()[-1]
        assert "Silent" in error
        assert not error.rstrip().endswith(":"), error
        row = impatient.json("peer", "list")[0]
        assert row["last_error"] and not row["last_error"].rstrip().endswith(":"), row


# ---------------------------------------------------------------- relative times


def test_45_seconds_ahead_reads_as_a_minute_ago() -> None:
    """A timestamp 45 s in the future (a peer's clock slightly ahead) shows '1 min ago':
    output.ago_ms takes ``ahead = delta < -45`` but ``delta < 45`` for 'just now'."""
    assert ago_ms(NOW_MS + 45_000, NOW_MS) != "1 min ago"
    assert ago_ms(NOW_MS + 45_000, NOW_MS) == "in 1 min"


def test_relative_times_at_their_edges() -> None:
    """Corners found correct: never, just now, minute/hour/day switches, the future."""
    assert ago_ms(None, NOW_MS) == ago_ms(0, NOW_MS) == "never"
    assert ago_ms(NOW_MS - 44_000, NOW_MS) == "just now"
    assert ago_ms(NOW_MS + 44_000, NOW_MS) == "just now"
    assert ago_ms(NOW_MS - 45_000, NOW_MS) == "1 min ago"
    assert ago_ms(NOW_MS - 90 * 60_000, NOW_MS) == "2 h ago"
    assert ago_ms(NOW_MS - 36 * 3_600_000, NOW_MS) == "2 days ago"
    assert ago_ms(NOW_MS + 3 * 3_600_000, NOW_MS) == "in 3 h"
