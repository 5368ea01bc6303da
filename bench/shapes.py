"""Shapes: ingest of unusual but valid event sets, per event, vs the ordinary corpus.

A peer decides what it sends and in which order. These series give the node the same
number of events as the ordinary corpus (``bench/_corpus.py``: requests, offers, claims
and resources by a few organizers, in causal order) in shapes that once cost far more
per event, and report each rate as a ratio to the ordinary one, measured in the same
rounds. A ratio far below 1 is work that grows faster than the input:

* ``roster``: one pod adding thousands of organizers, each roster.add by the organizer
  added before it (each one re-folded the whole roster: 3,000 took over a minute);
* ``backwards``: one organizer's feed delivered newest first, in batches, so that all
  but the last batch wait in the pending table until the first event comes (releasing
  them recursed once per event, and ~1,000 overflowed Python's stack);
* ``one-request``: a single request with thousands of claims on it.

And streamed, one event per ``ingest`` (a live stream sends a page per event written),
against the ordinary corpus streamed the same way: a roster, and claims on one request
(each batch re-read and re-folded the whole roster, or request: 2,000 took 22 s and
12.6 s).

The target is 0.5: no shape may cost more than twice an ordinary event.
"""

from __future__ import annotations

import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path

from bench import Result, result
from bench._corpus import keypair, pod_wires
from bench._util import Stopwatch, Timed, busy, rates, remove_db, rounds
from podlink.ledger.authoring import Author
from podlink.ledger.ledger import Ledger, Limits
from podlink.ledger.store import scalar
from podlink.protocol import kinds
from podlink.protocol.clock import HybridClock, now_ms
from podlink.protocol.envelope import Event

BATCH = 1000


def _author(label: str, pod: bytes, clock: HybridClock) -> Author:
    return Author(keypair(label), pod, clock)


def _clock() -> HybridClock:
    return HybridClock(wall=lambda: now_ms() - 3_600_000)


def roster_chain(n: int) -> tuple[list[Event], list[Event]]:
    """The pod's genesis and ``n`` roster.adds, each by the organizer added before it."""
    clock = _clock()
    pod_kp = keypair("shapes-pod")
    by = Author(pod_kp, pod_kp.public, clock)
    setup = [by.write(kinds.PodFounded(name="Shapes", zone="bench"), "network")]
    events = []
    for i in range(n):
        org = _author(f"shapes-organizer-{i}", pod_kp.public, clock)
        events.append(by.write(
            kinds.OrganizerAdded(key=org.keypair.public, name=f"organizer {i}"), "network"))
        by = org
    return setup, events


def _one_organizer() -> tuple[list[Event], Author]:
    clock = _clock()
    pod_kp = keypair("shapes-pod")
    pod = Author(pod_kp, pod_kp.public, clock)
    ana = _author("shapes-ana", pod_kp.public, clock)
    setup = [
        pod.write(kinds.PodFounded(name="Shapes", zone="bench"), "network"),
        pod.write(kinds.OrganizerAdded(key=ana.keypair.public, name="Ana"), "network"),
    ]
    return setup, ana


def backwards_feed(n: int) -> tuple[list[Event], list[Event]]:
    """Setup, and ``n`` offers of one organizer's feed, newest first."""
    setup, ana = _one_organizer()
    feed = [ana.write(kinds.OfferOpened(title=f"soup {i}", category="food", details="a pot"),
                      "network") for i in range(n)]  # fmt: skip
    return setup, feed[::-1]


def one_request(n: int) -> tuple[list[Event], list[Event]]:
    """Setup, and one request with ``n - 1`` claims on it (by the same organizer)."""
    setup, ana = _one_organizer()
    request = ana.write(kinds.RequestOpened(title="rides", category="transport"), "network")
    claims = [ana.write(kinds.ClaimMade(note=f"I can, {i}"), "network", [request.id])
              for i in range(n - 1)]  # fmt: skip
    return setup, [request, *claims]


