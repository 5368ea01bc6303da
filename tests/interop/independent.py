"""An independent implementation of podlink protocol version 1, written from
``docs/protocol.md`` (and, where the spec was silent, from ``docs/protocol-vectors.json``;
every such inference was marked ``SPEC GAP``). The spec has since decided each of those
points; where it decided differently from the guess made here, the code was changed and the
place is marked ``SPEC (resolved)``. It deliberately imports nothing from podlink and uses
no msgpack library: the decoder below follows the MessagePack format spec.

Entry points:

* :func:`unpackb` / :func:`packb` - a minimal MessagePack reader / writer
* :func:`decode_wire`, :func:`decode_header`, :func:`check_event` - event checking, steps 1-7
* :class:`Store` - step 8 (against the store), enough to place the vectors' feeds
* :func:`open_member_box`, :func:`open_sealed`, :func:`seal_with` - boxes
* :func:`http_signing_input`, :func:`verify_request` - signed HTTP requests
"""

from __future__ import annotations

import base64
import hashlib
import math
import re
import struct
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import nacl.bindings
import nacl.exceptions
import nacl.secret

# --------------------------------------------------------------------------------------
# Constants and limits (spec: "Constants and limits")

PROTOCOL_VERSION = 1
SIGN_PREFIX = b"podlink/event/v1\x00"
HTTP_PREFIX = b"podlink/http/v2\x00"
ID_LEN = 32
KEY_LEN = 32
SIG_LEN = 64
MAX_HEADER = 2048
MAX_BODY = 65536
MAX_REFS = 16
MAX_KIND_LEN = 32
# SPEC (resolved): MAX_EVENT allows the widest framing, array 32 + three bin 32 = 20 bytes
# (it was + 16, which refused some legal encodings of maximal events).
MAX_EVENT = MAX_HEADER + SIG_LEN + MAX_BODY + 20  # 67668
FUTURE_LIMIT_MS = 900_000
WINDOW_S = 300
LANES = ("pod", "peers", "network")
EMPTY_BODY_HASH = bytes.fromhex("0e5751c026e543b2e8ab2eb06099daa1d1e5df47778f7787faab45cdf12fe3a8")

# SPEC (resolved): readers MUST accept msgpack nested 100 levels deep (a body map is level
# 1) and MAY refuse deeper as `invalid`; this reader refuses level 101 and deeper, so that a
# 64 KiB body of 0x91 bytes cannot exhaust the stack. (Was 64 levels, a guess.)
MAX_LEVELS = 100

# SPEC (resolved): in a body every broken limit is `invalid`, a length over its maximum
# included; `too-large` is only for lengths in the wire form and the header. (This
# implementation had followed the old reason-word table and said `too-large`.)
BODY_OVERLENGTH_REASON = "invalid"


class Refused(Exception):
    """An event or request is refused with a reason word (spec: "Reason words")."""

    def __init__(self, reason: str, message: str, *, kept: Event | None = None) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message
        # For a body that does not match its header: the header is kept, body dropped.
        self.kept = kept


def _invalid(message: str) -> Refused:
    return Refused("invalid", message)


def _too_large(message: str) -> Refused:
    return Refused("too-large", message)


# --------------------------------------------------------------------------------------
# Text forms: base64url without padding, canonical only

_B64URL = re.compile(r"[A-Za-z0-9_-]*")


