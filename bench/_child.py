"""Child processes for figures that want a fresh interpreter (its own core, GIL and RSS).

* ``python -m bench._child node HOME [--expect N]`` serves the pod in HOME (create_app +
  AppRunner + TCPSite), prints ``{"ready": ...}``, then ``{"reached": head, "t": monotonic}``
  once its ledger holds N more events than at start (CLOCK_MONOTONIC is system-wide on
  Linux, so the parent can subtract its own readings), and when its stdin closes it stops
  and prints ``{"maxrss_mb": ..., "rss_peak_mb": ..., "cpu_s": ...}``.
* ``python -m bench._child ingest CORPUS DB [--chunk N]`` ingests the wires of a corpus file
  (see :func:`write_wires`) into a fresh ledger at DB, N events per ``Ledger.ingest`` call
  read from disk as it goes (0: all in memory, one call), and prints its RSS figures.

Every line on stdout is one JSON object; logs go to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import struct
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from bench._util import RssSampler, Stopwatch, cpu_seconds, maxrss_mb, rss_mb

_LEN = struct.Struct(">I")


def write_wires(path: Path, wires: Sequence[bytes]) -> None:
    """A corpus file: each wire as a 4-byte big-endian length, then its bytes."""
    with open(path, "wb") as f:
        for w in wires:
            f.write(_LEN.pack(len(w)))
            f.write(w)


def read_wires(path: Path, chunk: int) -> Iterator[list[bytes]]:
    """The wires of a corpus file, ``chunk`` at a time (0: all of them at once)."""
    out: list[bytes] = []
    with open(path, "rb") as f:
        while head := f.read(4):
            out.append(f.read(_LEN.unpack(head)[0]))
            if chunk and len(out) == chunk:
                yield out
                out = []
    if out:
        yield out


def ingest_in_child(corpus: Path, db: Path, chunk: int, timeout: float = 1800) -> dict:
    """Run ``ingest`` in a fresh interpreter; its JSON report (RSS peaks, time)."""
    import os
    import subprocess

    env = dict(os.environ)
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    done = subprocess.run(
        [sys.executable, "-m", "bench._child", "ingest", str(corpus), str(db),
         "--chunk", str(chunk)],
        capture_output=True, text=True, timeout=timeout, env=env, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"ingest child failed ({done.returncode}): {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def emit(msg: dict[str, object]) -> None:
    sys.stdout.write(json.dumps(msg) + "\n")
    sys.stdout.flush()


async def serve(home: Path, expect: int) -> None:
    from aiohttp import web

    from podlink.node.app import create_app
    from podlink.node.config import load_config
    from podlink.node.peer_api import NODE
    from podlink.protocol.text import b64e

    config = load_config(home, env={})
    app = await create_app(config)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, config.host, config.port).start()
    ledger = app[NODE].ledger
    start = ledger.next_pos - 1
    sampler = RssSampler(0.01, also=lambda: ledger.verifier.pids).start()
    target = start + expect
    reached = False

    def check(head: int) -> None:
        nonlocal reached
        if expect and not reached and head >= target:
            reached = True
            emit({"reached": head, "t": time.monotonic()})

    ledger.stored_listeners.append(check)
    emit({"ready": True, "events": start, "pod": b64e(app[NODE].pod), "rss_mb": rss_mb(),
          "cpu_s": cpu_seconds()})  # fmt: skip
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.buffer.read)  # until the parent closes it
    peak = sampler.stop()
    workers = len(ledger.verifier.pids)
    await runner.cleanup()  # closes the ledger, reaping its verify workers (CPU counted)
    emit({"maxrss_mb": maxrss_mb(), "rss_peak_mb": peak, "rss_start_mb": sampler.start_mb,
          "cpu_s": cpu_seconds(), "events": ledger.next_pos - 1, "workers": workers,
          "workers_rss_peak_mb": sampler.helpers_peak})  # fmt: skip


async def ingest(corpus: Path, db: Path, chunk: int) -> None:
    import gc

    from podlink.ledger.ledger import Ledger

    parts = read_wires(corpus, chunk)
    first = next(parts)  # with chunk 0, the whole corpus: it is in RSS before we start
    gc.collect()
    ledger = await Ledger.open(db)
    sampler = RssSampler(also=lambda: ledger.verifier.pids).start()
    n = 0
    with Stopwatch() as sw:
        for part in [first] if not chunk else _chain(first, parts):
            results = await ledger.ingest(part)
            n += sum(r.status == "stored" for r in results)
            del results
    peak = sampler.stop()
    workers = len(ledger.verifier.pids)
    await ledger.close()
    emit({"stored": n, "seconds": sw.wall, "cpu_s": sw.cpu, "rss_start_mb": sampler.start_mb,
          "rss_peak_mb": peak, "maxrss_mb": maxrss_mb(), "workers": workers,
          "workers_rss_peak_mb": sampler.helpers_peak})  # fmt: skip


def _chain(first: list[bytes], rest: Iterator[list[bytes]]) -> Iterator[list[bytes]]:
    yield first
    yield from rest


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench._child")
    sub = p.add_subparsers(dest="what", required=True)
    n = sub.add_parser("node")
    n.add_argument("home", type=Path)
    n.add_argument("--expect", type=int, default=0)
    i = sub.add_parser("ingest")
    i.add_argument("corpus", type=Path)
    i.add_argument("db", type=Path)
    i.add_argument("--chunk", type=int, default=10_000)
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    if args.what == "node":
        asyncio.run(serve(args.home, args.expect))
    else:
        asyncio.run(ingest(args.corpus, args.db, args.chunk))


if __name__ == "__main__":
    main()
