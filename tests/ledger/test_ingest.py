"""Ingest results: stored, duplicate, refused with the right reason word; bodies refilled."""

from __future__ import annotations

import asyncio
import contextlib

from podlink.ledger.authoring import Author
from podlink.ledger.ledger import Limits
from podlink.protocol import clock, kinds
from podlink.protocol.envelope import (
    MAX_BODY,
    MAX_EVENT,
    SIGN_PREFIX,
    encode_wire,
    sign_event,
)
from podlink.protocol.keys import Keypair
from tests.ledger.conftest import OpenLedger
from tests.ledger.helpers import (
    World,
    bodiless,
    count,
    one,
    query,
    reasons,
    statuses,
    stored_ids,
    wires,
    with_body,
)


async def test_stored_then_duplicate_in_the_same_batch_and_across_batches(
    make_ledger: OpenLedger, world: World
) -> None:
    pod, events = world.pod()
    events.append(pod.author.write(kinds.PodInfoChanged(name="Elm St"), "network"))
    ledger = await make_ledger()
    first = await ledger.ingest(wires([events[0], events[0], events[1]]))
    assert statuses(first) == ["stored", "duplicate", "stored"]
    assert [r.id for r in first] == [events[0].id_text, events[0].id_text, events[1].id_text]
    assert all(r.ok for r in first)
    again = await ledger.ingest(wires(events))
    assert statuses(again) == ["duplicate", "duplicate"]
    assert await count(ledger, "events") == 2


async def test_each_bad_event_is_refused_with_its_reason_and_never_stored(
    make_ledger: OpenLedger, world: World
) -> None:
    pod, events = world.pod("Elm")
    other, other_events = world.pod("Oak")
    org, add = world.organizer(pod)
    events += [*other_events, add]
    good = org.write(kinds.RequestOpened(title="Soup", category="food"), "network")
    events.append(good)
    ledger = await make_ledger(pod=pod.id)
    assert set(statuses(await ledger.ingest(wires(events)))) == {"stored"}
    before = await stored_ids(ledger)

    now = clock.now_ms()
    bad: dict[str, bytes] = {}
    bad["malformed"] = b"\x93\xc4\x03abc"
    bad["not msgpack at all"] = b"hello"
    bad["oversize event"] = b"\x00" * (MAX_EVENT + 1)
    bad["oversize body"] = encode_wire(good.payload, good.sig, b"x" * (MAX_BODY + 1))
    forged = bytearray(good.sig)
    forged[0] ^= 1
    bad["forged signature"] = encode_wire(good.payload, bytes(forged), good.body)
    # Signed by a stranger: the header names the organizer as author.
    stranger_sig = Keypair.generate().sign(SIGN_PREFIX + good.payload)
    bad["someone else's signature"] = encode_wire(good.payload, stranger_sig, good.body)
    ahead = org.write(
        kinds.RequestOpened(title="Later", category="food"), "network",
        ts=clock.pack(now + clock.FUTURE_LIMIT_MS + 60_000),
    )  # fmt: skip
    bad["too far ahead"] = ahead.to_wire()
    org.heads.pop("network")  # the refused event never happened for this feed
    org.set_head("network", 1, good.id)
    bad["member kind in the network lane"] = sign_event(
        org.keypair, pod=pod.id, lane="network", seq=2, prev=good.id, ts=world.clock.now(),
        kind="member.join", body=kinds.encode_body(kinds.MemberJoined(box=b"\x00" * 48)),
    ).to_wire()  # fmt: skip
    foreign = other.author.write(kinds.RequestOpened(title="Oak's", category="food"), "pod")
    bad["pod lane of a foreign pod"] = foreign.to_wire()
    bad["ts not after its predecessor"] = sign_event(
        org.keypair, pod=pod.id, lane="network", seq=2, prev=good.id, ts=good.ts,
        kind="request.open", body=kinds.encode_body(
            kinds.RequestOpened(title="Same time", category="food")),
    ).to_wire()  # fmt: skip

    expected = {
        "malformed": "invalid",
        "not msgpack at all": "invalid",
        "oversize event": "too-large",
        "oversize body": "too-large",
        "forged signature": "forged",
        "someone else's signature": "forged",
        "too far ahead": "too-far-ahead",
        "member kind in the network lane": "invalid",
        "pod lane of a foreign pod": "unauthorised",
        "ts not after its predecessor": "invalid",
    }
    results = await ledger.ingest(list(bad.values()))
    got = dict(zip(bad, results, strict=True))
    assert {name: (r.status, r.reason) for name, r in got.items()} == {
        name: ("refused", reason) for name, reason in expected.items()
    }
    assert all(r.message for r in results) and not any(r.ok for r in results)
    # Each one alone too: a batch's neighbours change nothing.
    for name, wire in bad.items():
        (alone,) = await ledger.ingest([wire])
        assert (alone.status, alone.reason) == ("refused", expected[name]), name
    assert await stored_ids(ledger) == before
    assert await count(ledger, "pending") == 0 and await count(ledger, "forks") == 0
    # The refusals did not disturb the feed: its real next event is stored.
    nxt = org.write(kinds.RequestOpened(title="Bread", category="food"), "network")
    assert statuses(await ledger.ingest([nxt.to_wire()])) == ["stored"]


