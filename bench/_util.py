"""Helpers for figures that time big one-shot operations (an ingest, a sync) rather than
tight loops: wall + CPU stopwatches, round-robin rounds, RSS sampling, percentiles.

``bench.sample`` suits microbenchmarks: it calibrates a call count and warms up. An ingest
of 100,000 events into a fresh database is one op that needs setup (a new file) outside its
timing, so these figures measure each run themselves with :class:`Stopwatch` and run the
variants round-robin with :func:`rounds`, one run each per round, like ``sample`` does.
"""

from __future__ import annotations

import gc
import math
import os
import resource
import statistics
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def cpu_seconds() -> float:
    """CPU seconds so far of this process (every thread) and of its children that have
    ended (the ledger's verify workers, once it is closed); user + system, getrusage."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def rss_mb(pid: int | None = None) -> float:
    """Resident set size of this process (or ``pid``) now, in MiB (/proc; else psutil)."""
    try:
        with open(f"/proc/{pid or 'self'}/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE / 2**20
    except FileNotFoundError:
        return 0.0  # ``pid`` ended between listing and reading
    except OSError:
        import psutil

        return psutil.Process(pid).memory_info().rss / 2**20


def process_cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system) another running process has used so far (/proc; else
    psutil); NaN if it cannot be read (it ended), so that no figure is made of it."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (FileNotFoundError, IndexError, ValueError):
        return float("nan")
    except OSError:
        import psutil

        times = psutil.Process(pid).cpu_times()
        return times.user + times.system


def maxrss_mb() -> float:
    """High-water mark of this process's RSS in MiB (ru_maxrss: KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10


@dataclass(slots=True)
class Timed:
    """One run: ``ops`` done in ``wall`` seconds, burning ``cpu`` seconds of all threads."""

    wall: float
    cpu: float
    ops: int

    @property
    def rate(self) -> float:
        return self.ops / self.wall

    @property
    def cpu_us(self) -> float:
        return self.cpu / self.ops * 1e6

    @property
    def cpus(self) -> float:
        return self.cpu / self.wall if self.wall else 0.0


class Stopwatch:
    """``with Stopwatch() as sw: ...`` then ``sw.timed(ops)``; wall and process CPU time."""

    def __enter__(self) -> Stopwatch:
        self.wall = self.cpu = 0.0
        self._c, self._w = cpu_seconds(), time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self._w
        self.cpu = cpu_seconds() - self._c

    def timed(self, ops: int) -> Timed:
        return Timed(self.wall, self.cpu, ops)


async def rounds(
    variants: Mapping[str, Callable[[], Awaitable[Timed]]], repeats: int
) -> dict[str, list[Timed]]:
    """Run every variant once per round, ``repeats`` rounds, collecting garbage before each:
    variants compared by a ratio then share the same moments of a noisy machine."""
    out: dict[str, list[Timed]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, fn in variants.items():
            gc.collect()
            out[name].append(await fn())
    return out


def rates(runs: Sequence[Timed]) -> list[float]:
    return [r.rate for r in runs]


def cpu_us(runs: Sequence[Timed]) -> list[float]:
    return [r.cpu_us for r in runs]


def busy(runs: Sequence[Timed]) -> str:
    """Median CPUs kept busy (CPU time / wall time): did it use the second core?"""
    return f"~{statistics.median(r.cpus for r in runs):.2f} CPUs busy"


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100), nearest-rank: a value that was actually observed."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


class RssSampler:
    """Samples this process's RSS every ``interval`` seconds on a thread; ``peak`` is the
    highest seen since ``start()`` (unlike ru_maxrss, which cannot be reset).

    ``also``: a callable listing more process ids (a ledger's verify workers) whose RSS
    counts with ours in each sample; ``helpers_peak`` is the highest of their share."""

    def __init__(
        self, interval: float = 0.005, also: Callable[[], Iterable[int]] | None = None
    ) -> None:
        self.interval = interval
        self.also = also
        self.start_mb = self.peak = self.helpers_peak = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self) -> float:
        helpers = sum(rss_mb(pid) for pid in self.also()) if self.also else 0.0
        self.helpers_peak = max(self.helpers_peak, helpers)
        return rss_mb() + helpers

    def start(self) -> RssSampler:
        self.start_mb = self.peak = self._sample()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="bench-rss", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, self._sample())

    def stop(self) -> float:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.peak = max(self.peak, self._sample())
        return self.peak

    @property
    def growth(self) -> float:
        return self.peak - self.start_mb


def db_bytes(path: Path) -> int:
    """Bytes on disk of an SQLite database and its WAL and shared-memory files."""
    total = 0
    for suffix in ("", "-wal", "-shm"):
        p = Path(str(path) + suffix)
        if p.exists():
            total += p.stat().st_size
    return total


def remove_db(path: Path) -> None:
    """Delete an SQLite database and its WAL and shared-memory files."""
    for suffix in ("", "-wal", "-shm"):
        Path(str(path) + suffix).unlink(missing_ok=True)


def move_db(src: Path, dst: Path) -> None:
    """Move an SQLite database (closed) with its WAL and shared-memory files to ``dst``."""
    remove_db(dst)
    for suffix in ("", "-wal", "-shm"):
        p = Path(str(src) + suffix)
        if p.exists():
            p.rename(str(dst) + suffix)


def label(n: int) -> str:
    """A size as it appears in result names: 10k, 100k, 1M."""
    return f"{n // 1_000_000}M" if n >= 1_000_000 else f"{n // 1000}k"


def scale_env() -> bool:
    """True when ``PODLINK_BENCH_SCALE=1M``: figures add their million-event series."""
    return os.environ.get("PODLINK_BENCH_SCALE", "").strip().upper() in ("1M", "1000000")
