"""podlink benchmarks: one module per figure, run by ``python -m bench``.

A figure is a module ``bench/<name>.py`` (no leading underscore) that defines
``run(quick: bool) -> list[Result]``, plain or ``async``. Helpers shared by figures live in
underscore modules (``bench/_corpus.py``); the runner is ``bench/_cli.py``. See README.md.

This module holds what a figure needs: :class:`Result`, the timing helpers and the
quick/full parameters. Machines are shared and noisy, so a figure never asserts a time:
it reports medians of repeats, and ratios to raw baselines measured in the same run.
"""

from __future__ import annotations

import gc
import math
import operator
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass

__all__ = [
    "Params",
    "Result",
    "check_target",
    "micros",
    "params",
    "per_second",
    "result",
    "sample",
]


@dataclass(frozen=True, slots=True)
class Params:
    """How hard a figure works: repeats per series and the minimum seconds per repeat."""

    quick: bool
    repeats: int
    min_time: float


def params(quick: bool) -> Params:
    """Quick: 3 short repeats (a smoke test, CI). Full: 7 repeats long enough to trust."""
    if quick:
        return Params(quick=True, repeats=3, min_time=0.02)
    return Params(quick=False, repeats=7, min_time=0.25)


@dataclass(slots=True)
class Result:
    """One line of a figure: the median of ``runs`` repeats, with their min and max.

    ``ratio`` is this series over ``baseline`` (another result of the same figure, same
    unit), taken per repeat and then the median, so slow drift of a shared machine cancels.
    ``target`` (e.g. ``">= 1.3"``) is checked against ``ratio`` when there is one, else
    against ``median``; ``ok`` says whether it was met. Nothing is ever asserted.
    """

    name: str
    unit: str
    median: float
    min: float
    max: float
    runs: int
    baseline: str | None = None
    ratio: float | None = None
    target: str | None = None
    ok: bool | None = None
    note: str = ""

    def to_json(self) -> dict[str, object]:
        return asdict(self)


_OPS: Mapping[str, Callable[[float, float], bool]] = {
    ">=": operator.ge,
    "<=": operator.le,
    ">": operator.gt,
    "<": operator.lt,
}


def check_target(target: str, value: float) -> bool:
    """True if ``value`` meets a target written ``"<op> <number>"``, e.g. ``">= 1.3"``."""
    text = target.strip()
    for op in sorted(_OPS, key=len, reverse=True):
        if text.startswith(op):
            return _OPS[op](value, float(text[len(op) :]))
    raise ValueError(f"target must look like '>= 1.3', got {target!r}")


def result(
    name: str,
    unit: str,
    samples: list[float],
    *,
    baseline: tuple[str, list[float]] | None = None,
    target: str | None = None,
    note: str = "",
) -> Result:
    """Summarise repeat samples; with ``baseline=(name, samples)`` add the paired ratio."""
    ratio = None
    if baseline is not None:
        base = baseline[1]
        if len(base) == len(samples):
            ratio = statistics.median(s / b for s, b in zip(samples, base, strict=True))
        else:
            ratio = statistics.median(samples) / statistics.median(base)
    checked = ratio if ratio is not None else statistics.median(samples)
    return Result(
        name=name,
        unit=unit,
        median=statistics.median(samples),
        min=min(samples),
        max=max(samples),
        runs=len(samples),
        baseline=baseline[0] if baseline else None,
        ratio=ratio,
        target=target,
        ok=check_target(target, checked) if target else None,
        note=note,
    )


def _timed(fn: Callable[[], int], calls: int) -> tuple[float, int]:
    gc.collect()
    ops = 0
    start = time.perf_counter()
    for _ in range(calls):
        ops += fn()
    return time.perf_counter() - start, ops


def sample(
    variants: Mapping[str, Callable[[], int]], p: Params, *, repeats: int | None = None
) -> dict[str, list[float]]:
    """Time each variant; return its seconds per op, one sample per repeat.

    A variant is a callable that does a batch of work and returns how many ops it did
    (events verified, say). Each is first called once to warm up and to find how many
    calls fill ``p.min_time``; then the variants run round-robin, one timed block each
    per round, so variants compared by a ratio share the same moments of a noisy machine.
    """
    calls: dict[str, int] = {}
    for name, fn in variants.items():
        elapsed, _ = _timed(fn, 1)
        calls[name] = max(1, math.ceil(p.min_time / max(elapsed, 1e-9)))
    out: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats or p.repeats):
        for name, fn in variants.items():
            elapsed, ops = _timed(fn, calls[name])
            out[name].append(elapsed / ops)
    return out


def per_second(seconds_per_op: list[float]) -> list[float]:
    """Turn seconds-per-op samples into ops-per-second samples."""
    return [1.0 / s for s in seconds_per_op]


def micros(seconds_per_op: list[float]) -> list[float]:
    """Turn seconds-per-op samples into microseconds-per-op samples."""
    return [s * 1e6 for s in seconds_per_op]
