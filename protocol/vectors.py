"""Deterministic test vectors for docs/protocol.md.

Every key, timestamp and nonce here is fixed, so the output never changes unless the
protocol does; tests/protocol/test_vectors.py holds docs/protocol-vectors.json to it::

    python -m podlink.protocol.vectors            # print the JSON
    python -m podlink.protocol.vectors --write    # (re)write docs/protocol-vectors.json

Sealed boxes are randomised by libsodium (a fresh ephemeral key per box), so the sealed
vector is built the way ``crypto_box_seal`` builds one, with a fixed ephemeral key instead:
``epk || crypto_box(m, nonce=BLAKE2b-24(epk || rpk), rpk, esk)``; any sealed-box opener
(``nacl.public.SealedBox.decrypt``, ``crypto_box_seal_open``) opens it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import msgspec
import nacl.bindings
import nacl.secret

from podlink.protocol import clock, http_auth
from podlink.protocol.envelope import (
    MAX_BODY,
    MAX_KIND_LEN,
    MAX_REFS,
    PROTOCOL_VERSION,
    SIGN_PREFIX,
    Event,
    Header,
    blake2b256,
    encode_wire,
    sign_event,
)
from podlink.protocol.http_auth import WINDOW_S
from podlink.protocol.keys import Keypair
from podlink.protocol.kinds import (
    ClaimAccepted,
    ClaimMade,
    ContactHandoff,
    MemberDetails,
    MemberForgotten,
    MemberJoined,
    OfferOpened,
    OrganizerAdded,
    PodFounded,
    RequestFulfilled,
    RequestOpened,
    ResourceShared,
    SealedMessage,
    encode_body,
)
from podlink.protocol.text import b64e

FORMAT_VERSION = 1
WALL0 = 1_750_000_000_000  # 2025-06-15T15:06:40Z, the first vector's wall-clock ms
NOW_MS = WALL0 + 10 * 60 * 1000  # the receiver's clock when the vectors are checked
HEADER_FIELDS = tuple(Header.__struct_fields__)


def fixed_bytes(label: str, size: int = 32) -> bytes:
    """A fixed pseudo-random value: BLAKE2b(b"podlink/vectors/" + label) of ``size`` bytes."""
    return hashlib.blake2b(b"podlink/vectors/" + label.encode(), digest_size=size).digest()


POD_A = Keypair.from_seed(fixed_bytes("pod-a"))  # pod A's node key
ORGANIZER = Keypair.from_seed(fixed_bytes("organizer-a"))  # an organizer of pod A
POD_B = Keypair.from_seed(fixed_bytes("pod-b"))  # a peered pod
MALLORY = Keypair.from_seed(fixed_bytes("mallory"))  # a key nobody authorised
MEMBER_KEY = fixed_bytes("member-key")
MEMBER_NONCE = fixed_bytes("member-nonce", 24)
EPHEMERAL_SECRET = fixed_bytes("ephemeral-secret")


def seal_with(pod_key: bytes, plaintext: bytes, ephemeral_secret: bytes) -> bytes:
    """``crypto_box_seal`` to an Ed25519 pod key, with a chosen (not random) ephemeral key."""
    recipient = nacl.bindings.crypto_sign_ed25519_pk_to_curve25519(pod_key)
    epk = nacl.bindings.crypto_scalarmult_base(ephemeral_secret)
    nonce = hashlib.blake2b(epk + recipient, digest_size=24).digest()
    return epk + nacl.bindings.crypto_box(plaintext, nonce, recipient, ephemeral_secret)


def lock_with(member_key: bytes, plaintext: bytes, nonce: bytes) -> bytes:
    """A member SecretBox with a chosen nonce: ``nonce || XSalsa20-Poly1305(key, nonce, m)``."""
    return bytes(nacl.secret.SecretBox(member_key).encrypt(plaintext, nonce))


def ts_at(step: int, logical: int = 0) -> int:
    """The fixed timestamp of the ``step``-th event of the story (one second apart)."""
    return clock.pack(WALL0 + step * 1000, logical)


# -- turning bytes into a vector -----------------------------------------------------------


def _jsonable(value: Any) -> Any:
    """Msgpack values as JSON: bytes as base64url, containers recursively."""
    if isinstance(value, bytes):
        return b64e(value)
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return value


def _loose(data: bytes | None) -> Any:
    """Decode msgpack without a schema (for display); None when it does not decode."""
    if data is None:
        return None
    try:
        return msgspec.msgpack.decode(data)
    except (msgspec.MsgspecError, UnicodeDecodeError):
        return None


def header_fields(payload: bytes) -> dict[str, Any] | None:
    """The header as JSON (keys and ids base64url), or None if it is not an 11-array."""
    raw = _loose(payload)
    if not isinstance(raw, list) or len(raw) != len(HEADER_FIELDS):
        return None
    fields = dict(zip(HEADER_FIELDS, _jsonable(raw), strict=True))
    if isinstance(raw[6], int):
        fields["ts_wall_ms"] = clock.wall_ms(raw[6])
        fields["ts_logical"] = raw[6] & clock.LOGICAL_MASK
    return fields


def _vector(
    name: str,
    signer: Keypair,
    payload: bytes,
    sig: bytes,
    body: bytes | None,
    *,
    why: str,
    error: str | None = None,
    wire: bytes | None = None,
    secrets: dict[str, str] | None = None,
    body_dropped: bool = False,
) -> dict[str, Any]:
    body_fields = _loose(body)
    vector: dict[str, Any] = {
        "name": name,
        "valid": error is None,
        **({} if error is None else {"error": error}),
        "why": why,
        "seed": signer.seed.hex(),
        "payload": payload.hex(),
        "body": None if body is None else body.hex(),
        "signing_input": (SIGN_PREFIX + payload).hex(),
        "signature": sig.hex(),
        "id": blake2b256(payload).hex(),
        "wire": (encode_wire(payload, sig, body) if wire is None else wire).hex(),
        "fields": header_fields(payload),
        "body_fields": None if body_fields is None else _jsonable(body_fields),
    }
    if body_dropped:  # refused by the checks, yet kept at ingest with its body dropped
        vector["body_dropped"] = True
    if secrets:
        vector["secrets"] = secrets
    return vector


def _from_event(name: str, signer: Keypair, event: Event, why: str, **kw: Any) -> dict[str, Any]:
    return _vector(name, signer, event.payload, event.sig, event.body, why=why, **kw)


def _unchecked_payload(**fields: Any) -> bytes:
    """Encode a header without the checks sign_event runs (for invalid vectors)."""
    body = fields.pop("body", b"")
    defaults: dict[str, Any] = {
        "v": PROTOCOL_VERSION, "refs": [], "body_size": len(body), "body_hash": blake2b256(body),
    }  # fmt: skip
    merged = {**defaults, **fields}
    return msgspec.msgpack.encode([merged[name] for name in HEADER_FIELDS])


def _signed(signer: Keypair, payload: bytes) -> bytes:
    return signer.sign(SIGN_PREFIX + payload)


def _wide_header(
    *, author: Keypair, pod: bytes, lane: str, ts: int, kind: str, body: bytes
) -> bytes:
    """A seq-1 header written with the widest msgpack formats instead of the smallest."""

    def str8(text: str) -> bytes:
        raw = text.encode()
        return b"\xd9" + len(raw).to_bytes(1, "big") + raw

    return b"".join([
        b"\xdc\x00\x0b",  # array 16, 11 elements
        b"\xcc" + PROTOCOL_VERSION.to_bytes(1, "big"),  # v as uint 8
        b"\xc5\x00\x20" + pod,  # pod as bin 16
        b"\xc6\x00\x00\x00\x20" + author.public,  # author as bin 32
        str8(lane),  # lane as str 8
        b"\xcf" + (1).to_bytes(8, "big"),  # seq as uint 64
        b"\xc0",  # prev: nil
        b"\xd3" + ts.to_bytes(8, "big"),  # ts as int 64
        b"\xda" + len(kind).to_bytes(2, "big") + kind.encode(),  # kind as str 16
        b"\xdc\x00\x00",  # refs: array 16, empty
        b"\xce" + len(body).to_bytes(4, "big"),  # body_size as uint 32
        b"\xc4\x20" + blake2b256(body),  # body_hash as bin 8
    ])  # fmt: skip


def _wide_wire(payload: bytes, sig: bytes, body: bytes) -> bytes:
    """A wire form in the widest framing: array 32 and three bin 32 (20 bytes of framing)."""

    def bin32(raw: bytes) -> bytes:
        return b"\xc6" + len(raw).to_bytes(4, "big") + raw

    return b"\xdd\x00\x00\x00\x03" + bin32(payload) + bin32(sig) + bin32(body)


# -- the vectors ----------------------------------------------------------------------------


def build() -> dict[str, Any]:
    """All vectors: a small story of two pods, then ways to get an event wrong."""
    a, o, b = POD_A.public, ORGANIZER, POD_B
    vectors: list[dict[str, Any]] = []

    # Valid: pod A founds itself and adds an organizer (network lane, one feed of two).
    genesis = sign_event(
        POD_A, pod=a, lane="network", seq=1, prev=None, ts=ts_at(0), kind="pod.genesis",
        body=encode_body(PodFounded(
            name="Elm Street Pod", zone="Elm St 1-40", categories=["food", "transport"],
            contact="elm-pod@example.org",
        )),
    )  # fmt: skip
    vectors.append(_from_event(
        "pod-genesis", POD_A, genesis,
        "The first event of pod A, signed by the pod's own key, seq 1 with prev nil.",
    ))  # fmt: skip
    roster = sign_event(
        POD_A, pod=a, lane="network", seq=2, prev=genesis.id, ts=ts_at(1), kind="roster.add",
        body=encode_body(OrganizerAdded(key=o.public, name="Ana")),
    )  # fmt: skip
    vectors.append(_from_event(
        "roster-add", POD_A, roster,
        "seq 2 of the feed (pod A, network): prev is the id of pod-genesis.",
    ))  # fmt: skip

    # Valid: a member joins (pod lane), details in a SecretBox under the member key.
    details = encode_body(MemberDetails(
        name="Bea", contact="+1 555 0100", prefers="phone", can=["transport"],
        languages=["en", "es"],
    ))  # fmt: skip
    join = sign_event(
        o, pod=a, lane="pod", seq=1, prev=None, ts=ts_at(2), kind="member.join",
        body=encode_body(MemberJoined(box=lock_with(MEMBER_KEY, details, MEMBER_NONCE))),
    )  # fmt: skip
    vectors.append(_from_event(
        "member-join", o, join,
        "A member's details, msgpack MemberDetails inside a SecretBox (24-byte nonce first).",
        secrets={
            "member_key": MEMBER_KEY.hex(), "nonce": MEMBER_NONCE.hex(),
            "plaintext": details.hex(),
        },
    ))  # fmt: skip

    # Valid: a need on the network lane, and a claim on it from pod B (peers lane, refs).
    request_body = encode_body(RequestOpened(
        title="Groceries for a neighbour after surgery", category="food",
        details="Two bags a week for three weeks.", urgency="high",
        needed_by="2025-06-20", area="Elm St north",
    ))  # fmt: skip
    request = sign_event(
        o, pod=a, lane="network", seq=1, prev=None, ts=ts_at(3), kind="request.open",
        body=request_body,
    )  # fmt: skip
    vectors.append(_from_event(
        "request-open", o, request,
        "A need gossiped to every pod; urgency and needed_by set, defaults omitted.",
    ))  # fmt: skip
    claim = sign_event(
        b, pod=b.public, lane="peers", seq=1, prev=None, ts=ts_at(4, 1), kind="claim.make",
        body=encode_body(ClaimMade(note="We can drive on Tuesdays.")), refs=[request.id],
    )  # fmt: skip
    vectors.append(_from_event(
        "claim-make", b, claim,
        "Pod B offers help: refs[0] is the request's id; the HLC logical counter is 1.",
    ))  # fmt: skip

    # Valid: a sealed contact handoff to pod B; only pod B's key opens the box.
    handoff = encode_body(ContactHandoff(
        name="Bea", contact="+1 555 0100", prefers="phone", note="Ring twice.",
    ))  # fmt: skip
    sealed = sign_event(
        o, pod=a, lane="peers", seq=1, prev=None, ts=ts_at(5), kind="sealed",
        body=encode_body(SealedMessage(
            to=b.public, box=seal_with(b.public, handoff, EPHEMERAL_SECRET),
        )),
        refs=[claim.id],
    )  # fmt: skip
    vectors.append(_from_event(
        "sealed-handoff", o, sealed,
        "A ContactHandoff sealed to pod B's key (Ed25519 converted to X25519).",
        secrets={
            "recipient_seed": b.seed.hex(), "ephemeral_secret": EPHEMERAL_SECRET.hex(),
            "plaintext": handoff.hex(),
        },
    ))  # fmt: skip

    # Valid: the fulfilment, with its body dropped; the header still verifies.
    fulfil = sign_event(
        o, pod=a, lane="network", seq=2, prev=request.id, ts=ts_at(6), kind="request.fulfil",
        body=encode_body(RequestFulfilled(note="Delivered all three weeks.", hours=4.5)),
        refs=[request.id],
    )  # fmt: skip
    vectors.append(_from_event(
        "request-fulfil-dropped", o, fulfil.without_body(),
        "The body was dropped (nil on the wire); body_size and body_hash still describe it.",
    ))  # fmt: skip

    # Valid: the member is forgotten; an empty body (msgpack {}).
    forget = sign_event(
        o, pod=a, lane="pod", seq=2, prev=join.id, ts=ts_at(7), kind="member.forget",
        body=encode_body(MemberForgotten()), refs=[join.id],
    )  # fmt: skip
    vectors.append(_from_event(
        "member-forget", o, forget,
        "Forgetting the member in refs[0]; the body is the empty map 0x80.",
    ))  # fmt: skip

    # Valid: a kind this version does not know is still stored and forwarded.
    unknown = sign_event(
        o, pod=a, lane="network", seq=3, prev=fulfil.id, ts=ts_at(8), kind="garden.plot",
        body=msgspec.msgpack.encode({"plot": 7, "crop": "beans"}),
    )  # fmt: skip
    vectors.append(_from_event(
        "unknown-kind", o, unknown,
        "An unknown kind: verified by its header, body not interpreted, kept and forwarded.",
    ))  # fmt: skip

    # Valid: a header written with the widest msgpack formats; its id is of these bytes.
    resource_body = encode_body(ResourceShared(
        name="Riverside food bank", category="food", when="Sat 10-14", where="12 Mill Rd",
    ))  # fmt: skip
    wide = _wide_header(
        author=b, pod=b.public, lane="network", ts=ts_at(9), kind="resource.share",
        body=resource_body,
    )  # fmt: skip
    vectors.append(_vector(
        "non-minimal-encoding", b, wide, _signed(b, wide), resource_body,
        why="The header array (array 16) and nine of its elements use wider msgpack formats "
        "than needed (v uint 8, pod bin 16, author bin 32, lane str 8, seq uint 64, ts int 64, "
        "kind str 16, refs array 16, body_size uint 32; prev nil and body_hash bin 8 are as "
        "usual); readers accept it and hash and verify the bytes as received, never a "
        "re-encoding. The wire framing around it is the usual one.",
    ))  # fmt: skip

    # Valid: pod B's next event in the widest wire framing, which MAX_EVENT leaves room for.
    offer_body = encode_body(OfferOpened(
        title="Lifts to the clinic", category="transport", availability="Tue, Thu mornings",
        capacity=3,
    ))  # fmt: skip
    offer = sign_event(
        b, pod=b.public, lane="network", seq=2, prev=blake2b256(wide), ts=ts_at(10),
        kind="offer.open", body=offer_body,
    )  # fmt: skip
    vectors.append(_from_event(
        "wide-wire-framing", b, offer,
        "Pod B's seq 2 (prev: the non-minimal-encoding id) sent as array 32 holding three "
        "bin 32: 20 bytes of framing, the most any encoding needs, which MAX_EVENT allows for.",
        wire=_wide_wire(offer.payload, offer.sig, offer_body),
    ))  # fmt: skip

    vectors.extend(_invalid_vectors(request, request_body))
    return {
        "version": FORMAT_VERSION, "now_ms": NOW_MS, "vectors": vectors,
        "requests": request_vectors(),
    }  # fmt: skip


def _invalid_vectors(request: Event, request_body: bytes) -> list[dict[str, Any]]:
    a, o = POD_A.public, ORGANIZER
    out: list[dict[str, Any]] = []

    def bad(name: str, signer: Keypair, payload: bytes, body: bytes | None, error: str,
            why: str, *, sig: bytes | None = None, wire: bytes | None = None) -> None:
        sig = _signed(signer, payload) if sig is None else sig
        out.append(_vector(name, signer, payload, sig, body, why=why, error=error, wire=wire))

    def header(**fields: Any) -> bytes:
        base: dict[str, Any] = {
            "pod": a, "author": o.public, "lane": "network", "seq": 1, "prev": None,
            "ts": ts_at(3), "kind": "request.open", "body": request_body,
        }  # fmt: skip
        return _unchecked_payload(**{**base, **fields})

    tampered = bytearray(request.payload)
    tampered[4] ^= 0x01  # the first byte of the pod key (after 9b 01 c4 20)
    bad("tampered-payload", o, bytes(tampered), request_body, "forged",
        "request-open with one bit of the pod key flipped; the signature no longer covers it.",
        sig=request.sig)  # fmt: skip
    bad("unprefixed-signature", o, request.payload, request_body, "forged",
        "Signed over the payload alone, without the podlink/event/v1\\0 prefix.",
        sig=o.sign(request.payload))  # fmt: skip
    bad("wrong-signer", MALLORY, request.payload, request_body, "forged",
        "The header names the organizer as author, but another key signed it.")
    changed = encode_body(RequestOpened(title="Something else entirely", category="food"))
    out.append(_vector(
        "body-mismatch", o, request.payload, request.sig, changed, error="invalid",
        why="request-open's header with a different body, which does not match "
        "body_size/body_hash. At ingest the event is not refused: its header is stored with "
        "the body dropped (reported as stored, body_dropped).", body_dropped=True,
    ))  # fmt: skip
    full, big = bytes(MAX_BODY), bytes(MAX_BODY + 1)
    bad("oversize-body", o, header(kind="garden.photo", body=full), big, "too-large",
        f"A body of {MAX_BODY + 1} bytes, one more than MAX_BODY, refused at the structure "
        f"step; the header is sound (an unknown kind, body_size {MAX_BODY}), but no body over "
        "MAX_BODY can match a header, so it also differs from body_size.")  # fmt: skip
    bad("body-size-over-max", o, header(kind="garden.photo", body_size=MAX_BODY + 1,
        body_hash=blake2b256(big)), None, "invalid",
        f"body_size {MAX_BODY + 1} with the body dropped: an integer out of its range is "
        "invalid (only a str, bin or array over its maximum length is too-large).")  # fmt: skip
    bad("too-many-refs", o, header(kind="claim.make", refs=[fixed_bytes(f"ref-{i}")
        for i in range(MAX_REFS + 1)]), request_body, "too-large",
        f"{MAX_REFS + 1} refs, one more than MAX_REFS.")  # fmt: skip
    bad("unsupported-version", o, header(v=2), request_body, "invalid",
        "Header version 2, which this protocol version does not speak.")
    bad("trailing-bytes", o, request.payload, request_body, "invalid",
        "A correct event followed by one more byte (0xc0) in the same wire message.",
        sig=request.sig, wire=encode_wire(request.payload, request.sig, request_body) + b"\xc0")
    ahead = clock.pack(NOW_MS + clock.FUTURE_LIMIT_MS + 1000)
    bad("too-far-ahead", o, header(ts=ahead), request_body, "too-far-ahead",
        "Stamped 15 minutes and 1 second after now_ms.")
    joined = encode_body(MemberJoined(box=lock_with(MEMBER_KEY, b"\x80", MEMBER_NONCE)))
    bad("member-outside-pod-lane", o, header(kind="member.join", lane="peers", body=joined),
        joined, "invalid", "member.join may travel only in the pod lane.")  # fmt: skip
    accept = encode_body(ClaimAccepted())
    bad("missing-refs", o, header(kind="claim.accept", body=accept), accept, "invalid",
        "claim.accept must reference the claim it accepts (1 ref), and has none.")
    bad("prev-on-first", o, header(prev=request.id), request_body, "invalid",
        "seq 1 with a prev: prev must be nil exactly when seq is 1.")
    bad("kind-with-newline", o, header(kind="request.open\n"), request_body, "invalid",
        "A kind name with a trailing newline; the name pattern must match the whole string.")
    twelve = msgspec.msgpack.encode([*msgspec.msgpack.decode(request.payload), 0])
    bad("twelve-element-header", o, twelve, request_body, "invalid",
        "A header array with a twelfth element; a header has exactly 11.")
    long_kind = "garden.plot.watering-schedule.v22"
    assert len(long_kind) == MAX_KIND_LEN + 1
    bad("kind-too-long", o, header(kind=long_kind), request_body, "too-large",
        f"A kind name of {MAX_KIND_LEN + 1} characters that matches the name pattern: a header "
        "str over its maximum length is too-large.")  # fmt: skip
    bad("key-too-long", o, header(pod=a + b"\x00"), request_body, "too-large",
        "pod is pod A's key with a 33rd byte: a header bin over its maximum length is "
        "too-large (a 31-byte one would be invalid).")  # fmt: skip
    bad("sig-too-long", o, request.payload, request_body, "too-large",
        "request-open with a 65-byte sig (its signature and one zero byte): a bin over its "
        "maximum length in the wire form is too-large.", sig=request.sig + b"\x00")  # fmt: skip
    bad("sig-too-short", o, request.payload, request_body, "invalid",
        "request-open with a 63-byte sig (its signature less the last byte): a bin under its "
        "minimum length is invalid.", sig=request.sig[:63])  # fmt: skip
    title = ("Soupe à l’oignon pour la rue " * 8)[:201]
    assert len(title) == 201 < len(title.encode())
    long_title = encode_body(RequestOpened(title=title, category="food"))
    bad("title-too-long", o, header(body=long_title), long_title, "invalid",
        "request.open whose title has 201 characters (Title allows 200; counted in code "
        "points, not bytes): in a body every broken limit is invalid, a length too. The body "
        "matches its hash, so the whole event is refused.")  # fmt: skip
    sealed = encode_body(SealedMessage(to=POD_B.public, box=fixed_bytes("short-box", 40)))
    bad("sealed-box-too-short", o, header(kind="sealed", lane="peers", body=sealed), sealed,
        "invalid", "A sealed body whose box is 40 bytes: a sealed box is at least 48 (32-byte "
        "ephemeral key, 16-byte MAC); 40 is the minimum of a member SecretBox only.")  # fmt: skip
    return out


def request_vectors() -> list[dict[str, Any]]:
    """Signed HTTP requests (http_auth), each checked by the receiver, pod A's node
    (``pod``), at its ``now``; ``signed_for`` is the pod the sender signed for.

    Every vector is signed by ORGANIZER with the same nonce, so each is checked with a
    fresh replay cache, given first the vectors named in ``after`` (if any)."""
    now, nonce = NOW_MS // 1000, b64e(fixed_bytes("nonce", 16))
    body = msgspec.json.encode({"title": "Soup", "category": "food"})
    query = "/api/requests?lane=network&note=a%20b"

    def drop_signature(h: dict[str, str]) -> dict[str, str]:
        return {k: v for k, v in h.items() if k != http_auth.H_SIG}

    def plus_sign(h: dict[str, str]) -> dict[str, str]:
        return {**h, http_auth.H_TIME: "+" + h[http_auth.H_TIME]}

    def lower_case(h: dict[str, str]) -> dict[str, str]:
        return {k.lower(): v for k, v in h.items()}

    def drop_pod(h: dict[str, str]) -> dict[str, str]:
        return {k: v for k, v in h.items() if k != http_auth.H_POD}

    def readdress(h: dict[str, str]) -> dict[str, str]:
        return {**h, http_auth.H_POD: POD_A.public_text}

    out = []
    for spec in [
        dict(name="get", why="A GET without a body.", method="GET", path="/api/status"),
        dict(name="post-with-query", method="POST", path=query, body=body,
             why="The path and query exactly as sent, percent-encoding included."),
        dict(name="path-changed", method="POST", path="/api/requests?lane=network", body=body,
             received="/api/requests?lane=peers", error="forged",
             why="Signed for one path, received on another: the signature does not verify."),
        dict(name="missing-signature-header", method="GET", path="/api/status",
             edit=drop_signature, error="unauthorised",
             why="No Podlink-Signature header: a request without all five is unsigned."),
        dict(name="missing-pod-header", method="GET", path="/api/status", edit=drop_pod,
             error="unauthorised",
             why="No Podlink-Pod header (as a version 1 sender would send): unauthorised, "
             "before the signature is checked."),
        dict(name="other-pod", method="GET", path="/api/status", pod=POD_B.public,
             error="unauthorised",
             why="Signed for pod B and sent to pod A's node (a request captured on its way "
             "to B and replayed at A): Podlink-Pod names another pod."),
        dict(name="pod-header-changed", method="GET", path="/api/status", pod=POD_B.public,
             edit=readdress, error="forged",
             why="Signed for pod B, its Podlink-Pod header rewritten to pod A: the signature "
             "over pod A's key does not verify."),
        dict(name="time-with-plus-sign", method="GET", path="/api/status", edit=plus_sign,
             error="invalid",
             why="Podlink-Time '+1750000600': the time is 1 to 12 ASCII digits, nothing else "
             "(the signature itself is over the canonical 1750000600)."),
        dict(name="lowercase-header-names", method="GET", path="/api/status", edit=lower_case,
             why="The same five headers with lower-case names: header names are "
             "case-insensitive, as everywhere in HTTP."),
        dict(name="window-edge", method="GET", path="/api/status", when=now - WINDOW_S,
             why=f"Signed {WINDOW_S} seconds before the receiver's clock: still in the window."),
        dict(name="stale", method="GET", path="/api/status", when=now - WINDOW_S - 1,
             error="stale",
             why=f"Signed {WINDOW_S + 1} seconds before the receiver's clock: outside the "
             "window."),
        dict(name="replayed", method="GET", path="/api/status", after=["get"],
             error="replayed",
             why="The get vector again, after the receiver accepted it: its (key, nonce) was "
             "already received."),
    ]:  # fmt: skip
        when = spec.get("when", now)
        sent_body = spec.get("body", b"")
        pod = spec.get("pod", POD_A.public)  # the pod signed for; the receiver is pod A
        headers = http_auth.sign_request(ORGANIZER, spec["method"], spec["path"], sent_body,
                                         pod=pod, when=when, nonce=nonce)  # fmt: skip
        if "edit" in spec:
            headers = spec["edit"](headers)
        error = spec.get("error")
        out.append({
            "name": spec["name"], "valid": error is None, **({"error": error} if error else {}),
            "why": spec["why"], "seed": ORGANIZER.seed.hex(), "method": spec["method"],
            "path": spec.get("received", spec["path"]), "body": sent_body.hex(), "time": when,
            "now": now, "nonce": nonce, "pod": POD_A.public_text, "signed_for": b64e(pod),
            "signing_input": http_auth.signing_input(spec["method"], spec["path"], sent_body,
                                                     when, nonce, pod).hex(),
            "headers": headers, **({"after": spec["after"]} if "after" in spec else {}),
        })  # fmt: skip
    return out


# -- command line ---------------------------------------------------------------------------


def render() -> str:
    """The vectors as the JSON text of docs/protocol-vectors.json."""
    return json.dumps(build(), indent=1) + "\n"


def default_path() -> Path:
    """docs/protocol-vectors.json of the checkout this module lives in (else of the cwd)."""
    root = Path(__file__).resolve().parents[1]
    base = root if (root / "pyproject.toml").exists() else Path.cwd()
    return base / "docs" / "protocol-vectors.json"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m podlink.protocol.vectors", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--write", nargs="?", const=default_path(), type=Path, metavar="PATH",
        help="write the vectors to PATH (default: docs/protocol-vectors.json) instead",
    )  # fmt: skip
    args = parser.parse_args(argv)
    text = render()
    if args.write is None:
        sys.stdout.write(text)
    else:
        args.write.write_text(text, encoding="utf-8")
        print(f"wrote {args.write}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
