"""The runner behind ``python -m bench``: find figures, run each, print a table, write JSON.

Each figure runs in a fresh interpreter by default (``--no-isolate`` to run in-process
while debugging), so its peak RSS is its own and no figure inherits another's heap,
threads or event loop.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import importlib
import inspect
import json
import os
import pkgutil
import platform
import resource
import subprocess
import sys
import tempfile
import time
import traceback
from importlib import metadata
from pathlib import Path
from typing import Any

import bench

BENCH_DIR = Path(bench.__file__).resolve().parent
ROOT = BENCH_DIR.parent
NOT_FIGURES = frozenset({"run"})  # bench/run.py is an entry point, not a figure
SCHEMA = 1


def figure_names() -> list[str]:
    """Every figure: ``bench/<name>.py`` without a leading underscore, sorted by name."""
    return sorted(
        m.name
        for m in pkgutil.iter_modules([str(BENCH_DIR)])
        if not m.name.startswith("_") and not m.ispkg and m.name not in NOT_FIGURES
    )


def results_dir() -> Path:
    """Where latest.json goes: ``$PODLINK_BENCH_RESULTS`` or ``bench/results``."""
    return Path(os.environ.get("PODLINK_BENCH_RESULTS") or BENCH_DIR / "results")


def _rss_mb() -> float:
    try:
        import psutil
    except ImportError:
        return float("nan")
    return psutil.Process().memory_info().rss / 2**20


def _maxrss_mb(who: int) -> float:
    # ru_maxrss is KiB on Linux, bytes on macOS.
    scale = 2**20 if sys.platform == "darwin" else 2**10
    return resource.getrusage(who).ru_maxrss / scale


def run_figure(name: str, quick: bool, *, isolated: bool) -> dict[str, Any]:
    """Import and run one figure here; return its record for the JSON file."""
    record: dict[str, Any] = {
        "name": name,
        "doc": "",
        "quick": quick,
        "error": None,
        "results": [],
        "rss_start_mb": _rss_mb(),
        "loadavg_start": list(os.getloadavg()),
    }
    start = time.perf_counter()
    try:
        module = importlib.import_module(f"bench.{name}")
        record["doc"] = ((module.__doc__ or "").strip().splitlines() or [""])[0]
        run = module.run
        out = asyncio.run(run(quick)) if inspect.iscoroutinefunction(run) else run(quick)
        record["results"] = [r.to_json() for r in out]
    except Exception:
        record["error"] = traceback.format_exc()
    record["seconds"] = time.perf_counter() - start
    record["loadavg_end"] = list(os.getloadavg())
    # In a fresh process the high-water mark is this figure's; in-process it is the run's.
    record["peak_rss_mb"] = _maxrss_mb(resource.RUSAGE_SELF)
    record["peak_rss_children_mb"] = _maxrss_mb(resource.RUSAGE_CHILDREN)
    record["rss_scope"] = "figure" if isolated else "process"
    return record


def _run_isolated(name: str, quick: bool) -> dict[str, Any]:
    fd, out = tempfile.mkstemp(prefix=f"bench-{name}-", suffix=".json")
    os.close(fd)
    try:
        cmd = [sys.executable, "-m", "bench", "--worker", name, "--worker-out", out]
        if quick:
            cmd.append("--quick")
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        proc = subprocess.run(cmd, cwd=ROOT, env=env, check=False)
        try:
            record = json.loads(Path(out).read_text())
        except (OSError, ValueError):
            record = {"name": name, "quick": quick, "results": []}
            record["error"] = f"worker exited with status {proc.returncode} and no results"
        return record
    finally:
        with contextlib.suppress(OSError):
            os.unlink(out)


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip()


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def machine_meta(quick: bool) -> dict[str, Any]:
    """What the numbers depend on: code, interpreter, libraries, CPU, load."""
    affinity = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    return {
        "schema": SCHEMA,
        "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "quick": quick,
        "argv": sys.argv[1:],
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(affinity) if affinity is not None else None,
        "loadavg": list(os.getloadavg()),
        "versions": {d: _version(d) for d in ("podlink", "pynacl", "msgspec", "aiosqlite")},
    }


def _fmt(x: float | None) -> str:
    if x is None:
        return ""
    ax = abs(x)
    if ax >= 1000:
        return f"{x:,.0f}"
    if ax >= 100:
        return f"{x:.1f}"
    if ax >= 1:
        return f"{x:.2f}"
    return f"{x:.3g}"


def _ok(value: bool | None) -> str:
    return "" if value is None else ("yes" if value else "NO")


def _rows(figures: dict[str, dict[str, Any]]) -> list[tuple[str, list[list[str]], str]]:
    out = []
    for name, fig in figures.items():
        rows = [
            [
                r["name"],
                _fmt(r["median"]),
                r["unit"],
                _fmt(r["min"]),
                _fmt(r["max"]),
                str(r["runs"]),
                "" if r.get("ratio") is None else f"{r['ratio']:.2f}",
                r.get("baseline") or "",
                r.get("target") or "",
                _ok(r.get("ok")),
                r.get("note") or "",
            ]
            for r in fig.get("results", [])
        ]
        load = fig.get("loadavg_start", [None])[0], fig.get("loadavg_end", [None])[0]
        footer = (
            f"{name}: {fig.get('seconds', 0):.1f} s, peak RSS {_fmt(fig.get('peak_rss_mb'))} MB"
            f" ({fig.get('rss_scope', '?')}), load {_fmt(load[0])} -> {_fmt(load[1])}"
        )
        if fig.get("error"):
            footer += "\n" + fig["error"].rstrip()
        out.append((name, rows, footer))
    return out


_COLUMNS = (
    "result", "median", "unit", "min", "max", "runs", "ratio", "baseline", "target", "ok", "note"
)  # fmt: skip


def print_table(figures: dict[str, dict[str, Any]], meta: dict[str, Any]) -> None:
    """Print every figure's results as one table (rich if available, else plain text)."""
    title = (
        f"podlink bench ({'quick' if meta['quick'] else 'full'}) - {meta['cpu']}, "
        f"{meta['cpus_usable']} CPUs, Python {meta['python']}, "
        f"commit {(meta['git_commit'] or '?')[:10]}{' (dirty)' if meta['git_dirty'] else ''}"
    )
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        print(title)
        for _name, rows, footer in _rows(figures):
            print("  ".join(_COLUMNS))
            for row in rows:
                print("  ".join(row))
            print(footer)
        return
    console = Console(width=None if sys.stdout.isatty() else 200)
    table = Table(title=title, title_justify="left")
    for col in _COLUMNS:
        numeric = col in ("median", "min", "max", "runs", "ratio")
        table.add_column(col, justify="right" if numeric else "left", overflow="fold")
    footers = []
    for _name, rows, footer in _rows(figures):
        for row in rows:
            table.add_row(*row)
        table.add_section()
        footers.append(footer)
    console.print(table)
    for footer in footers:
        console.print(footer, highlight=False, markup=False)


