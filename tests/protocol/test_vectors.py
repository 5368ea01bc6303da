"""docs/protocol-vectors.json: up to date, and each vector does what it says with our code."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import msgspec
import pytest

from podlink.protocol import boxes, envelope, http_auth, vectors
from podlink.protocol.envelope import (
    LANES,
    MAX_BODY,
    MAX_HEADER,
    SIGN_PREFIX,
    Event,
    decode_event,
    decode_header,
    verify_event,
)
from podlink.protocol.errors import REASONS, ProtocolError
from podlink.protocol.keys import Keypair, verify_signature
from podlink.protocol.kinds import (
    KINDS,
    SealedMessage,
    check_kind,
    decode_body,
    decode_contact_handoff,
    decode_member_details,
)
from podlink.protocol.text import b64d, b64e

PATH = Path(__file__).resolve().parents[2] / "docs" / "protocol-vectors.json"
DATA: dict[str, Any] = json.loads(PATH.read_text(encoding="utf-8"))
VALID = [v for v in DATA["vectors"] if v["valid"]]
INVALID = [v for v in DATA["vectors"] if not v["valid"]]
KEYS = {"name", "valid", "why", "seed", "payload", "body", "signing_input", "signature", "id",
        "wire", "fields", "body_fields"}  # fmt: skip


def by_name(name: str) -> dict[str, Any]:
    return next(v for v in DATA["vectors"] if v["name"] == name)


def receive(vector: dict[str, Any]) -> Event:
    event = decode_event(bytes.fromhex(vector["wire"]))
    verify_event(event, now_ms=DATA["now_ms"])
    check_kind(event)
    return event


def test_file_is_what_the_generator_produces() -> None:
    assert PATH.read_text(encoding="utf-8") == vectors.render(), (
        "docs/protocol-vectors.json is stale: run `python -m podlink.protocol.vectors --write`"
    )


def test_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert vectors.main([]) == 0
    assert capsys.readouterr().out == vectors.render()
    out = tmp_path / "v.json"
    assert vectors.main(["--write", str(out)]) == 0
    assert out.read_text(encoding="utf-8") == vectors.render()
    assert vectors.default_path() == PATH


def test_shape_and_coverage() -> None:
    assert DATA["version"] == 1 and isinstance(DATA["now_ms"], int)
    names = [v["name"] for v in DATA["vectors"]]
    assert len(names) == len(set(names))
    for v in DATA["vectors"]:
        assert set(v) >= KEYS, v["name"]
        assert ("error" in v) != v["valid"], v["name"]
    assert len(VALID) >= 8 and len(INVALID) >= 6
    assert {v["fields"]["lane"] for v in VALID} == set(LANES)
    assert len({v["fields"]["kind"] for v in VALID} & set(KINDS)) >= 5
    assert any(v["fields"]["kind"] == "sealed" for v in VALID)
    assert any(v["body"] is None for v in VALID)
    assert any(v["fields"]["seq"] > 1 and v["fields"]["prev"] for v in VALID)
    assert any(v["fields"]["refs"] for v in VALID)
    assert {v["error"] for v in INVALID} >= {"forged", "invalid", "too-large", "too-far-ahead"}
    assert all(v["error"] in REASONS and v["why"] for v in INVALID)


@pytest.mark.parametrize("vector", DATA["vectors"], ids=lambda v: v["name"])
def test_bytes_are_consistent(vector: dict[str, Any]) -> None:
    payload = bytes.fromhex(vector["payload"])
    assert bytes.fromhex(vector["id"]) == hashlib.blake2b(payload, digest_size=32).digest()
    assert bytes.fromhex(vector["signing_input"]) == b"podlink/event/v1\x00" + payload
    assert SIGN_PREFIX == b"podlink/event/v1\x00"
    if vector["name"] == "trailing-bytes":
        return
    wire = msgspec.msgpack.decode(bytes.fromhex(vector["wire"]))
    body = None if vector["body"] is None else bytes.fromhex(vector["body"])
    assert wire == [payload, bytes.fromhex(vector["signature"]), body]


@pytest.mark.parametrize("vector", VALID, ids=lambda v: v["name"])
def test_valid_vector_verifies(vector: dict[str, Any]) -> None:
    event = receive(vector)
    header = decode_header(bytes.fromhex(vector["payload"]))
    assert event.id.hex() == vector["id"]
    assert Keypair.from_seed(bytes.fromhex(vector["seed"])).public == header.author
    fields = vector["fields"]
    assert fields == {
        "v": header.v, "pod": b64e(header.pod), "author": b64e(header.author),
        "lane": header.lane, "seq": header.seq,
        "prev": None if header.prev is None else b64e(header.prev), "ts": header.ts,
        "kind": header.kind, "refs": [b64e(r) for r in header.refs],
        "body_size": header.body_size, "body_hash": b64e(header.body_hash),
        "ts_wall_ms": header.ts >> 16, "ts_logical": header.ts & 0xFFFF,
    }  # fmt: skip
    assert (fields["seq"] == 1) == (fields["prev"] is None)
    if vector["body"] is not None:
        body = bytes.fromhex(vector["body"])
        assert vector["body_fields"] == vectors._jsonable(msgspec.msgpack.decode(body))
        if header.kind in KINDS:
            assert decode_body(header.kind, body) is not None
    else:
        assert vector["body_fields"] is None and event.body is None


@pytest.mark.parametrize("vector", INVALID, ids=lambda v: v["name"])
def test_invalid_vector_fails_with_its_reason(vector: dict[str, Any]) -> None:
    with pytest.raises(ProtocolError) as info:
        receive(vector)
    assert info.value.reason == vector["error"], str(info.value)


def test_feeds_chain_across_vectors() -> None:
    roster, genesis = by_name("roster-add"), by_name("pod-genesis")
    assert roster["fields"]["prev"] == b64e(bytes.fromhex(genesis["id"]))
    forget, join = by_name("member-forget"), by_name("member-join")
    assert forget["fields"]["prev"] == forget["fields"]["refs"][0] == b64e(
        bytes.fromhex(join["id"])
    )
    claim, request = by_name("claim-make"), by_name("request-open")
    assert claim["fields"]["refs"] == [b64e(bytes.fromhex(request["id"]))]


def test_member_box_vector_opens() -> None:
    vector = by_name("member-join")
    secrets = vector["secrets"]
    box = msgspec.msgpack.decode(bytes.fromhex(vector["body"]))["box"]
    assert box[:24].hex() == secrets["nonce"]
    plaintext = boxes.unlock(bytes.fromhex(secrets["member_key"]), box)
    assert plaintext.hex() == secrets["plaintext"]
    assert decode_member_details(plaintext).name == "Bea"
    with pytest.raises(ProtocolError):
        boxes.unlock(bytes(32), box)


def test_sealed_vector_is_a_real_sealed_box_built_deterministically() -> None:
    vector = by_name("sealed-handoff")
    secrets = vector["secrets"]
    body = decode_body("sealed", bytes.fromhex(vector["body"]))
    assert isinstance(body, SealedMessage)
    recipient = Keypair.from_seed(bytes.fromhex(secrets["recipient_seed"]))
    assert body.to == recipient.public
    plaintext = boxes.open_sealed(recipient, body.box)  # libsodium's crypto_box_seal_open
    assert plaintext.hex() == secrets["plaintext"]
    assert decode_contact_handoff(plaintext).contact == "+1 555 0100"
    rebuilt = vectors.seal_with(
        recipient.public, plaintext, bytes.fromhex(secrets["ephemeral_secret"])
    )
    assert rebuilt == body.box
    with pytest.raises(ProtocolError):
        boxes.open_sealed(Keypair.from_seed(bytes.fromhex(vector["seed"])), body.box)


def test_non_minimal_vector_is_not_what_a_re_encoding_gives() -> None:
    vector = by_name("non-minimal-encoding")
    payload = bytes.fromhex(vector["payload"])
    assert msgspec.msgpack.encode(decode_header(payload)) != payload
    assert receive(vector).id.hex() == vector["id"]


def test_dropped_body_vector_still_describes_its_body() -> None:
    vector = by_name("request-fulfil-dropped")
    assert vector["body"] is None and vector["fields"]["body_size"] > 0
    assert bytes.fromhex(vector["wire"]).endswith(b"\xc0")


REQUESTS = {r["name"]: r for r in DATA["requests"]}
OTHER_POD = {"other-pod", "pod-header-changed"}  # signed for pod B, received by pod A


def check_request(vector: dict[str, Any], cache: http_auth.NonceCache) -> http_auth.SignedRequest:
    """Steps 1-5 of the receiver, at the vector's ``now``, with ``cache`` for replays."""
    args = (vector["headers"], vector["method"], vector["path"], bytes.fromhex(vector["body"]))
    req = http_auth.verify_request(*args, pod=b64d(vector["pod"], length=32), now=vector["now"])
    cache.check_and_add(req, now=vector["now"])
    return req


