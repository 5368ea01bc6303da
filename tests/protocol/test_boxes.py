"""Sealed boxes to a pod, and per-member secret boxes (crypto-shredding)."""

from __future__ import annotations

import msgspec
import nacl.public
import nacl.secret
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from podlink.protocol import boxes
from podlink.protocol.errors import ProtocolError
from podlink.protocol.kinds import MemberJoined, decode_member_details, encode_body
from tests.protocol.samples import DETAILS, MEMBER_KEY, OTHER_POD, POD, STRANGER


def reason_of(call: object, *args: object) -> str:
    with pytest.raises(ProtocolError) as info:
        call(*args)  # type: ignore[operator]
    return info.value.reason


def test_sealed_opens_only_with_the_recipient_key() -> None:
    box = boxes.seal_to(OTHER_POD.public, b"call Bea on +1 555 0100")
    assert type(box) is bytes and len(box) == 32 + 16 + 23
    assert boxes.open_sealed(OTHER_POD, box) == b"call Bea on +1 555 0100"
    assert reason_of(boxes.open_sealed, POD, box) == "forged"
    assert reason_of(boxes.open_sealed, STRANGER, box) == "forged"


def test_sealed_is_a_standard_sealed_box_to_the_x25519_key() -> None:
    box = boxes.seal_to(OTHER_POD.public, b"hello")
    secret = OTHER_POD.signing.to_curve25519_private_key()
    assert nacl.public.SealedBox(secret).decrypt(box) == b"hello"
    assert boxes.seal_to(OTHER_POD.public, b"hello") != box  # randomised each time


def test_sealed_tampered_or_short_is_forged() -> None:
    box = bytearray(boxes.seal_to(OTHER_POD.public, b"hello"))
    box[-1] ^= 1
    assert reason_of(boxes.open_sealed, OTHER_POD, bytes(box)) == "forged"
    assert reason_of(boxes.open_sealed, OTHER_POD, b"short") == "forged"
    assert reason_of(boxes.open_sealed, OTHER_POD, b"") == "forged"


def test_seal_to_refuses_bad_keys() -> None:
    assert reason_of(boxes.seal_to, bytes(31), b"x") == "invalid"
    assert reason_of(boxes.seal_to, bytes(32), b"x") == "invalid"  # not a usable point


def test_member_box_round_trip_and_layout() -> None:
    plaintext = encode_body(DETAILS)
    box = boxes.lock(MEMBER_KEY, plaintext)
    assert type(box) is bytes  # so that it can go into a msgspec body as is
    assert len(box) == 24 + 16 + len(plaintext)
    assert nacl.secret.SecretBox(MEMBER_KEY).decrypt(box[24:], box[:24]) == plaintext
    assert decode_member_details(boxes.unlock(MEMBER_KEY, box)) == DETAILS
    body = msgspec.msgpack.decode(encode_body(MemberJoined(box=box)))
    assert body == {"box": box}


def test_member_box_fails_after_wrong_key() -> None:
    box = boxes.lock(MEMBER_KEY, b"details")
    assert reason_of(boxes.unlock, boxes.new_member_key(), box) == "forged"
    assert reason_of(boxes.unlock, bytes(32), box) == "forged"
    assert reason_of(boxes.unlock, MEMBER_KEY[:16], box) == "forged"  # not even a key


def test_member_box_tampered_or_short_is_forged() -> None:
    box = bytearray(boxes.lock(MEMBER_KEY, b"details"))
    box[30] ^= 0x80
    assert reason_of(boxes.unlock, MEMBER_KEY, bytes(box)) == "forged"
    assert reason_of(boxes.unlock, MEMBER_KEY, bytes(39)) == "forged"
    assert reason_of(boxes.unlock, MEMBER_KEY, b"") == "forged"


def test_new_member_keys_are_fresh() -> None:
    keys = {boxes.new_member_key() for _ in range(20)}
    assert len(keys) == 20 and all(len(k) == boxes.MEMBER_KEY_LEN == 32 for k in keys)


def test_nonces_are_random() -> None:
    assert boxes.lock(MEMBER_KEY, b"x")[:24] != boxes.lock(MEMBER_KEY, b"x")[:24]


@settings(max_examples=50, deadline=None)
@given(st.binary(max_size=2000))
def test_any_plaintext_round_trips(plaintext: bytes) -> None:
    assert boxes.unlock(MEMBER_KEY, boxes.lock(MEMBER_KEY, plaintext)) == plaintext
    assert boxes.open_sealed(OTHER_POD, boxes.seal_to(OTHER_POD.public, plaintext)) == plaintext
