"""The event envelope: wire form, ids, signatures, bodies, limits and the time rule."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from podlink.protocol import boxes, clock
from podlink.protocol.envelope import (
    MAX_BODY,
    MAX_EVENT,
    MAX_HEADER,
    MAX_KIND_LEN,
    MAX_REFS,
    PROTOCOL_VERSION,
    SIGN_PREFIX,
    Event,
    blake2b256,
    decode_event,
    decode_event_list,
    decode_header,
    encode_wire,
    sign_event,
    verify_event,
)
from podlink.protocol.errors import REASONS, ProtocolError
from podlink.protocol.keys import verify_signature
from podlink.protocol.kinds import (
    KINDS,
    MemberJoined,
    MemberUpdated,
    SealedMessage,
    check_kind,
    decode_contact_handoff,
    decode_member_details,
)
from tests.protocol.samples import (
    DETAILS,
    HANDOFF,
    MEMBER_KEY,
    NOW_MS,
    NOW_TS,
    ORGANIZER,
    OTHER_POD,
    POD,
    SAMPLES,
    STRANGER,
    ref_ids,
    sample_event,
)

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
EVENTS = {kind: sample_event(kind) for kind in KINDS}
ALL_EVENTS = list(EVENTS.values())


def receive(wire: bytes) -> Event:
    """What a node does with bytes from a peer, up to the kind check."""
    event = decode_event(wire)
    verify_event(event, now_ms=NOW_MS)
    check_kind(event)
    return event


def reason(wire: bytes) -> str:
    with pytest.raises(ProtocolError) as info:
        receive(wire)
    assert info.value.reason in REASONS
    return info.value.reason


def signed(**overrides: object) -> Event:
    fields: dict[str, object] = {
        "pod": POD.public, "lane": "network", "seq": 1, "prev": None, "ts": NOW_TS,
        "kind": "request.cancel", "body": b"\x80", "refs": ref_ids(1),
    }  # fmt: skip
    fields.update(overrides)
    return sign_event(ORGANIZER, **fields)  # type: ignore[arg-type]


def raw_header(event: Event) -> list[object]:
    return msgspec.msgpack.decode(event.payload)


def resign(header: list[object], body: bytes | None = b"\x80") -> bytes:
    """Encode and sign an arbitrary header array (bypassing sign_event's checks)."""
    payload = msgspec.msgpack.encode(header)
    return encode_wire(payload, ORGANIZER.sign(SIGN_PREFIX + payload), body)


# -- round trip ----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_round_trip_every_kind(kind: str) -> None:
    event = EVENTS[kind]
    received = receive(event.to_wire())
    assert received.payload == event.payload
    assert received.id == event.id == blake2b256(event.payload)
    assert received.header == event.header
    assert received.body == event.body
    assert check_kind(received) == SAMPLES[kind][0]
    assert len(received.header.refs) == KINDS[kind].REFS


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_round_trip_second_event_of_a_feed(kind: str) -> None:
    event = sample_event(kind, seq=2)
    assert receive(event.to_wire()).header.prev == blake2b256(b"previous")


def test_member_details_open_from_the_body() -> None:
    for kind in ("member.join", "member.update"):
        body = check_kind(receive(EVENTS[kind].to_wire()))
        assert isinstance(body, MemberJoined | MemberUpdated)
        assert decode_member_details(boxes.unlock(MEMBER_KEY, body.box)) == DETAILS


def test_sealed_body_opens_for_its_recipient_only() -> None:
    body = check_kind(receive(EVENTS["sealed"].to_wire()))
    assert isinstance(body, SealedMessage) and body.to == OTHER_POD.public
    assert decode_contact_handoff(boxes.open_sealed(OTHER_POD, body.box)) == HANDOFF
    with pytest.raises(ProtocolError) as info:
        boxes.open_sealed(POD, body.box)
    assert info.value.reason == "forged"


def test_header_layout() -> None:
    event = EVENTS["claim.make"]
    v, pod, author, lane, seq, prev, ts, kind, refs, size, digest = raw_header(event)
    assert (v, pod, author, lane, seq, prev, ts, kind) == (
        PROTOCOL_VERSION, POD.public, ORGANIZER.public, "peers", 1, None, NOW_TS, "claim.make"
    )
    assert refs == ref_ids(1)
    assert size == len(event.body) and digest == blake2b256(event.body)
    assert msgspec.msgpack.decode(event.to_wire()) == [event.payload, event.sig, event.body]


def test_signature_covers_prefix_and_payload() -> None:
    event = EVENTS["request.open"]
    assert event.signing_input() == b"podlink/event/v1\x00" + event.payload
    assert verify_signature(ORGANIZER.public, SIGN_PREFIX + event.payload, event.sig)
    assert not verify_signature(ORGANIZER.public, event.payload, event.sig)


def test_wire_with_two_elements_means_no_body() -> None:
    event = EVENTS["request.open"]
    received = receive(msgspec.msgpack.encode([event.payload, event.sig]))
    assert received.body is None


def test_decode_event_list_keeps_each_events_bytes() -> None:
    wires = [e.to_wire() for e in ALL_EVENTS[:3]]
    data = b"\x93" + b"".join(wires)
    assert decode_event_list(data) == wires
    with pytest.raises(ProtocolError):
        decode_event_list(b"\x93\x01")


# -- tampering -----------------------------------------------------------------------------


@FAST
@given(st.sampled_from(ALL_EVENTS), st.data())
def test_flipping_any_header_byte_is_refused(event: Event, data: st.DataObject) -> None:
    index = data.draw(st.integers(0, len(event.payload) - 1), label="index")
    mask = data.draw(st.integers(1, 255), label="xor")
    payload = bytearray(event.payload)
    payload[index] ^= mask
    with pytest.raises(ProtocolError):
        receive(encode_wire(bytes(payload), event.sig, event.body))


@FAST
@given(st.sampled_from(ALL_EVENTS), st.data())
def test_flipping_any_signature_byte_is_forged(event: Event, data: st.DataObject) -> None:
    index = data.draw(st.integers(0, 63), label="index")
    sig = bytearray(event.sig)
    sig[index] ^= data.draw(st.integers(1, 255), label="xor")
    assert reason(encode_wire(event.payload, bytes(sig), event.body)) == "forged"


@FAST
@given(st.sampled_from(ALL_EVENTS), st.binary(max_size=300))
def test_a_changed_body_no_longer_matches(event: Event, other: bytes) -> None:
    assume(other != event.body)
    changed = Event(event.header, event.payload, event.sig, other)
    assert not changed.body_matches()
    assert reason(changed.to_wire()) == "invalid"
    # The ladder: the header is kept with its body dropped, and that still verifies.
    verify_event(changed.without_body(), now_ms=NOW_MS)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_dropped_body_leaves_the_event_verifiable(kind: str) -> None:
    dropped = EVENTS[kind].without_body()
    received = receive(dropped.to_wire())
    assert received.body is None and received.id == EVENTS[kind].id
    assert not received.body_matches()
    assert check_kind(received) is None


def test_signed_by_another_key_than_the_author_is_forged() -> None:
    event = EVENTS["request.open"]
    assert reason(encode_wire(event.payload, STRANGER.sign(event.signing_input()), None)) == (
        "forged"
    )


# -- arbitrary input ------------------------------------------------------------------------

msgpack_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats()
    | st.text(max_size=20) | st.binary(max_size=40),
    lambda inner: st.lists(inner, max_size=12) | st.dictionaries(st.text(max_size=8), inner,
                                                                 max_size=4),
    max_leaves=30,
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_decode_event_on_arbitrary_bytes_raises_only_protocol_error(data: bytes) -> None:
    try:
        event = decode_event(data)
    except ProtocolError as err:
        assert err.reason in REASONS
        return
    with pytest.raises(ProtocolError):  # nothing random carries a valid signature
        verify_event(event, now_ms=NOW_MS)


@settings(max_examples=300, deadline=None)
@given(msgpack_values, st.sampled_from(ALL_EVENTS), st.integers(0, 10))
def test_decode_event_on_arbitrary_msgpack_raises_only_protocol_error(
    value: object, event: Event, position: int
) -> None:
    # Put random values into a real header and wire array, where the decoder looks deepest.
    header = raw_header(event)
    header[position] = value
    for wire in (resign(header), msgspec.msgpack.encode(value),
                 msgspec.msgpack.encode([msgspec.msgpack.encode(header), event.sig, value])):
        try:
            receive(wire)
        except ProtocolError as err:
            assert err.reason in REASONS


@pytest.mark.parametrize("position", [3, 7])  # lane, kind
def test_invalid_utf8_in_a_header_string_is_invalid(position: int) -> None:
    event = EVENTS["request.open"]
    text = raw_header(event)[position].encode()
    bad = bytes([0xA0 + len(text)]) + text[:-1] + b"\xff"
    payload = event.payload.replace(bytes([0xA0 + len(text)]) + text, bad, 1)
    assert payload != event.payload
    with pytest.raises(ProtocolError) as info:
        decode_header(payload)
    assert info.value.reason == "invalid"


# -- limits and structure -----------------------------------------------------------------


def test_oversize_body_is_too_large() -> None:
    with pytest.raises(ProtocolError) as info:
        signed(body=bytes(MAX_BODY + 1))
    assert info.value.reason == "too-large"
    header = raw_header(signed())
    big = bytes(MAX_BODY + 1)
    header[9], header[10] = len(big), blake2b256(big)
    assert reason(resign(header, big)) == "too-large"


def test_body_of_exactly_max_body_is_accepted() -> None:
    event = signed(kind="x.blob", body=bytes(MAX_BODY))
    assert receive(event.to_wire()).body == bytes(MAX_BODY)


def test_oversize_header_and_event_are_too_large() -> None:
    event = EVENTS["request.open"]
    with pytest.raises(ProtocolError) as info:
        decode_header(bytes(MAX_HEADER + 1))
    assert info.value.reason == "too-large"
    long_payload = msgspec.msgpack.encode([*raw_header(event)[:-1], bytes(MAX_HEADER)])
    assert reason(encode_wire(long_payload, event.sig, None)) == "too-large"
    assert reason(bytes(MAX_EVENT + 1)) == "too-large"


def test_refs_limit() -> None:
    assert receive(signed(refs=ref_ids(MAX_REFS)).to_wire()).header.refs == ref_ids(MAX_REFS)
    with pytest.raises(ProtocolError) as info:
        signed(refs=ref_ids(MAX_REFS + 1))
    assert info.value.reason == "too-large"
    header = raw_header(signed())
    header[8] = ref_ids(MAX_REFS + 1)
    assert reason(resign(header)) == "too-large"


def test_kind_name_limits() -> None:
    receive(signed(kind="a" * MAX_KIND_LEN, refs=[]).to_wire())
    for kind, expected in [("a" * (MAX_KIND_LEN + 1), "too-large"), ("", "invalid"),
                           ("Request.open", "invalid"), ("1kind", "invalid"),
                           ("request open", "invalid"), ("request.open\n", "invalid")]:
        header = raw_header(signed())
        header[7] = kind
        assert reason(resign(header)) == expected, kind


def test_unsupported_version_is_invalid() -> None:
    for v in (0, 2, 255, 256, -1):
        header = raw_header(signed())
        header[0] = v
        assert reason(resign(header)) == "invalid", v


def test_header_must_have_exactly_eleven_elements() -> None:
    header = raw_header(signed())
    assert reason(resign([*header, 0])) == "invalid"
    assert reason(resign(header[:10])) == "invalid"


def test_wire_must_have_two_or_three_elements() -> None:
    event = EVENTS["request.open"]
    assert reason(msgspec.msgpack.encode([event.payload, event.sig, None, None])) == "invalid"
    assert reason(msgspec.msgpack.encode([event.payload])) == "invalid"
    assert reason(msgspec.msgpack.encode({"payload": event.payload})) == "invalid"


def test_trailing_bytes_are_invalid() -> None:
    wire = EVENTS["request.open"].to_wire()
    assert reason(wire + b"\x00") == "invalid"
    assert reason(wire[:-1]) == "invalid"


@pytest.mark.parametrize(
    ("position", "value"),
    [(1, bytes(31)), (2, bytes(33)), (3, "everyone"), (4, 0), (4, 2**53 + 1), (5, bytes(32)),
     (6, -1), (6, 2**63), (9, MAX_BODY + 1), (10, bytes(31)), (8, [bytes(31)]), (1, "pod")],
)  # fmt: skip
def test_header_field_constraints(position: int, value: object) -> None:
    header = raw_header(signed(refs=[]))
    header[position] = value
    assert reason(resign(header)) in {"invalid", "too-large"}


def test_prev_is_nil_exactly_when_seq_is_one() -> None:
    first = raw_header(signed(refs=[]))
    first[5] = blake2b256(b"x")
    assert reason(resign(first)) == "invalid"
    second = raw_header(signed(refs=[], seq=2, prev=blake2b256(b"x")))
    second[5] = None
    assert reason(resign(second)) == "invalid"


def test_non_minimal_encodings_are_accepted_and_hashed_as_received() -> None:
    event = signed()
    # Same header, with v and seq as uint 64 instead of positive fixints.
    payload = bytearray(event.payload)
    assert payload[:2] == b"\x9b\x01"
    wide = b"\x9b\xcf" + (1).to_bytes(8, "big") + bytes(payload[2:])
    wire = encode_wire(wide, ORGANIZER.sign(SIGN_PREFIX + wide), event.body)
    received = receive(wire)
    assert received.header == event.header
    assert received.id == blake2b256(wide) != event.id


# -- the time rule -------------------------------------------------------------------------


def test_too_far_ahead() -> None:
    limit = NOW_MS + clock.FUTURE_LIMIT_MS
    verify_event(signed(ts=clock.pack(limit, 65535)), now_ms=NOW_MS)
    with pytest.raises(ProtocolError) as info:
        verify_event(signed(ts=clock.pack(limit + 1)), now_ms=NOW_MS)
    assert info.value.reason == "too-far-ahead"
    verify_event(signed(ts=clock.pack(limit + 1)), now_ms=NOW_MS + 1)
    verify_event(signed(ts=0), now_ms=NOW_MS)  # the past is never refused here



# -- length faults: too-large only for a str, bin or array over its maximum length -----------


def test_max_event_allows_the_widest_framing_of_maximal_parts() -> None:
    def bin32(raw: bytes) -> bytes:
        return b"\xc6" + len(raw).to_bytes(4, "big") + raw

    # array 32 + three bin 32: 20 bytes of framing around parts at their limits.
    widest = b"\xdd\x00\x00\x00\x03" + bin32(bytes(MAX_HEADER)) + bin32(bytes(64)) + bin32(
        bytes(MAX_BODY)
    )
    assert len(widest) == MAX_EVENT == MAX_HEADER + 64 + MAX_BODY + 20
    assert reason(widest) == "invalid"  # not too-large: the zero payload is no header
    assert reason(widest + b"\xc0") == "too-large"  # one byte over MAX_EVENT
    event = signed()  # a real event in the widest framing is accepted
    wide = b"\xdd\x00\x00\x00\x03" + bin32(event.payload) + bin32(event.sig) + bin32(event.body)
    assert receive(wide).id == event.id


@pytest.mark.parametrize(
    ("position", "value", "expected"),
    [(1, bytes(33), "too-large"), (1, bytes(31), "invalid"), (2, bytes(64), "too-large"),
     (8, [bytes(33)], "too-large"), (8, [bytes(32)] * (MAX_REFS + 1), "too-large"),
     (7, "a" * (MAX_KIND_LEN + 1), "too-large"), (7, "A" * (MAX_KIND_LEN + 1), "too-large"),
     (9, MAX_BODY + 1, "invalid"), (0, 256, "invalid"), (3, "length <= 1", "invalid"),
     (3, "Expected `str` of length <= 2", "invalid"), (3, "p" * 300, "invalid")],
)  # fmt: skip
def test_header_length_faults(position: int, value: object, expected: str) -> None:
    header = raw_header(signed(refs=[]))
    header[position] = value
    assert reason(resign(header)) == expected


def test_a_received_string_never_makes_an_error_too_large() -> None:
    # msgspec quotes an unknown enum value in its message; a lane spelled like the message
    # of a length fault used to be classified too-large.
    header = raw_header(signed(refs=[]))
    header[3] = "Expected `bytes` of length <= 32 - at `$[1]`"
    with pytest.raises(ProtocolError) as info:
        decode_header(msgspec.msgpack.encode(header))
    assert info.value.reason == "invalid"


def test_signature_length_faults() -> None:
    event = signed()
    assert reason(encode_wire(event.payload, event.sig + b"\x00", event.body)) == "too-large"
    assert reason(encode_wire(event.payload, event.sig[:63], event.body)) == "invalid"
    assert reason(msgspec.msgpack.encode([event.payload, "x" * 64, event.body])) == "invalid"


def test_deep_nesting_is_invalid_never_a_crash() -> None:
    deep = b"\x91" + b"\x91" * 5000 + b"\xc0"
    with pytest.raises(ProtocolError) as info:
        decode_event_list(deep)
    assert info.value.reason == "invalid"
    for data in (deep, msgspec.msgpack.encode([b"x", bytes(64)])[:-1] + deep):
        with pytest.raises(ProtocolError) as info:
            decode_event(data)
        assert info.value.reason == "invalid"
