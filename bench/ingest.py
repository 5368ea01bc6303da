"""Ingest: Ledger.ingest of remote events vs a raw verify+insert loop; batches, CPU, RSS, rebuild.

The raw baseline does, on one thread, what any store of signed events must: decode each
wire (``envelope.decode_event``: msgspec + BLAKE2b id), verify its Ed25519 signature
(PyNaCl ``crypto_sign_open``), hash-check its body (BLAKE2b), and insert it with sqlite3
``executemany`` into a comparable events table (id unique, (author, lane, seq) unique) in
WAL mode with ``synchronous=FULL``, one transaction per 1,000 events. The ledger does that
and more (dedupe, chains, roster, pending, projections, feed heads) through aiosqlite.

Targets (on the ratio to raw, same run, same corpus): the ledger with one verify worker
``>= 0.8`` (the bookkeeping costs at most a fifth), with two workers ``>= 1.3`` (the second
core pays for it and more). Corpus: ``roster + N`` events by 50 organizers of one pod.

A diagnostic row runs the same ledger ingest with signature checks switched off: what the
bookkeeping alone costs, the floor under any verify-thread arrangement.
"""

from __future__ import annotations

import contextlib
import hashlib
import sqlite3
import statistics
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from nacl.bindings import crypto_sign_open

from bench import Result, result
from bench._child import ingest_in_child, write_wires
from bench._corpus import pod_wires
from bench._util import (
    Stopwatch,
    Timed,
    busy,
    cpu_seconds,
    cpu_us,
    move_db,
    process_cpu_seconds,
    rates,
    remove_db,
    rounds,
)
from podlink.ledger.ledger import Ledger, Limits
from podlink.ledger.verifier import Verifier
from podlink.protocol import envelope
from podlink.protocol.envelope import SIGN_PREFIX, decode_event

AUTHORS = 50
RAW_BATCH = 1000
BATCH_SIZES = (1, 10, 100, 1000)

