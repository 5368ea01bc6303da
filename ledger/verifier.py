"""Signature checks of large batches in worker processes.

A verify thread releases the GIL inside libsodium and must take it back after every
event, while the event loop and SQLite's thread want it too: ~0.9 context switches per
event (getrusage, 30k-event ingest), a good tenth of the time on a 2-core VM, and the
threads' Python (decoding, cffi) queues behind the commit's. A worker process has a GIL
of its own. It receives wire bytes and returns, per wire, None (signature and time are
sound) or the refusal's (reason, message); the node decodes again for its own use, which
is cheap next to the Ed25519 check (~3 us against ~38 us).

Workers are plain ``python -m podlink.ledger.verifier`` children speaking length-prefixed
msgpack frames on stdin/stdout: nothing of the node is copied into them (no fork of a
process with threads and open databases) and no caller needs a ``__main__`` guard, as a
multiprocessing pool would. They start on the first large batch (or on ``Verifier.start``)
and stop with the ledger.
If one cannot start or dies, the ledger says so once and checks on its threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import struct
import sys
from collections.abc import Awaitable, Iterable, Sequence

import msgspec

try:
    import fcntl
except ImportError:  # not a Unix
    fcntl = None  # type: ignore[assignment]

from podlink.protocol import clock
from podlink.protocol.envelope import SIGN_PREFIX, Event, check_time, decode_event
from podlink.protocol.errors import REASONS, ProtocolError
from podlink.protocol.keys import verify_signature

log = logging.getLogger("podlink.ledger")

Verdict = tuple[str, str] | None  # None: sound; else (reason, message) of the refusal
PROCESS_MIN = 256  # events to verify in one batch before the processes are worth a trip
_LEN = struct.Struct(">I")
_reply_decoder = msgspec.msgpack.Decoder(tuple[int, list[tuple[str, str] | None]])
REPLY_TIMEOUT_S = 120.0  # a worker silent this long on one batch is taken for hung


def check_signed(event: Event, now: int) -> None:
    """The checks a worker can take off the node: the signature, and that the event is
    not from the future (the verify threads run the same, for small batches)."""
    event.verify_signature()
    check_time(event, now)


class _Signed(msgspec.Struct, array_like=True, gc=False):
    """The two fields of a wire a signature check reads (the body is skipped)."""

    payload: bytes
    sig: bytes


class _Signer(msgspec.Struct, array_like=True, gc=False):
    """The header's leading fields up to ``ts``; the rest of the array is skipped."""

    v: int
    pod: msgspec.Raw
    author: bytes
    lane: msgspec.Raw
    seq: msgspec.Raw
    prev: msgspec.Raw
    ts: int


_signed_decoder = msgspec.msgpack.Decoder(_Signed)
_signer_decoder = msgspec.msgpack.Decoder(_Signer)


def check_wires(wires: Sequence[bytes], now: int) -> list[Verdict]:
    """``check_signed`` each wire. Bodies and kind rules are left to the node.

    The node sends only wires it decoded itself, so a sound one is read no further than
    its signature needs (a full decode is ~2 us of the ~43 us an event costs here). A wire
    that fails that short read, its signature or its time is decoded and checked in full,
    for the same refusal, in the same words, as the node's own threads give."""
    out: list[Verdict] = []
    limit = now + clock.FUTURE_LIMIT_MS
    for wire in wires:
        try:
            signed = _signed_decoder.decode(wire)
            signer = _signer_decoder.decode(signed.payload)
            sound = clock.wall_ms(signer.ts) <= limit and verify_signature(
                signer.author, SIGN_PREFIX + signed.payload, signed.sig
            )
        except (msgspec.MsgspecError, UnicodeDecodeError, RecursionError, TypeError):
            sound = False
        if sound:
            out.append(None)
            continue
        try:
            check_signed(decode_event(wire), now)
            out.append(None)
        except ProtocolError as err:
            out.append((err.reason, err.message))
    return out


# What a worker that cannot start, dies, hangs or talks nonsense raises here.
_FAILURES = (OSError, EOFError, TimeoutError, asyncio.IncompleteReadError, msgspec.DecodeError)


class _Worker:
    """One worker process and the frames it has been sent but not yet answered.

    Frames are pipelined: a batch checked ahead is written while the worker still works on
    the one before, so the worker never waits for the event loop (busy with a commit) to
    read an answer and send it more. One reader task takes the answers, in order, and
    hands each to the caller that sent its frame."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.asked = 0  # frames sent, each numbered: the worker echoes the number
        self.waiting: dict[int, asyncio.Future[list[Verdict]]] = {}
        self.failure: BaseException | None = None  # why the reader stopped
        self.reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        try:
            while True:
                (size,) = _LEN.unpack(await self.proc.stdout.readexactly(_LEN.size))
                answered, reply = _reply_decoder.decode(await self.proc.stdout.readexactly(size))
                waiter = self.waiting.pop(answered, None)
                if waiter is not None and not waiter.done():  # else: its caller gave up
                    waiter.set_result(reply)
        except asyncio.CancelledError:
            self.failure = EOFError("worker closed")
        except Exception as err:  # dead, or talking nonsense: its checks go to threads
            self.failure = err if isinstance(err, _FAILURES) else EOFError(repr(err))
        for waiter in self.waiting.values():
            if not waiter.done():
                waiter.set_exception(self.failure)
        self.waiting.clear()

    async def check(self, wires: Sequence[bytes], now: int) -> list[Verdict]:
        """Send one frame and wait for its answer. A caller cancelled while waiting leaves
        its answer to be read and dropped: it is never taken for another frame's."""
        assert self.proc.stdin is not None
        if self.failure is not None:
            raise EOFError(f"worker stopped: {self.failure!r}")
        self.asked += 1
        number = self.asked
        answer = asyncio.get_running_loop().create_future()
        self.waiting[number] = answer
        try:
            frame = msgspec.msgpack.encode((number, now, wires))
            self.proc.stdin.write(_LEN.pack(len(frame)) + frame)  # whole: frames never mix
            await self.proc.stdin.drain()
            reply = await answer
        finally:
            self.waiting.pop(number, None)
            if not answer.done():
                answer.cancel()
            elif not answer.cancelled():
                answer.exception()  # seen, even if the write failed first: no asyncio log
        if len(reply) != len(wires) or any(v is not None and v[0] not in REASONS for v in reply):
            raise EOFError(f"unusable answer: {len(reply)} verdicts for {len(wires)} events")
        return [None if v is None else (v[0], v[1]) for v in reply]

    async def stop(self) -> None:
        if self.proc.returncode is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                await asyncio.wait_for(self.proc.wait(), 5)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        self.reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.reader


