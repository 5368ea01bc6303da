"""Review at adversarial scale: valid-looking input from peers that makes a node do work
that grows faster than the input, or lose honest events.

No test asserts on time. Each counts work done by the real code (calls of a fold's inner
check, events read back by re-folds, list entries scanned, matches built) through thin
counting wrappers around the real functions, on real SQLite files and real signatures,
and compares it with what the input size allows.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from podlink.ledger import ingest, projections, queries
from podlink.ledger import state as st
from podlink.ledger.authoring import Author
from podlink.ledger.ledger import Ledger, Limits
from podlink.protocol import kinds
from podlink.protocol.envelope import Event
from podlink.protocol.keys import Keypair
from tests.ledger.helpers import World, count, statuses, stored_ids, wires


def offer(i: int, category: str = "food") -> kinds.OfferOpened:
    return kinds.OfferOpened(
        title=f"soup {i}", category=category, details="a pot", availability="x"
    )


async def opened(path: Path, pod: bytes, limits: Limits | None = None) -> Ledger:
    ledger = await Ledger.open(path, limits=limits)
    await ledger.set_pod(pod)
    return ledger


def count_folded(monkeypatch: pytest.MonkeyPatch, kinds_: set[str] | None = None) -> list[int]:
    """Count the events re-folds read back from the table (the real load_roots, counted)."""
    folded = [0]
    real = projections.load_roots

    async def counted(db: Any, roots: Any) -> dict[bytes, list]:
        grouped = await real(db, roots)
        folded[0] += sum(
            1 for views in grouped.values() for v in views if kinds_ is None or v.kind in kinds_
        )
        return grouped

    monkeypatch.setattr(projections, "load_roots", counted)
    return folded


# ------------------------------------------------------------------ roster: one key toggled


def toggles(pairs: int) -> tuple[bytes, list[Event]]:
    """A pod whose key adds and removes the same organizer key ``pairs`` times."""
    world = World()
    pod, events = world.pod("Evil")
    key = Keypair.generate().public
    for _ in range(pairs):
        world.tick()
        events.append(pod.author.write(kinds.OrganizerAdded(key=key, name="x"), "network"))
        world.tick()
        events.append(pod.author.write(kinds.OrganizerRemoved(key=key), "network"))
    return pod.id, events


async def test_one_key_added_and_removed_thousands_of_times_folds_in_linear_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pod that adds and removes the same organizer key over and over makes the roster
    fold quadratic (and the ingest of its roster cubic, one fold per batch): fold_roster
    keeps the tenures per key (the fix of 23c96c2), but ``active(body.key)`` walks *every*
    tenure of that key for each roster.add, and each roster.remove walks them all again.

    Measured (ingest of the whole roster, batches of 1,000 / rebuild): 1,000 pairs 0.26 s
    / 0.06 s; 2,000 pairs 0.66 / 0.21; 4,000 pairs 2.6 / 0.6; 8,000 pairs 18 s / 3.5 s. Any
    pod can write such a roster about itself, and every node that carries the network lane
    folds it. Roster.authorised walks the same list for every event of that key.

    Counted here: calls of Tenure.covers during the ingest of 2 x 600 roster events,
    against the number of events (the fold should need a constant number per event)."""
    calls = [0]
    real = st.Tenure.covers

    def covers(self: st.Tenure, ts: int) -> bool:
        calls[0] += 1
        return real(self, ts)

    monkeypatch.setattr(st.Tenure, "covers", covers)
    pod, events = toggles(600)
    ledger = await opened(tmp_path / "pod.db", pod, Limits(batch_size=2000))
    try:
        assert statuses(await ledger.ingest(wires(events))) == ["stored"] * len(events)
        assert await count(ledger, "roster") == 600
        assert calls[0] <= 4 * len(events), (
            f"{calls[0]:,} tenure checks to fold {len(events):,} roster events"
        )
    finally:
        await ledger.close()


