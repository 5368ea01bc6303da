"""Event kinds: lanes, refs and body fields, as check_kind enforces them."""

from __future__ import annotations

import msgspec
import pytest

from podlink.protocol.envelope import LANES, Event, sign_event
from podlink.protocol.errors import ProtocolError
from podlink.protocol.kinds import (
    CONTACT_METHODS,
    KINDS,
    ClaimAccepted,
    OfferOpened,
    RequestOpened,
    RequestUpdated,
    check_kind,
    decode_body,
    decode_contact_handoff,
    decode_member_details,
    encode_body,
)
from tests.protocol.samples import NOW_TS, ORGANIZER, POD, SAMPLES, ref_ids


def event_of(kind: str, body: bytes, *, lane: str | None = None, refs: int | None = None) -> Event:
    return sign_event(
        ORGANIZER, pod=POD.public, lane=lane or SAMPLES[kind][1], seq=1, prev=None, ts=NOW_TS,
        kind=kind, body=body, refs=ref_ids(KINDS[kind].REFS if refs is None else refs),
    )  # type: ignore[arg-type]  # fmt: skip


def refused(event: Event) -> str:
    with pytest.raises(ProtocolError) as info:
        check_kind(event)
    assert info.value.reason == "invalid"
    return str(info.value)


LANE_CASES = [(kind, lane) for kind, cls in sorted(KINDS.items()) for lane in LANES
              if lane not in cls.LANES]  # fmt: skip


def test_lane_rules() -> None:
    assert {k for k, c in KINDS.items() if {"pod"} == c.LANES} == {
        "member.join", "member.update", "member.forget",
    }  # fmt: skip
    assert {k for k, c in KINDS.items() if {"network"} == c.LANES} == {
        "pod.genesis", "pod.info", "roster.add", "roster.remove",
    }  # fmt: skip
    assert {"peers", "network"} == KINDS["sealed"].LANES


@pytest.mark.parametrize(("kind", "lane"), LANE_CASES)
def test_kind_refused_outside_its_lanes(kind: str, lane: str) -> None:
    body = encode_body(SAMPLES[kind][0])
    assert f"may not travel in the {lane} lane" in refused(event_of(kind, body, lane=lane))
    # Even with its body dropped: the lane is in the signed header.
    with pytest.raises(ProtocolError):
        check_kind(event_of(kind, body, lane=lane).without_body())


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_kind_allowed_in_its_lanes(kind: str) -> None:
    body = encode_body(SAMPLES[kind][0])
    for lane in KINDS[kind].LANES:
        assert check_kind(event_of(kind, body, lane=lane)) == SAMPLES[kind][0]


@pytest.mark.parametrize("kind", sorted(k for k, c in KINDS.items() if c.REFS))
def test_refs_required(kind: str) -> None:
    body = encode_body(SAMPLES[kind][0])
    assert "must reference 1 event" in refused(event_of(kind, body, refs=0))
    assert check_kind(event_of(kind, body, refs=3)) == SAMPLES[kind][0]  # more is allowed


def test_refs_required_counts() -> None:
    needing = {k for k, c in KINDS.items() if c.REFS == 1}
    assert needing == {
        "member.update", "member.forget", "request.update", "request.cancel",
        "request.fulfil", "offer.withdraw", "claim.make", "claim.accept", "claim.decline",
        "resource.withdraw",
    }  # fmt: skip
    assert all(c.REFS in (0, 1) for c in KINDS.values())


def test_unknown_kind_is_passed_through_in_any_lane() -> None:
    for lane in LANES:
        event = sign_event(
            ORGANIZER, pod=POD.public, lane=lane, seq=1, prev=None, ts=NOW_TS,
            kind="garden.plot", body=b"\xc1 not even msgpack",
        )  # fmt: skip
        assert check_kind(event) is None
    assert decode_body("garden.plot", b"anything") is None


