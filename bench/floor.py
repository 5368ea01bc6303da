"""The crypto and codec floor: what one event costs before any I/O.

Ed25519 sign and verify (PyNaCl), msgspec encode/decode of headers and wire events,
BLAKE2b-256, podlink's own decode_event + verify_event against the same primitives inlined,
and whether a 2-thread pool speeds verification up (PyNaCl releases the GIL in libsodium).
All over a corpus of realistic signed events (bench/_corpus.py), each op on a distinct event.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import statistics
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import msgspec
import nacl.signing
from nacl.bindings import crypto_sign_open

from bench import Params, Result, micros, params, per_second, result, sample
from bench._corpus import keypair, make_events
from podlink.protocol import keys
from podlink.protocol.envelope import (
    SIGN_PREFIX,
    Event,
    Header,
    Wire,
    decode_event,
    encode_wire,
    verify_event,
)

THREADS = 2
MAP_BATCHES = (1, 16, 128, 1024)  # events per task, all tasks queued on the pool at once
SPLIT_BATCHES = (8, 16, 32, 64, 256)  # events per batch, one batch at a time, split in THREADS
THREAD_TARGET = ">= 1.3"  # a 2-thread pool must beat one thread by this much to be worth it

_header_decoder = msgspec.msgpack.Decoder(Header)
_wire_decoder = msgspec.msgpack.Decoder(Wire)
_encoder = msgspec.msgpack.Encoder()


def _blake(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=32).digest()


def _signing(events: Sequence[Event]) -> list[tuple[nacl.signing.SigningKey, bytes]]:
    by_author = {kp.public: kp.signing for kp in (keypair(f"organizer-{i}") for i in range(16))}
    return [(by_author[e.author], e.signing_input()) for e in events]


def _ed25519(events: Sequence[Event], p: Params) -> list[Result]:
    signers = _signing(events)
    triples = [(e.author, e.signing_input(), e.sig) for e in events]
    cached = {e.author: nacl.signing.VerifyKey(e.author) for e in events}
    with_keys = [(cached[pk], m, s) for pk, m, s in triples]

    def sign() -> int:
        for sk, m in signers:
            sk.sign(m)
        return len(signers)

    def raw() -> int:
        for pk, m, s in triples:
            crypto_sign_open(s + m, pk)
        return len(triples)

    def verify_key() -> int:
        for vk, m, s in with_keys:
            vk.verify(m, s)
        return len(with_keys)

    def podlink() -> int:
        check = keys.verify_signature
        for pk, m, s in triples:
            if not check(pk, m, s):
                raise AssertionError("corpus event failed to verify")
        return len(triples)

    signed = sample({"sign": sign}, p)["sign"]
    t = sample({"raw": raw, "vk": verify_key, "podlink": podlink}, p)
    base = ("ed25519.verify.raw", per_second(t["raw"]))

    def overhead(name: str) -> str:
        extra = statistics.median(t[name]) - statistics.median(t["raw"])
        return f"{extra * 1e6:+.2f} us/call over crypto_sign_open"

    return [
        result("ed25519.sign", "ops/s", per_second(signed), note="SigningKey.sign"),
        result(
            "ed25519.verify.raw",
            "ops/s",
            base[1],
            note="nacl.bindings.crypto_sign_open(sig + msg, pk)",
        ),
        result(
            "ed25519.verify.VerifyKey",
            "ops/s",
            per_second(t["vk"]),
            baseline=base,
            target=">= 0.95",
            note=f"cached VerifyKey.verify; {overhead('vk')}",
        ),
        result(
            "ed25519.verify.podlink",
            "ops/s",
            per_second(t["podlink"]),
            baseline=base,
            target=">= 0.95",
            note=f"keys.verify_signature (new VerifyKey per call); {overhead('podlink')}",
        ),
    ]


def _codec(events: Sequence[Event], p: Params) -> tuple[list[Result], dict[str, float]]:
    headers = [e.header for e in events]
    payloads = [e.payload for e in events]
    bodies = [e.body or b"" for e in events]
    parts = [(e.payload, e.sig, e.body) for e in events]
    wires = [e.to_wire() for e in events]

    def loop(fn: Callable[[bytes], object], items: Sequence[bytes]) -> Callable[[], int]:
        def run() -> int:
            for item in items:
                fn(item)
            return len(items)

        return run

    def wire_encode() -> int:
        for payload, sig, body in parts:
            encode_wire(payload, sig, body)
        return len(parts)

    series: dict[str, tuple[Callable[[], int], str]] = {
        "msgpack.header.encode": (loop(_encoder.encode, headers), "Encoder.encode(Header)"),
        "msgpack.header.decode": (
            loop(_header_decoder.decode, payloads),
            "Decoder(Header).decode, with its constraints",
        ),
        "msgpack.wire.encode": (wire_encode, "envelope.encode_wire(payload, sig, body)"),
        "msgpack.wire.decode": (
            loop(_wire_decoder.decode, wires),
            "Decoder(Wire).decode only (header left as bytes)",
        ),
        "envelope.decode_event": (
            loop(decode_event, wires),
            "wire + header decode + BLAKE2b id + Event",
        ),
        "blake2b.payload": (
            loop(_blake, payloads),
            f"{statistics.mean(map(len, payloads)):.0f} B mean header",
        ),
        "blake2b.body": (loop(_blake, bodies), f"{statistics.mean(map(len, bodies)):.0f} B mean"),
    }
    t = sample({name: fn for name, (fn, _) in series.items()}, p)
    medians = {name: statistics.median(s) for name, s in t.items()}
    results = [
        result(name, "us/event", micros(t[name]), note=note) for name, (_, note) in series.items()
    ]
    return results, medians


def _pipeline(
    events: Sequence[Event], p: Params, parts: dict[str, float], verify_s: float
) -> list[Result]:
    wires = [e.to_wire() for e in events]

    def raw() -> int:
        # The same work as decode_event + verify_event, primitives inlined, no checks skipped
        # that cost anything: structure, header, id, signature, body hash.
        for w in wires:
            wire = _wire_decoder.decode(w)
            header = _header_decoder.decode(wire.payload)
            _blake(wire.payload)
            crypto_sign_open(wire.sig + SIGN_PREFIX + wire.payload, header.author)
            body = wire.body
            if body is not None and (
                len(body) != header.body_size or _blake(body) != header.body_hash
            ):
                raise AssertionError("corpus body does not match")
        return len(wires)

    def podlink() -> int:
        for w in wires:
            verify_event(decode_event(w))
        return len(wires)

    t = sample({"raw": raw, "podlink": podlink}, p)
    summed = (
        parts["msgpack.wire.decode"]
        + parts["msgpack.header.decode"]
        + parts["blake2b.payload"]
        + parts["blake2b.body"]
        + verify_s
    )
    base = ("decode+verify.raw", micros(t["raw"]))
    return [
        result(
            "decode+verify.raw",
            "us/event",
            base[1],
            note=f"primitives inlined in one loop; separately timed parts sum to "
            f"{summed * 1e6:.1f} us",
        ),
        result(
            "decode+verify.podlink",
            "us/event",
            micros(t["podlink"]),
            baseline=base,
            target="<= 1.10",
            note="envelope.decode_event + verify_event",
        ),
    ]


class _CpuMeter:
    """Wraps a variant to total the CPU seconds it burns against the wall seconds it takes."""

    def __init__(self, fn: Callable[[], int]) -> None:
        self.fn = fn
        self.cpu = 0.0
        self.wall = 0.0

    def __call__(self) -> int:
        c, w = time.process_time(), time.perf_counter()
        n = self.fn()
        self.cpu += time.process_time() - c
        self.wall += time.perf_counter() - w
        return n

    @property
    def cpus(self) -> float:
        return self.cpu / self.wall if self.wall else 0.0


def _chunks(items: Sequence, size: int) -> list[Sequence]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def _split_runner(
    loop: asyncio.AbstractEventLoop,
    pool: ThreadPoolExecutor,
    fn: Callable[[Sequence], int],
    batches: list[Sequence],
) -> Callable[[], int]:
    """Batches one after another, each split in THREADS parts awaited with gather: the
    ingest's shape (one batch in flight, asyncio hands the parts to the verify pool)."""
    parts = [_chunks(b, -(-len(b) // THREADS)) for b in batches]

    async def all_batches() -> int:
        done = 0
        for batch in parts:
            counts = await asyncio.gather(*(loop.run_in_executor(pool, fn, x) for x in batch))
            done += sum(counts)
        return done

    return lambda: loop.run_until_complete(all_batches())


def _threads(events: Sequence[Event], p: Params) -> list[Result]:
    wires = [e.to_wire() for e in events]
    signed = [(e.sig + e.signing_input(), e.author) for e in events]

    def verify_batch(batch: Sequence[bytes]) -> int:
        for w in batch:
            verify_event(decode_event(w))
        return len(batch)

    def raw_batch(batch: Sequence[tuple[bytes, bytes]]) -> int:
        for sm, pk in batch:
            crypto_sign_open(sm, pk)
        return len(batch)

    sizes = [b for b in MAP_BATCHES if b <= len(events) // THREADS]
    splits = [b for b in SPLIT_BATCHES if b <= len(events)]
    raw_size = max(b for b in sizes if b <= 128)
    loop = asyncio.new_event_loop()
    with (
        ThreadPoolExecutor(max_workers=THREADS, thread_name_prefix="bench-verify") as pool,
        contextlib.closing(loop),
    ):

        def pooled(fn: Callable[[Sequence], int], batches: list[Sequence]) -> Callable[[], int]:
            return lambda: sum(pool.map(fn, batches))

        variants = {"1": _CpuMeter(lambda: verify_batch(wires))}
        for b in sizes:
            variants[f"map.{b}"] = _CpuMeter(pooled(verify_batch, _chunks(wires, b)))
        for b in splits:
            variants[f"split.{b}"] = _CpuMeter(
                _split_runner(loop, pool, verify_batch, _chunks(wires, b))
            )
        variants["raw.1"] = _CpuMeter(lambda: raw_batch(signed))
        variants["raw.map"] = _CpuMeter(pooled(raw_batch, _chunks(signed, raw_size)))
        t = sample(variants, p)

    def busy(key: str) -> str:
        # Process CPU time over wall time: did the pool really get two cores? (about +-5%)
        return f"~{variants[key].cpus:.2f} CPUs busy"

    base = ("verify.threads1", per_second(t["1"]))
    raw_base = ("verify.raw.threads1", per_second(t["raw.1"]))
    out = [
        result(
            "verify.threads1",
            "ops/s",
            base[1],
            note=f"decode_event + verify_event inline, one thread; {busy('1')}",
        )
    ]
    out += [
        result(
            f"verify.threads{THREADS}.batch{b}",
            "ops/s",
            per_second(t[f"map.{b}"]),
            baseline=base,
            target=THREAD_TARGET,
            note=f"pool.map over tasks of {b} events, all queued at once; {busy(f'map.{b}')}",
        )
        for b in sizes
    ]
    out += [
        result(
            f"verify.split{THREADS}.batch{b}",
            "ops/s",
            per_second(t[f"split.{b}"]),
            baseline=base,
            target=THREAD_TARGET,
            note=f"batches of {b} one at a time, each split in {THREADS} run_in_executor "
            f"parts; {busy(f'split.{b}')}",
        )
        for b in splits
    ]
    out += [
        result(
            "verify.raw.threads1",
            "ops/s",
            raw_base[1],
            note=f"crypto_sign_open only, one thread; {busy('raw.1')}",
        ),
        result(
            f"verify.raw.threads{THREADS}.batch{raw_size}",
            "ops/s",
            per_second(t["raw.map"]),
            baseline=raw_base,
            target=THREAD_TARGET,
            note=f"the ceiling: no Python work beside the GIL-free call; {busy('raw.map')}",
        ),
    ]
    return out


def run(quick: bool) -> list[Result]:
    """Every floor series; quick uses 256 events and 3 short repeats, full 2048 and 7."""
    p = params(quick)
    events = make_events(256 if quick else 2048)
    ed = _ed25519(events, p)
    codec, parts = _codec(events, p)
    verify_s = 1.0 / next(r.median for r in ed if r.name == "ed25519.verify.raw")
    return ed + codec + _pipeline(events, p, parts, verify_s) + _threads(events, p)
