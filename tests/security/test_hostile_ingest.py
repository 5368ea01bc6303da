"""Hostile bytes into ``Ledger.ingest``: whatever a peer sends, the ledger stays intact.

A ledger holds part of an honest history (tests/ledger/scenario.py: several pods, rosters,
members, requests, claims). Hypothesis then feeds it batches mixing arbitrary bytes,
mutated copies of real events (bit flips, truncations, extensions, spliced bodies), replays,
events of the history it has not seen yet, and events signed by real keys that break the
rules: wrong chains (gaps, wrong ``prev``, a timestamp going back), forks (a second event at
an occupied position), huge or oversize ``refs``, unknown kinds, other pods' pod lane,
removed organizers, strangers. After every batch:

* ``ingest`` returned one result per input and raised nothing;
* every new event is one this batch stored (or a parked one it released), and no stored
  event row changed (a missing body may be put back, a matching one);
* ``Ledger.verify()`` passes, feed heads match the log, the read model equals a rebuild,
  and it is unchanged when nothing was stored;
* fork evidence and parked events are all genuinely signed (nothing forged is kept).

The default (CI) run tries 300 batches; PODLINK_LONG=1 tries 3000.
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from podlink.ledger.authoring import Author
from podlink.ledger.ledger import Ledger
from podlink.ledger.store import rows, scalar
from podlink.protocol import clock, kinds
from podlink.protocol.envelope import (
    MAX_REFS,
    SIGN_PREFIX,
    Event,
    blake2b256,
    decode_event,
    encode_wire,
)
from podlink.protocol.errors import REASONS
from podlink.protocol.keys import Keypair, verify_signature
from podlink.protocol.text import b64e
from tests.ledger.helpers import bodiless
from tests.ledger.scenario import Scenario

LONG = os.environ.get("PODLINK_LONG") == "1"
EXAMPLES = 3000 if LONG else 300


@dataclass(repr=False)
class Corpus:
    scenario: Scenario
    stored: list[Event]  # in the template ledger
    unseen: list[Event]  # later events of the same history
    template: Path
    tally: dict[str, int]

    def __repr__(self) -> str:  # hypothesis prints its arguments: keep it short
        return f"Corpus({len(self.stored)} stored, {len(self.unseen)} unseen)"

    @property
    def everything(self) -> list[Event]:
        return self.stored + self.unseen


@pytest.fixture(scope="module")
def runner() -> Iterator[asyncio.Runner]:
    with asyncio.Runner() as r:
        yield r


@pytest.fixture(scope="module")
def corpus(runner: asyncio.Runner, tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    scenario = Scenario.build(random.Random("hostile"), pods=3, steps=70)
    cut = len(scenario.events) * 2 // 3
    stored, unseen = scenario.events[:cut], scenario.events[cut:]
    template = tmp_path_factory.mktemp("hostile") / "template.db"

    async def build() -> None:
        ledger = await Ledger.open(template)
        try:
            await ledger.set_pod(scenario.pods[0].id)
            results = await ledger.ingest([e.to_wire() for e in stored])
            assert all(r.status in ("stored", "pending", "refused") for r in results)
            await ledger.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            await ledger.close()

    runner.run(build())
    return Corpus(scenario, stored, unseen, template, {"batches": 0, "inputs": 0, "stored": 0})


# ---------------------------------------------------------------- crafting


def raw_wire(
    keypair: Keypair, *, pod: bytes, lane: str, seq: int, prev: bytes | None, ts: int,
    kind: str, refs: list[bytes], body: bytes, sign_as: Keypair | None = None,
) -> bytes:  # fmt: skip
    """A header encoded by hand (no validation at all), signed by ``sign_as`` or its
    author: lets a test build what sign_event refuses to (17 refs, odd kinds...)."""
    header = [1, pod, keypair.public, lane, seq, prev, ts, kind, refs, len(body),
              blake2b256(body)]  # fmt: skip
    payload = msgspec.msgpack.encode(header)
    sig = (sign_as or keypair).sign(SIGN_PREFIX + payload)
    return encode_wire(payload, sig, body)


def authors_of(s: Scenario) -> list[Author]:
    return [a for pod in s.pods for a in (pod.author, *pod.organizers)]


@st.composite
def hostile_input(draw: st.DrawFn, corpus: Corpus) -> tuple[str, bytes]:
    """One wire blob and what kind of attack it is."""
    s = corpus.scenario
    events = corpus.everything
    kind = draw(st.sampled_from([
        "bytes", "msgpack", "flip", "truncate", "extend", "splice-body", "bodiless",
        "replay", "unseen", "gap", "wrong-prev", "fork", "backwards-ts", "refs-17",
        "refs-huge", "refs-16-random", "unknown-kind", "foreign-pod-lane", "stranger",
        "wrong-signer", "future",
    ]))  # fmt: skip
    event = draw(st.sampled_from(events))
    wire = event.to_wire()
    if kind == "bytes":
        return kind, draw(st.binary(max_size=700))
    if kind == "msgpack":
        value = draw(st.recursive(
            st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.binary(max_size=64)
            | st.text(max_size=20),
            lambda inner: st.lists(inner, max_size=12), max_leaves=30))  # fmt: skip
        return kind, msgspec.msgpack.encode(value)
    if kind == "flip":
        i = draw(st.integers(0, len(wire) * 8 - 1))
        data = bytearray(wire)
        data[i // 8] ^= 1 << (i % 8)
        return kind, bytes(data)
    if kind == "truncate":
        return kind, wire[: draw(st.integers(0, len(wire) - 1))]
    if kind == "extend":
        return kind, wire + draw(st.binary(min_size=1, max_size=64))
    if kind == "splice-body":
        return kind, encode_wire(event.payload, event.sig, draw(st.binary(max_size=300)))
    if kind == "bodiless":
        return kind, bodiless(event)
    if kind == "replay":
        return kind, wire
    if kind == "unseen" and corpus.unseen:
        return kind, draw(st.sampled_from(corpus.unseen)).to_wire()

    author = draw(st.sampled_from(authors_of(s)))
    head = max((e for e in events if e.author == author.keypair.public and e.lane == "network"),
               key=lambda e: e.seq, default=None)  # fmt: skip
    seq, prev = (head.seq, head.id) if head else (0, None)
    now = clock.pack(clock.now_ms())
    body = kinds.encode_body(kinds.RequestOpened(title="Hostile", category="food"))
    common = {"pod": author.pod, "lane": "network", "kind": "request.open", "refs": []}
    if kind == "gap":
        return kind, raw_wire(author.keypair, **common, seq=seq + draw(st.integers(2, 50)),
                              prev=draw(st.binary(min_size=32, max_size=32)), ts=now,
                              body=body)  # fmt: skip
    if kind == "wrong-prev":
        return kind, raw_wire(author.keypair, **common, seq=seq + 1,
                              prev=draw(st.binary(min_size=32, max_size=32)), ts=now,
                              body=body)  # fmt: skip
    if kind == "fork" and head is not None:
        at = draw(st.integers(1, head.seq))
        before = next((e for e in events if e.author == author.keypair.public
                       and e.lane == "network" and e.seq == at - 1), None)  # fmt: skip
        return kind, raw_wire(author.keypair, **common, seq=at,
                              prev=before.id if before else None, ts=now, body=body)  # fmt: skip
    if kind == "backwards-ts" and head is not None:
        back = max(head.ts - draw(st.integers(0, 10**6)), 0)
        return kind, raw_wire(author.keypair, **common, seq=seq + 1, prev=prev, ts=back,
                              body=body)  # fmt: skip
    if kind in ("refs-17", "refs-huge", "refs-16-random"):
        n = {"refs-17": MAX_REFS + 1, "refs-huge": 5000, "refs-16-random": MAX_REFS}[kind]
        refs = [draw(st.binary(min_size=32, max_size=32))] * n
        update = kinds.encode_body(kinds.RequestUpdated(urgency="high"))
        return kind, raw_wire(author.keypair, pod=author.pod, lane="network", seq=seq + 1,
                              prev=prev, ts=now, kind="request.update", refs=refs,
                              body=update)  # fmt: skip
    if kind == "unknown-kind":
        name = draw(st.from_regex(r"\A[a-z][a-z0-9.\-]{0,30}\Z")).strip()
        if name in kinds.KINDS:
            name = "zz." + name[:20]
        return kind, raw_wire(author.keypair, **{**common, "kind": name}, seq=seq + 1,
                              prev=prev, ts=now, body=draw(st.binary(max_size=200)))  # fmt: skip
    if kind == "foreign-pod-lane":
        other = next(a for a in authors_of(s) if a.pod != s.pods[0].id)
        return kind, raw_wire(other.keypair, **{**common, "pod": other.pod, "lane": "pod"},
                              seq=1, prev=None, ts=now, body=body)  # fmt: skip
    if kind == "wrong-signer":
        return kind, raw_wire(author.keypair, **common, seq=seq + 1, prev=prev, ts=now,
                              body=body, sign_as=Keypair.generate())  # fmt: skip
    if kind == "future":
        ahead = clock.pack(clock.now_ms() + clock.FUTURE_LIMIT_MS + 60_000)
        return kind, raw_wire(author.keypair, **common, seq=seq + 1, prev=prev, ts=ahead,
                              body=body)  # fmt: skip
    stranger = Keypair.generate()  # "stranger", and the fallbacks above
    return "stranger", raw_wire(stranger, **{**common, "pod": s.pods[0].id}, seq=1,
                                prev=None, ts=now, body=body)  # fmt: skip


# ---------------------------------------------------------------- the property


async def snapshot(ledger: Ledger) -> dict[str, object]:
    found = await rows(ledger.db, "SELECT pos, id, payload, sig, body FROM events")
    return {
        "events": {r[1]: r for r in found},
        "pending": {r[0] for r in await rows(ledger.db, "SELECT id FROM pending")},
        "dump": await ledger.dump(),
    }


async def check_batch(corpus: Corpus, batch: list[bytes], path: Path) -> None:
    shutil.copy(corpus.template, path)
    ledger = await Ledger.open(path)
    try:
        before = await snapshot(ledger)
        results = await ledger.ingest(batch, source="hostile")
        assert len(results) == len(batch)
        for r in results:
            assert r.status in ("stored", "duplicate", "pending", "refused"), r
            assert r.status != "refused" or r.reason in REASONS, r
        after = await snapshot(ledger)
        old, new = before["events"], after["events"]
        assert isinstance(old, dict) and isinstance(new, dict)
        stored_ids = {r.id for r in results if r.status == "stored"}
        for id_, row in old.items():  # nothing stored is rewritten (a body may come back)
            now = new[id_]
            assert now[:4] == row[:4], "a stored event's header, position or signature changed"
            assert row[4] is None or now[4] == row[4], "a stored body changed"
        fresh = set(new) - set(old)
        released = before["pending"]
        assert isinstance(released, set)
        assert {b64e(i) for i in fresh} <= stored_ids | {b64e(i) for i in released}, (
            "an event appeared that this batch did not store"
        )
        for id_ in stored_ids:
            assert id_ is not None
        report = await ledger.verify()
        assert report.ok, report.problems
        heads = sorted(await rows(ledger.db, "SELECT author, lane, seq FROM feeds"))
        tops = sorted(await rows(
            ledger.db, "SELECT author, lane, max(seq) FROM events GROUP BY 1, 2"))  # fmt: skip
        assert heads == tops
        refilled = any(new[i][4] != old[i][4] for i in old)
        if not fresh and not refilled:
            assert after["dump"] == before["dump"], "the read model moved with nothing stored"
        live = after["dump"]
        await ledger.rebuild()
        assert await ledger.dump() == live, "the read model differs from a rebuild"
        # Evidence and parked events: genuinely signed, every one.
        for author, other_id, payload, sig, kept in await rows(
            ledger.db, "SELECT author, other_id, other_payload, other_sig, kept_id FROM forks"
        ):
            assert blake2b256(payload) == other_id != kept
            assert verify_signature(author, SIGN_PREFIX + payload, sig)
        for (wire,) in await rows(ledger.db, "SELECT wire FROM pending"):
            decode_event(wire).verify_signature()
        assert await scalar(ledger.db, "PRAGMA integrity_check") == "ok"
        corpus.tally["stored"] += len(fresh)
    finally:
        await ledger.close()


@pytest.mark.slow
def test_hostile_batches_leave_the_ledger_intact(
    corpus: Corpus, runner: asyncio.Runner, tmp_path: Path
) -> None:
    seen: dict[str, int] = {}

    @settings(
        max_examples=EXAMPLES, deadline=None, derandomize=not LONG,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )  # fmt: skip
    @given(st.lists(hostile_input(corpus), min_size=1, max_size=6))
    def batches(items: list[tuple[str, bytes]]) -> None:
        for kind, _ in items:
            seen[kind] = seen.get(kind, 0) + 1
        corpus.tally["batches"] += 1
        corpus.tally["inputs"] += len(items)
        runner.run(check_batch(corpus, [w for _, w in items], tmp_path / "ledger.db"))
        for suffix in ("", "-wal", "-shm"):
            (tmp_path / f"ledger.db{suffix}").unlink(missing_ok=True)

    batches()
    print(f"\nhostile ingest: {corpus.tally}; by kind {dict(sorted(seen.items()))}")
    assert len(seen) >= 15, seen  # the strategies were all reached
