"""Deterministic, realistic signed events for figures to chew on.

Several organizers of one pod write requests, offers, claims and shared resources on the
``peers`` and ``network`` lanes; every (author, lane) feed is a valid hash chain, bodies are
real kind bodies of a few hundred bytes, and timestamps are an hour in the past so
``verify_event`` accepts them. Same arguments, same keys and bodies (signatures are
deterministic in Ed25519 too; only timestamps follow the wall clock).
"""

from __future__ import annotations

import random

from podlink.protocol import kinds
from podlink.protocol.clock import HybridClock, now_ms
from podlink.protocol.envelope import Event, Lane, blake2b256, sign_event
from podlink.protocol.keys import Keypair

_WORDS = (
    "groceries", "insulin", "ride", "clinic", "Tuesday", "stairs", "fridge", "ladder", "bus",
    "rent", "toddler", "pickup", "soup", "batch", "laptop", "school", "form", "translate",
    "Spanish", "Arabic", "ramp", "wheelchair", "pharmacy", "heater", "blanket", "cat", "food",
    "evening", "weekend", "neighbour", "fourth", "floor", "laundry", "dog", "walk",
)  # fmt: skip
_CATEGORIES = ("food", "medicine", "transport", "childcare", "repairs", "translation", "tools")


def keypair(label: str) -> Keypair:
    """A fixed keypair named by ``label`` (bench only: the seed is public)."""
    return Keypair.from_seed(blake2b256(b"podlink-bench/" + label.encode()))


def _text(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(words))


def _body(rng: random.Random, kind: str) -> bytes:
    if kind == "request.open":
        body: kinds.Body = kinds.RequestOpened(
            title=_text(rng, 5),
            category=rng.choice(_CATEGORIES),
            details=_text(rng, rng.randint(10, 60)),
            urgency=rng.choice(kinds.URGENCIES),  # type: ignore[arg-type]
            area=_text(rng, 2),
        )
    elif kind == "offer.open":
        body = kinds.OfferOpened(
            title=_text(rng, 4),
            category=rng.choice(_CATEGORIES),
            details=_text(rng, rng.randint(5, 40)),
            availability=_text(rng, 3),
        )
    elif kind == "claim.make":
        body = kinds.ClaimMade(note=_text(rng, rng.randint(3, 25)))
    else:
        body = kinds.ResourceShared(
            name=_text(rng, 3),
            category=rng.choice(_CATEGORIES),
            what=_text(rng, rng.randint(5, 30)),
            where=_text(rng, 3),
            contact=_text(rng, 2),
        )
    return kinds.encode_body(body)


def make_events(n: int, *, authors: int = 4, seed: int = 0) -> list[Event]:
    """``n`` signed events by ``authors`` organizers of one pod, in causal order."""
    rng = random.Random(seed)
    pod = keypair("pod").public
    writers = [keypair(f"organizer-{i}") for i in range(authors)]
    clock = HybridClock(wall=lambda: now_ms() - 3_600_000)
    heads: dict[tuple[bytes, Lane], tuple[int, bytes]] = {}
    opened: list[bytes] = []
    events: list[Event] = []
    for _ in range(n):
        author = rng.choice(writers)
        kind = rng.choices(
            ("request.open", "offer.open", "claim.make", "resource.share"), (4, 2, 3, 1)
        )[0]
        lane: Lane = "network" if kind == "resource.share" else rng.choice(("peers", "network"))
        refs = [rng.choice(opened)] if kind == "claim.make" and opened else []
        if kind == "claim.make" and not refs:
            kind = "request.open"
        seq, prev = heads.get((author.public, lane), (0, None))
        event = sign_event(
            author,
            pod=pod,
            lane=lane,
            seq=seq + 1,
            prev=prev,
            ts=clock.now(),
            kind=kind,
            body=_body(rng, kind),
            refs=refs,
        )
        heads[(author.public, lane)] = (seq + 1, event.id)
        if kind == "request.open":
            opened.append(event.id)
        events.append(event)
    return events