async def test_a_body_not_matching_its_header_is_dropped_then_refilled(
    make_ledger: OpenLedger, world: World
) -> None:
    pod, events = world.pod()
    req = pod.author.write(kinds.RequestOpened(title="Soup", category="food"), "network")
    ledger = await make_ledger()
    await ledger.ingest(wires(events))
    tampered = with_body(req, kinds.encode_body(kinds.RequestOpened(title="Xx", category="food")))
    (res,) = await ledger.ingest([tampered])
    assert (res.status, res.body_dropped, res.id) == ("stored", True, req.id_text)
    assert await one(ledger, "SELECT body IS NULL, dropped FROM events WHERE id = ?",
                     (req.id,)) == (1, 0)  # fmt: skip
    assert await count(ledger, "requests") == 0  # nothing to show without the body
    assert (await ledger.verify()).ok

    (res,) = await ledger.ingest([bodiless(req)])  # a second copy without a body: no help
    assert res.status == "duplicate"
    (res,) = await ledger.ingest([req.to_wire()])
    assert res.status == "duplicate" and not res.body_dropped
    assert await one(ledger, "SELECT body FROM events WHERE id = ?", (req.id,)) == req.body
    assert await one(ledger, "SELECT title FROM requests") == "Soup"
    live = await ledger.dump()
    await ledger.rebuild()
    assert await ledger.dump() == live
    assert (await ledger.verify()).ok


async def test_a_good_copy_later_in_the_same_batch_fills_the_body(
    make_ledger: OpenLedger, world: World
) -> None:
    pod, events = world.pod()
    req = pod.author.write(kinds.RequestOpened(title="Soup", category="food"), "network")
    ledger = await make_ledger()
    results = await ledger.ingest([*wires(events), bodiless(req), req.to_wire()])
    assert statuses(results) == ["stored", "stored", "duplicate"]
    assert await one(ledger, "SELECT body FROM events WHERE id = ?", (req.id,)) == req.body
    assert await one(ledger, "SELECT title FROM requests") == "Soup"


async def test_refused_bytes_leave_no_trace(make_ledger: OpenLedger, world: World) -> None:
    ledger = await make_ledger()
    results = await ledger.ingest([b"", b"\xc0", b"\x93\xc0\xc0\xc0"])
    assert statuses(results) == ["refused"] * 3
    assert reasons(results) == ["invalid"] * 3
    assert [r.id for r in results] == [None] * 3
    for table in ("events", "pending", "forks", "feeds"):
        assert await count(ledger, table) == 0
    assert await query(ledger, "SELECT * FROM requests") == []


async def test_a_bodiless_copy_never_wins_over_a_full_one_waiting_in_pending(
    make_ledger: OpenLedger, world: World
) -> None:
    pod, events = world.pod()
    req = pod.author.write(kinds.RequestOpened(title="Soup", category="food"), "network")
    ledger = await make_ledger()
    assert statuses(await ledger.ingest([req.to_wire()])) == ["pending"]
    # The gap fills while a bodiless copy of the waiting event comes along.
    results = await ledger.ingest([bodiless(req), *wires(events)])
    assert statuses(results) == ["stored", "stored"]
    assert await one(ledger, "SELECT body FROM events WHERE id = ?", (req.id,)) == req.body
    assert await one(ledger, "SELECT title FROM requests") == "Soup"
    live = await ledger.dump()
    await ledger.rebuild()
    assert await ledger.dump() == live


