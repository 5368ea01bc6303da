"""The event kinds of mutual aid, one msgspec Struct per body.

The kind name lives in the signed header; a body is a msgpack map decoded by kind only when
a node needs it, so kinds this node does not know yet are still stored and forwarded.
Structs ignore unknown fields (newer writers may add fields with defaults, see
docs/protocol.md "Versioning"); ids of events a body answers go in the header's ``refs``.
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

import msgspec

from podlink.protocol.envelope import ID_LEN, KEY_LEN, Event, Lane
from podlink.protocol.errors import ProtocolError

# -- field types -------------------------------------------------------------------------

Key32 = Annotated[bytes, msgspec.Meta(min_length=KEY_LEN, max_length=KEY_LEN)]
Id32 = Annotated[bytes, msgspec.Meta(min_length=ID_LEN, max_length=ID_LEN)]
Title = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
Short = Annotated[str, msgspec.Meta(max_length=200)]
Text = Annotated[str, msgspec.Meta(max_length=4000)]
Category = Annotated[str, msgspec.Meta(pattern=r"^[a-z][a-z0-9-]{0,31}\Z")]
Categories = Annotated[list[Category], msgspec.Meta(max_length=32)]
MAX_BOX = 60 * 1024
# A member's SecretBox: 24-byte nonce, 16-byte MAC, then the ciphertext.
Box = Annotated[bytes, msgspec.Meta(min_length=24 + 16, max_length=MAX_BOX)]
# A sealed box: 32-byte ephemeral public key, 16-byte MAC, then the ciphertext.
SealedBox = Annotated[bytes, msgspec.Meta(min_length=32 + 16, max_length=MAX_BOX)]
Urgency = Literal["low", "normal", "high", "urgent"]
Date = Annotated[str, msgspec.Meta(pattern=r"^[0-9]{4}-[0-9]{2}-[0-9]{2}\Z")]
Hours = Annotated[float, msgspec.Meta(ge=0, le=1000)]

#: The common categories, named so that pods agree on spelling; the set stays open.
CATEGORIES: tuple[str, ...] = (
    "food", "water", "medicine", "transport", "childcare", "elder-care", "disabled-care",
    "housing", "utilities", "repairs", "translation", "companionship", "money", "tools",
    "skills", "other",
)  # fmt: skip
URGENCIES: tuple[str, ...] = ("low", "normal", "high", "urgent")
CONTACT_METHODS: tuple[str, ...] = ("phone", "text", "email", "door", "signal", "other")

ALL_LANES: frozenset[Lane] = frozenset({"pod", "peers", "network"})
POD_ONLY: frozenset[Lane] = frozenset({"pod"})
NETWORK_ONLY: frozenset[Lane] = frozenset({"network"})
BEYOND_POD: frozenset[Lane] = frozenset({"peers", "network"})


class Body(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, gc=False):
    """Base of every body. ``KIND`` is the header's kind; ``LANES`` where it may travel;
    ``REFS`` how many ids the header's refs must carry (the events it answers)."""

    KIND: ClassVar[str]
    LANES: ClassVar[frozenset[Lane]] = ALL_LANES
    REFS: ClassVar[int] = 0


# -- the pod and its roster ----------------------------------------------------------------


class PodFounded(Body, frozen=True, kw_only=True):
    """The first event of a pod, signed by the pod's node key."""

    KIND = "pod.genesis"
    LANES = NETWORK_ONLY
    name: Title
    zone: Short = ""
    description: Text = ""
    categories: Categories = []
    contact: Short = ""  # a public channel: a phone tree number, an e-mail, a meeting place


class PodInfoChanged(Body, frozen=True, kw_only=True):
    """New directory information for the pod (replaces the previous one)."""

    KIND = "pod.info"
    LANES = NETWORK_ONLY
    name: Title
    zone: Short = ""
    description: Text = ""
    categories: Categories = []
    contact: Short = ""


class OrganizerAdded(Body, frozen=True, kw_only=True):
    """A key may act for the pod from this event's timestamp on."""

    KIND = "roster.add"
    LANES = NETWORK_ONLY
    key: Key32
    name: Short = ""


