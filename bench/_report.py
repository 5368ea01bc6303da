"""Markdown tables of a bench run's JSON, as docs/performance.md shows them.

    python -m bench._report RUN.json                     # targets + one table per figure
    python -m bench._report RUN.json --before OLD.json   # and a before/after table first

Not a figure (the leading underscore keeps ``bench/_cli.py``'s discovery away from it).
Every number comes from the JSON; the lists below only choose and label rows.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from bench._cli import _fmt

# (label, result, results shown in brackets as "label: value") for the headline table.
HEADLINE = (
    ("ingest, 1 verify worker / raw", "ingest.ledger.workers1", ()),
    ("ingest, 2 verify workers / raw", "ingest.ledger.workers2", ()),
    ("sync: pull / B's own ingest", "sync.pull", ()),
    ("sync: wire bytes / raw event bytes", "sync.wire", ()),
    ("sync: one idle round", "sync.idle", ()),
    ("propagation, line of 5, p50", "propagation.line5", (("p99", "propagation.line5.p99"),)),
    ("peak RSS, ingest of 100k (streamed)", "ingest.rss.peak", (("10k", "scale.ingest.rss.10k"),)),
    ("peak RSS, sync of 100k (node B)", "scale.sync.rss.100k", (("10k", "scale.sync.rss.10k"),)),
)

# (label, result or "figure:field", the change that moved it) for --before: this round's
# changes (session 5, 890b584..; docs/performance.md names each commit).
COMPARED = (
    ("ingest, 1 worker / raw", "ingest.ledger.workers1",
     "frames pipelined to the verify process, two batches checked ahead (c2ec306)"),
    ("ingest, 2 workers / raw", "ingest.ledger.workers2", "the same"),
    ("ingest, signatures unchecked / raw (ceiling)", "ingest.ledger.unchecked",
     "none aimed at it: the bookkeeping alone"),
    ("ingest CPU, 1 worker", "ingest.ledger.workers1.cpu", "the same"),
    ("ingest CPU, 2 workers", "ingest.ledger.workers2.cpu", "the same"),
    ("ingest CPU, signatures unchecked", "ingest.ledger.unchecked.cpu", "none aimed at it"),
    ("raw ingest CPU (control)", "ingest.raw.cpu", "none: code unchanged; the machine"),
    ("threads2 / threads1, raw verify (control)", "verify.raw.threads2.batch128",
     "none: code unchanged; the machine"),
    ("append, 8 submitters, direct", "append.ledger.concurrent8", "none aimed at it"),
    ("append, 8 submitters, HTTP", "append.http.concurrent8", "none aimed at it"),
    ("append, one submitter, direct (control)", "append.ledger.serial", "none aimed at it"),
    ("sync: pull / B's ingest", "sync.pull",
     "none aimed at it (pull checks one page at a time, not two batches ahead)"),
    ("open_requests, 100k", "queries.open_requests.100k", "none aimed at it"),
    ("propagation, line of 5, p50", "propagation.line5", "none aimed at it"),
    ("peak RSS, ingest of 100k", "ingest.rss.peak", "none aimed at it (a second batch ahead)"),
    ("peak RSS, node B in a 100k sync", "scale.sync.rss.100k", "none aimed at it"),
)  # fmt: skip

COLUMNS = ("result", "median", "unit", "min", "max", "runs", "ratio", "baseline", "target", "ok")


def _results(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["name"]: r for fig in doc["figures"].values() for r in fig.get("results", [])}


def _ok(ok: bool | None) -> str:
    return "" if ok is None else ("yes" if ok else "**NO**")


def _unit(r: dict[str, Any]) -> str:
    return "events/s" if r["unit"] == "ops/s" else r["unit"]


def _value(r: dict[str, Any]) -> str:
    return f"{_fmt(r['median'])} {_unit(r)}"


def headline(doc: dict[str, Any]) -> list[str]:
    res = _results(doc)
    lines = ["| figure | target | result | met |", "| --- | --- | --- | --- |"]
    for label, name, extras in HEADLINE:
        if name not in res or any(n not in res for _, n in extras):
            continue  # a partial run (--only): no headline row for what it did not measure
        r = res[name]
        if r.get("baseline"):
            base = res[r["baseline"]]
            text = f"{r['ratio']:.2f} ({_fmt(r['median'])} vs {_fmt(base['median'])} {_unit(r)})"
        else:
            text = _value(r)
        if extras:
            text += " (" + ", ".join(f"{k}: {_value(res[n])}" for k, n in extras) + ")"
        target = r["target"] if r.get("baseline") else f"{r['target']} {r['unit']}"
        met = "yes" if r["ok"] else "**no**"
        lines.append(f"| {label} | {target} | {text} | {met} |")
    return lines


def _pick(doc: dict[str, Any], key: str) -> str:
    if ":" in key:
        figure, field = key.split(":", 1)
        return f"{_fmt(doc['figures'][figure][field])} MB"
    r = _results(doc)[key]
    if r.get("baseline") and r.get("ratio") is not None:
        return f"{r['ratio']:.2f}x ({_value(r)})"
    return _value(r)


def compared(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    lines = ["| figure | before | after | change responsible |", "| --- | ---: | ---: | --- |"]
    for label, key, why in COMPARED:
        lines.append(f"| {label} | {_pick(before, key)} | {_pick(after, key)} | {why} |")
    return lines


def figure_tables(doc: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    for name, fig in doc["figures"].items():
        lines += [f"#### {name}", "", "| " + " | ".join(COLUMNS) + " |"]
        lines.append("| --- | ---: | --- | ---: | ---: | ---: | ---: | --- | --- | --- |")
        for r in fig.get("results", []):
            ratio = "" if r.get("ratio") is None else f"{r['ratio']:.2f}"
            base = f"`{r['baseline']}`" if r.get("baseline") else ""
            cells = (f"`{r['name']}`", _fmt(r["median"]), r["unit"], _fmt(r["min"]),
                     _fmt(r["max"]), str(r["runs"]), ratio, base, r.get("target") or "",
                     _ok(r.get("ok")))  # fmt: skip
            lines.append("| " + " | ".join(cells) + " |")
        load = fig["loadavg_start"][0], fig["loadavg_end"][0]
        lines += ["", f"{name}: {fig['seconds']:.0f} s, load {load[0]:.1f} → {load[1]:.1f}"]
        if fig.get("error"):
            lines.append(f"**error**: {fig['error'].strip().splitlines()[-1]}")
        lines.append("")
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench._report", description=__doc__)
    p.add_argument("json", type=Path, help="a bench run (python -m bench --json PATH)")
    p.add_argument("--before", type=Path, help="an earlier run: adds the before/after table")
    args = p.parse_args(argv)
    doc = json.loads(args.json.read_text())
    rows = headline(doc)
    out = ["### Targets", "", *rows, ""] if len(rows) > 2 else []
    if args.before:
        out += ["### Before and after", "", *compared(json.loads(args.before.read_text()), doc), ""]
    out += ["### Results", "", *figure_tables(doc)]
    print("\n".join(out).rstrip())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
