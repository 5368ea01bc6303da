"""The signed event envelope: header bytes, signature, optional body.

Wire form of one event (msgpack): ``[payload: bin, sig: bin 64, body: bin | nil]``.

* ``payload`` is the header, itself a msgpack array (see :class:`Header`). Nodes keep and
  forward these exact bytes; nothing is ever re-encoded to check it.
* ``id = BLAKE2b-256(payload)``.
* ``sig = Ed25519(author, SIGN_PREFIX + payload)``; the prefix keeps an event signature
  from ever being valid as any other podlink signature (e.g. a signed HTTP request).
* ``body`` may be ``nil``: dropped (redacted) bodies leave the header, and so the hash
  chain, verifiable. A present body must match ``body_size`` and ``body_hash``.

docs/protocol.md is the normative description; this module is one implementation of it.
"""

from __future__ import annotations

import hashlib
import re
from typing import Annotated, Literal

import msgspec

from podlink.protocol import clock
from podlink.protocol.errors import ProtocolError
from podlink.protocol.keys import KEY_LEN, SIG_LEN, Keypair, verify_signature
from podlink.protocol.text import b64e

PROTOCOL_VERSION = 1
SUPPORTED_VERSIONS = frozenset({PROTOCOL_VERSION})
SIGN_PREFIX = b"podlink/event/v1\x00"
ID_LEN = 32
MAX_HEADER = 2048  # bytes of payload
MAX_BODY = 64 * 1024  # bytes of body
MAX_REFS = 16
MAX_KIND_LEN = 32
# Wire bytes of one event: its three parts plus the widest legal msgpack framing, array 32
# (5 bytes) and three bin 32 prefixes (5 bytes each), so that no encoding of an event whose
# parts are within their limits is refused for its size.
FRAMING = 5 + 3 * 5
MAX_EVENT = MAX_HEADER + SIG_LEN + MAX_BODY + FRAMING

Lane = Literal["pod", "peers", "network"]
LANES: tuple[Lane, ...] = ("pod", "peers", "network")

Key32 = Annotated[bytes, msgspec.Meta(min_length=KEY_LEN, max_length=KEY_LEN)]
Id32 = Annotated[bytes, msgspec.Meta(min_length=ID_LEN, max_length=ID_LEN)]
Sig64 = Annotated[bytes, msgspec.Meta(min_length=SIG_LEN, max_length=SIG_LEN)]
KindName = Annotated[
    str, msgspec.Meta(min_length=1, max_length=MAX_KIND_LEN, pattern=r"^[a-z][a-z0-9.\-]*\Z")
]


class Header(
    msgspec.Struct, array_like=True, frozen=True, forbid_unknown_fields=True, gc=False
):
    """The signed part of an event, encoded as an 11-element msgpack array in this order.

    ``gc=False`` (here and on Wire, bodies and results): these hold only bytes, numbers,
    strings and lists of them, so they can never be part of a reference cycle, and the
    collector need not track the several thousand of them a batch keeps alive."""

    v: Annotated[int, msgspec.Meta(ge=1, le=255)]
    pod: Key32
    author: Key32
    lane: Lane
    seq: Annotated[int, msgspec.Meta(ge=1, le=2**53)]
    prev: Id32 | None
    ts: Annotated[int, msgspec.Meta(ge=0, le=clock.MAX_TS)]
    kind: KindName
    refs: Annotated[list[Id32], msgspec.Meta(max_length=MAX_REFS)]
    body_size: Annotated[int, msgspec.Meta(ge=0, le=MAX_BODY)]
    body_hash: Id32

    def __post_init__(self) -> None:
        if (self.seq == 1) != (self.prev is None):
            raise ValueError("prev must be nil exactly when seq is 1")


class Wire(msgspec.Struct, array_like=True, frozen=True, forbid_unknown_fields=True, gc=False):
    """One event as sent: header bytes, signature, body bytes or nil."""

    payload: Annotated[bytes, msgspec.Meta(max_length=MAX_HEADER)]
    sig: Sig64
    body: Annotated[bytes, msgspec.Meta(max_length=MAX_BODY)] | None = None