class OrganizerRemoved(Body, frozen=True, kw_only=True):
    """A key stops acting for the pod (retired, lost or rotated away)."""

    KIND = "roster.remove"
    LANES = NETWORK_ONLY
    key: Key32
    reason: Short = ""


# -- members: personal data, pod lane only, encrypted ------------------------------------


class MemberDetails(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """What organizers keep about a member; only ever stored inside a member's SecretBox."""

    name: Title
    contact: Short = ""
    prefers: Literal["phone", "text", "email", "door", "signal", "other"] | None = None
    can: Categories = []
    needs: Categories = []
    role: Literal["participant", "co-organizer"] = "participant"
    languages: Annotated[list[Short], msgspec.Meta(max_length=16)] = []
    notes: Text = ""


class MemberJoined(Body, frozen=True, kw_only=True):
    """A member joins; ``box`` is their MemberDetails sealed with their own member key.
    The member's id is this event's id."""

    KIND = "member.join"
    LANES = POD_ONLY
    box: Box


class MemberUpdated(Body, frozen=True, kw_only=True):
    """New details for the member in refs[0] (replaces the previous ones)."""

    KIND = "member.update"
    LANES = POD_ONLY
    REFS = 1
    box: Box


class MemberForgotten(Body, frozen=True, kw_only=True):
    """Forget the member in refs[0]: their key and details are destroyed everywhere."""

    KIND = "member.forget"
    LANES = POD_ONLY
    REFS = 1


# -- requests (needs) ----------------------------------------------------------------------


class RequestOpened(Body, frozen=True, kw_only=True):
    """A need. Its id is this event's id; only its pod may change it."""

    KIND = "request.open"
    title: Title
    category: Category
    details: Text = ""
    urgency: Urgency = "normal"
    needed_by: Date | None = None
    area: Short = ""
    for_member: Id32 | None = None  # a member id; meaningful only inside the pod


class RequestUpdated(Body, frozen=True, kw_only=True):
    """New values for the fields given, on the request in refs[0]."""

    KIND = "request.update"
    REFS = 1
    title: Title | None = None
    category: Category | None = None
    details: Text | None = None
    urgency: Urgency | None = None
    needed_by: Date | None = None
    area: Short | None = None


class RequestCancelled(Body, frozen=True, kw_only=True):
    """The request in refs[0] is no longer needed."""

    KIND = "request.cancel"
    REFS = 1
    reason: Short = ""


class RequestFulfilled(Body, frozen=True, kw_only=True):
    """The request in refs[0] was met; optional time-bank hours."""

    KIND = "request.fulfil"
    REFS = 1
    note: Text = ""
    hours: Hours | None = None


# -- offers and claims ---------------------------------------------------------------------


class OfferOpened(Body, frozen=True, kw_only=True):
    """Something a member or the pod can give. Its id is this event's id."""

    KIND = "offer.open"
    title: Title
    category: Category
    details: Text = ""
    by_member: Id32 | None = None
    availability: Short = ""
    capacity: Annotated[int, msgspec.Meta(ge=1, le=10_000)] | None = None


class OfferWithdrawn(Body, frozen=True, kw_only=True):
    """The offer in refs[0] is withdrawn."""

    KIND = "offer.withdraw"
    REFS = 1
    reason: Short = ""


class ClaimMade(Body, frozen=True, kw_only=True):
    """An offer of help on the request in refs[0], by this pod or one of its members."""

    KIND = "claim.make"
    REFS = 1
    by_member: Id32 | None = None
    note: Text = ""


class ClaimAccepted(Body, frozen=True, kw_only=True):
    """The request's pod accepts the claim in refs[0]."""

    KIND = "claim.accept"
    REFS = 1


class ClaimDeclined(Body, frozen=True, kw_only=True):
    """The request's pod declines the claim in refs[0]."""

    KIND = "claim.decline"
    REFS = 1
    reason: Short = ""


# -- shared resources and sealed messages --------------------------------------------------


class ResourceShared(Body, frozen=True, kw_only=True):
    """An entry of the shared resource database (a food bank, a clinic, a tool library)."""

    KIND = "resource.share"
    name: Title
    category: Category
    what: Text = ""
    where: Short = ""
    when: Short = ""
    contact: Short = ""


class ResourceWithdrawn(Body, frozen=True, kw_only=True):
    """The entry in refs[0] is gone (the food bank closed, the clinic moved); only the pod
    that shared it withdraws it."""

    KIND = "resource.withdraw"
    REFS = 1
    reason: Short = ""


class SealedMessage(Body, frozen=True, kw_only=True):
    """A body only the pod ``to`` can read (NaCl sealed box to its key), e.g. a contact
    handoff once cross-pod help is accepted. Everyone else carries it and checks the header."""

    KIND = "sealed"
    LANES = BEYOND_POD
    to: Key32
    box: SealedBox


class ContactHandoff(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """What a SealedMessage usually carries: how to reach the person behind a claim."""

    name: Title
    contact: Short
    prefers: Short = ""
    note: Text = ""
    about: Id32 | None = None  # the request the help is for (its id), if any


KnownBody = (
    PodFounded | PodInfoChanged | OrganizerAdded | OrganizerRemoved
    | MemberJoined | MemberUpdated | MemberForgotten
    | RequestOpened | RequestUpdated | RequestCancelled | RequestFulfilled
    | OfferOpened | OfferWithdrawn | ClaimMade | ClaimAccepted | ClaimDeclined
    | ResourceShared | ResourceWithdrawn | SealedMessage
)  # fmt: skip

BODY_TYPES: tuple[type[Body], ...] = KnownBody.__args__  # type: ignore[attr-defined]
KINDS: dict[str, type[Body]] = {cls.KIND: cls for cls in BODY_TYPES}
_decoders = {kind: msgspec.msgpack.Decoder(cls) for kind, cls in KINDS.items()}
_encoder = msgspec.msgpack.Encoder()


def _invalid(err: Exception, what: str) -> ProtocolError:
    """Every fault of a body (or of a box's contents) is ``invalid``, a field over its
    maximum length included. msgspec lets some bad UTF-8 through as UnicodeDecodeError, and
    runs out of stack (RecursionError) on msgpack nested some hundreds of levels deep, even
    inside an unknown field it skips."""
    text = "msgpack nested too deeply" if isinstance(err, RecursionError) else str(err)
    return ProtocolError("invalid", f"{what}: {text}")


def encode_body(body: msgspec.Struct) -> bytes:
    """The msgpack bytes of a body (or of MemberDetails / ContactHandoff inside a box)."""
    return _encoder.encode(body)


def decode_body(kind: str, data: bytes) -> Body | None:
    """Decode a body of a known kind; None for kinds this node does not know."""
    decoder = _decoders.get(kind)
    if decoder is None:
        return None
    try:
        return decoder.decode(data)
    except (msgspec.MsgspecError, UnicodeDecodeError, RecursionError) as err:
        raise _invalid(err, f"{kind} body") from None


def check_kind(event: Event) -> Body | None:
    """Check what the kind dictates: lane, number of refs, body fields. Returns the body
    (None for a dropped body or an unknown kind, which are stored and forwarded as is)."""
    cls = KINDS.get(event.kind)
    if cls is None:
        return None
    if event.lane not in cls.LANES:
        allowed = ", ".join(sorted(cls.LANES))
        raise ProtocolError(
            "invalid", f"{event.kind} may not travel in the {event.lane} lane (only {allowed})"
        )
    if len(event.header.refs) < cls.REFS:
        raise ProtocolError("invalid", f"{event.kind} must reference {cls.REFS} event(s)")
    if event.body is None:
        return None
    return decode_body(event.kind, event.body)


_member_decoder = msgspec.msgpack.Decoder(MemberDetails)
_handoff_decoder = msgspec.msgpack.Decoder(ContactHandoff)


def decode_member_details(data: bytes) -> MemberDetails:
    try:
        return _member_decoder.decode(data)
    except (msgspec.MsgspecError, UnicodeDecodeError, RecursionError) as err:
        raise _invalid(err, "member details") from None


def decode_contact_handoff(data: bytes) -> ContactHandoff:
    try:
        return _handoff_decoder.decode(data)
    except (msgspec.MsgspecError, UnicodeDecodeError, RecursionError) as err:
        raise _invalid(err, "contact handoff") from None