async def test_a_roster_streamed_one_event_per_batch_folds_in_linear_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fix of 23c96c2 folds a pod's roster once per *batch*; a peer streaming the
    roster one event per page (a live stream sends a page per event written) still gets
    the whole roster re-read, re-folded and re-written per event: refold_roster reads
    every roster event of the pod (roster_views), folds them, deletes and re-inserts
    every tenure row, and the pod's directory aggregate (root = the pod) is re-folded
    from all of them again (load_roots). Measured, roster.adds by the pod key: in batches
    of 10, 1,000 / 2,000 / 4,000: 0.7 / 2.6 / 11.1 s; one per batch, 500 / 1,000 / 2,000:
    1.8 / 5.9 / 22.3 s — the "3,000 took over a minute" of the fixed bug, back.

    Counted here: roster events read back while 2 x 150 roster.adds come one per batch."""
    world = World()
    elm, setup = world.pod("Elm")
    oak, oak_setup = world.pod("Oak")
    adds = []
    for i in range(300):
        world.tick()
        adds.append(world.organizer(oak, f"organizer {i}")[1])
    read = [0]
    real_views, real_roots = projections.roster_views, projections.load_roots

    async def views(db: Any, pod: bytes) -> list[st.EventView]:
        found = await real_views(db, pod)
        read[0] += len(found)
        return found

    async def roots(db: Any, wanted: Any) -> dict[bytes, list]:
        grouped = await real_roots(db, wanted)
        read[0] += sum(v.kind in st.ROSTER_KINDS for vs in grouped.values() for v in vs)
        return grouped

    ledger = await opened(tmp_path / "pod.db", elm.id)
    try:
        first = [*setup, *oak_setup]
        assert statuses(await ledger.ingest(wires(first))) == ["stored"] * 2
        monkeypatch.setattr(projections, "roster_views", views)
        monkeypatch.setattr(projections, "load_roots", roots)
        work = []
        for half in (adds[:150], adds[150:]):
            before = read[0]
            for add in half:
                assert statuses(await ledger.ingest(wires([add]))) == ["stored"]
            work.append(read[0] - before)
        assert await count(ledger, "roster") == 300
        assert work[1] <= 2 * work[0] and work[1] <= 20 * 150, (
            f"roster events read for adds 1-150: {work[0]:,}; for adds 151-300: {work[1]:,}"
        )
    finally:
        await ledger.close()


# ------------------------------------------------------------------ roster: re-folds by author


async def test_a_late_roster_event_does_not_refold_everything_its_key_ever_wrote(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each roster event that changes a key's tenures re-folds every aggregate that key
    ever wrote (ingest._refold_rosters -> _roots_by_authors: ``SELECT DISTINCT root FROM
    events WHERE author IN ...``), even when the change starts after all of them and so
    cannot change how any of them folds. A pod that removes and re-adds its organizer,
    one event per page (a live stream sends pages as events are written), makes each of
    our batches re-read and re-fold all that organizer's events: m roster events x E
    events of work. Measured: E = 2,000 offers and 50 / 100 toggles, one per batch:
    1.5 s / 3.1 s (101k / 205k events re-folded); E = 4,000 and 100: 7.4 s (405k).

    Here: 600 offers by Ben, then 4 roster events about Ben stamped after all of them."""
    world = World()
    elm, setup = world.pod("Elm")
    oak, oak_setup = world.pod("Oak")
    ben, add_ben = world.organizer(oak, "Ben")
    offers = []
    for i in range(600):
        world.tick()
        offers.append(ben.write(offer(i), "network"))
    roster = []
    for _ in range(2):
        world.tick()
        roster.append(oak.author.write(kinds.OrganizerRemoved(key=ben.keypair.public), "network"))
        world.tick()
        roster.append(oak.author.write(
            kinds.OrganizerAdded(key=ben.keypair.public, name="Ben"), "network"))  # fmt: skip
    ledger = await opened(tmp_path / "pod.db", elm.id)
    try:
        first = [*setup, *oak_setup, add_ben, *offers]
        assert statuses(await ledger.ingest(wires(first))) == ["stored"] * len(first)
        folded = count_folded(monkeypatch, {"offer.open"})
        for event in roster:
            assert statuses(await ledger.ingest(wires([event]))) == ["stored"]
        assert await count(ledger, "offers") == 600
        assert folded[0] <= len(offers) // 10, (
            f"{len(roster)} roster events stamped after every offer re-folded "
            f"{folded[0]:,} offer events"
        )
    finally:
        await ledger.close()