_header_decoder = msgspec.msgpack.Decoder(Header)
_wire_decoder = msgspec.msgpack.Decoder(Wire)
_wire_list_decoder = msgspec.msgpack.Decoder(list[msgspec.Raw])
_encoder = msgspec.msgpack.Encoder()


def blake2b256(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=32).digest()


class Event(msgspec.Struct, gc=False, eq=False):
    """A decoded event that has not necessarily been verified yet.

    Holds the received bytes (``payload``, ``sig``, ``body``) and the decoded ``header``.
    Create one with :func:`decode_event` (untrusted bytes) or :func:`sign_event`.

    Outside the cycle collector (it holds bytes and a Header, nothing that can lead back
    to it): ingest makes one per event, and walking them was a third of the collections'
    time in a 50k-event ingest (95 -> 57 ms, gc.callbacks). Compared by identity.
    """

    header: Header
    payload: bytes
    sig: bytes
    body: bytes | None
    id: bytes = b""  # BLAKE2b-256 of the payload, computed when not given

    def __post_init__(self) -> None:
        if not self.id:
            self.id = blake2b256(self.payload)

    # Convenience views of the header.
    @property
    def author(self) -> bytes:
        return self.header.author

    @property
    def pod(self) -> bytes:
        return self.header.pod

    @property
    def lane(self) -> Lane:
        return self.header.lane

    @property
    def seq(self) -> int:
        return self.header.seq

    @property
    def kind(self) -> str:
        return self.header.kind

    @property
    def ts(self) -> int:
        return self.header.ts

    @property
    def id_text(self) -> str:
        return b64e(self.id)

    def signing_input(self) -> bytes:
        return SIGN_PREFIX + self.payload

    def verify_signature(self) -> None:
        """Raise ``forged`` unless the author's signature covers the payload."""
        if not verify_signature(self.header.author, self.signing_input(), self.sig):
            raise ProtocolError("forged", f"event {self.id_text[:8]}: signature does not verify")

    def body_matches(self) -> bool:
        """True if a body is present and matches the header's size and hash."""
        body = self.body
        return (
            body is not None
            and len(body) == self.header.body_size
            and blake2b256(body) == self.header.body_hash
        )

    def check_body(self) -> None:
        """Raise ``invalid`` if a present body does not match the header."""
        if self.body is not None and not self.body_matches():
            raise ProtocolError(
                "invalid", f"event {self.id_text[:8]}: body does not match its header hash"
            )

    def without_body(self) -> Event:
        return Event(self.header, self.payload, self.sig, None, self.id)

    def to_wire(self) -> bytes:
        return encode_wire(self.payload, self.sig, self.body)

    def __repr__(self) -> str:
        h = self.header
        return f"Event({self.id_text[:8]} {h.kind} {h.lane} seq={h.seq} by {b64e(h.author)[:8]})"


def encode_wire(payload: bytes, sig: bytes, body: bytes | None) -> bytes:
    """Encode an event in wire form from its stored parts (no re-encoding of the header)."""
    return _encoder.encode(Wire(payload, sig, body))


# msgspec's message for a value over a Meta max_length: "Expected `bytes` of length <= 32 -
# at `$[1]`". Anchored: other messages can quote received text (an enum value), which must
# never make an error too-large.
_OVER_MAX_LENGTH = re.compile(r"Expected `(?:str|bytes|array)` of length <= [0-9]+(?: - at `|\Z)")


def _invalid(err: Exception, what: str) -> ProtocolError:
    """The reason for a decode error of the wire form or header: ``too-large`` for a str,
    bin or array over its maximum length, ``invalid`` for anything else (including an
    array with more elements than the wire form's 3 or the header's 11: "at most length")."""
    text = str(err)
    if isinstance(err, msgspec.ValidationError) and _OVER_MAX_LENGTH.match(text):
        return ProtocolError("too-large", f"{what}: {text}")
    if isinstance(err, RecursionError):
        text = "msgpack nested too deeply"
    return ProtocolError("invalid", f"{what}: {text}")