def write_json(path: Path, document: dict[str, Any]) -> None:
    """Write atomically (``.tmp`` then rename) so a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(document, indent=2, allow_nan=False, default=str) + "\n")
    os.replace(tmp, path)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description="Run podlink's benchmark figures, print a table, write JSON results.",
    )
    p.add_argument("--quick", action="store_true", help="3 short repeats: a smoke run")
    p.add_argument(
        "--only", nargs="+", action="extend", metavar="NAME", help="run only these figures"
    )
    p.add_argument("--json", type=Path, metavar="PATH", help="also write the results here")
    p.add_argument("--list", action="store_true", help="list the figures and exit")
    p.add_argument(
        "--no-isolate", action="store_true", help="run figures in this process (debugging)"
    )
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--worker-out", type=Path, help=argparse.SUPPRESS)
    return p


def _clean(value: Any) -> Any:
    """NaN/inf are not JSON: write them as null."""
    if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns 0 when every figure ran, 1 if one failed, 2 on usage errors."""
    args = _parser().parse_args(argv)
    if args.worker:
        write_json(args.worker_out, _clean(run_figure(args.worker, args.quick, isolated=True)))
        return 0
    names = figure_names()
    if args.list:
        print("\n".join(names))
        return 0
    if args.only:
        unknown = sorted(set(args.only) - set(names))
        if unknown:
            print(
                f"unknown figure(s): {', '.join(unknown)}; have: {', '.join(names)}",
                file=sys.stderr,
            )
            return 2
        names = [n for n in names if n in args.only]
    meta = machine_meta(args.quick)
    figures: dict[str, dict[str, Any]] = {}
    for name in names:
        print(f"running {name} ({'quick' if args.quick else 'full'}) ...", file=sys.stderr)
        if args.no_isolate:
            figures[name] = run_figure(name, args.quick, isolated=False)
        else:
            figures[name] = _run_isolated(name, args.quick)
    document = _clean({"meta": meta, "figures": figures})
    print_table(figures, meta)
    for path in (results_dir() / "latest.json", args.json):
        if path is not None:
            write_json(path, document)
            print(f"wrote {path}", file=sys.stderr)
    return 1 if any(f.get("error") for f in figures.values()) else 0
