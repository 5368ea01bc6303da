"""Review of time: clocks, timestamps, windows and expiries.

Each test's docstring tells the bug it found (fixed since: the test holds the fix); the
tests marked "(passes: ...)" pin corners that were checked and found correct.
"""

from __future__ import annotations

import time
import types
from pathlib import Path

import pytest

from podlink.ledger.authoring import Author
from podlink.ledger.ledger import Ledger, Limits
from podlink.node import auth
from podlink.node.client import ClientError
from podlink.protocol import clock, kinds
from podlink.protocol.errors import ProtocolError
from podlink.protocol.http_auth import NonceCache, SignedRequest, sign_request, verify_request
from podlink.protocol.keys import Keypair
from tests.node.conftest import Network
from tests.node.helpers import PodNode, wait_linked

SKEW_MS = 20 * 60 * 1000  # beyond the 15-minute future limit

Make = Network  # the node tests' factory: ``await network(2, **config)``


REAL_NOW_MS = clock.now_ms


def shift_clock(monkeypatch: pytest.MonkeyPatch, ms: int) -> None:
    """Every ingest of this process now reads the wall clock ``ms`` ahead (0: real time)."""
    monkeypatch.setattr(clock, "now_ms", lambda: REAL_NOW_MS() + ms)


async def peer_both(a: PodNode, b: PodNode) -> None:
    await a.client.post("/v1/peers", {"url": b.url, "key": b.key})
    await b.client.post("/v1/peers", {"url": a.url, "key": a.key})
    await wait_linked([(a, b)])


# ---------------------------------------------------------------- gossip and the future limit


