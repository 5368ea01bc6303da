"""Signed HTTP requests: every organizer and peer request carries its sender's signature.

The sender signs ``SIGN_PREFIX`` followed by these lines joined with ``\\n``::

    METHOD
    /path?query          (exactly as sent, percent-encoding included)
    hex SHA-256 of the body (of b"" when there is none)
    unix time in seconds (decimal)
    nonce (base64url of 16 random bytes)
    the receiving pod's key (base64url)

and sends ``Podlink-Key``, ``Podlink-Time``, ``Podlink-Nonce``, ``Podlink-Pod``,
``Podlink-Signature`` (base64url); header names are matched case-insensitively, and each
must appear once. The receiver refuses a request for another pod (``unauthorised``), a
time outside :data:`WINDOW_S` of its own clock (``stale``) and a nonce it has seen within
the window (``replayed``, see NonceCache).

The last line is version 2 (``podlink/http/v2``): version 1 signed no receiver, so a
request captured on its way to one node could be replayed once at every other node where
its signer had a role (each node's replay memory is its own).
"""

from __future__ import annotations

import hashlib
import heapq
import math
import os
import re
import time
from collections.abc import Mapping

from podlink.protocol.clock import utc_text
from podlink.protocol.errors import ProtocolError
from podlink.protocol.keys import KEY_LEN, SIG_LEN, Keypair, verify_signature
from podlink.protocol.text import b64d, b64e

SIGN_PREFIX = b"podlink/http/v2\x00"
WINDOW_S = 300  # a signed request is good for five minutes either side of our clock
H_KEY, H_TIME, H_NONCE, H_POD, H_SIG = (
    "Podlink-Key", "Podlink-Time", "Podlink-Nonce", "Podlink-Pod", "Podlink-Signature",
)  # fmt: skip
HEADERS = (H_KEY, H_TIME, H_NONCE, H_POD, H_SIG)
# Podlink-Time: unix seconds as 1 to 12 ASCII digits; no sign, space, "_" or other digits
# (Python's int() takes "+1", " 1", "1_000" and "١"; a receiver must not).
TIME_PATTERN = re.compile(r"[0-9]{1,12}")
NONCE_MIN, NONCE_MAX = 16, 64  # characters (Unicode code points)


def signing_input(
    method: str, path_qs: str, body: bytes, when: int, nonce: str, pod: bytes
) -> bytes:
    """The bytes a request's signature covers; ``pod`` is the receiving pod's key."""
    lines = [method.upper(), path_qs, hashlib.sha256(body).hexdigest(), str(when), nonce, b64e(pod)]
    return SIGN_PREFIX + "\n".join(lines).encode("utf-8")


def sign_request(
    keypair: Keypair,
    method: str,
    path_qs: str,
    body: bytes = b"",
    *,
    pod: bytes,
    when: int | None = None,
    nonce: str | None = None,
) -> dict[str, str]:
    """The five headers that authenticate one request by ``keypair`` to ``pod``'s node."""
    when = int(time.time()) if when is None else when
    nonce = b64e(os.urandom(16)) if nonce is None else nonce
    sig = keypair.sign(signing_input(method, path_qs, body, when, nonce, pod))
    return {
        H_KEY: keypair.public_text, H_TIME: str(when), H_NONCE: nonce, H_POD: b64e(pod),
        H_SIG: b64e(sig),
    }  # fmt: skip


class SignedRequest:
    """What a verified request tells: who sent it, and its nonce and time."""

    __slots__ = ("key", "nonce", "when")

    def __init__(self, key: bytes, when: int, nonce: str) -> None:
        self.key, self.when, self.nonce = key, when, nonce


def verify_request(
    headers: Mapping[str, str],
    method: str,
    path_qs: str,
    body: bytes,
    *,
    pod: bytes,
    now: float | None = None,
) -> SignedRequest:
    """Check a request's signature headers, at the node of ``pod``. Raises
    ``unauthorised`` (unsigned, or signed for another pod), ``invalid``, ``stale`` or
    ``forged``. Replays are the caller's to refuse, with a :class:`NonceCache`.

    ``headers`` may be any mapping (aiohttp's multi-dict yields a repeated header twice)."""
    values = _signature_headers(headers)
    missing = [h for h in HEADERS if h not in values]
    if missing == [H_POD]:
        raise ProtocolError(
            "unauthorised", f"missing {H_POD}: sign requests as podlink/http/v2, which names "
            "the receiving pod (an older podlink signed version 1)",
        )  # fmt: skip
    if missing:
        raise ProtocolError("unauthorised", f"unsigned request: missing {', '.join(missing)}")
    key = b64d(values[H_KEY], length=KEY_LEN, what=H_KEY)
    sig = b64d(values[H_SIG], length=SIG_LEN, what=H_SIG)
    addressed = b64d(values[H_POD], length=KEY_LEN, what=H_POD)
    if addressed != pod:
        raise ProtocolError(
            "unauthorised",
            f"this request is signed for the pod {values[H_POD]}; this node is the pod "
            f"{b64e(pod)} (check the node's URL)",
        )
    nonce = values[H_NONCE]
    if not NONCE_MIN <= len(nonce) <= NONCE_MAX:
        raise ProtocolError("invalid", f"{H_NONCE} must be {NONCE_MIN} to {NONCE_MAX} characters")
    if not TIME_PATTERN.fullmatch(values[H_TIME]):
        raise ProtocolError("invalid", f"{H_TIME} must be unix seconds: 1 to 12 ASCII digits")
    when = int(values[H_TIME])
    now = time.time() if now is None else now
    if abs(now - when) > WINDOW_S:
        # Both clocks, named: the machine that reads this may be the one whose clock is
        # right (a peer with a wrong clock refusing our pull), and only the two times
        # side by side say which one is off.
        raise ProtocolError(
            "stale",
            f"request time is {_seconds(now - when)} away from this node's clock "
            f"(limit {WINDOW_S} s): signed at {utc_text(when)}, this node's clock reads "
            f"{utc_text(now)}; the machine whose clock is wrong must be put right",
        )
    try:
        message = signing_input(method, path_qs, body, when, nonce, pod)
    except UnicodeEncodeError:  # undecodable bytes in the path or nonce (surrogate escapes)
        raise ProtocolError("invalid", "request path or nonce is not valid UTF-8") from None
    if not verify_signature(key, message, sig):
        raise ProtocolError("forged", "request signature does not verify")
    return SignedRequest(key, when, nonce)


