"""Fixed keys, a fixed clock and one realistic body for every event kind."""

from __future__ import annotations

from podlink.protocol import boxes, clock
from podlink.protocol.envelope import Event, Lane, blake2b256, sign_event
from podlink.protocol.keys import Keypair
from podlink.protocol.kinds import (
    KINDS,
    Body,
    ClaimAccepted,
    ClaimDeclined,
    ClaimMade,
    ContactHandoff,
    MemberDetails,
    MemberForgotten,
    MemberJoined,
    MemberUpdated,
    OfferOpened,
    OfferWithdrawn,
    OrganizerAdded,
    OrganizerRemoved,
    PodFounded,
    PodInfoChanged,
    RequestCancelled,
    RequestFulfilled,
    RequestOpened,
    RequestUpdated,
    ResourceShared,
    ResourceWithdrawn,
    SealedMessage,
    encode_body,
)

POD = Keypair.from_seed(bytes(range(32)))
ORGANIZER = Keypair.from_seed(bytes(range(32, 64)))
OTHER_POD = Keypair.from_seed(bytes(range(64, 96)))
STRANGER = Keypair.from_seed(bytes(range(96, 128)))

NOW_MS = 1_750_000_000_000
NOW_TS = clock.pack(NOW_MS)
MEMBER_KEY = bytes(range(200, 232))

DETAILS = MemberDetails(
    name="Bea Okafor", contact="+1 555 0100", prefers="phone", can=["transport", "food"],
    needs=["repairs"], languages=["en", "yo"], notes="Prefers mornings.",
)  # fmt: skip
HANDOFF = ContactHandoff(name="Bea", contact="+1 555 0100", prefers="phone", note="Ring twice.")

# One body per kind, with the lane it travels in (the first lane it is allowed in).
SAMPLES: dict[str, tuple[Body, Lane]] = {
    "pod.genesis": (
        PodFounded(
            name="Elm Street Pod", zone="Elm St 1-40", description="Neighbours helping.",
            categories=["food", "transport", "elder-care"], contact="elm@example.org",
        ),
        "network",
    ),
    "pod.info": (PodInfoChanged(name="Elm Street Pod", contact="+1 555 0199"), "network"),
    "roster.add": (OrganizerAdded(key=ORGANIZER.public, name="Ana"), "network"),
    "roster.remove": (OrganizerRemoved(key=STRANGER.public, reason="lost laptop"), "network"),
    "member.join": (
        MemberJoined(box=boxes.lock(MEMBER_KEY, encode_body(DETAILS))), "pod",
    ),
    "member.update": (
        MemberUpdated(box=boxes.lock(MEMBER_KEY, encode_body(DETAILS))), "pod",
    ),
    "member.forget": (MemberForgotten(), "pod"),
    "request.open": (
        RequestOpened(
            title="Groceries after surgery", category="food", details="Two bags a week.",
            urgency="high", needed_by="2025-06-20", area="Elm St north",
            for_member=blake2b256(b"member"),
        ),
        "pod",
    ),
    "request.update": (RequestUpdated(urgency="urgent", needed_by="2025-06-18"), "network"),
    "request.cancel": (RequestCancelled(reason="Family came to help."), "network"),
    "request.fulfil": (RequestFulfilled(note="Delivered.", hours=4.5), "network"),
    "offer.open": (
        OfferOpened(
            title="Rides to the clinic", category="transport", availability="Tue, Thu",
            capacity=3,
        ),
        "peers",
    ),
    "offer.withdraw": (OfferWithdrawn(reason="Car sold."), "peers"),
    "claim.make": (ClaimMade(note="We can drive on Tuesdays."), "peers"),
    "claim.accept": (ClaimAccepted(), "peers"),
    "claim.decline": (ClaimDeclined(reason="Already covered."), "peers"),
    "resource.share": (
        ResourceShared(
            name="Riverside food bank", category="food", what="Dry goods, fresh bread",
            where="12 Mill Rd", when="Sat 10-14", contact="+1 555 0123",
        ),
        "network",
    ),
    "resource.withdraw": (ResourceWithdrawn(reason="Closed for good."), "network"),
    "sealed": (
        SealedMessage(
            to=OTHER_POD.public, box=boxes.seal_to(OTHER_POD.public, encode_body(HANDOFF)),
        ),
        "peers",
    ),
}
assert set(SAMPLES) == set(KINDS), "every kind needs a sample body"


def ref_ids(n: int) -> list[bytes]:
    return [blake2b256(f"ref {i}".encode()) for i in range(n)]


def sample_event(kind: str, *, seq: int = 1, author: Keypair = ORGANIZER) -> Event:
    """A signed event of ``kind`` with its sample body, lane and required refs."""
    body, lane = SAMPLES[kind]
    return sign_event(
        author, pod=POD.public, lane=lane, seq=seq,
        prev=None if seq == 1 else blake2b256(b"previous"), ts=NOW_TS, kind=kind,
        body=encode_body(body), refs=ref_ids(KINDS[kind].REFS),
    )  # fmt: skip