def decode_header(payload: bytes) -> Header:
    """Decode header bytes strictly; refuse oversize, malformed or unknown-version headers."""
    if len(payload) > MAX_HEADER:
        raise ProtocolError("too-large", f"header is {len(payload)} bytes, limit {MAX_HEADER}")
    try:
        header = _header_decoder.decode(payload)
    except (msgspec.MsgspecError, UnicodeDecodeError, RecursionError) as err:
        # (msgspec lets some bad UTF-8 through as UnicodeDecodeError)
        raise _invalid(err, "malformed header") from None
    if header.v not in SUPPORTED_VERSIONS:
        raise ProtocolError(
            "invalid",
            f"protocol version {header.v} is not supported (this node speaks "
            f"{sorted(SUPPORTED_VERSIONS)}); upgrade podlink",
        )
    return header


def decode_event(data: bytes | memoryview) -> Event:
    """Decode one event in wire form (structure only: call :func:`verify_event` next)."""
    if len(data) > MAX_EVENT:
        raise ProtocolError("too-large", f"event is {len(data)} bytes, limit {MAX_EVENT}")
    try:
        wire = _wire_decoder.decode(data)
    except (msgspec.MsgspecError, UnicodeDecodeError, RecursionError) as err:
        raise _invalid(err, "malformed event") from None
    return Event(decode_header(wire.payload), wire.payload, wire.sig, wire.body)


def decode_event_list(data: bytes) -> list[bytes]:
    """Split a msgpack array of wire events into the raw bytes of each (decoded later)."""
    try:
        return [bytes(raw) for raw in _wire_list_decoder.decode(data)]
    except (msgspec.MsgspecError, RecursionError) as err:  # skipping deep nesting recurses
        raise _invalid(err, "malformed event list") from None


def verify_signature_parts(
    id_: bytes, author: bytes, payload: bytes, sig: bytes, body: bytes | None
) -> str | None:
    """Re-check stored parts of an event; a sentence naming the problem, or None if sound."""
    if blake2b256(payload) != id_:
        return "id is not the hash of its header"
    if not verify_signature(author, SIGN_PREFIX + payload, sig):
        return "signature does not verify"
    if body is not None:
        header = decode_header(payload)
        if len(body) != header.body_size or blake2b256(body) != header.body_hash:
            return "body does not match its header hash"
    return None


def check_time(event: Event, now_ms: int | None = None) -> None:
    """Refuse an event stamped more than :data:`clock.FUTURE_LIMIT_MS` ahead of now."""
    now = clock.now_ms() if now_ms is None else now_ms
    ahead = clock.wall_ms(event.ts) - now
    if ahead > clock.FUTURE_LIMIT_MS:
        raise ProtocolError(
            "too-far-ahead",
            f"event {event.id_text[:8]} is stamped {-(-ahead // 1000)} s in the future "
            f"(limit {clock.FUTURE_LIMIT_MS // 1000} s); "
            "check the author's clock",
        )


def verify_event(event: Event, now_ms: int | None = None) -> None:
    """Check one decoded event on its own: time, signature, body. Raises ProtocolError."""
    check_time(event, now_ms)
    event.verify_signature()
    event.check_body()


def sign_event(
    keypair: Keypair,
    *,
    pod: bytes,
    lane: Lane,
    seq: int,
    prev: bytes | None,
    ts: int,
    kind: str,
    body: bytes,
    refs: list[bytes] | tuple[bytes, ...] = (),
) -> Event:
    """Build and sign an event by ``keypair``; the result verifies with :func:`verify_event`."""
    if len(body) > MAX_BODY:
        raise ProtocolError("too-large", f"body is {len(body)} bytes, limit {MAX_BODY}")
    header = Header(
        v=PROTOCOL_VERSION,
        pod=pod,
        author=keypair.public,
        lane=lane,
        seq=seq,
        prev=prev,
        ts=ts,
        kind=kind,
        refs=list(refs),
        body_size=len(body),
        body_hash=blake2b256(body),
    )
    payload = _encoder.encode(header)
    # Decode what we produced: the same strict checks a receiver will run.
    decode_header(payload)
    sig = keypair.sign(SIGN_PREFIX + payload)
    return Event(header, payload, sig, body)