# ------------------------------------------------------------------ claims on one request


async def test_claims_streamed_one_per_batch_do_not_refold_the_request_each_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every batch that brings an event of an existing request re-reads and re-folds the
    request's every event (projections.refold -> load_roots), so k claims on one request
    that arrive one per batch cost O(k^2): measured 500 / 1,000 / 2,000 claims one per
    batch: 1.1 / 3.9 / 12.6 s; in batches of 10: 1,000 / 2,000 / 4,000 claims 0.4 / 1.6 /
    5.7 s (the same 4,000 in one batch: 0.3 s). Any pod may claim a network request, and
    a live stream delivers one page per event written. (docs/performance.md lists
    incremental folds as a throughput lever not pulled; not as a peer-driven cost.)

    Counted here: events read back by re-folds while 2 x 150 claims arrive one per batch."""
    world = World()
    elm, setup = world.pod("Elm")
    oak, oak_setup = world.pod("Oak")
    ana, add_ana = world.organizer(elm, "Ana")
    need = ana.write(kinds.RequestOpened(title="Soup", category="food"), "network")
    claims = []
    for i in range(300):
        world.tick()
        claims.append(oak.author.write(kinds.ClaimMade(note=f"{i}"), "network", [need.id]))
    ledger = await opened(tmp_path / "pod.db", elm.id)
    try:
        first = [*setup, *oak_setup, add_ana, need]
        assert statuses(await ledger.ingest(wires(first))) == ["stored"] * len(first)
        folded = count_folded(monkeypatch)
        work = []
        for half in (claims[:150], claims[150:]):
            before = folded[0]
            for claim in half:
                assert statuses(await ledger.ingest(wires([claim]))) == ["stored"]
            work.append(folded[0] - before)
        assert await count(ledger, "claims") == 300
        # Linear work: the second 150 claims cost about what the first 150 did.
        assert work[1] <= 2 * work[0] and work[1] <= 20 * 150, (
            f"events re-folded for claims 1-150: {work[0]:,}; for claims 151-300: {work[1]:,}"
        )
    finally:
        await ledger.close()


# ------------------------------------------------------------------ forks released from pending


class CountingList(list):  # type: ignore[type-arg]
    """A list that counts the entries Python iterates over (the scans of a batch)."""

    scanned = 0

    def __iter__(self) -> Iterator[Any]:
        for item in super().__iter__():
            CountingList.scanned += 1
            yield item


class CountingBatch(ingest.Batch):
    def __setattr__(self, name: str, value: Any) -> None:
        if name in ("rows", "forks") and type(value) is list:
            value = CountingList(value)
        super().__setattr__(name, value)


async def release_two_branches(path: Path, n: int) -> int:
    """Park two branches of one feed (n - 1 events each, forking at one position), then
    bring the event they wait for; return the batch entries scanned by that ingest."""
    world = World()
    elm, setup = world.pod("Elm")
    evil, evil_setup = world.pod("Evil")
    base_seq = evil.author.heads["network"][0]
    branch_a = [evil.author.write(offer(i), "network") for i in range(n)]
    twin = Author(evil.key, evil.id, world.clock)  # the same key, signing another branch
    twin.heads["network"] = (base_seq + 1, branch_a[0].id)
    branch_b = [twin.write(offer(10**6 + i), "network") for i in range(n - 1)]
    ledger = await opened(path, elm.id)
    try:
        assert statuses(await ledger.ingest(wires([*setup, *evil_setup]))) == ["stored"] * 2
        parked = [e for pair in zip(branch_a[1:], branch_b, strict=True) for e in pair]
        assert set(statuses(await ledger.ingest(wires(parked)))) == {"pending"}
        CountingList.scanned = 0
        assert statuses(await ledger.ingest(wires(branch_a[:1]))) == ["stored"]
        scanned = CountingList.scanned
        assert await count(ledger, "pending") == 0
        assert await count(ledger, "forks") == n - 1
        assert await count(ledger, "events") == 2 + n  # one branch whole, from seq 2 on
        return scanned
    finally:
        await ledger.close()


async def test_a_forked_feed_released_from_pending_is_checked_in_linear_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Releases from the pending table run in one transaction with no batch bound: the
    event that fills a feed's gap brings in everything parked behind it. When a key's
    feed is parked as two branches (a fork from seq 3 on, both branches sent by one peer
    within its pending bound), each refused branch event scans the whole list of fork
    evidence gathered so far (ingest._fork_known: ``any(... for f in batch.forks)``) and
    the batch's unflushed rows (ingest._id_at: ``for r in batch.rows``): O(n^2). Measured,
    the ingest of the one event that releases them: n = 1,000 / 2,000 / 4,000: 0.11 /
    0.32 / 1.16 s (8M generator steps in _fork_known at 4,000); each peer may park 10,000,
    and several peers' branches multiply it.

    Counted here: entries of batch.rows and batch.forks iterated while n and 2n are
    released; linear work would double, this quadruples."""
    caplog.set_level(logging.ERROR, logger="podlink.ledger")  # one warning per fork
    monkeypatch.setattr(ingest, "Batch", CountingBatch)
    small = await release_two_branches(tmp_path / "small.db", 400)
    large = await release_two_branches(tmp_path / "large.db", 800)
    assert large <= 3 * small, f"scanned {small:,} entries for 400, {large:,} for 800"