def test_defaults_are_omitted_and_unknown_fields_ignored() -> None:
    assert encode_body(ClaimAccepted()) == b"\x80"
    body = RequestOpened(title="Soup", category="food")
    assert msgspec.msgpack.decode(encode_body(body)) == {"title": "Soup", "category": "food"}
    newer = msgspec.msgpack.encode({"title": "Soup", "category": "food", "spice": [1, 2]})
    assert decode_body("request.open", newer) == body
    update = msgspec.msgpack.decode(encode_body(RequestUpdated(urgency="low")))
    assert update == {"urgency": "low"}


@pytest.mark.parametrize(
    ("kind", "fields"),
    [
        ("request.open", {"category": "food"}),  # title missing
        ("request.open", {"title": "", "category": "food"}),
        ("request.open", {"title": "x" * 201, "category": "food"}),
        ("request.open", {"title": "Soup", "category": "Food"}),
        ("request.open", {"title": "Soup", "category": "food\n"}),
        ("request.open", {"title": "Soup", "category": "a" * 33}),
        ("request.open", {"title": "Soup", "category": "food", "urgency": "asap"}),
        ("request.open", {"title": "Soup", "category": "food", "needed_by": "20/06/2025"}),
        ("request.open", {"title": "Soup", "category": "food", "needed_by": "2025-06-20\n"}),
        ("request.open", {"title": "Soup", "category": "food", "needed_by": "٢٠٢٥-06-20"}),
        ("request.open", {"title": "Soup", "category": "food", "details": "x" * 4001}),
        ("request.open", {"title": "Soup", "category": "food", "for_member": b"short"}),
        ("request.fulfil", {"hours": -1}),
        ("request.fulfil", {"hours": 1000.5}),
        ("request.fulfil", {"hours": float("nan")}),
        ("offer.open", {"title": "Rides", "category": "transport", "capacity": 0}),
        ("offer.open", {"title": "Rides", "category": "transport", "capacity": 10_001}),
        ("pod.genesis", {"name": "Elm", "categories": ["food"] * 33}),
        ("roster.add", {"key": b"x" * 31}),
        ("member.join", {"box": b"x" * 39}),
        ("member.join", {"box": b"x" * (60 * 1024 + 1)}),
        ("sealed", {"to": b"x" * 32, "box": "not bytes"}),
    ],
)
def test_body_field_limits(kind: str, fields: dict[str, object]) -> None:
    with pytest.raises(ProtocolError) as info:
        decode_body(kind, msgspec.msgpack.encode(fields))
    assert info.value.reason == "invalid" and kind in str(info.value)


@pytest.mark.parametrize("data", [b"\x90", b"\xa3abc", b"\xc1", b"", b"\x81\xa5title\xa2\xff\xfe"])
def test_body_that_is_not_a_map_is_invalid(data: bytes) -> None:
    with pytest.raises(ProtocolError) as info:
        decode_body("request.open", data)
    assert info.value.reason == "invalid"
    with pytest.raises(ProtocolError):
        check_kind(event_of("request.open", data))


def test_limits_accept_their_edges() -> None:
    edge = {"title": "x" * 200, "category": "a" * 32, "details": "é" * 4000,
            "needed_by": "2025-06-20", "urgency": "urgent"}  # fmt: skip
    assert isinstance(decode_body("request.open", msgspec.msgpack.encode(edge)), RequestOpened)
    offer = {"title": "Rides", "category": "transport", "capacity": 10_000}
    assert isinstance(decode_body("offer.open", msgspec.msgpack.encode(offer)), OfferOpened)
    assert decode_body("request.fulfil", msgspec.msgpack.encode({"hours": 2})).hours == 2.0


def test_inner_payloads_refuse_garbage() -> None:
    for decode in (decode_member_details, decode_contact_handoff):
        with pytest.raises(ProtocolError) as info:
            decode(b"\x80")  # name is required
        assert info.value.reason == "invalid"
        with pytest.raises(ProtocolError):
            decode(b"\x81\xa4name\xa2\xff\xfe")  # not UTF-8