def b64u(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def b64u_decode(text: str) -> bytes:
    """Strict reader: no padding, no `+` `/`, no whitespace, canonical last character."""
    if not isinstance(text, str) or not _B64URL.fullmatch(text) or len(text) % 4 == 1:
        raise ValueError(f"not base64url: {text!r}")
    raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    if b64u(raw) != text:
        raise ValueError(f"non-canonical base64url: {text!r}")
    return raw


def blake2b_256(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=32).digest()


# --------------------------------------------------------------------------------------
# MessagePack reader (written from the MessagePack format spec)


@dataclass(frozen=True)
class Ext:
    """An extension value (including the timestamp, type -1). Refused wherever typed."""

    code: int
    data: bytes


@dataclass(frozen=True)
class RawMap:
    """A map with at least one non-`str` key; bodies refuse it."""

    pairs: tuple[tuple[Any, Any], ...]


@dataclass(frozen=True)
class BadStr:
    """A msgpack str that is not valid UTF-8. Refused wherever a str is typed; accepted
    where nothing is checked (an unknown field's value, or a key that names no field).
    SPEC (resolved): unknown fields are skipped, not checked (this reader used to refuse
    bad UTF-8 anywhere)."""

    raw: bytes


class DupMap(dict):  # type: ignore[type-arg]
    """A map with a repeated key: the last value wins, ``earlier`` keeps the others.
    SPEC (resolved): a reader that keeps the last value must check every value."""

    earlier: list[tuple[Any, Any]]


class _Reader:
    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        end = self.pos + n
        if end > len(self.data):
            raise _invalid("msgpack: truncated input")
        chunk = self.data[self.pos : end]
        self.pos = end
        return chunk

    def uint(self, n: int) -> int:
        return int.from_bytes(self.take(n), "big", signed=False)

    def sint(self, n: int) -> int:
        return int.from_bytes(self.take(n), "big", signed=True)

    def count(self, n: int, per_item: int) -> int:
        # Each element needs at least one byte: refuse absurd counts before looping.
        if n * per_item > len(self.data) - self.pos:
            raise _invalid("msgpack: container longer than the input")
        return n

    def text(self, n: int) -> str | BadStr:
        raw = self.take(n)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return BadStr(raw)

    def array(self, n: int, depth: int) -> list[Any]:
        self.count(n, 1)
        return [self.value(depth + 1) for _ in range(n)]

    def map(self, n: int, depth: int) -> dict[str, Any] | RawMap:
        self.count(n, 2)
        pairs = []
        all_str = True
        for _ in range(n):
            key = self.value(depth + 1)
            val = self.value(depth + 1)
            all_str = all_str and type(key) in (str, BadStr)
            pairs.append((key, val))
        if not all_str:
            return RawMap(tuple(pairs))
        # Repeated keys: the last value wins (as podlink's reader does); the earlier values
        # are kept so that a schema can check them too.
        out = DupMap(pairs)
        out.earlier = []
        seen: set[Any] = set()
        for key, val in reversed(pairs):
            if key in seen:
                out.earlier.append((key, val))
            seen.add(key)
        return out

    def ext(self, n: int) -> Ext:
        code = self.sint(1)
        return Ext(code, self.take(n))

    def value(self, depth: int = 0) -> Any:
        if depth >= MAX_LEVELS:  # depth 0 is level 1
            raise _invalid("msgpack: nested too deeply")
        t = self.take(1)[0]
        if t <= 0x7F:
            return t
        if t >= 0xE0:
            return t - 0x100
        if 0x80 <= t <= 0x8F:
            return self.map(t & 0x0F, depth)
        if 0x90 <= t <= 0x9F:
            return self.array(t & 0x0F, depth)
        if 0xA0 <= t <= 0xBF:
            return self.text(t & 0x1F)
        if t == 0xC0:
            return None
        if t == 0xC2:
            return False
        if t == 0xC3:
            return True
        if t in (0xC4, 0xC5, 0xC6):
            return bytes(self.take(self.uint(1 << (t - 0xC4))))
        if t in (0xC7, 0xC8, 0xC9):
            return self.ext(self.uint(1 << (t - 0xC7)))
        if t == 0xCA:
            return struct.unpack(">f", self.take(4))[0]
        if t == 0xCB:
            return struct.unpack(">d", self.take(8))[0]
        if 0xCC <= t <= 0xCF:
            return self.uint(1 << (t - 0xCC))
        if 0xD0 <= t <= 0xD3:
            return self.sint(1 << (t - 0xD0))
        if 0xD4 <= t <= 0xD8:
            return self.ext(1 << (t - 0xD4))
        if 0xD9 <= t <= 0xDB:
            return self.text(self.uint(1 << (t - 0xD9)))
        if t in (0xDC, 0xDD):
            return self.array(self.uint(2 if t == 0xDC else 4), depth)
        if t in (0xDE, 0xDF):
            return self.map(self.uint(2 if t == 0xDE else 4), depth)
        raise _invalid(f"msgpack: 0x{t:02x} is never used")  # 0xc1


def unpackb(data: bytes) -> Any:
    """Decode exactly one msgpack object; trailing bytes are `invalid`."""
    reader = _Reader(bytes(data))
    value = reader.value()
    if reader.pos != len(reader.data):
        raise _invalid(f"msgpack: {len(reader.data) - reader.pos} trailing byte(s)")
    return value


# --------------------------------------------------------------------------------------
# MessagePack writer (smallest encodings; `Raw` splices pre-encoded bytes, for tests)


@dataclass(frozen=True)
class Raw:
    data: bytes


def _pack_len(out: bytearray, n: int, fix: int | None, fixmax: int, codes: tuple) -> None:
    if fix is not None and n <= fixmax:
        out.append(fix | n)
    elif codes[0] is not None and n <= 0xFF:
        out += bytes([codes[0], n])
    elif n <= 0xFFFF:
        out.append(codes[1])
        out += n.to_bytes(2, "big")
    else:
        out.append(codes[2])
        out += n.to_bytes(4, "big")


def _pack(out: bytearray, obj: Any) -> None:
    if isinstance(obj, Raw):
        out += obj.data
    elif obj is None:
        out.append(0xC0)
    elif obj is True or obj is False:
        out.append(0xC3 if obj else 0xC2)
    elif type(obj) is int:
        if 0 <= obj <= 0x7F or -32 <= obj < 0:
            out += (obj & 0xFF).to_bytes(1, "big")
        elif obj >= 0:
            for code, n in ((0xCC, 1), (0xCD, 2), (0xCE, 4), (0xCF, 8)):
                if obj < 1 << (8 * n):
                    out.append(code)
                    out += obj.to_bytes(n, "big")
                    break
        else:
            for code, n in ((0xD0, 1), (0xD1, 2), (0xD2, 4), (0xD3, 8)):
                if obj >= -(1 << (8 * n - 1)):
                    out.append(code)
                    out += obj.to_bytes(n, "big", signed=True)
                    break
    elif type(obj) is float:
        out.append(0xCB)
        out += struct.pack(">d", obj)
    elif isinstance(obj, str):
        raw = obj.encode("utf-8")
        _pack_len(out, len(raw), 0xA0, 31, (0xD9, 0xDA, 0xDB))
        out += raw
    elif isinstance(obj, bytes | bytearray):
        _pack_len(out, len(obj), None, -1, (0xC4, 0xC5, 0xC6))
        out += obj
    elif isinstance(obj, list | tuple):
        _pack_len(out, len(obj), 0x90, 15, (None, 0xDC, 0xDD))
        for item in obj:
            _pack(out, item)
    elif isinstance(obj, Mapping):
        _pack_len(out, len(obj), 0x80, 15, (None, 0xDE, 0xDF))
        for key, val in obj.items():
            _pack(out, key)
            _pack(out, val)
    else:
        raise TypeError(f"cannot pack {type(obj).__name__}")


def packb(obj: Any) -> bytes:
    out = bytearray()
    _pack(out, obj)
    return bytes(out)


def to_json(value: Any) -> Any:
    """Generic JSON view of a decoded msgpack value (bin as base64url), as the vectors use."""
    if isinstance(value, bytes):
        return b64u(value)
    if isinstance(value, list):
        return [to_json(v) for v in value]
    if isinstance(value, dict):
        return {k: to_json(v) for k, v in value.items()}
    if isinstance(value, RawMap | Ext | BadStr):
        raise ValueError("no JSON form")
    return value


# --------------------------------------------------------------------------------------
# Typed fields


def _is_int(x: Any) -> bool:
    return type(x) is int  # a msgpack bool is not an int


def _check_str(x: Any, what: str, lo: int, hi: int | None, over: str) -> str:
    if type(x) is not str:
        raise _invalid(f"{what}: expected str")
    if hi is not None and len(x) > hi:
        raise Refused(over, f"{what}: longer than {hi} characters")
    if len(x) < lo:
        raise _invalid(f"{what}: shorter than {lo} characters")
    return x


def _check_bin(x: Any, what: str, lo: int, hi: int, over: str) -> bytes:
    if type(x) is not bytes:
        raise _invalid(f"{what}: expected bin")
    if len(x) > hi:
        raise Refused(over, f"{what}: longer than {hi} bytes")
    if len(x) < lo:
        raise _invalid(f"{what}: shorter than {lo} bytes")
    return x


def _check_int(x: Any, what: str, lo: int, hi: int) -> int:
    if not _is_int(x):
        raise _invalid(f"{what}: expected int")
    if not lo <= x <= hi:
        raise _invalid(f"{what}: {x} outside {lo}..{hi}")
    return x


# --------------------------------------------------------------------------------------
# Header

KIND_RE = re.compile(r"[a-z][a-z0-9.-]*")
HEADER_FIELDS = (
    "v", "pod", "author", "lane", "seq", "prev", "ts", "kind", "refs", "body_size",
    "body_hash",
)  # fmt: skip


@dataclass(frozen=True)
class Header:
    v: int
    pod: bytes
    author: bytes
    lane: str
    seq: int
    prev: bytes | None
    ts: int
    kind: str
    refs: tuple[bytes, ...]
    body_size: int
    body_hash: bytes

    def to_json(self) -> dict[str, Any]:
        return header_json(
            [self.v, self.pod, self.author, self.lane, self.seq, self.prev, self.ts,
             self.kind, list(self.refs), self.body_size, self.body_hash]
        )  # fmt: skip


def header_json(elements: list[Any]) -> dict[str, Any]:
    out = {name: to_json(val) for name, val in zip(HEADER_FIELDS, elements, strict=True)}
    ts = elements[6]
    out["ts_wall_ms"] = ts >> 16
    out["ts_logical"] = ts & 0xFFFF
    return out


def raw_header_fields(payload: bytes) -> dict[str, Any] | None:
    """The vectors' `fields`: the payload's 11 elements as JSON, constraints unchecked."""
    try:
        obj = unpackb(payload)
    except Refused:
        return None
    if type(obj) is not list or len(obj) != 11:
        return None
    return header_json(obj)


def _key(x: Any, what: str) -> bytes:
    # Longer than the maximum is `too-large` (podlink), shorter is `invalid`.
    return _check_bin(x, what, KEY_LEN, KEY_LEN, "too-large")


def decode_header(payload: bytes) -> Header:
    obj = unpackb(payload)
    if type(obj) is not list:
        raise _invalid("header: not an array")
    if len(obj) != 11:
        # SPEC (resolved): element counts of the header and wire arrays are structure:
        # `invalid`, never `too-large` (unchanged behaviour; it was a guess).
        raise _invalid(f"header: {len(obj)} elements, expected 11")
    v, pod, author, lane, seq, prev, ts, kind, refs, body_size, body_hash = obj
    v = _check_int(v, "v", 1, 255)
    if v != PROTOCOL_VERSION:
        raise _invalid(f"header: version {v} is not supported, upgrade podlink")
    pod = _key(pod, "pod")
    author = _key(author, "author")
    if type(lane) is not str or lane not in LANES:
        raise _invalid(f"lane: {lane!r} is not one of {LANES}")
    seq = _check_int(seq, "seq", 1, 2**53)
    if prev is not None:
        prev = _check_bin(prev, "prev", ID_LEN, ID_LEN, "too-large")
    ts = _check_int(ts, "ts", 0, 2**63 - 1)
    kind = _check_str(kind, "kind", 1, MAX_KIND_LEN, "too-large")
    if not KIND_RE.fullmatch(kind):
        raise _invalid(f"kind: {kind!r} does not match [a-z][a-z0-9.-]*")
    if type(refs) is not list:
        raise _invalid("refs: expected an array")
    if len(refs) > MAX_REFS:
        raise _too_large(f"refs: {len(refs)} ids, at most {MAX_REFS}")
    refs = tuple(_check_bin(r, "refs[]", ID_LEN, ID_LEN, "too-large") for r in refs)
    # SPEC (resolved): body_size > MAX_BODY is an integer out of range: `invalid`
    # (unchanged behaviour; it was a guess; vector body-size-over-max).
    body_size = _check_int(body_size, "body_size", 0, MAX_BODY)
    body_hash = _check_bin(body_hash, "body_hash", ID_LEN, ID_LEN, "too-large")
    if (prev is None) != (seq == 1):
        raise _invalid("prev must be nil exactly when seq is 1")
    return Header(v, pod, author, lane, seq, prev, ts, kind, refs, body_size, body_hash)


def signing_input(payload: bytes) -> bytes:
    return SIGN_PREFIX + payload


def event_id(payload: bytes) -> bytes:
    return blake2b_256(payload)


def ed25519_verify(public_key: bytes, message: bytes, signature: bytes) -> bool:
    """libsodium's rules (canonical S, no small-order keys or R) via crypto_sign_open."""
    if len(public_key) != KEY_LEN or len(signature) != SIG_LEN:
        return False
    try:
        nacl.bindings.crypto_sign_open(signature + message, public_key)
    except (nacl.exceptions.CryptoError, ValueError, TypeError):
        return False
    return True


# --------------------------------------------------------------------------------------
# Kinds and bodies

Check = Callable[[Any, str], Any]


def t_str(lo: int, hi: int | None) -> Check:
    return lambda x, what: _check_str(x, what, lo, hi, BODY_OVERLENGTH_REASON)


def t_bin(lo: int, hi: int) -> Check:
    return lambda x, what: _check_bin(x, what, lo, hi, BODY_OVERLENGTH_REASON)


def t_pattern(pattern: str, base: Check) -> Check:
    rx = re.compile(pattern)

    def check(x: Any, what: str) -> str:
        x = base(x, what)
        if not rx.fullmatch(x):
            raise _invalid(f"{what}: {x!r} does not match {pattern}")
        return x

    return check


def t_enum(*choices: str) -> Check:
    def check(x: Any, what: str) -> str:
        if type(x) is not str or x not in choices:
            raise _invalid(f"{what}: {x!r} is not one of {choices}")
        return x

    return check


def t_array(item: Check, hi: int) -> Check:
    def check(x: Any, what: str) -> list[Any]:
        if type(x) is not list:
            raise _invalid(f"{what}: expected an array")
        if len(x) > hi:
            raise Refused(BODY_OVERLENGTH_REASON, f"{what}: more than {hi} items")
        return [item(v, f"{what}[]") for v in x]

    return check


def t_int(lo: int, hi: int) -> Check:
    return lambda x, what: _check_int(x, what, lo, hi)


def t_hours(x: Any, what: str) -> float | int:
    if type(x) not in (int, float):
        raise _invalid(f"{what}: expected a float or int")
    if math.isnan(x) or not 0 <= x <= 1000:
        raise _invalid(f"{what}: {x} outside 0..1000")
    return x


def t_opt(inner: Check) -> Check:
    def check(x: Any, what: str) -> Any:
        return None if x is None else inner(x, what)

    check.nullable = True  # type: ignore[attr-defined]
    return check


TITLE = t_str(1, 200)
SHORT = t_str(0, 200)
TEXT = t_str(0, 4000)
CATEGORY = t_pattern(r"[a-z][a-z0-9-]{0,31}", t_str(0, None))
CATEGORIES = t_array(CATEGORY, 32)
KEY = t_bin(KEY_LEN, KEY_LEN)
ID = t_bin(ID_LEN, ID_LEN)
BOX = t_bin(40, 61440)
# SPEC (resolved): a sealed box is at least 48 bytes (32-byte ephemeral key + 16-byte MAC);
# 40 is the member SecretBox minimum only. (This implementation used BOX for both.)
SEALED_BOX = t_bin(48, 61440)
URGENCY = t_enum("low", "normal", "high", "urgent")
DATE = t_pattern(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", t_str(0, None))

REQUIRED = object()


@dataclass(frozen=True)
class Schema:
    name: str
    fields: tuple[tuple[str, Check, Any], ...]  # (name, check, default or REQUIRED)

    def decode(self, data: bytes) -> dict[str, Any]:
        obj = unpackb(data)
        return self.from_obj(obj)

    def from_obj(self, obj: Any) -> dict[str, Any]:
        if not isinstance(obj, dict):  # a DupMap is a dict too
            raise _invalid(f"{self.name}: not a map with str keys")
        out: dict[str, Any] = {}
        known = {fname: check for fname, check, _ in self.fields}
        for fname, val in getattr(obj, "earlier", ()):  # every value of a repeated field
            if fname in known:
                if val is None and not getattr(known[fname], "nullable", False):
                    raise _invalid(f"{self.name}.{fname}: nil is not allowed")
                if val is not None:
                    known[fname](val, f"{self.name}.{fname}")
        for fname, check, default in self.fields:
            if fname not in obj:
                if default is REQUIRED:
                    raise _invalid(f"{self.name}: missing required field {fname!r}")
                out[fname] = list(default) if isinstance(default, tuple) else default
                continue
            val = obj[fname]
            if val is None and not getattr(check, "nullable", False):
                raise _invalid(f"{self.name}.{fname}: nil is not allowed")
            out[fname] = check(val, f"{self.name}.{fname}")
        return out  # unknown fields are ignored


def schema(name: str, *fields: tuple[str, Check, Any]) -> Schema:
    return Schema(name, tuple(fields))


POD_FIELDS = (
    ("name", TITLE, REQUIRED),
    ("zone", SHORT, ""),
    ("description", TEXT, ""),
    ("categories", CATEGORIES, ()),
    ("contact", SHORT, ""),
)
BOX_ONLY = (("box", BOX, REQUIRED),)
REASON_ONLY = (("reason", SHORT, ""),)

SCHEMAS = {
    "PodFounded": schema("PodFounded", *POD_FIELDS),
    "PodInfoChanged": schema("PodInfoChanged", *POD_FIELDS),
    "OrganizerAdded": schema("OrganizerAdded", ("key", KEY, REQUIRED), ("name", SHORT, "")),
    "OrganizerRemoved": schema("OrganizerRemoved", ("key", KEY, REQUIRED), *REASON_ONLY),
    "MemberJoined": schema("MemberJoined", *BOX_ONLY),
    "MemberUpdated": schema("MemberUpdated", *BOX_ONLY),
    "MemberForgotten": schema("MemberForgotten"),
    "RequestOpened": schema(
        "RequestOpened",
        ("title", TITLE, REQUIRED),
        ("category", CATEGORY, REQUIRED),
        ("details", TEXT, ""),
        ("urgency", URGENCY, "normal"),
        ("needed_by", t_opt(DATE), None),
        ("area", SHORT, ""),
        ("for_member", t_opt(ID), None),
    ),
    "RequestUpdated": schema(
        "RequestUpdated",
        ("title", t_opt(TITLE), None),
        ("category", t_opt(CATEGORY), None),
        ("details", t_opt(TEXT), None),
        ("urgency", t_opt(URGENCY), None),
        ("needed_by", t_opt(DATE), None),
        ("area", t_opt(SHORT), None),
    ),
    "RequestCancelled": schema("RequestCancelled", *REASON_ONLY),
    "RequestFulfilled": schema(
        "RequestFulfilled", ("note", TEXT, ""), ("hours", t_opt(t_hours), None)
    ),
    "OfferOpened": schema(
        "OfferOpened",
        ("title", TITLE, REQUIRED),
        ("category", CATEGORY, REQUIRED),
        ("details", TEXT, ""),
        ("by_member", t_opt(ID), None),
        ("availability", SHORT, ""),
        ("capacity", t_opt(t_int(1, 10000)), None),
    ),
    "OfferWithdrawn": schema("OfferWithdrawn", *REASON_ONLY),
    "ClaimMade": schema("ClaimMade", ("by_member", t_opt(ID), None), ("note", TEXT, "")),
    "ClaimAccepted": schema("ClaimAccepted"),
    "ClaimDeclined": schema("ClaimDeclined", *REASON_ONLY),
    "ResourceShared": schema(
        "ResourceShared",
        ("name", TITLE, REQUIRED),
        ("category", CATEGORY, REQUIRED),
        ("what", TEXT, ""),
        ("where", SHORT, ""),
        ("when", SHORT, ""),
        ("contact", SHORT, ""),
    ),
    "ResourceWithdrawn": schema("ResourceWithdrawn", *REASON_ONLY),
    "SealedMessage": schema(
        "SealedMessage", ("to", KEY, REQUIRED), ("box", SEALED_BOX, REQUIRED)
    ),
    # Box contents
    "MemberDetails": schema(
        "MemberDetails",
        ("name", TITLE, REQUIRED),
        ("contact", SHORT, ""),
        ("prefers", t_opt(t_enum("phone", "text", "email", "door", "signal", "other")), None),
        ("can", CATEGORIES, ()),
        ("needs", CATEGORIES, ()),
        ("role", t_enum("participant", "co-organizer"), "participant"),
        ("languages", t_array(SHORT, 16), ()),
        ("notes", TEXT, ""),
    ),
    "ContactHandoff": schema(
        "ContactHandoff",
        ("name", TITLE, REQUIRED),
        ("contact", SHORT, REQUIRED),
        ("prefers", SHORT, ""),
        ("note", TEXT, ""),
        ("about", t_opt(ID), None),
    ),
}

ALL = LANES
NET = ("network",)
POD = ("pod",)

# kind -> (body schema, lanes, minimum refs)
KINDS: dict[str, tuple[str, tuple[str, ...], int]] = {
    "pod.genesis": ("PodFounded", NET, 0),
    "pod.info": ("PodInfoChanged", NET, 0),
    "roster.add": ("OrganizerAdded", NET, 0),
    "roster.remove": ("OrganizerRemoved", NET, 0),
    "member.join": ("MemberJoined", POD, 0),
    "member.update": ("MemberUpdated", POD, 1),
    "member.forget": ("MemberForgotten", POD, 1),
    "request.open": ("RequestOpened", ALL, 0),
    "request.update": ("RequestUpdated", ALL, 1),
    "request.cancel": ("RequestCancelled", ALL, 1),
    "request.fulfil": ("RequestFulfilled", ALL, 1),
    "offer.open": ("OfferOpened", ALL, 0),
    "offer.withdraw": ("OfferWithdrawn", ALL, 1),
    "resource.withdraw": ("ResourceWithdrawn", ALL, 1),
    "claim.make": ("ClaimMade", ALL, 1),
    "claim.accept": ("ClaimAccepted", ALL, 1),
    "claim.decline": ("ClaimDeclined", ALL, 1),
    "resource.share": ("ResourceShared", ALL, 0),
    "sealed": ("SealedMessage", ("peers", "network"), 0),
}


# --------------------------------------------------------------------------------------
# Events: steps 1-7 of "Checking an event"


@dataclass(frozen=True)
class Event:
    payload: bytes
    sig: bytes
    body: bytes | None
    header: Header
    id: bytes
    content: dict[str, Any] | None = None  # typed body with defaults, known kinds only

    @property
    def signing_input(self) -> bytes:
        return signing_input(self.payload)


def decode_wire(wire: bytes) -> tuple[bytes, bytes, bytes | None]:
    """Steps 1-2: size and structure."""
    if len(wire) > MAX_EVENT:
        raise _too_large(f"event of {len(wire)} bytes, at most {MAX_EVENT}")
    obj = unpackb(wire)
    if type(obj) is not list or len(obj) not in (2, 3):
        raise _invalid("wire form: expected [payload, sig, body|nil]")
    payload, sig = obj[0], obj[1]
    body = obj[2] if len(obj) == 3 else None  # two elements: body dropped
    if type(payload) is not bytes:
        raise _invalid("payload: expected bin")
    if len(payload) > MAX_HEADER:
        raise _too_large(f"payload of {len(payload)} bytes, at most {MAX_HEADER}")
    # SPEC (resolved): a sig of 65+ bytes is `too-large`, of 63- `invalid` (vectors
    # sig-too-long, sig-too-short). This implementation used to say `invalid` for both.
    sig = _check_bin(sig, "sig", SIG_LEN, SIG_LEN, "too-large")
    if body is not None:
        if type(body) is not bytes:
            raise _invalid("body: expected bin or nil")
        if len(body) > MAX_BODY:
            raise _too_large(f"body of {len(body)} bytes, at most {MAX_BODY}")
    return payload, sig, body


def check_kind(header: Header, body: bytes | None) -> dict[str, Any] | None:
    """Step 7: lanes and refs from the header, the body's fields if it is present."""
    known = KINDS.get(header.kind)
    if known is None:
        return None  # unknown kind: stored and forwarded as is
    schema_name, lanes, min_refs = known
    if header.lane not in lanes:
        raise _invalid(f"{header.kind} may not travel in the {header.lane} lane")
    if len(header.refs) < min_refs:
        raise _invalid(f"{header.kind} needs at least {min_refs} ref(s)")
    if body is None:
        return None
    return SCHEMAS[schema_name].decode(body)


def check_event(wire: bytes, now_ms: int) -> Event:
    """Steps 1-7 in the spec's ingest order; raises :class:`Refused`."""
    payload, sig, body = decode_wire(wire)
    header = decode_header(payload)
    if not ed25519_verify(header.author, signing_input(payload), sig):
        raise Refused("forged", "the signature does not verify under the header's author")
    ahead = (header.ts >> 16) - now_ms
    if ahead > FUTURE_LIMIT_MS:
        raise Refused("too-far-ahead", f"stamped {ahead} ms ahead of this clock")
    eid = event_id(payload)
    if body is not None and (
        len(body) != header.body_size or blake2b_256(body) != header.body_hash
    ):
        kept = Event(payload, sig, None, header, eid)
        try:  # the kept header still has to satisfy its kind's lane and refs
            check_kind(header, None)
        except Refused:
            kept = None
        raise Refused("invalid", "the body does not match body_size/body_hash", kept=kept)
    content = check_kind(header, body)
    return Event(payload, sig, body, header, eid, content)


def decode_batch(data: bytes) -> list[bytes]:
    """Several events: a msgpack array of wire forms. Returns each re-framed (test aid).

    SPEC (resolved): a page's `events` embeds each wire form as the msgpack array it is,
    and each is checked on its own; the bytes hashed are the payload bin's contents, so
    re-framing an element is harmless. A page holds at most `limit` events.
    """
    obj = unpackb(data)
    if type(obj) is not list:
        raise _invalid("batch: expected an array")
    return [packb(item) for item in obj]


# --------------------------------------------------------------------------------------
# Step 8: against the store


@dataclass
class Store:
    """A minimal node store for one (or more) local pods.

    SPEC (resolved), each a change from the guesses this store first made:
    * a body that does not match its header is not a refusal at ingest: the header is
      stored with the body dropped (it used to propagate the `invalid`);
    * a stored event at seq-1 whose id differs from `prev` is a `fork`, not `pending`;
    * the roster is a fold over roster events in (ts, id) order that counts only events
      whose author is authorised at their ts and whose body is present; a tenure covers
      from_ts <= ts < until_ts (inclusive at roster.add, exclusive at roster.remove);
    * (revised spec) ingest stores an event whose author is the pod's key or is named by a
      stored roster.add of the pod (counted or not, whatever its tenures): one outside
      every tenure is stored soft-failed. An author no roster.add names is `pending`.
      (It used to refuse an author whose tenure had ended as `unauthorised`, which made
      what a node stores depend on the order events reached it.)
    * a duplicate carrying the body a stored copy lacks puts it back (unless dropped on
      purpose).
    """

    own_pods: frozenset[bytes]
    events: dict[bytes, Event] = field(default_factory=dict)
    feeds: dict[tuple[bytes, str, int], bytes] = field(default_factory=dict)
    heads: dict[tuple[bytes, str], int] = field(default_factory=dict)
    forks: list[tuple[bytes, bytes]] = field(default_factory=list)
    dropped_on_purpose: set[bytes] = field(default_factory=set)

    def tenures(self, pod: bytes) -> list[list[Any]]:
        """[key, from_ts, until_ts | None] of the pod's organizers."""
        tenures: list[list[Any]] = []

        def authorised(key: bytes, ts: int) -> bool:
            return key == pod or any(
                k == key and f <= ts and (u is None or ts < u) for k, f, u in tenures
            )

        roster = sorted(
            (ev for ev in self.events.values()
             if ev.header.pod == pod and ev.header.kind in ("roster.add", "roster.remove")
             and ev.content is not None),
            key=lambda ev: (ev.header.ts, ev.id),
        )  # fmt: skip
        for ev in roster:
            h, key = ev.header, ev.content["key"]
            if not authorised(h.author, h.ts):
                continue
            if h.kind == "roster.add":
                if not authorised(key, h.ts):
                    tenures.append([key, h.ts, None])
            else:
                for t in tenures:
                    if t[0] == key and t[2] is None:
                        t[2] = h.ts
        return tenures

    def named(self, pod: bytes) -> set[bytes]:
        """Keys the pod's stored roster.add events name (with their body)."""
        return {
            ev.content["key"] for ev in self.events.values()
            if ev.header.pod == pod and ev.header.kind == "roster.add" and ev.content is not None
        }  # fmt: skip

    def applies(self, ev: Event) -> bool:
        """Whether a stored event counts for its pod's state (else it is soft-failed)."""
        h = ev.header
        return h.author == h.pod or any(
            k == h.author and f <= h.ts and (u is None or h.ts < u)
            for k, f, u in self.tenures(h.pod)
        )

    def ingest(self, wire: bytes, now_ms: int) -> str:
        try:
            ev = check_event(wire, now_ms)
        except Refused as exc:
            if exc.kept is None:
                raise
            ev = exc.kept  # the body did not match: it is discarded, the header goes on
        h = ev.header
        stored = self.events.get(ev.id)
        if stored is not None:
            if stored.body is None and ev.body is not None and ev.id not in (
                self.dropped_on_purpose
            ):
                self.events[ev.id] = ev  # refill
            return "duplicate"
        if h.lane == "pod" and h.pod not in self.own_pods:
            raise Refused("unauthorised", "a pod-lane event of another pod")
        head = self.heads.get((h.author, h.lane), 0)
        if h.seq <= head:
            self.forks.append((self.feeds[(h.author, h.lane, h.seq)], ev.id))
            raise Refused("fork", "another event holds this feed position")
        if h.seq > head + 1:
            raise Refused("pending", "feed predecessor not stored yet")
        if h.seq > 1:
            pred = self.events[self.feeds[(h.author, h.lane, h.seq - 1)]]
            if pred.id != h.prev:
                self.forks.append((pred.id, ev.id))
                raise Refused("fork", "prev is not the stored predecessor")
            if h.ts <= pred.header.ts:
                raise Refused("invalid", "feed timestamp not after its predecessor's")
        if h.author != h.pod and h.author not in self.named(h.pod):
            raise Refused("pending", "no roster.add of the pod names this author (yet)")
        self.events[ev.id] = ev
        self.feeds[(h.author, h.lane, h.seq)] = ev.id
        self.heads[(h.author, h.lane)] = h.seq
        return "stored"


# --------------------------------------------------------------------------------------
# Boxes


def open_member_box(box: bytes, member_key: bytes) -> bytes:
    """SecretBox: nonce (24) || MAC (16) || ciphertext. Not opening is `forged`."""
    if len(box) < 40:
        raise Refused("forged", "box too short")
    try:
        return nacl.secret.SecretBox(member_key).decrypt(box)
    except nacl.exceptions.CryptoError as exc:
        raise Refused("forged", "the box does not open with this key") from exc


def _x25519_keys(seed: bytes) -> tuple[bytes, bytes]:
    pk, sk = nacl.bindings.crypto_sign_seed_keypair(seed)
    return (
        nacl.bindings.crypto_sign_ed25519_pk_to_curve25519(pk),
        nacl.bindings.crypto_sign_ed25519_sk_to_curve25519(sk),
    )


def open_sealed(box: bytes, recipient_seed: bytes) -> bytes:
    """Open a sealed box by its construction (crypto_box with the derived nonce)."""
    xpk, xsk = _x25519_keys(recipient_seed)
    if len(box) < 48:
        raise Refused("forged", "sealed box too short")
    epk = box[:32]
    nonce = hashlib.blake2b(epk + xpk, digest_size=24).digest()
    try:
        return nacl.bindings.crypto_box_open(box[32:], nonce, epk, xsk)
    except nacl.exceptions.CryptoError as exc:
        raise Refused("forged", "the sealed box does not open with this key") from exc


def open_sealed_libsodium(box: bytes, recipient_seed: bytes) -> bytes:
    xpk, xsk = _x25519_keys(recipient_seed)
    try:
        return nacl.bindings.crypto_box_seal_open(box, xpk, xsk)
    except nacl.exceptions.CryptoError as exc:
        raise Refused("forged", "the sealed box does not open with this key") from exc


def seal_with(plaintext: bytes, recipient_ed25519: bytes, ephemeral_secret: bytes) -> bytes:
    """crypto_box_seal with a fixed ephemeral secret (as the sealed vector is built)."""
    rpk = nacl.bindings.crypto_sign_ed25519_pk_to_curve25519(recipient_ed25519)
    epk = nacl.bindings.crypto_scalarmult_base(ephemeral_secret)
    nonce = hashlib.blake2b(epk + rpk, digest_size=24).digest()
    return epk + nacl.bindings.crypto_box(plaintext, nonce, rpk, ephemeral_secret)


# --------------------------------------------------------------------------------------
# Signed HTTP requests

# SPEC (resolved): 1 to 12 ASCII digits, nothing else (was a guess, `-?[0-9]+`).
_TIME_RE = re.compile(r"[0-9]{1,12}")
REQUEST_HEADERS = (
    "Podlink-Key", "Podlink-Time", "Podlink-Nonce", "Podlink-Pod", "Podlink-Signature",
)  # fmt: skip


def http_signing_input(
    method: str, target: str | bytes, body: bytes, time: int, nonce: str, pod: bytes
) -> bytes:
    if isinstance(target, bytes):
        target = target.decode("utf-8")
    lines = [method, target, hashlib.sha256(body).hexdigest(), str(time), nonce, b64u(pod)]
    return HTTP_PREFIX + "\n".join(lines).encode("utf-8")


class ReplayCache:
    """(key, nonce) pairs remembered for twice the window, bounded; oldest forgotten."""

    def __init__(self, capacity: int = 100_000) -> None:
        self.capacity = capacity
        self.seen: OrderedDict[tuple[bytes, str], int] = OrderedDict()
        self.forgotten_up_to: int | None = None

    def check_and_add(self, key: bytes, nonce: str, time: int, now_s: int) -> None:
        for pair, t in list(self.seen.items()):
            if t < now_s - 2 * WINDOW_S:
                del self.seen[pair]
        if self.forgotten_up_to is not None and time <= self.forgotten_up_to:
            raise Refused("stale", "older than what the replay cache can still check")
        if (key, nonce) in self.seen:
            raise Refused("replayed", "this (key, nonce) was already received")
        self.seen[(key, nonce)] = time
        while len(self.seen) > self.capacity:
            _, t = self.seen.popitem(last=False)
            self.forgotten_up_to = max(self.forgotten_up_to or t, t)


def verify_request(
    method: str,
    target: str | bytes,
    body: bytes,
    headers: Mapping[str, str],
    now_s: int,
    replay: ReplayCache | None = None,
    authorised: Callable[[bytes], bool] | None = None,
    *,
    pod: bytes,
) -> bytes:
    """Steps 1-6 of the receiver; returns the sender's key or raises :class:`Refused`."""
    # SPEC (resolved): header names are case-insensitive (as guessed), and each of the
    # four must appear once: a repeated one is `invalid` (new).
    lower: dict[str, str] = {}
    for name, value in headers.items():
        if name.lower() in lower and name.lower() in {h.lower() for h in REQUEST_HEADERS}:
            raise _invalid(f"{name} is sent more than once")
        lower[name.lower()] = value
    values = [lower.get(name.lower()) for name in REQUEST_HEADERS]
    if any(v is None for v in values):
        raise Refused("unauthorised", "missing Podlink-* signature headers")
    key_text, time_text, nonce, pod_text, sig_text = values
    try:
        key = b64u_decode(key_text)
        sig = b64u_decode(sig_text)
        addressed = b64u_decode(pod_text)
    except ValueError as exc:
        raise _invalid("Podlink-Key / Podlink-Pod / Podlink-Signature is not base64url") from exc
    if len(key) != KEY_LEN or len(sig) != SIG_LEN or len(addressed) != KEY_LEN:
        raise _invalid("Podlink-Key / Podlink-Pod / Podlink-Signature has the wrong length")
    # SPEC (v2): the request names the pod it is for; another pod's is not for us.
    if addressed != pod:
        raise Refused("unauthorised", "signed for another pod")
    if not 16 <= len(nonce) <= 64:
        raise _invalid("Podlink-Nonce must be 16-64 characters")
    if not _TIME_RE.fullmatch(time_text):
        raise _invalid("Podlink-Time is not an integer")
    if isinstance(target, bytes):
        try:
            target = target.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _invalid("request-target is not valid UTF-8") from exc
    time = int(time_text)
    if abs(time - now_s) > WINDOW_S:
        raise Refused("stale", f"request time {time} is more than {WINDOW_S}s from now")
    message = http_signing_input(method, target, body, time, nonce, pod)
    if not ed25519_verify(key, message, sig):
        raise Refused("forged", "the request signature does not verify")
    if replay is not None:
        replay.check_and_add(key, nonce, time, now_s)
    if authorised is not None and not authorised(key):
        raise Refused("unauthorised", "neither an organizer of this pod nor a peered pod")
    return key
