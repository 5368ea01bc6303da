# ruff: noqa: E501
"""Review: podlink vs docs/protocol.md vs tests/interop/independent.py on adversarial bytes.

No disagreement was found; these two tests keep the corners checked (see the review report).
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from podlink.protocol import envelope, kinds
from podlink.protocol.errors import ProtocolError
from tests.interop import independent as ind
from tests.interop import test_independent as ti
from tests.protocol.samples import SAMPLES

R = ind.Raw
NOW_MS = ti.NOW_MS
PAIRS = ti.BODY_PAIRS  # title "t", category "food"


def _podlink(wire: bytes) -> str:
    try:
        event = envelope.decode_event(wire)
        envelope.verify_event(event, NOW_MS)
        kinds.check_kind(event)
    except ProtocolError as err:
        return err.reason
    return "ok"


def _independent(wire: bytes) -> str:
    try:
        ind.check_event(wire, NOW_MS)
    except ind.Refused as err:
        return err.reason
    return "ok"


def _hdr(**raw: bytes) -> bytes:
    return ti.make(header=b"\x9b" + ti._header_with(**raw))


def _fulfil(hours: Any) -> bytes:
    return ti._kind("request.fulfil", refs=1, hours=hours)


CORNERS: list[tuple[str, bytes, str]] = [
    ("v-uint64", _hdr(v=b"\xcf" + (1).to_bytes(8, "big")), "ok"),
    ("pod-bin32", _hdr(pod=b"\xc6\x00\x00\x00\x20" + bytes(ti.BASE[1])), "ok"),
    ("lane-str8", _hdr(lane=b"\xd9\x07network"), "ok"),
    ("refs-array32", _hdr(refs=b"\xdd\x00\x00\x00\x01\xc4\x20" + ti.ID0), "ok"),
    ("refs-duplicate", ti.make({8: [ti.ID0, ti.ID0]}), "ok"),
    ("refs-17-short-ids", ti.make({8: [bytes(31)] * 17}), "too-large"),
    ("ts-max", ti.make({6: 2**63 - 1}), "too-far-ahead"),
    ("ts-2**63", ti.make({6: 2**63}), "invalid"),
    ("seq-uint64", _hdr(seq=b"\xcf" + (1).to_bytes(8, "big")), "ok"),
    ("kind-33-non-ascii", ti.make({7: "é" * 33}), "too-large"),
    ("kind-20-non-ascii", ti.make({7: "é" * 20}), "invalid"),
    ("kind-fullwidth", ti.make({7: "ｒequest.open"}), "invalid"),
    ("kind-surrogate", ti.make({7: R(b"\xa3\xed\xa0\x80")}), "invalid"),
    ("kind-overlong-utf8", ti.make({7: R(b"\xa2\xc0\xaf")}), "invalid"),
    ("wire-trailing", ti.make() + b"\x00", "invalid"),
    ("wire-ext", b"\xd4\x01\x00", "invalid"),
    ("hours-neg-zero", _fulfil(-0.0), "ok"),
    ("hours-inf", _fulfil(float("inf")), "invalid"),
    ("hours-nan-float32", _fulfil(R(b"\xca\x7f\xc0\x00\x00")), "invalid"),
    ("hours-negative-nan", _fulfil(R(b"\xcb\xff\xf8" + bytes(6))), "invalid"),
    ("hours-uint64", _fulfil(R(b"\xcf" + (5).to_bytes(8, "big"))), "ok"),
    ("hours-bool", _fulfil(True), "invalid"),
    ("body-array-for-struct", ti.make(body=["t", "food"]), "invalid"),
    ("body-key-bin", ti.make(body=R(b"\x83\xc4\x05title\xa1t" + PAIRS[7:] + b"\xa1x\x01")), "invalid"),
    ("body-key-nil", ti.make(body=R(b"\x83" + PAIRS + b"\xc0\x01")), "invalid"),
    ("fieldless-body-int-key", ti.make({7: "claim.accept", 8: [ti.ID0]}, {1: 2}), "invalid"),
    ("fieldless-body-bad-utf8-key", ti.make({7: "claim.accept", 8: [ti.ID0]}, R(b"\x81\xa2\xc3\x28\x01")), "ok"),
    ("dup-key-bad-last", ti.make(body=R(b"\x83\xa5title\xa1t" + PAIRS[7:] + b"\xa8category\xa4Food")), "invalid"),
    ("dup-key-nil-earlier", ti.make(body=R(b"\x83\xa5title\xc0" + PAIRS)), "invalid"),
    ("title-surrogate", ti._kind("request.open", title=R(b"\xa3\xed\xa0\x80"), category="food"), "invalid"),
    ("title-201-astral", ti._kind("request.open", title="\U0001f600" * 201, category="food"), "invalid"),
    ("date-arabic-digits", ti._kind("request.open", title="t", category="food", needed_by="٢٠٢٥-06-20"), "invalid"),
    ("key-bin32", ti._kind("roster.add", key=R(b"\xc6\x00\x00\x00\x20" + bytes(32))), "ok"),
    ("unknown-timestamp-ext", ti._kind("request.open", title="t", category="food", x=R(b"\xd6\xff" + bytes(4))), "ok"),
    ("nesting-100-maps", ti.make(body=R(b"\x83" + PAIRS + b"\xa1x" + b"\x81\xa1k" * 98 + b"\xc0")), "ok"),
    ("nesting-60000", ti.make(body=R(b"\x83" + PAIRS + b"\xa1x" + b"\x91" * 60000 + b"\xc0")), "invalid"),
    ("array32-huge-count", ti.make(body=R(b"\x83" + PAIRS + b"\xa1x\xdd\xff\xff\xff\xff")), "invalid"),
]  # fmt: skip


def test_adversarial_corners_agree_with_spec_and_independent() -> None:
    wrong = [
        (name, expected, _podlink(wire), _independent(wire))
        for name, wire, expected in CORNERS
        if not expected == _podlink(wire) == _independent(wire)
    ]
    assert not wrong


_BODIES = [
    (kind, kinds.encode_body(body))
    for kind, (body, _lane) in SAMPLES.items()
]
_TOKENS = [0x80, 0x90, 0xA0, 0xC0, 0xC1, 0xC4, 0xC6, 0xC7, 0xCA, 0xCB, 0xCF, 0xD3, 0xD4,
           0xD9, 0xDD, 0xDF, 0xED, 0xFF]  # fmt: skip


@settings(max_examples=200, deadline=None)
@given(
    which=st.integers(0, len(_BODIES) - 1),
    pos=st.integers(0, 10_000),
    byte=st.sampled_from(_TOKENS) | st.integers(0, 255),
    insert=st.booleans(),
)
def test_mutated_bodies_agree_and_raise_only_protocol_error(
    which: int, pos: int, byte: int, insert: bool
) -> None:
    kind, body = _BODIES[which]
    i = pos % (len(body) + 1)
    data = body[:i] + bytes([byte]) + body[i + (0 if insert else 1) :]
    try:
        kinds.decode_body(kind, data)
        podlink = "ok"
    except ProtocolError as err:  # anything else fails the test
        podlink = err.reason
    try:
        ind.SCHEMAS[ind.KINDS[kind][0]].decode(data)
        independent = "ok"
    except ind.Refused as err:
        independent = err.reason
    assert podlink == independent, data.hex()