# ------------------------------------------------------------------ a released event dropped


async def test_an_event_released_from_pending_is_never_dropped_by_another_sources_bound(
    tmp_path: Path,
) -> None:
    """An event parked by one peer, released by another's batch and made to wait again,
    is charged to that other peer's pending bound and, when that one is full, deleted:
    neither stored nor pending, and its peer is never asked again (its result was
    ``pending``, which triggers no repair), so its feed waits behind it until it expires.

    Ben organizes Oak; Oak's roster.add for him has not arrived, so his offer, from an
    honest peer, waits for his naming. An attacker fills its own pending bound, then
    sends a pod of its own whose roster.add names Ben's (public) key:
    ingest._release_roster_waiters takes Ben's parked events of *every* pod out of the
    table, the offer waits again (Ben is not named in Oak), and ingest._park_waiting
    re-parks it under ``batch.source`` (the attacker): over that bound it is refused,
    with no result anyone sees (index -1). The same path drops such events outright in a
    local append (allow_pending=False), e.g. when this pod adds an organizer key that
    also organizes another pod."""
    world = World()
    elm, setup = world.pod("Elm")
    oak, oak_setup = world.pod("Oak")
    ben, add_ben = world.organizer(oak, "Ben")
    world.tick()
    ben_offer = ben.write(offer(1), "network")
    evil, evil_setup = world.pod("Evil")
    world.tick()
    evil_names_ben = evil.author.write(
        kinds.OrganizerAdded(key=ben.keypair.public, name="Ben"), "network")  # fmt: skip
    junk_pod, _ = world.pod("Junk")
    junk = [junk_pod.author.write(offer(i), "network") for i in range(3)]  # wait for seq 1
    honest, attacker = "H" * 43, "E" * 43
    ledger = await opened(tmp_path / "pod.db", elm.id, Limits(pending_per_source=3))
    try:
        assert statuses(await ledger.ingest(wires([*setup, *oak_setup]))) == ["stored"] * 2
        assert statuses(await ledger.ingest(wires([ben_offer]), source=honest)) == ["pending"]
        assert statuses(await ledger.ingest(wires(junk), source=attacker)) == ["pending"] * 3
        results = await ledger.ingest(wires([*evil_setup, evil_names_ben]), source=attacker)
        assert statuses(results) == ["stored", "stored"]
        held = await stored_ids(ledger) | {
            r[0] for r in await ledger.db.execute_fetchall("SELECT id FROM pending")
        }
        assert ben_offer.id in held, "Ben's offer was taken out of pending and dropped"
        # Oak's roster.add for Ben comes at last: his offer should be stored now.
        await ledger.ingest(wires([add_ben]), source=honest)
        assert ben_offer.id in await stored_ids(ledger)
    finally:
        await ledger.close()