# -- boxes, enumerations, unknown fields, nesting -------------------------------------------


def test_sealed_box_is_at_least_48_bytes_member_box_40() -> None:
    for size, expected in [(39, False), (40, False), (47, False), (48, True), (61440, True),
                           (61441, False)]:  # fmt: skip
        data = msgspec.msgpack.encode({"to": POD.public, "box": bytes(size)})
        if expected:
            assert decode_body("sealed", data) is not None
        else:
            with pytest.raises(ProtocolError) as info:
                decode_body("sealed", data)
            assert info.value.reason == "invalid", size
    assert decode_body("member.join", msgspec.msgpack.encode({"box": bytes(40)})) is not None


@pytest.mark.parametrize(
    "fields",
    [{"name": "Bea", "prefers": "carrier pigeon"}, {"name": "Bea", "prefers": "Phone"},
     {"name": "Bea", "role": "admin"}, {"name": "Bea", "role": None}],
)  # fmt: skip
def test_member_details_prefers_and_role_are_enumerations(fields: dict[str, object]) -> None:
    with pytest.raises(ProtocolError) as info:
        decode_member_details(msgspec.msgpack.encode(fields))
    assert info.value.reason == "invalid"


def test_member_details_enumerations_accept_their_values() -> None:
    for method in CONTACT_METHODS:
        details = msgspec.msgpack.encode({"name": "Bea", "prefers": method, "role": "co-organizer"})
        assert decode_member_details(details).prefers == method
    assert decode_member_details(msgspec.msgpack.encode({"name": "Bea", "prefers": None}))


PAIRS = b"\xa5title\xa4Soup\xa8category\xa4food"


@pytest.mark.parametrize(
    "extra",
    [b"\xa1x\xd4\x01\x00", b"\xa1x\xd6\xff\x00\x00\x00\x00", b"\xa1x\x81\x01\x02",
     b"\xa1x\xa2\xc3\x28", b"\xa2\xc3\x28\x01", b"\xa1x" + b"\x91" * 100 + b"\xc0"],
    ids=["ext", "timestamp", "int-keyed-map", "bad-utf8-value", "bad-utf8-key", "depth-100"],
)
def test_unknown_fields_are_skipped_not_checked(extra: bytes) -> None:
    assert decode_body("request.open", b"\x83" + PAIRS + extra) == RequestOpened(
        title="Soup", category="food"
    )


@pytest.mark.parametrize(
    "extra",
    [b"\x01\xa1x", b"\xc4\x01x\x01", b"\xa1x\xc1", b"\xa1x\x91",
     b"\xa1x" + b"\x91" * 5000 + b"\xc0"],
    ids=["int-key", "bin-key", "0xc1", "truncated", "depth-5000"],
)
def test_unknown_fields_must_be_well_formed(extra: bytes) -> None:
    with pytest.raises(ProtocolError) as info:
        decode_body("request.open", b"\x83" + PAIRS + extra)
    assert info.value.reason == "invalid"


def test_deep_nesting_in_box_contents_is_invalid_never_a_crash() -> None:
    deep = b"\x82\xa4name\xa3Bea\xa1x" + b"\x91" * 5000 + b"\xc0"
    for decode in (decode_member_details, decode_contact_handoff):
        with pytest.raises(ProtocolError) as info:
            decode(deep)
        assert info.value.reason == "invalid"


def test_a_repeated_field_keeps_the_last_value_once_every_value_is_valid() -> None:
    twice = b"\x83\xa5title\xa1a\xa5title\xa1b\xa8category\xa4food"
    assert decode_body("request.open", twice) == RequestOpened(title="b", category="food")
    bad_first = b"\x83\xa5title\x01\xa5title\xa1b\xa8category\xa4food"
    with pytest.raises(ProtocolError):
        decode_body("request.open", bad_first)