async def _ingest(
    setup: list[Event], events: list[bytes], path: Path, *, each: bool = False
) -> Timed:
    """A fresh ledger holding ``setup``; the timed part is one ingest of ``events`` (or,
    with ``each``, one ingest per event)."""
    ledger = await Ledger.open(path, limits=Limits(batch_size=BATCH), workers=2)
    try:
        await ledger.verifier.start()
        await ledger.ingest([e.to_wire() for e in setup])
        with Stopwatch() as sw:
            if each:
                results = [r for wire in events for r in await ledger.ingest([wire])]
            else:
                results = await ledger.ingest(events)
        held = await scalar(ledger.db, "SELECT count(*) FROM events")
    finally:
        await ledger.close()
    if held != len(setup) + len(events):  # those parked along the way are stored by the end
        raise AssertionError(f"{held} events held of {len(setup) + len(events)}: {results[:3]}")
    return sw.timed(len(events))


async def run(quick: bool) -> list[Result]:
    n = 1_000 if quick else 10_000
    m = 100 if quick else 2_000  # streamed: one ingest per event
    repeats = 1 if quick else 3
    ordinary = pod_wires(n)
    shapes = {
        "roster": roster_chain(n),
        "backwards": backwards_feed(n),
        "one-request": one_request(n),
    }
    streams = {"roster.streamed": roster_chain(m), "one-request.streamed": one_request(m)}
    ordinary_m = pod_wires(m)
    with tempfile.TemporaryDirectory(prefix="bench-shapes-") as tmp:
        path = Path(tmp) / "shapes.db"

        def variant(
            setup: list[Event], wires: list[bytes], each: bool = False
        ) -> Callable[[], Awaitable[Timed]]:
            async def go() -> Timed:
                try:
                    return await _ingest(setup, wires, path, each=each)
                finally:
                    remove_db(path)

            return go

        variants = {"ordinary": variant([], ordinary)}
        for name, (setup, events) in shapes.items():
            variants[name] = variant(setup, [e.to_wire() for e in events])
        variants["ordinary.streamed"] = variant([], ordinary_m, each=True)
        for name, (setup, events) in streams.items():
            variants[name] = variant(setup, [e.to_wire() for e in events], each=True)
        t = await rounds(variants, repeats)
    base = ("shapes.ordinary", rates(t["ordinary"]))
    out = [result("shapes.ordinary", "ops/s", base[1],
                  note=f"{len(ordinary):,} events of the ordinary corpus (with its roster), "
                  f"batch {BATCH}, 2 verify processes; {busy(t['ordinary'])}")]  # fmt: skip
    notes = {
        "roster": f"{n:,} roster.adds in one pod, each by the organizer added before",
        "backwards": f"one feed of {n:,} offers, newest first: all wait, then the last "
        "batch releases them",
        "one-request": f"one request and {n - 1:,} claims on it",
    }
    for name in shapes:
        out.append(result(f"shapes.{name}", "ops/s", rates(t[name]), baseline=base,
                          target=">= 0.5", note=f"{notes[name]}; {busy(t[name])}"))  # fmt: skip
    base_m = ("shapes.ordinary.streamed", rates(t["ordinary.streamed"]))
    out.append(result("shapes.ordinary.streamed", "ops/s", base_m[1],
                      note=f"{len(ordinary_m):,} events of the ordinary corpus, one ingest "
                      "(one transaction) each"))  # fmt: skip
    notes_m = {
        "roster.streamed": f"{m:,} roster.adds in one pod, one ingest each",
        "one-request.streamed": f"one request and {m - 1:,} claims on it, one ingest each",
    }
    for name in streams:
        out.append(result(f"shapes.{name}", "ops/s", rates(t[name]), baseline=base_m,
                          target=">= 0.5", note=notes_m[name]))  # fmt: skip
    return out