async def test_a_local_roster_add_never_drops_another_pods_parked_events(tmp_path: Path) -> None:
    """The same path in a local append: when this pod's organizer adds a key (Ben's)
    whose events for another pod (Oak, whose roster.add for him is on its way) wait as
    pending, the append takes them out of the table, they wait again, and _wait refuses
    them as ``pending`` (allow_pending=False) with no result anyone sees: deleted.
    When Oak's roster.add for Ben arrives, there is nothing left to release."""
    world = World()
    elm, setup = world.pod("Elm")
    oak, oak_setup = world.pod("Oak")
    ben, add_ben = world.organizer(oak, "Ben")
    world.tick()
    ben_offer = ben.write(offer(1), "network")
    world.tick()
    elm_adds_ben = elm.author.write(
        kinds.OrganizerAdded(key=ben.keypair.public, name="Ben"), "network")  # fmt: skip
    ledger = await opened(tmp_path / "pod.db", elm.id)
    try:
        assert statuses(await ledger.ingest(wires([*setup, *oak_setup]))) == ["stored"] * 2
        assert statuses(await ledger.ingest(wires([ben_offer]))) == ["pending"]
        assert statuses(await ledger.append(wires([elm_adds_ben]))) == ["stored"]
        assert statuses(await ledger.ingest(wires([add_ben]))) == ["stored"]
        assert ben_offer.id in await stored_ids(ledger), "Ben's parked offer was dropped"
    finally:
        await ledger.close()


# ------------------------------------------------------------------ matching


async def test_suggest_matches_builds_no_more_than_it_can_return(tmp_path: Path) -> None:
    """suggest_matches promises that "the work stays bounded", but for every open need
    it turns every other pod's open offer of that category into a match dict
    (``others`` -> ``_offer_match``) and sorts them, then keeps ``per_request`` (5):
    needs x offers, both of which peers supply, on the event loop of the organizer API
    (GET /v1/match). Measured with 500 needs: 1,000 / 2,000 / 4,000 offers: 0.28 / 0.53 /
    1.19 s per call, all of it building matches that are thrown away.

    Counted here: matches built for 100 needs and 300 offers of another pod."""
    world = World()
    elm, setup = world.pod("Elm")
    oak, oak_setup = world.pod("Oak")
    events = [*setup, *oak_setup]
    for i in range(100):
        world.tick()
        events.append(oak.author.write(
            kinds.RequestOpened(title=f"Soup {i}", category="food"), "network"))  # fmt: skip
    for i in range(300):
        world.tick()
        events.append(oak.author.write(offer(i), "network"))
    ledger = await opened(tmp_path / "pod.db", elm.id)
    built = [0]
    real = queries._match

    def counted(*args: Any, **kw: Any) -> dict[str, Any]:
        built[0] += 1
        return real(*args, **kw)

    try:
        assert statuses(await ledger.ingest(wires(events))) == ["stored"] * len(events)
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(queries, "_match", counted)
            found = await queries.suggest_matches(ledger.reader, elm.id)
        assert len(found) == 100 * 5
        assert built[0] <= 2 * len(found), f"built {built[0]:,} matches to return {len(found)}"
    finally:
        await ledger.close()