async def test_a_full_copy_after_a_bodiless_one_released_in_the_same_batch(
    make_ledger: OpenLedger, world: World
) -> None:
    pod, events = world.pod()
    req = pod.author.write(kinds.RequestOpened(title="Soup", category="food"), "network")
    ledger = await make_ledger()
    assert statuses(await ledger.ingest([bodiless(req)])) == ["pending"]
    results = await ledger.ingest([*wires(events), req.to_wire()])
    assert statuses(results) == ["stored", "duplicate"]
    assert await one(ledger, "SELECT body FROM events WHERE id = ?", (req.id,)) == req.body
    assert await one(ledger, "SELECT title FROM requests") == "Soup"
    live = await ledger.dump()
    await ledger.rebuild()
    assert await ledger.dump() == live


async def test_a_refilled_roster_add_authorises_its_organizer(
    make_ledger: OpenLedger, world: World
) -> None:
    """A roster.add stored without its body authorises nobody; once its body arrives, the
    organizer's waiting events apply, exactly as on a ledger that had the body at once."""
    pod, events = world.pod()
    org, add = world.organizer(pod)
    req = org.write(kinds.RequestOpened(title="Soup", category="food"), "network")
    ledger = await make_ledger("a.db")
    assert statuses(await ledger.ingest([*wires(events), bodiless(add), req.to_wire()])) == [
        "stored", "stored", "pending",
    ]  # fmt: skip
    assert await count(ledger, "roster") == 0
    (res,) = await ledger.ingest([add.to_wire()])
    assert res.status == "duplicate"
    assert await one(ledger, "SELECT key FROM roster") == org.keypair.public
    assert req.id in await stored_ids(ledger)
    assert await one(ledger, "SELECT title FROM requests") == "Soup"
    live = await ledger.dump()
    await ledger.rebuild()
    assert await ledger.dump() == live
    straight = await make_ledger("b.db")
    await straight.ingest(wires([*events, add, req]))
    assert await straight.dump() == live


async def test_a_second_copy_in_a_batch_shares_the_fate_of_the_first(
    make_ledger: OpenLedger, world: World
) -> None:
    """Only what is stored is acknowledged: a copy of an event that waits, or was refused,
    is not a ``duplicate`` (a peer would take that as delivered and never send it again)."""
    pod, events = world.pod()
    _, add = world.organizer(pod)
    waits = pod.author.write(kinds.PodInfoChanged(name="Elm St"), "network")
    ledger = await make_ledger()
    results = await ledger.ingest([waits.to_wire(), waits.to_wire()])
    assert [(r.status, r.reason) for r in results] == [("pending", "pending")] * 2
    assert not any(r.ok for r in results)
    await ledger.ingest(wires([*events, add]))
    stranger = Author(Keypair.generate(), pod.id, world.clock)  # on no roster (yet)
    unnamed = stranger.write(kinds.RequestOpened(title="Soup", category="food"), "network")
    results = await ledger.ingest([unnamed.to_wire(), bodiless(unnamed)])
    assert [r.status for r in results] == ["pending", "pending"]
    results = await ledger.ingest(wires([*events, *events]))
    assert statuses(results) == ["duplicate"] * 2


async def test_an_ingest_cancelled_with_batches_checked_ahead_stops_cleanly(
    make_ledger: OpenLedger, world: World
) -> None:
    """Cancelling a long ingest cancels the batches being checked ahead of the commit: no
    task is left running, what was committed is a whole prefix of the feed, and the same
    ingest again completes it."""
    pod, genesis = world.pod()
    events = [*genesis]
    for i in range(1500):
        world.tick()
        events.append(pod.author.write(kinds.RequestOpened(title=f"need {i}", category="food"),
                                       "network"))  # fmt: skip
    sent = wires(events)
    ledger = await make_ledger(pod=pod.id, limits=Limits(batch_size=300))
    assert await ledger.verifier.start()  # its readers run as long as the ledger
    before = asyncio.all_tasks()
    committed = asyncio.Event()
    ledger.stored_listeners.append(lambda _pos: committed.set())
    ingest = asyncio.ensure_future(ledger.ingest(sent))
    await committed.wait()  # the first batch is stored, the next ones are being checked
    ingest.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await ingest
    await asyncio.sleep(0)
    assert asyncio.all_tasks() - before - {asyncio.current_task()} == set()
    kept = await stored_ids(ledger)
    assert 0 < len(kept) < len(events)
    assert kept == {e.id for e in events[: len(kept)]}  # the feed's first events, no gap
    results = await ledger.ingest(sent)
    assert statuses(results).count("stored") == len(events) - len(kept)
    assert await count(ledger, "events") == len(events)
