"""Queries: ms per read of the organizer API's main views (ledger.queries) at 10k and 100k events.

Each ledger holds the pod's roster, ``N`` events by 50 organizers (requests, offers,
claims, shared resources; about 40 % of them open requests) and ``N / 100`` members
(pod lane, details sealed with member keys that the ledger holds). The reads are the ones
behind the API: ``list_requests(status="open", limit=5000)`` (GET /v1/requests?status=open),
``get_request`` of a request with claims, with its history (GET /v1/requests/{id}; a
different request each call), ``list_members`` (GET /v1/members: opens every box) and
``suggest_matches`` (GET /v1/match), on the ledger's reader connection. The million-event
series runs only with ``PODLINK_BENCH_SCALE=1M``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import tempfile
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from bench import Result, micros, params, result, sample
from bench._corpus import keypair, member_events, pod_wires
from bench._util import label, scale_env
from podlink.ledger import queries
from podlink.ledger.ledger import Ledger

AUTHORS = 50


def _sizes(quick: bool) -> list[int]:
    if quick:
        return [2_000, 5_000]
    return [10_000, 100_000] + ([1_000_000] if scale_env() else [])


async def build(path: Path, n: int, *, members: int | None = None) -> Ledger:
    """A ledger of ``keypair('pod')``'s pod with its roster, members and ``n`` events."""
    pod = keypair("pod")
    ledger = await Ledger.open(path)
    await ledger.set_pod(pod.public)
    joins, keys = member_events(n // 100 if members is None else members)
    wires = [e.to_wire() for e in joins] + pod_wires(n, authors=AUTHORS)
    step = 50_000
    for i in range(0, len(wires), step):
        results = await ledger.ingest(wires[i : i + step], source="peer")
        if not all(r.status == "stored" for r in results):
            raise AssertionError("corpus was not stored whole")
    for member, key in keys.items():
        await ledger.put_member_key(member, key)
    return ledger


def _ms(seconds: list[float]) -> list[float]:
    return [s / 1000 for s in micros(seconds)]


def run(quick: bool) -> list[Result]:
    p = params(quick)
    loop = asyncio.new_event_loop()
    out: list[Result] = []

    def call(fn: Callable[[], Coroutine[Any, Any, object]]) -> Callable[[], int]:
        def one() -> int:
            loop.run_until_complete(fn())
            return 1

        return one

    try:
        with tempfile.TemporaryDirectory(prefix="bench-queries-") as tmp:
            for n in _sizes(quick):
                ledger = loop.run_until_complete(build(Path(tmp) / f"q{n}.db", n))
                try:
                    db = ledger.reader
                    pod = ledger.pod
                    with_claims = [r[0] for r in loop.run_until_complete(db.execute_fetchall(
                        "SELECT DISTINCT request FROM claims LIMIT 256"  # stops early
                    ))]  # fmt: skip
                    counts = dict(loop.run_until_complete(db.execute_fetchall(
                        "SELECT 'open', count(*) FROM requests WHERE status = 'open' UNION ALL "
                        "SELECT 'offers', count(*) FROM offers WHERE status = 'open' UNION ALL "
                        "SELECT 'members', count(*) FROM members")))  # fmt: skip
                    ids = itertools.cycle(with_claims)
                    t = sample(
                        {
                            "open": call(lambda db=db: queries.list_requests(
                                db, status="open", limit=5000)),
                            "request": call(lambda db=db, ids=ids: queries.get_request(
                                db, next(ids))),
                            "members": call(lambda db=db: queries.list_members(db)),
                            "match": call(lambda db=db, pod=pod: queries.suggest_matches(
                                db, pod)),
                        },
                        p,
                    )  # fmt: skip
                finally:
                    loop.run_until_complete(ledger.close())
                    for suffix in ("", "-wal", "-shm"):
                        with contextlib.suppress(OSError):
                            Path(tmp, f"q{n}.db{suffix}").unlink()
                size = f"{n:,} events"
                out += [
                    result(f"queries.open_requests.{label(n)}", "ms", _ms(t["open"]),
                           note=f"list_requests(status='open', limit=5000) of "
                           f"{counts['open']:,} open requests; {size}"),
                    result(f"queries.request.{label(n)}", "ms", _ms(t["request"]),
                           note=f"get_request (claims, fulfilments, history fold) of a "
                           f"request with claims; {size}"),
                    result(f"queries.members.{label(n)}", "ms", _ms(t["members"]),
                           note=f"list_members: {counts['members']:,} members, each box "
                           f"opened; {size}"),
                    result(f"queries.match.{label(n)}", "ms", _ms(t["match"]),
                           note=f"suggest_matches: open requests (limit 500) x "
                           f"{counts['offers']:,} open offers + members; {size}"),
                ]  # fmt: skip
    finally:
        loop.close()
    return out
