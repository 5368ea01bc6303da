"""Scale: ingest rate, DB bytes/event, open-requests time, peak RSS at 10k, 100k (1M) events.

The million-event size runs only with ``PODLINK_BENCH_SCALE=1M``. For each size N:
``Ledger.ingest`` of the roster + N events by 50 organizers (network lane) into a fresh
node's ledger, round-robin across sizes (ratio: this size's rate over
the smallest size's, same round); the ledger's bytes on disk per event after a WAL
checkpoint; ``list_requests(status='open', limit=5000)``; peak RSS of a fresh interpreter
ingesting the corpus read from disk 10,000 events per call; and peak RSS of a fresh node B
pulling all N from a node A that holds them (both child processes). Memory should stay
flat (``< 200`` MB) at any size. Writes ``scale.md`` and ``scale.svg`` (a hand-written
chart: matplotlib is not a dependency) next to ``latest.json``.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import statistics
import tempfile
import time
from pathlib import Path

from bench import Result, result
from bench._child import ingest_in_child, write_wires
from bench._cli import results_dir
from bench._corpus import pod_wires
from bench._nodes import ChildNode, finish_fresh_node, make_home, pull_into_fresh_node
from bench._util import Stopwatch, Timed, db_bytes, label, rates, rounds, scale_env
from podlink.ledger import queries
from podlink.ledger.ledger import Ledger

AUTHORS = 50


def _sizes(quick: bool) -> tuple[list[int], int]:
    """Sizes, and timed ingest rounds."""
    if quick:
        return [1_000, 3_000], 1
    return [10_000, 100_000] + ([1_000_000] if scale_env() else []), 3


async def _open_requests_ms(ledger: Ledger, calls: int = 5) -> float:
    times = []
    for _ in range(calls):
        t = time.perf_counter()
        await queries.list_requests(ledger.reader, status="open", limit=5000)
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


async def run(quick: bool) -> list[Result]:
    sizes, repeats = _sizes(quick)
    if scale_env() and not quick:
        repeats = 1  # a million-event ingest takes minutes; one round of each size
    table: dict[int, dict[str, float]] = {n: {} for n in sizes}
    out: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        tmpdir = Path(tmp)
        corpora = {n: pod_wires(n, authors=AUTHORS, lane="network")
                   for n in sizes}  # fmt: skip
        homes: dict[int, Path] = {}
        bytes_per: dict[int, list[float]] = {n: [] for n in sizes}
        query_ms: dict[int, list[float]] = {n: [] for n in sizes}
        counter = iter(range(10_000))

        def ingest(n: int) -> object:
            async def go() -> Timed:
                home = tmpdir / f"A{n}-{next(counter)}"
                config = await make_home(home, f"A{n}")
                ledger = await Ledger.open(config.ledger_path)
                try:
                    with Stopwatch() as sw:
                        results = await ledger.ingest(corpora[n], source="peer")
                    await ledger.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                    query_ms[n].append(await _open_requests_ms(ledger))
                    events = ledger.next_pos - 1
                finally:
                    await ledger.close()
                if sum(r.status == "stored" for r in results) != len(corpora[n]):
                    raise AssertionError("corpus was not stored whole")
                bytes_per[n].append(db_bytes(config.ledger_path) / events)
                old = homes.get(n)
                homes[n] = home  # the last round's home serves the sync below
                if old is not None:
                    _remove_tree(old)
                return sw.timed(len(corpora[n]))

            return go

        t = await rounds({str(n): ingest(n) for n in sizes}, repeats)  # type: ignore[misc]
        small = sizes[0]
        base = (f"scale.ingest.{label(small)}", rates(t[str(small)]))

        ingest_rss: dict[int, float] = {}
        sync_rss: dict[int, float] = {}
        sync_rate: dict[int, float] = {}
        for n in sizes:
            corpus = tmpdir / f"corpus{n}.bin"
            write_wires(corpus, corpora[n])
            expect = len(corpora[n]) + 2  # the corpus and A's two founding events
            corpora[n] = []
            report = await asyncio.to_thread(ingest_in_child, corpus, tmpdir / f"rss{n}.db",
                                             10_000)  # fmt: skip
            ingest_rss[n] = report["rss_peak_mb"]  # with its verify workers, sampled together
            corpus.unlink()
            a = await ChildNode.start(await _config(homes[n]))
            try:
                pulled = await pull_into_fresh_node(
                    a, tmpdir / f"B{n}", expect, wait_s=30.0 if quick else max(120.0, expect / 100)
                )
                final = await finish_fresh_node(a, pulled)
            finally:
                with contextlib.suppress(Exception):
                    await a.stop()
            sync_rss[n] = final["rss_peak_mb"]  # with its verify workers, sampled together
            sync_rate[n] = expect / final["elapsed"]

        for n in sizes:
            runs = t[str(n)]
            row = table[n]
            row["ingest_ops_s"] = statistics.median(rates(runs))
            row["db_bytes_per_event"] = statistics.median(bytes_per[n])
            row["open_requests_ms"] = statistics.median(query_ms[n])
            row["ingest_rss_mb"] = ingest_rss[n]
            row["sync_rss_mb"] = sync_rss[n]
            row["sync_ops_s"] = sync_rate[n]
            lab = label(n)
            out += [
                result(f"scale.ingest.{lab}", "ops/s", rates(runs),
                       baseline=base if n != small else None,
                       note=f"Ledger.ingest of {n:,} events + roster into a fresh node's "
                       f"ledger; ratio: over the {label(small)} rate, same round"),
                result(f"scale.db_bytes.{lab}", "B/event", bytes_per[n],
                       note="ledger.db after a WAL checkpoint, per event (log, indexes, "
                       "feeds, projections)"),
                result(f"scale.open_requests.{lab}", "ms", query_ms[n],
                       note="list_requests(status='open', limit=5000), median of 5 calls "
                       "per build"),
                result(f"scale.ingest.rss.{lab}", "MB", [ingest_rss[n]], target="< 200",
                       note="peak RSS, fresh interpreter, corpus read from disk 10,000 "
                       "events per ingest() call; with its verify workers, sampled together"),
                result(f"scale.sync.rss.{lab}", "MB", [sync_rss[n]], target="< 200",
                       note=f"peak RSS (sampled every 10 ms) of a fresh node pulling all "
                       f"{n:,} from a peer, with its verify workers; it pulled "
                       f"{sync_rate[n]:,.0f} events/s"),
            ]  # fmt: skip
    _write_table(table)
    _write_svg(table)
    write_png(table)
    return out


async def _config(home: Path) -> object:
    from podlink.node.config import load_config

    return load_config(home, env={})


def _remove_tree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


# ---------------------------------------------------------------- table and chart

COLUMNS = (
    ("ingest_ops_s", "ingest (events/s)"),
    ("db_bytes_per_event", "DB bytes/event"),
    ("open_requests_ms", "open requests (ms)"),
    ("ingest_rss_mb", "ingest peak RSS (MB)"),
    ("sync_rss_mb", "sync peak RSS (MB)"),
    ("sync_ops_s", "sync pull (events/s)"),
)


def _write_table(table: dict[int, dict[str, float]]) -> None:
    lines = ["| events | " + " | ".join(title for _, title in COLUMNS) + " |",
             "| ---: | " + " | ".join("---:" for _ in COLUMNS) + " |"]  # fmt: skip
    for n, row in table.items():
        cells = [f"{row[key]:,.1f}" if row[key] < 100 else f"{row[key]:,.0f}" for key, _ in COLUMNS]
        lines.append(f"| {n:,} | " + " | ".join(cells) + " |")
    path = results_dir() / "scale.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def _write_svg(table: dict[int, dict[str, float]]) -> None:
    """Four small panels, log-scaled event counts on x: a plain SVG, no plotting library."""
    panels = [COLUMNS[0], COLUMNS[1], COLUMNS[2], ("mem", "peak RSS (MB): ingest, sync")]
    w, h, pad = 300, 200, 40
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{2 * w}" height="{2 * h + 30}" '
             'font-family="sans-serif" font-size="11">',
             '<text x="10" y="18" font-size="13">podlink scale: '
             f'{", ".join(f"{n:,}" for n in table)} events</text>']  # fmt: skip
    sizes = list(table)
    xs = [math.log10(n) for n in sizes]
    x_lo, x_hi = min(xs) - 0.2, max(xs) + 0.2
    for i, (key, title) in enumerate(panels):
        ox, oy = (i % 2) * w, 30 + (i // 2) * h
        series = (
            [("ingest_rss_mb", "#1f77b4"), ("sync_rss_mb", "#d62728")]
            if key == "mem"
            else [(key, "#1f77b4")]
        )
        values = [table[n][k] for k, _ in series for n in sizes]
        y_hi = max(values) * 1.15 or 1.0
        if key == "mem":
            y_hi = max(y_hi, 220.0)

        def px(x: float, ox: int = ox) -> float:
            return ox + pad + (x - x_lo) / (x_hi - x_lo) * (w - 2 * pad)

        def py(y: float, oy: int = oy, y_hi: float = y_hi) -> float:
            return oy + h - pad + 10 - y / y_hi * (h - 2 * pad)

        parts.append(f'<text x="{ox + pad}" y="{oy + 22}">{title}</text>')
        parts.append(f'<line x1="{px(x_lo)}" y1="{py(0)}" x2="{px(x_hi)}" y2="{py(0)}" '
                     'stroke="#888"/>')  # fmt: skip
        parts.append(f'<line x1="{px(x_lo)}" y1="{py(0)}" x2="{px(x_lo)}" y2="{py(y_hi)}" '
                     'stroke="#888"/>')  # fmt: skip
        for n, x in zip(sizes, xs, strict=True):
            parts.append(f'<text x="{px(x)}" y="{py(0) + 14}" text-anchor="middle">'
                         f"{label(n)}</text>")  # fmt: skip
        parts.append(f'<text x="{px(x_lo) - 4}" y="{py(y_hi) + 4}" text-anchor="end">'
                     f"{y_hi:,.0f}</text>")  # fmt: skip
        if key == "mem":
            parts.append(f'<line x1="{px(x_lo)}" y1="{py(200)}" x2="{px(x_hi)}" y2="{py(200)}" '
                         'stroke="#999" stroke-dasharray="4 3"/>')  # fmt: skip
        for k, colour in series:
            pts = [(px(x), py(table[n][k])) for n, x in zip(sizes, xs, strict=True)]
            path = " ".join(f"{x:.1f},{y:.1f}" for x, y in pts)
            parts.append(f'<polyline points="{path}" fill="none" stroke="{colour}" '
                         'stroke-width="2"/>')  # fmt: skip
            for (x, y), n in zip(pts, sizes, strict=True):
                v = table[n][k]
                parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{colour}"/>')
                parts.append(f'<text x="{x + 5:.1f}" y="{y - 5:.1f}" fill="{colour}">'
                             f"{v:,.0f}</text>")  # fmt: skip
    parts.append("</svg>")
    (results_dir() / "scale.svg").write_text("\n".join(parts) + "\n")


def write_png(table: dict[int, dict[str, float]]) -> bool:
    """scale.png with matplotlib when it is installed (`pip install -e '.[bench]'`)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    sizes = list(table)
    fig, axes = plt.subplots(2, 2, figsize=(9, 6.5))
    panels = [("ingest_ops_s", "ingest (events/s)"), ("db_bytes_per_event", "DB bytes/event"),
              ("open_requests_ms", "open requests (ms)"), (None, "peak RSS (MB)")]  # fmt: skip
    for ax, (key, title) in zip(axes.flat, panels, strict=True):
        if key is None:
            ax.plot(sizes, [table[n]["ingest_rss_mb"] for n in sizes], "o-", label="ingest")
            ax.plot(sizes, [table[n]["sync_rss_mb"] for n in sizes], "s-", label="sync (node B)")
            ax.axhline(200, color="grey", linestyle=":", label="target 200 MB")
            ax.legend(fontsize=8)
        else:
            ax.plot(sizes, [table[n][key] for n in sizes], "o-")
        ax.set_xscale("log")
        ax.set_ylim(bottom=0)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("events in the ledger", fontsize=8)
    fig.suptitle("podlink: cost as the log grows", fontsize=11)
    fig.tight_layout()
    fig.savefig(results_dir() / "scale.png", dpi=100)
    plt.close(fig)
    return True


def _table_from_json(path: Path) -> dict[int, dict[str, float]]:
    """Rebuild the scale table from a bench JSON (to redraw the chart without a rerun)."""
    import json

    results = {r["name"]: r["median"] for fig in json.loads(path.read_text())["figures"].values()
               for r in fig.get("results", [])}  # fmt: skip
    table: dict[int, dict[str, float]] = {}
    for lab, n in (("10k", 10_000), ("100k", 100_000), ("1M", 1_000_000)):
        if f"scale.ingest.{lab}" in results:
            table[n] = {
                "ingest_ops_s": results[f"scale.ingest.{lab}"],
                "db_bytes_per_event": results[f"scale.db_bytes.{lab}"],
                "open_requests_ms": results[f"scale.open_requests.{lab}"],
                "ingest_rss_mb": results[f"scale.ingest.rss.{lab}"],
                "sync_rss_mb": results[f"scale.sync.rss.{lab}"],
            }
    return table


if __name__ == "__main__":  # python -m bench.scale RESULTS.json: redraw scale.png
    import sys

    drawn = write_png(_table_from_json(Path(sys.argv[1])))
    print("wrote scale.png" if drawn else "matplotlib is not installed: pip install matplotlib")