RAW_SCHEMA = """
CREATE TABLE events (
    pos INTEGER PRIMARY KEY, id BLOB NOT NULL UNIQUE, pod BLOB NOT NULL,
    author BLOB NOT NULL, lane TEXT NOT NULL, seq INTEGER NOT NULL, ts INTEGER NOT NULL,
    kind TEXT NOT NULL, payload BLOB NOT NULL, sig BLOB NOT NULL, body BLOB,
    received INTEGER NOT NULL, UNIQUE (author, lane, seq)
) STRICT
"""
RAW_INSERT = (
    "INSERT INTO events (id, pod, author, lane, seq, ts, kind, payload, sig, body, received) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


def _sizes(quick: bool) -> dict[str, int]:
    if quick:
        return {"events": 5_000, "repeats": 3, "sweep_repeats": 1, "rss_repeats": 1,
                "rebuild_repeats": 1, "sweep_small": 200, "sweep_large": 2_000}  # fmt: skip
    return {"events": 100_000, "repeats": 3, "sweep_repeats": 3, "rss_repeats": 1,
            "rebuild_repeats": 3, "sweep_small": 2_000, "sweep_large": 20_000}  # fmt: skip


def raw_ingest(wires: Sequence[bytes], path: Path, batch: int = RAW_BATCH) -> Timed:
    """The baseline: decode, verify, hash-check, insert; one thread, stdlib sqlite3."""
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute(RAW_SCHEMA)
        blake = hashlib.blake2b
        with Stopwatch() as sw:
            for start in range(0, len(wires), batch):
                rows = []
                for w in wires[start : start + batch]:
                    ev = decode_event(w)
                    h = ev.header
                    crypto_sign_open(ev.sig + SIGN_PREFIX + ev.payload, h.author)
                    body = ev.body
                    if body is not None and (
                        len(body) != h.body_size
                        or blake(body, digest_size=32).digest() != h.body_hash
                    ):
                        raise AssertionError("corpus body does not match its header")
                    rows.append((ev.id, h.pod, h.author, h.lane, h.seq, h.ts, h.kind,
                                 ev.payload, ev.sig, body, 0))  # fmt: skip
                db.execute("BEGIN")
                db.executemany(RAW_INSERT, rows)
                db.execute("COMMIT")
    finally:
        db.close()
    return sw.timed(len(wires))


async def ledger_ingest(
    wires: Sequence[bytes], path: Path, *, workers: int | None = None, batch: int = 1000
) -> Timed:
    """A fresh ledger at ``path`` (opened outside the timing); one ``ingest`` call.

    The verify processes are started before the clock, as by a node that is up: their
    start (~0.15 s, ~0.3 s of CPU for two) is paid once per node, not per ingest."""
    ledger = await Ledger.open(path, limits=Limits(batch_size=batch), workers=workers)
    await ledger.verifier.start()
    # Their CPU is counted when they are reaped, start included: take the start back out.
    cpu = cpu_seconds() - sum(process_cpu_seconds(pid) for pid in ledger.verifier.pids)
    try:
        with Stopwatch() as sw:
            results = await ledger.ingest(wires, source="peer")
    finally:
        await ledger.close()  # reaps the verify processes: their CPU time is counted then
    cpu = cpu_seconds() - cpu
    stored = sum(r.status == "stored" for r in results)
    if stored != len(wires):
        raise AssertionError(f"stored {stored} of {len(wires)} events: {results[:3]}")
    return Timed(sw.wall, cpu, stored)


_cleanup = remove_db


@contextlib.contextmanager
def signatures_unchecked() -> Iterator[None]:
    """Diagnostic only: Ed25519 verification switched off, to weigh the bookkeeping alone."""
    async def nothing_checked(self: Verifier, wires: Sequence[bytes], now: int) -> list[None]:
        return [None] * len(wires)

    original = envelope.Event.verify_signature, Verifier.check
    envelope.Event.verify_signature = lambda self: None  # type: ignore[method-assign]
    Verifier.check = nothing_checked  # type: ignore[method-assign,assignment]
    try:
        yield
    finally:
        envelope.Event.verify_signature, Verifier.check = original  # type: ignore[method-assign]


async def run(quick: bool) -> list[Result]:
    size = _sizes(quick)
    n = size["events"]
    wires = pod_wires(n, authors=AUTHORS)
    total = len(wires)
    out: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        tmpdir = Path(tmp)
        keep = tmpdir / "keep.db"  # the last workers=2 ledger, for rebuild

        async def raw() -> Timed:
            path = tmpdir / "raw.db"
            try:
                return raw_ingest(wires, path)
            finally:
                _cleanup(path)

        def ledger(workers: int) -> object:
            async def go() -> Timed:
                path = tmpdir / f"ledger{workers}.db"
                timed = await ledger_ingest(wires, path, workers=workers)
                if workers == 2:
                    move_db(path, keep)
                _cleanup(path)
                return timed

            return go

        async def unchecked() -> Timed:
            path = tmpdir / "unchecked.db"
            try:
                with signatures_unchecked():
                    return await ledger_ingest(wires, path, workers=2)
            finally:
                _cleanup(path)

        t = await rounds(
            {"raw": raw, "w1": ledger(1), "w2": ledger(2), "nv": unchecked},  # type: ignore[dict-item]
            size["repeats"],
        )
        base = ("ingest.raw", rates(t["raw"]))
        cpu_base = ("ingest.raw.cpu", cpu_us(t["raw"]))
        what = f"{total:,} events ({n:,} by {AUTHORS} organizers + roster), fresh db"
        out += [
            result("ingest.raw", "ops/s", base[1],
                   note=f"decode_event + crypto_sign_open + BLAKE2b body + sqlite3 "
                   f"executemany, 1 thread, WAL+FULL, {RAW_BATCH}/txn; {what}; "
                   f"{busy(t['raw'])}"),
            result("ingest.ledger.workers1", "ops/s", rates(t["w1"]), baseline=base,
                   target=">= 0.8",
                   note="Ledger.ingest, 1 verify process (started ahead), batch 1000; "
                   f"{busy(t['w1'])}"),
            result("ingest.ledger.workers2", "ops/s", rates(t["w2"]), baseline=base,
                   target=">= 1.3",
                   note="Ledger.ingest, 2 verify processes (default, started ahead), "
                   f"batch 1000; {busy(t['w2'])}"),
            result("ingest.ledger.unchecked", "ops/s", rates(t["nv"]), baseline=base,
                   note="diagnostic: the workers=2 ingest with signature checks switched off "
                   f"(bookkeeping alone, no event is verified); {busy(t['nv'])}"),
            result("ingest.raw.cpu", "us/event", cpu_base[1],
                   note="process CPU time (all threads, getrusage) per event"),
            result("ingest.ledger.workers1.cpu", "us/event", cpu_us(t["w1"]), baseline=cpu_base,
                   note="CPU per event; a steadier figure than wall time on a shared box"),
            result("ingest.ledger.workers2.cpu", "us/event", cpu_us(t["w2"]), baseline=cpu_base,
                   note="CPU per event, including the verify threads and aiosqlite's thread"),
            result("ingest.ledger.unchecked.cpu", "us/event", cpu_us(t["nv"]),
                   baseline=cpu_base, note="CPU per event of the bookkeeping alone"),
        ]  # fmt: skip

        # (c) rate against the ledger's batch size (each batch is a transaction + fsync).
        sweep = {
            b: wires[: size["sweep_small"] if b < 100 else size["sweep_large"]] for b in BATCH_SIZES
        }

        def batched(b: int) -> object:
            async def go() -> Timed:
                path = tmpdir / f"batch{b}.db"
                try:
                    return await ledger_ingest(sweep[b], path, batch=b)
                finally:
                    _cleanup(path)

            return go

        s = await rounds(
            {str(b): batched(b) for b in BATCH_SIZES},  # type: ignore[misc]
            size["sweep_repeats"],
        )
        for b in BATCH_SIZES:
            runs = s[str(b)]
            out.append(result(
                f"ingest.ledger.batch{b}", "ops/s", rates(runs),
                note=f"Limits(batch_size={b}), {len(sweep[b]):,} events, 2 workers; "
                f"{busy(runs)}"))  # fmt: skip
        for b in BATCH_SIZES:
            out.append(result(f"ingest.ledger.batch{b}.cpu", "us/event", cpu_us(s[str(b)])))

        # (e) rebuild every projection from the log of the last workers=2 ledger.
        rebuilt: list[Timed] = []
        for _ in range(size["rebuild_repeats"]):
            led = await Ledger.open(keep)
            try:
                with Stopwatch() as sw:
                    await led.rebuild()
            finally:
                await led.close()
            rebuilt.append(sw.timed(total))
        out.append(result(
            "rebuild", "ops/s", rates(rebuilt),
            note=f"Ledger.rebuild of {total:,} events: "
            f"{statistics.median(r.wall for r in rebuilt):.1f} s; {busy(rebuilt)}"))  # fmt: skip
        _cleanup(keep)

        # (d) peak RSS while ingesting, each run in a fresh interpreter.
        corpus = tmpdir / "corpus.bin"
        write_wires(corpus, wires)
        streamed, whole = [], []
        for i in range(size["rss_repeats"]):
            streamed.append(ingest_in_child(corpus, tmpdir / f"rss{i}.db", 10_000))
            _cleanup(tmpdir / f"rss{i}.db")
            whole.append(ingest_in_child(corpus, tmpdir / f"rssall{i}.db", 0))
            _cleanup(tmpdir / f"rssall{i}.db")
        out += [
            result("ingest.rss.peak", "MB", [r["rss_peak_mb"] for r in streamed],
                   target="< 200",
                   note=f"{total:,} events read from disk 10,000 per ingest() call (as a "
                   f"sync does, page by page); RSS before: "
                   f"{statistics.median(r['rss_start_mb'] for r in streamed):.0f} MB; "
                   f"sampled with its {streamed[0]['workers']} verify worker process(es), "
                   f"{statistics.median(r['workers_rss_peak_mb'] for r in streamed):.0f} MB "
                   "together at their peak"),
            result("ingest.rss.peak.onecall", "MB", [r["rss_peak_mb"] for r in whole],
                   note=f"all {total:,} wires in memory, one ingest() call; RSS before "
                   f"(corpus loaded): {statistics.median(r['rss_start_mb'] for r in whole):.0f}"
                   " MB"),
        ]  # fmt: skip
    return out