def _seconds(delta: float) -> str:
    """How far ``delta`` seconds is, never rounded down to the limit it broke."""
    sign = "-" if delta < 0 else ""
    return f"{sign}{math.ceil(abs(delta))} s"


def _signature_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """The five Podlink-* headers by canonical name, matched case-insensitively; a repeated
    one is ``invalid`` (readers would disagree on which copy counts)."""
    wanted = {name.lower(): name for name in HEADERS}
    found: dict[str, str] = {}
    for name, value in headers.items():
        canonical = wanted.get(name.lower())
        if canonical is None:
            continue
        if canonical in found:
            raise ProtocolError("invalid", f"{canonical} is sent more than once")
        found[canonical] = value
    return found


class _KeyMemory:
    """One key's remembered nonces: nonce -> signed time, a heap by signed time, and the
    latest signed time let go to make room (its requests up to that are refused)."""

    __slots__ = ("dropped", "order", "seen")

    def __init__(self) -> None:
        self.seen: dict[str, int] = {}
        self.order: list[tuple[int, str]] = []
        self.dropped = 0

    def expire(self, before: float) -> None:
        while self.order and self.order[0][0] < before:
            self.drop_oldest()

    def drop_oldest(self) -> int:
        when, nonce = heapq.heappop(self.order)
        del self.seen[nonce]
        return when


class NonceCache:
    """Remembers (key, nonce) pairs for the signature window, at most ``capacity`` per key.

    A request older than the window is refused as stale anyway, so remembering nonces
    for ``WINDOW_S`` seconds either side is enough to refuse every replay. Each key has a
    memory of its own: when it is full, that key's earliest-signed entries go first, and
    that key's requests signed no later than what was let go are refused as stale. So a
    key that floods (rate-limited or not, stamped minutes ahead or not) only ever locks
    itself out; a shared memory let one peer's burst lift every organizer's floor past
    the present. Only keys with a role here reach it (node/auth.py), so the number of
    memories is bounded by the roster and the peers.

    ``floor``: requests signed before it can no longer be checked. A node passes its start
    time, so a request captured before a restart cannot be replayed after it. That floor
    follows the wall clock if it is stepped (NTP, a suspended laptop): it is the start
    *instant*, read on today's clock, so a clock stepped back after the start does not
    leave every request refused as signed before the start.
    """

    def __init__(
        self, capacity: int = 20_000, window_s: int = WINDOW_S, *, floor: float = 0.0
    ) -> None:
        self._keys: dict[bytes, _KeyMemory] = {}
        self._capacity = capacity  # per key: 100 s of requests at the default rate limit
        self._window = window_s
        self._start = (floor, time.monotonic())  # (wall, monotonic) at the start
        self._swept = 0.0

    def floor(self) -> float:
        """Requests signed before this (wall seconds) are refused as stale, by any key."""
        wall, mono = self._start
        started = wall if not wall else int(time.time() - (time.monotonic() - mono))
        return min(wall, started)

    def __len__(self) -> int:
        return sum(len(m.seen) for m in self._keys.values())

    def _sweep(self, now: float) -> None:
        """Forget what is outside the window on both sides, for every key (a key that
        stopped sending, say a removed peer, is forgotten with its entries)."""
        before = now - 2 * self._window
        for key in list(self._keys):
            memory = self._keys[key]
            memory.expire(before)
            if not memory.seen and memory.dropped < before:
                del self._keys[key]
        self._swept = now

    def check_and_add(self, req: SignedRequest, now: float | None = None) -> None:
        """Raise ``replayed`` if this (key, nonce) was seen; remember it otherwise."""
        now = time.time() if now is None else now
        if now - self._swept > self._window:
            self._sweep(now)
        memory = self._keys.get(req.key)
        if memory is None:
            memory = self._keys[req.key] = _KeyMemory()
        memory.expire(now - 2 * self._window)  # outside the window on both sides: stale
        if req.nonce in memory.seen:
            raise ProtocolError("replayed", "this request was already received (nonce reused)")
        if req.when < max(self.floor(), memory.dropped):
            raise ProtocolError(
                "stale", "request signed before this node (re)started or beyond its replay "
                "memory; sign it again"
            )
        if len(memory.seen) >= self._capacity:
            memory.dropped = max(memory.dropped, memory.drop_oldest() + 1)  # whole seconds
            if req.when < memory.dropped:  # it would be the first to go: refuse it now
                raise ProtocolError("stale", "request older than this node's replay memory "
                                    "can check; sign it again")  # fmt: skip
        memory.seen[req.nonce] = req.when
        heapq.heappush(memory.order, (req.when, req.nonce))