async def test_an_event_refused_as_too_far_ahead_is_fetched_again_later(
    network: Make, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Birch's machine runs 20 minutes fast: its organizer writes a network need, Birch
    stores it. Alder pulls it and refuses it as ``too-far-ahead`` — which protocol.md says
    is temporary ("The event can be offered again later") — but the pull saves the page's
    cursor past it (node/gossip.py, PeerLink._take: save_cursor(page.cursor) whatever the
    results), and nothing ever asks for it again: no repair is flagged. Twenty minutes
    later the organizer's next event continues that feed: Alder parks it as pending
    (waiting for seq 1), forever, and drops it after the pending TTL. The feed is cut off
    at Alder for good, though both nodes are now honest and in sync."""
    a, b = await network(2)
    await peer_both(a, b)
    await a.stop()  # Alder is away while Birch writes with its fast clock

    shift_clock(monkeypatch, SKEW_MS)
    author = await b.author()
    first = author.write(
        kinds.RequestOpened(title="from a fast clock", category="food"), "network",
        ts=clock.pack(clock.now_ms()),
    )  # fmt: skip
    assert (await b.client.submit([first]))[0]["status"] == "stored"

    shift_clock(monkeypatch, 0)  # Alder's clock is right: Birch's need is 20 min ahead
    await a.start()
    await a.client.post("/v1/sync", {})
    assert first.id_text not in await a.event_ids()

    shift_clock(monkeypatch, SKEW_MS)  # twenty minutes later: the need is in the present
    second = author.write(
        kinds.RequestOpened(title="twenty minutes on", category="food"), "network",
        ts=clock.pack(clock.now_ms() + 1),
    )  # fmt: skip
    assert (await b.client.submit([second]))[0]["status"] == "stored"
    for _ in range(3):
        await a.client.post("/v1/sync", {})

    held = await a.event_ids()
    status = await a.status()
    assert {first.id_text, second.id_text} <= held, (
        f"Alder holds the first need: {first.id_text in held}, the second: "
        f"{second.id_text in held}; events waiting as pending: {status['pending']}"
    )


# ---------------------------------------------------------------- rate limits


async def test_a_slow_rate_setting_still_lets_requests_through(network: Make) -> None:
    """config.py accepts any ``rate_per_s`` above 0, and operations.md promises "bursts of
    5 s worth". node/auth.py makes a bucket of ``rate_per_s * 5`` tokens and refuses a
    request when fewer than 1 is left: with ``rate_per_s = 0.1`` (one request every ten
    seconds) the bucket holds at most 0.5 tokens, so it never reaches 1 and every signed
    request, the organizer's first included, is refused ``rate-limited`` forever, however
    long the node idles."""
    [node] = await network(1, rate_per_s=0.1)
    try:
        answer = await node.status()
    except ClientError as err:
        raise AssertionError(f"the organizer's first request: {err.status} {err.reason}") from None
    assert answer["name"] == node.name


# ---------------------------------------------------------------- the replay memory


def test_a_full_replay_memory_forgets_the_oldest_request_not_the_first_received() -> None:
    """protocol.md (signed requests, step 5): when full, podlink "forgets the oldest
    entries and refuses requests as old as what it forgot as stale". NonceCache forgets
    the first *received* entry instead (OrderedDict.popitem(last=False)) and raises its
    floor to that entry's signed time + 1. If that entry came from a client whose clock
    runs 290 s fast (inside the 300 s window, so accepted), the floor jumps 290 s into the
    future and every correctly-clocked organizer and peer is refused ``stale`` for the next
    five minutes, although the entries it still holds are older than the one it dropped."""
    now = 1_750_000_000
    cache = NonceCache(capacity=3)
    fast, honest = Keypair.generate().public, Keypair.generate().public
    cache.check_and_add(SignedRequest(fast, now + 290, "f" * 22), now=now)  # a fast laptop
    for i, age in enumerate((100, 99, 98)):  # an organizer a little behind, within the window
        cache.check_and_add(SignedRequest(honest, now - age, f"{i}" * 22), now=now)
    # The memory overflowed once: it had to forget one entry; the oldest was signed at
    # now - 100, so only requests that old (or older) can no longer be checked.
    try:
        cache.check_and_add(SignedRequest(honest, now, "n" * 22), now=now)
    except ProtocolError as err:
        raise AssertionError(f"a fresh request now: {err.reason}: {err.message}") from None


async def test_a_clock_stepped_back_after_start_does_not_lock_everyone_out(
    network: Make, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The node starts while its machine's clock runs 10 minutes fast (an RTC ahead, NTP
    not synced yet); a moment later NTP steps the clock back to the right time. The replay
    memory's floor is the start time read from that fast clock (node/auth.py:
    ``NonceCache(floor=int(time.time()))``), so every request signed after the step — by
    organizers and peers whose clocks, and now the node's, are right — is "signed before
    this node (re)started" and refused ``stale`` for the next ten minutes (hours, for an
    RTC kept in local time). The floor should be the start instant in today's clock
    (e.g. ``time.time() - (time.monotonic() - started)``), not a wall reading frozen at
    start."""
    [node] = await network(1, start=False)
    fast = types.SimpleNamespace(time=lambda: time.time() + 600, monotonic=time.monotonic)
    monkeypatch.setattr(auth, "time", fast)
    await node.start()
    monkeypatch.setattr(auth, "time", time)  # NTP steps the clock back
    try:
        answer = await node.status()
    except ClientError as err:
        raise AssertionError(f"the organizer, right after the step: {err.reason}: "
                             f"{err.message}") from None  # fmt: skip
    assert answer["name"] == node.name


# ---------------------------------------------------------------- clocks stepping back


async def test_after_the_clock_steps_back_the_next_event_follows_its_feed_head(
    network: Make, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pod's laptop ran 20 minutes fast while its organizer wrote a need; NTP then
    stepped the clock back. The next ``podlink request add`` chains on the feed's head
    (``/v1/heads``), but Author.set_head and the heads' ``clock`` go through
    HybridClock.observe, which ignores timestamps more than 15 minutes ahead of the
    wall: the new event is stamped *below* its own feed's head, against clock.py's
    promise ("never runs backwards ... even if the wall clock steps back"). The node then
    refuses it as ``invalid`` "timestamp is not after the previous event of its feed" —
    a reason word for malformed data and a message that hides the cause. Stamped after
    its head (as the clock promises), it would be refused as ``too-far-ahead``, "check
    the author's clock", which is what the organizer needs to hear."""
    [node] = await network(1)
    shift_clock(monkeypatch, SKEW_MS)
    author = await node.author()
    first = author.write(
        kinds.RequestOpened(title="written fast", category="food"), "pod",
        ts=clock.pack(clock.now_ms()),
    )  # fmt: skip
    assert (await node.client.submit([first]))[0]["status"] == "stored"
    shift_clock(monkeypatch, 0)  # NTP steps the clock back

    author = await node.author()  # what the CLI does for every command
    second = author.write(kinds.RequestOpened(title="after the step", category="food"), "pod")
    try:
        await node.client.submit([second])
    except ClientError as err:
        refusal = (err.reason, err.message)
    else:
        refusal = ("stored", "")
    assert second.ts > first.ts, f"stamped below its feed's head; refused {refusal}"


async def test_one_fast_peer_does_not_make_honest_pods_refuse_each_other(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pod Oak's clock runs 14 min 59 s fast: its need is accepted everywhere (under the
    15-minute limit). Elm's node stores it and its hybrid clock observes it (ingest.py
    ``ledger.clock.observe``; observe's bound is the same 15 minutes as the acceptance
    limit), so Elm's organizer, whose CLI observes the node clock from /v1/heads, stamps
    her next need 14 min 59 s ahead too. Ash's node, whose clock is two seconds behind
    Elm's, then refuses that honest need as ``too-far-ahead``: one fast clock within the
    rules makes pods with correct clocks refuse each other (and with the cursor bug above,
    for good). HLC values must stay well inside what receivers accept, e.g. observe only
    timestamps up to half the limit ahead, or accept with a margin over the observe bound."""
    elm_key, oak_key = Keypair.generate(), Keypair.generate()
    elm = await Ledger.open(tmp_path / "elm.db")
    ash = await Ledger.open(tmp_path / "ash.db")
    try:
        await elm.set_pod(elm_key.public)
        oak = Author(oak_key, oak_key.public)
        fast = oak.write(
            kinds.RequestOpened(title="Oak, fast", category="food"), "network",
            ts=clock.pack(clock.now_ms() + clock.FUTURE_LIMIT_MS - 1000),
        )  # fmt: skip
        [stored] = await elm.ingest([fast.to_wire()], source="oak")
        assert stored.status == "stored"

        her = Author(elm_key, elm_key.public)  # as NodeClient.author() builds it
        her.clock.observe(elm.clock.now())  # the /v1/heads "clock"
        need = her.write(kinds.RequestOpened(title="Elm, honest", category="food"), "network")
        [mine] = await elm.ingest([need.to_wire()], source="local")
        assert mine.status == "stored"

        shift_clock(monkeypatch, -2000)  # Ash's clock: two seconds behind Elm's
        [at_ash] = await ash.ingest([need.to_wire()], source="elm")
        assert at_ash.status == "stored", (at_ash.reason, at_ash.message)
    finally:
        await elm.close()
        await ash.close()


def test_a_stale_request_is_not_said_to_be_within_the_limit() -> None:
    """A request signed 300.6 s before the node's clock is refused (the window is 300 s),
    with the message "request time is 300 s away from this node's clock (limit 300 s)":
    http_auth.verify_request truncates the distance with int(), so the refusal names a
    distance equal to the limit, which reads as allowed. (envelope.check_time does the
    same for events: 900.9 s ahead is "stamped 900 s in the future".)"""
    keys = Keypair.generate()
    when = 1_750_000_000
    pod = Keypair.generate().public
    headers = sign_request(keys, "GET", "/v1/status", when=when, pod=pod)
    with pytest.raises(ProtocolError) as err:
        verify_request(headers, "GET", "/v1/status", b"", pod=pod, now=when + 300.6)
    assert err.value.reason == "stale"
    assert "300 s away" not in err.value.message, err.value.message


# ---------------------------------------------------------------- pinned corners (pass)


async def test_ingest_accepts_exactly_the_future_limit_and_not_one_ms_more(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """(passes: protocol.md "exactly 15 minutes ahead is accepted", checked at ingest with
    the wall clock frozen, not only in envelope.check_time.)"""
    now = REAL_NOW_MS()
    monkeypatch.setattr(clock, "now_ms", lambda: now)
    pod = Keypair.generate()
    author = Author(pod, pod.public)
    at_limit = author.write(kinds.PodFounded(name="Edge"), "network",
                            ts=clock.pack(now + clock.FUTURE_LIMIT_MS, 0xFFFF))  # fmt: skip
    beyond = author.write(kinds.PodInfoChanged(name="Edge"), "network",
                          ts=clock.pack(now + clock.FUTURE_LIMIT_MS + 1))  # fmt: skip
    ledger = await Ledger.open(tmp_path / "edge.db")
    try:
        results = await ledger.ingest([at_limit.to_wire(), beyond.to_wire()], source="peer")
    finally:
        await ledger.close()
    assert [(r.status, r.reason) for r in results] == [
        ("stored", None), ("refused", "too-far-ahead")
    ]


async def test_pending_is_kept_up_to_its_ttl_and_dropped_one_ms_after(tmp_path: Path) -> None:
    """(passes: an event parked exactly ``pending_ttl_s`` ago is kept; 1 ms later it goes.)"""
    pod = Keypair.generate()
    author = Author(pod, pod.public)
    feed = [author.write(kinds.PodFounded(name="Gap"), "network"),
            author.write(kinds.PodInfoChanged(name="Gap 2"), "network")]  # fmt: skip
    ledger = await Ledger.open(tmp_path / "gap.db", limits=Limits(pending_ttl_s=60))
    try:
        [waiting] = await ledger.ingest([feed[1].to_wire()], source="peer")
        assert waiting.status == "pending"
        [(received,)] = await ledger.db.execute_fetchall("SELECT received FROM pending")
        assert await ledger.purge_pending(received + 60_000) == 0
        assert await ledger.purge_pending(received + 60_001) == 1
    finally:
        await ledger.close()


async def test_two_accepts_at_one_ts_pick_the_same_claim_in_any_arrival_order(
    tmp_path: Path,
) -> None:
    """(passes: two organizers of Elm accept two different claims at the very same ts,
    on two machines; the (ts, id) order picks one winner, the same whichever order the
    events arrive in, and a rebuild agrees.)"""
    elm_key, ana_key = Keypair.generate(), Keypair.generate()
    t = clock.pack(REAL_NOW_MS() - 60_000)
    elm = Author(elm_key, elm_key.public)
    setup = [
        elm.write(kinds.PodFounded(name="Elm"), "network", ts=t),
        elm.write(kinds.OrganizerAdded(key=ana_key.public, name="Ana"), "network", ts=t + 1),
        elm.write(kinds.RequestOpened(title="Soup", category="food"), "network", ts=t + 2),
    ]
    request = setup[-1].id
    claims = []
    for i in range(2):
        helper = Keypair.generate()
        claims.append(Author(helper, helper.public).write(
            kinds.ClaimMade(note=f"helper {i}"), "network", [request], ts=t + 3 + i))  # fmt: skip
    ana = Author(ana_key, elm_key.public)
    accepts = [
        elm.write(kinds.ClaimAccepted(), "network", [claims[0].id], ts=t + 10),
        ana.write(kinds.ClaimAccepted(), "network", [claims[1].id], ts=t + 10),
    ]
    events = [*setup, *claims, *accepts]
    dumps, winners = [], set()
    for i, order in enumerate((events, events[::-1])):
        ledger = await Ledger.open(tmp_path / f"{i}.db")
        try:
            await ledger.set_pod(elm_key.public)
            for ev in order:  # one by one: waits and releases in both directions
                await ledger.ingest([ev.to_wire()], source="peer")
            [(accepted,)] = await ledger.db.execute_fetchall(
                "SELECT accepted_claim FROM requests WHERE id = ?", (request,))  # fmt: skip
            winners.add(accepted)
            live = await ledger.dump()
            await ledger.rebuild()
            assert await ledger.dump() == live
            dumps.append(live)
        finally:
            await ledger.close()
    first = min(accepts, key=lambda e: e.id)
    assert winners == {claims[accepts.index(first)].id}
    assert dumps[0] == dumps[1]


@pytest.mark.parametrize("reverse", [False, True])
async def test_an_accept_stamped_before_a_fast_claim_still_accepts_it(
    tmp_path: Path, reverse: bool
) -> None:
    """Birch's clock runs 14.5 minutes fast: its claim is accepted (under the 15-minute
    limit) but Alder's clock does not follow it (it follows up to 14 minutes ahead), so
    Alder's accept is stamped before the claim. The fold applies an answer after the
    claim it answers, whatever their timestamps, so the accept counts, in either arrival
    order, and a rebuild agrees."""
    from tests.ledger.helpers import claim_status, request_row

    alder, birch = Keypair.generate(), Keypair.generate()
    ledger = await Ledger.open(tmp_path / "alder.db")
    try:
        await ledger.set_pod(alder.public)
        mine, theirs = Author(alder, alder.public), Author(birch, birch.public)
        need = mine.write(kinds.RequestOpened(title="Ride", category="transport"), "network")
        fast = clock.pack(clock.now_ms() + clock.OBSERVE_LIMIT_MS + 30_000)
        claim = theirs.write(kinds.ClaimMade(note="I drive"), "network", [need.id], ts=fast)
        accept = mine.write(kinds.ClaimAccepted(), "network", [claim.id])
        assert accept.ts < claim.ts
        wires = [need.to_wire(), claim.to_wire(), accept.to_wire()]
        for wire in reversed(wires) if reverse else wires:
            await ledger.ingest([wire], source="birch")
        row = await request_row(ledger, need.id)
        assert row is not None and (row["status"], row["accepted_claim"]) == ("accepted", claim.id)
        assert await claim_status(ledger, claim.id) == "accepted"
        live = await ledger.dump()
        await ledger.rebuild()
        assert await ledger.dump() == live
    finally:
        await ledger.close()
