"""Large batches are verified in worker processes: refusals, fallback to threads, shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import signal
from pathlib import Path

import pytest

from podlink.ledger.verifier import PIPE_BYTES, PROCESS_MIN, Verifier, check_signed, check_wires
from podlink.protocol import clock, kinds
from podlink.protocol.envelope import Event, decode_event, encode_wire
from podlink.protocol.errors import ProtocolError
from tests.ledger.conftest import OpenLedger
from tests.ledger.helpers import Pod, World, count, reasons, statuses, wires

FUTURE_MS = 20 * 60 * 1000  # beyond the 15 minutes an event may be ahead of our clock


def needs(world: World, pod: Pod, n: int) -> list[Event]:
    """A new organizer's roster entry and ``n`` needs it writes."""
    org, add = world.organizer(pod)
    out = [add]
    for i in range(n):
        world.tick()
        out.append(org.write(kinds.RequestOpened(title=f"need {i}", category="food"), "network"))
    return out


def forged(event: Event) -> bytes:
    return encode_wire(event.payload, bytes([event.sig[0] ^ 1]) + event.sig[1:], event.body)


async def test_workers_check_a_large_batch_and_stop_with_the_ledger(
    make_ledger: OpenLedger, world: World
) -> None:
    pod, genesis = world.pod()
    events = genesis + needs(world, pod, PROCESS_MIN + 40)
    late, late_add = world.organizer(pod, "Bo")
    world.tick(FUTURE_MS)
    ahead = late.write(kinds.RequestOpened(title="from the future", category="food"), "network")
    # The last need goes only in a forged form, and the newcomer writes from the future.
    sent = [*wires(events[:-1]), late_add.to_wire(), forged(events[-1]), ahead.to_wire()]
    ledger = await make_ledger(pod=pod.id)
    results = await ledger.ingest(sent)
    pids = ledger.verifier.pids
    assert len(pids) == ledger.workers >= 1  # the batch went to worker processes
    assert reasons(results[-2:]) == ["forged", "too-far-ahead"]
    assert statuses(results[:-2]) == ["stored"] * (len(sent) - 2)
    assert await count(ledger, "events") == len(sent) - 2
    await ledger.close()
    for pid in pids:  # stopped and reaped
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            continue
        raise AssertionError(f"worker {pid} still runs after close")


async def test_a_dead_worker_hands_the_checks_back_to_the_threads(
    make_ledger: OpenLedger, world: World
) -> None:
    pod, genesis = world.pod()
    first = genesis + needs(world, pod, PROCESS_MIN + 10)
    ledger = await make_ledger(pod=pod.id)
    assert set(statuses(await ledger.ingest(wires(first)))) == {"stored"}
    for pid in ledger.verifier.pids:
        os.kill(pid, signal.SIGKILL)
    second = needs(world, pod, PROCESS_MIN + 10)
    sent = [*wires(second[:-1]), forged(second[-1])]
    results = await ledger.ingest(sent)
    assert ledger.verifier.failed and not ledger.verifier.pids
    assert statuses(results[:-1]) == ["stored"] * (len(sent) - 1)
    assert reasons(results[-1:]) == ["forged"]  # still refused, by the verify threads
    assert await count(ledger, "events") == len(first) + len(second) - 1


async def test_batches_arriving_together_share_one_set_of_workers(
    make_ledger: OpenLedger, world: World
) -> None:
    elm, elm_genesis = world.pod("Elm")
    oak, oak_genesis = world.pod("Oak")
    first = elm_genesis + needs(world, elm, PROCESS_MIN + 5)
    second = oak_genesis + needs(world, oak, PROCESS_MIN + 5)
    ledger = await make_ledger()
    done = await asyncio.gather(
        ledger.ingest(wires(first), source="peer-a"), ledger.ingest(wires(second), source="peer-b")
    )
    assert [set(statuses(r)) for r in done] == [{"stored"}, {"stored"}]
    assert len(ledger.verifier.pids) == ledger.workers


async def test_a_check_cancelled_midway_does_not_answer_the_next_batch(
    make_ledger: OpenLedger, world: World
) -> None:
    """A page fetched ahead and dropped (sync) cancels its check while the workers work;
    their answer must not be taken for the next batch's, which here holds a forgery."""
    first_pod, first_genesis = world.pod("Elm")
    first = wires(first_genesis + needs(world, first_pod, PROCESS_MIN * 2))
    second_pod, second_genesis = world.pod("Oak")
    events = second_genesis + needs(world, second_pod, PROCESS_MIN * 2)
    second = [*wires(events[:-1]), forged(events[-1])]
    assert len(first) == len(second)  # the same split: stale verdicts would fit exactly
    ledger = await make_ledger()
    ahead = asyncio.ensure_future(ledger.check(first))
    for _ in range(2000):  # until the workers have the frame
        await asyncio.sleep(0.001)
        if ledger.verifier.pids:
            break
    await asyncio.sleep(0.005)
    ahead.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await ahead
    results = await ledger.ingest(second)
    assert reasons(results[-1:]) == ["forged"]
    assert statuses(results[:-1]) == ["stored"] * (len(second) - 1)
    assert not ledger.verifier.failed


async def test_workers_started_ahead_answer_the_first_large_batch(
    make_ledger: OpenLedger, world: World
) -> None:
    pod, genesis = world.pod()
    events = genesis + needs(world, pod, PROCESS_MIN)
    ledger = await make_ledger(pod=pod.id)
    assert ledger.verifier.pids == []  # lazily, by default
    assert await ledger.verifier.start()
    started = ledger.verifier.pids
    assert len(started) == ledger.workers >= 1
    assert await ledger.verifier.start()  # twice is once
    assert ledger.verifier.pids == started
    results = await ledger.ingest([*wires(events[:-1]), forged(events[-1])])
    assert ledger.verifier.pids == started  # the same processes did the work
    assert statuses(results) == ["stored"] * (len(events) - 1) + ["refused"]
    assert reasons(results[-1:]) == ["forged"]