@pytest.mark.parametrize("vector", DATA["requests"], ids=lambda v: v["name"])
def test_request_vector(vector: dict[str, Any]) -> None:
    key = Keypair.from_seed(bytes.fromhex(vector["seed"]))
    headers = {name.lower(): value for name, value in vector["headers"].items()}
    # What the sender signed, and the headers it sent for it (one vector lacks one).
    signed = bytes.fromhex(vector["signing_input"])
    lines = signed.removeprefix(http_auth.SIGN_PREFIX).split(b"\n")
    method, path, digest, when, nonce, pod = lines
    assert (method.decode(), digest.decode(), int(when), nonce.decode(), pod.decode()) == (
        vector["method"], hashlib.sha256(bytes.fromhex(vector["body"])).hexdigest(),
        vector["time"], vector["nonce"], vector["signed_for"],
    )  # fmt: skip
    assert vector["pod"] == vectors.POD_A.public_text  # every vector is received by pod A
    assert (vector["signed_for"] == vector["pod"]) == (vector["name"] not in OTHER_POD)
    # Only "path-changed" was received on another path than it was signed for.
    assert (path.decode() == vector["path"]) == (vector["name"] != "path-changed")
    assert headers["podlink-key"] == key.public_text
    assert headers["podlink-nonce"] == vector["nonce"]
    assert int(headers["podlink-time"]) == vector["time"]
    if "podlink-signature" in headers:
        sig = b64d(headers["podlink-signature"], length=64)
        assert verify_signature(key.public, signed, sig)
    cache = http_auth.NonceCache()  # fresh for each vector: all share one (key, nonce)
    for name in vector.get("after", []):
        check_request(REQUESTS[name], cache)
    if vector["valid"]:
        assert check_request(vector, cache).key == key.public
    else:
        with pytest.raises(ProtocolError) as info:
            check_request(vector, cache)
        assert info.value.reason == vector["error"]