async def _answers(calls: Iterable[Awaitable[list[Verdict]]]) -> list[list[Verdict]]:
    """Every worker's answer, within the timeout. Each call is awaited to its end before
    the first failure is raised, so none is left halfway through reading its pipe."""
    async with asyncio.timeout(REPLY_TIMEOUT_S):
        done = await asyncio.gather(*calls, return_exceptions=True)
    for answer in done:
        if isinstance(answer, BaseException):
            raise answer
    return done  # type: ignore[return-value]


class Verifier:
    """``workers`` processes checking signatures, started on first use or by ``start``."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._procs: list[_Worker] = []
        self._starting = asyncio.Lock()  # two batches arriving at once start one set
        self.failed = False  # processes could not start or died: callers use threads
        self.closed = False  # closed with its ledger: no process starts again

    @property
    def pids(self) -> list[int]:
        """Process ids of the running workers."""
        return [w.proc.pid for w in self._procs if w.proc.returncode is None]

    async def start(self) -> bool:
        """Start the processes now rather than on the first large batch (a node about to
        take a large ingest, or a benchmark measuring the steady state); True if running."""
        if self.failed or self.closed:
            return False
        try:
            await self._start()
            await _answers(w.check([], 0) for w in self._procs)  # an empty frame: ready
        except _FAILURES as err:
            await self._give_up(err)
        return not self.failed and bool(self._procs)

    async def _start(self) -> None:
        async with self._starting:
            if self.failed or self.closed:  # another batch's check failed, or closed
                return
            while len(self._procs) < self.workers:
                proc = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "podlink.ledger.verifier",
                    stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                )  # fmt: skip
                assert proc.stdin is not None
                _widen(proc.stdin.transport)
                self._procs.append(_Worker(proc))

    async def check(self, wires: Sequence[bytes], now: int) -> list[Verdict] | None:
        """One verdict per wire, in order; None if the processes are unavailable."""
        if self.failed or self.closed:
            return None
        try:
            await self._start()
            if self.failed or not self._procs:
                return None
            size = -(-len(wires) // len(self._procs))
            parts = [wires[i : i + size] for i in range(0, len(wires), size)]
            done = await _answers(
                w.check(part, now) for w, part in zip(self._procs, parts, strict=False)
            )
        except _FAILURES as err:
            await self._give_up(err)
            return None
        return [verdict for part in done for verdict in part]

    async def _give_up(self, err: BaseException) -> None:
        log.warning("signature checks move to threads: a worker process failed (%r)", err)
        self.failed = True
        await self.close()

    async def close(self) -> None:
        self.closed = True
        async with self._starting:  # a start under way finishes first, then stops here
            procs, self._procs = self._procs, []
        for worker in procs:
            with contextlib.suppress(OSError, ProcessLookupError):
                await worker.stop()


PIPE_BYTES = 1 << 20  # room for a whole frame (1,000 events are ~500 kB) in the pipe
_F_SETPIPE_SZ = 1031  # Linux fcntl


def _widen(transport: asyncio.BaseTransport) -> None:
    """Grow a worker's stdin pipe to PIPE_BYTES where the OS allows (Linux, up to
    fs.pipe-max-size): a frame is then written in one go, and the worker reads it all
    without waiting for the event loop, busy with a commit, to push the rest. Elsewhere,
    or if refused, the pipe keeps its size (64 kB on Linux) and all still works."""
    pipe = transport.get_extra_info("pipe")
    if pipe is None or fcntl is None:
        return
    with contextlib.suppress(OSError, ValueError):
        fcntl.fcntl(pipe.fileno(), _F_SETPIPE_SZ, PIPE_BYTES)


def main() -> None:
    """The worker: answer frames from stdin until it closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the node's to handle
    with contextlib.suppress(OSError, AttributeError):
        # Below the node: verification runs a batch ahead and has slack, while the node's
        # commit is the pipeline's critical path; on two cores they would share evenly.
        os.nice(int(os.environ.get("PODLINK_VERIFY_NICE", "19")))
    read, write = sys.stdin.buffer.read, sys.stdout.buffer
    decoder = msgspec.msgpack.Decoder(tuple[int, int, list[bytes]])
    while True:
        head = read(_LEN.size)
        if len(head) < _LEN.size:
            return
        (size,) = _LEN.unpack(head)
        number, now, wires = decoder.decode(read(size))
        reply = msgspec.msgpack.encode((number, check_wires(wires, now)))
        write.write(_LEN.pack(len(reply)) + reply)
        write.flush()


if __name__ == "__main__":
    main()