async def test_frames_in_flight_to_one_worker_each_get_their_own_verdicts(world: World) -> None:
    """Batches checked ahead are written to a worker before it answered the one before
    (pipelined frames); every caller must get exactly the verdicts of its own wires."""
    pod, genesis = world.pod()
    events = [*genesis, *needs(world, pod, 30)]
    batches = [  # the same length each, so that a swapped answer would fit
        [*wires(events[0:9]), forged(events[9])],
        [forged(events[10]), *wires(events[11:20])],
        wires(events[20:30]),
    ]
    verifier = Verifier(1)
    try:
        assert await verifier.start()
        answers = await asyncio.gather(*(verifier.check(b, clock.now_ms()) for b in batches))
        assert len(verifier.pids) == 1 and verifier._procs[0].asked == 4  # start + 3
    finally:
        await verifier.close()
    refused = [[i for i, v in enumerate(a or []) if v is not None] for a in answers]
    assert refused == [[9], [0], []]
    assert answers[0][9][0] == "forged"  # type: ignore[index]


async def test_a_worker_dying_with_frames_in_flight_fails_them_all(world: World) -> None:
    """Every caller waiting on a worker that dies gets None (its events go to the verify
    threads), none waits for the reply timeout, and the processes are gone."""
    pod, genesis = world.pod()
    batch = wires([*genesis, *needs(world, pod, 2000)])  # ~80 ms of checks per frame
    verifier = Verifier(1)
    try:
        assert await verifier.start()
        (pid,) = verifier.pids
        calls = [asyncio.ensure_future(verifier.check(batch, clock.now_ms())) for _ in range(3)]
        await asyncio.sleep(0.02)  # all three frames written; the first is being checked
        os.kill(pid, signal.SIGKILL)
        async with asyncio.timeout(10):
            answers = await asyncio.gather(*calls)
    finally:
        await verifier.close()
    assert answers == [None, None, None]
    assert verifier.failed and verifier.pids == []


async def test_a_worker_pipe_holds_a_whole_frame(world: World) -> None:
    """Where Linux allows it, a worker's stdin pipe is widened so that a 1,000-event frame
    is written at once, without the event loop having to push the rest later."""
    limit = _pipe_max_size()
    if limit is None or not hasattr(fcntl, "F_GETPIPE_SZ"):
        pytest.skip("pipe sizes are a Linux feature")
    verifier = Verifier(1)
    try:
        assert await verifier.start()
        stdin = verifier._procs[0].proc.stdin
        assert stdin is not None
        size = fcntl.fcntl(stdin.transport.get_extra_info("pipe").fileno(), fcntl.F_GETPIPE_SZ)
    finally:
        await verifier.close()
    assert size >= min(PIPE_BYTES, limit)


def _pipe_max_size() -> int | None:
    """The largest pipe an unprivileged process may ask for (Linux), else None."""
    try:
        return int(Path("/proc/sys/fs/pipe-max-size").read_text())
    except OSError:
        return None


def test_a_worker_refuses_exactly_what_the_threads_refuse(world: World) -> None:
    """Workers read a sound wire no further than its signature needs; any other wire gets
    the refusal, reason and words, that the node's own full check gives."""
    pod, genesis = world.pod()
    org, add = world.organizer(pod)
    need = org.write(kinds.RequestOpened(title="soup", category="food"), "network")
    now = clock.wall_ms(need.ts)
    world.tick(FUTURE_MS)
    ahead = org.write(kinds.RequestOpened(title="later", category="food"), "network")
    edge = clock.FUTURE_LIMIT_MS
    other_body = encode_wire(need.payload, need.sig, b"not the body")  # the node's to refuse
    bad_payload = encode_wire(need.payload[:-1] + bytes([need.payload[-1] ^ 1]), need.sig, None)
    sound = wires([*genesis, add, need])
    cases = [
        *sound,
        forged(need),
        ahead.to_wire(),
        other_body,
        bad_payload,
        encode_wire(need.payload, need.sig[:-1], None),  # a signature a byte short
        encode_wire(ahead.payload[:3], ahead.sig, None),  # a header cut short
        b"\x93\x01\x02",  # not an event at all
    ]

    def by_threads(wire: bytes, now: int) -> tuple[str, str] | None:
        try:
            check_signed(decode_event(wire), now)
        except ProtocolError as err:
            return err.reason, err.message
        return None

    for at in (now, clock.wall_ms(ahead.ts) - edge, clock.wall_ms(ahead.ts) - edge - 1):
        verdicts = check_wires(cases, at)
        assert verdicts == [by_threads(w, at) for w in cases]
    verdicts = check_wires(cases, now)[len(sound) :]
    assert check_wires(sound, now) == [None] * len(sound)
    # (a body that does not match its header is the node's to refuse, not a worker's)
    assert [v and v[0] for v in verdicts[:3]] == ["forged", "too-far-ahead", None]
    assert all(v is not None for v in verdicts[3:])
    # At its limit, the event from the future is sound; a millisecond later it is not.
    assert check_wires([ahead.to_wire()], clock.wall_ms(ahead.ts) - edge) == [None]
    assert check_wires([ahead.to_wire()], clock.wall_ms(ahead.ts) - edge - 1)[0] is not None
