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
        raise ProtocolError(
            "stale",
            f"request time is {_seconds(now - when)} away from this node's clock "
            f"(limit {WINDOW_S} s); check the clock of the sending machine",
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


class NonceCache:
    """Remembers (key, nonce) pairs for the signature window, bounded in size.

    A request older than the window is refused as stale anyway, so remembering nonces
    for ``WINDOW_S`` seconds either side is enough to refuse every replay; when full, the
    entries signed earliest go first (not the first received: one signed minutes ahead
    would lift the floor past the present) and the cache refuses requests signed no later
    than what it let go.

    ``floor``: requests signed before it can no longer be checked. A node passes its start
    time, so a request captured before a restart cannot be replayed after it. That floor
    follows the wall clock if it is stepped (NTP, a suspended laptop): it is the start
    *instant*, read on today's clock, so a clock stepped back after the start does not
    leave every request refused as signed before the start.
    """

    def __init__(
        self, capacity: int = 100_000, window_s: int = WINDOW_S, *, floor: float = 0.0
    ) -> None:
        self._seen: dict[tuple[bytes, str], int] = {}  # (key, nonce) -> signed time
        self._order: list[tuple[int, tuple[bytes, str]]] = []  # a heap of (time, pair)
        self._capacity = capacity
        self._window = window_s
        self._start = (floor, time.monotonic())  # (wall, monotonic) at the start
        self._dropped = 0.0  # the latest signed time let go when full

    def floor(self) -> float:
        """Requests signed before this (wall seconds) are refused as stale."""
        wall, mono = self._start
        started = wall if not wall else int(time.time() - (time.monotonic() - mono))
        return max(min(wall, started), self._dropped)

    def _drop_oldest(self) -> int:
        when, ident = heapq.heappop(self._order)
        del self._seen[ident]
        return when

    def check_and_add(self, req: SignedRequest, now: float | None = None) -> None:
        """Raise ``replayed`` if this (key, nonce) was seen; remember it otherwise."""
        now = time.time() if now is None else now
        while self._order and self._order[0][0] < now - 2 * self._window:
            self._drop_oldest()  # outside the window on both sides: stale anyway
        ident = (req.key, req.nonce)
        if ident in self._seen:
            raise ProtocolError("replayed", "this request was already received (nonce reused)")
        if req.when < self.floor():
            raise ProtocolError(
                "stale", "request signed before this node (re)started or beyond its replay "
                "memory; sign it again"
            )
        if len(self._seen) >= self._capacity:
            self._dropped = max(self._dropped, self._drop_oldest() + 1)  # whole seconds
            if req.when < self._dropped:  # it would be the first to go: refuse it now
                raise ProtocolError("stale", "request older than this node's replay memory "
                                    "can check; sign it again")  # fmt: skip
        self._seen[ident] = req.when
        heapq.heappush(self._order, (req.when, ident))
