"""Fork evidence: two signed headers by one key that cannot both be honest.

A piece of evidence is the msgpack array ``[kept: bin, kept_sig: bin 64, other: bin,
other_sig: bin 64]``: two event headers (the ``payload`` bytes of their wire forms, as
received, never re-encoded) and their signatures, without bodies. It proves that the
author equivocated when both signatures verify under the headers' one ``author``, the ids
differ, both headers are in one feed (author, lane), and either

* (a) both are at the same ``seq``: two events at one feed position; or
* (b) one is at ``seq`` and the other at ``seq + 1`` with a ``prev`` that is not the id
  of the first: the author signed another event at ``seq`` than that one (the case a
  node records when an event continues its feed head on another history).

Anyone holding the two headers can check this with the author's public key alone; a node
that holds neither event learns from it that the key signed two histories. The feed
position it is filed at is the common ``seq`` (a), or the later one (b).

docs/protocol.md (Equivocation, ``GET /v1/peer/forks``) is the normative description.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import msgspec

from podlink.protocol.envelope import MAX_HEADER, Event, Lane, decode_header
from podlink.protocol.errors import ProtocolError
from podlink.protocol.keys import SIG_LEN
from podlink.protocol.text import b64e

Sig64 = Annotated[bytes, msgspec.Meta(min_length=SIG_LEN, max_length=SIG_LEN)]
Payload = Annotated[bytes, msgspec.Meta(max_length=MAX_HEADER)]
# The widest legal encoding of one piece: two headers and two signatures, each a bin 32
# at most (5 bytes of prefix), in an array 32 (5 bytes).
MAX_EVIDENCE = 2 * (MAX_HEADER + SIG_LEN) + 5 + 4 * 5


class Evidence(msgspec.Struct, array_like=True, frozen=True, forbid_unknown_fields=True):
    """One piece of fork evidence as sent (see the module's docstring)."""

    kept: Payload
    kept_sig: Sig64
    other: Payload
    other_sig: Sig64


@dataclass(frozen=True)
class Fork:
    """Evidence that checked out: its feed position and the two headers, in filing order
    (for shape (b) the earlier one first, whatever order they came in)."""

    author: bytes
    lane: Lane
    seq: int
    kept: Event
    other: Event

    def evidence(self) -> Evidence:
        return Evidence(self.kept.payload, self.kept.sig, self.other.payload, self.other.sig)


_decoder = msgspec.msgpack.Decoder(Evidence)


def decode_evidence(data: bytes | memoryview) -> Evidence:
    """Decode one piece strictly (``too-large`` or ``invalid`` on any fault)."""
    if len(data) > MAX_EVIDENCE:
        raise ProtocolError("too-large", f"evidence is {len(data)} bytes, limit {MAX_EVIDENCE}")
    try:
        return _decoder.decode(data)
    except (msgspec.MsgspecError, UnicodeDecodeError, RecursionError) as err:
        text = "msgpack nested too deeply" if isinstance(err, RecursionError) else str(err)
        raise ProtocolError("invalid", f"malformed evidence: {text}") from None


def _header_event(payload: bytes, sig: bytes) -> Event:
    """The signed header as an event without its body (decoded strictly, not verified)."""
    return Event(decode_header(payload), payload, sig, None)


def check_evidence(piece: Evidence) -> Fork:
    """Check one piece on its own; raises ProtocolError: ``too-large`` or ``invalid``
    (headers that do not decode, or do not make a fork), ``forged`` (a signature that does
    not verify under the author). The signatures are checked last: junk costs no Ed25519."""
    fork = parse_evidence(piece)
    verify_fork(fork)
    return fork


def verify_fork(fork: Fork) -> None:
    """Both signatures, under the headers' author (``forged`` if one does not verify)."""
    fork.kept.verify_signature()
    fork.other.verify_signature()


def parse_evidence(piece: Evidence) -> Fork:
    """``check_evidence`` without the signatures: the shape of a fork, or ProtocolError.
    For a receiver that looks at the feed position before paying for two Ed25519 checks;
    the result proves nothing until ``verify_fork`` passes."""
    kept = _header_event(piece.kept, piece.kept_sig)
    other = _header_event(piece.other, piece.other_sig)
    a, b = kept.header, other.header
    if kept.id == other.id:
        raise ProtocolError("invalid", "evidence: the same event twice is no fork")
    if a.author != b.author:
        raise ProtocolError("invalid", "evidence: the two headers have different authors")
    if a.lane != b.lane:
        raise ProtocolError("invalid", "evidence: the two headers are in different lanes")
    if a.seq == b.seq:
        seq = a.seq
    elif abs(a.seq - b.seq) == 1:
        if a.seq > b.seq:  # filed earlier one first, as a node records it
            kept, other, a, b = other, kept, b, a
        if b.prev == kept.id:
            raise ProtocolError(
                "invalid", f"evidence: seq {b.seq} follows the header at seq {a.seq}: no fork")
        seq = b.seq
    else:
        raise ProtocolError(
            "invalid", f"evidence: seq {a.seq} and seq {b.seq} are not one feed position "
            "nor a header and the one after it")  # fmt: skip
    return Fork(a.author, a.lane, seq, kept, other)


def describe(fork: Fork) -> str:
    """A short line for logs."""
    return (f"{b64e(fork.author)[:8]} signed two histories at {fork.lane} seq {fork.seq} "
            f"({fork.kept.id_text[:8]}, {fork.other.id_text[:8]})")  # fmt: skip