def test_request_vectors_cover_each_step() -> None:
    errors = {r.get("error") for r in DATA["requests"]}
    assert errors == {None, "unauthorised", "invalid", "stale", "forged", "replayed"}
    assert all(r["now"] - r["time"] <= http_auth.WINDOW_S or r["error"] == "stale"
               for r in DATA["requests"])  # fmt: skip
    assert any(set(r["headers"]) == {h.lower() for h in http_auth.HEADERS}
               for r in DATA["requests"] if r["valid"])  # fmt: skip


def test_body_dropped_marks_only_the_mismatched_body() -> None:
    marked = [v["name"] for v in DATA["vectors"] if v.get("body_dropped")]
    assert marked == ["body-mismatch"]
    vector = by_name("body-mismatch")
    event = decode_event(bytes.fromhex(vector["wire"]))
    assert event.body is not None and not event.body_matches()
    kept = event.without_body()  # what a node stores: the header, no body
    verify_event(kept, now_ms=DATA["now_ms"])
    check_kind(kept)


def test_every_invalid_vector_has_one_fault_but_oversize_body() -> None:
    """Re-signed with the fault alone removed, each invalid vector's header is sound."""
    for name, error in [("kind-too-long", "too-large"), ("key-too-long", "too-large"),
                        ("title-too-long", "invalid"), ("sealed-box-too-short", "invalid"),
                        ("body-size-over-max", "invalid"), ("sig-too-long", "too-large"),
                        ("sig-too-short", "invalid")]:  # fmt: skip
        assert by_name(name)["error"] == error
    oversize = by_name("oversize-body")
    assert oversize["fields"]["body_size"] == MAX_BODY
    assert oversize["fields"]["kind"] not in KINDS
    assert len(bytes.fromhex(oversize["body"])) == MAX_BODY + 1
    header = decode_header(bytes.fromhex(oversize["payload"]))  # sound on its own
    assert header.body_hash == hashlib.blake2b(bytes(MAX_BODY), digest_size=32).digest()
    assert oversize["body_fields"] is None  # 65537 zero bytes are not one msgpack value
    over = by_name("body-size-over-max")
    assert over["body"] is None and over["fields"]["body_size"] == MAX_BODY + 1
    for name in ("sig-too-long", "sig-too-short"):
        sig = bytes.fromhex(by_name(name)["signature"])
        assert sig[:63] == bytes.fromhex(by_name("request-open")["signature"])[:63]
    title = by_name("title-too-long")["body_fields"]["title"]
    assert len(title) == 201 and len(title.encode()) > 201


def test_wide_wire_framing_is_within_max_event() -> None:
    vector = by_name("wide-wire-framing")
    wire = bytes.fromhex(vector["wire"])
    assert wire[:5] == b"\xdd\x00\x00\x00\x03" and wire[5] == 0xC6
    parts = [bytes.fromhex(vector[k]) for k in ("payload", "signature", "body")]
    assert len(wire) == sum(map(len, parts)) + envelope.FRAMING == 20 + sum(map(len, parts))
    assert envelope.MAX_EVENT == MAX_HEADER + 64 + MAX_BODY + envelope.FRAMING
