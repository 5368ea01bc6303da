"""Deterministic, realistic signed events for figures to chew on.

Several organizers of one pod write requests, offers, claims and shared resources on the
``peers`` and ``network`` lanes; every (author, lane) feed is a valid hash chain, bodies are
real kind bodies of a few hundred bytes, and timestamps are an hour in the past so
``verify_event`` accepts them. Same arguments, same keys and bodies (signatures are
deterministic in Ed25519 too; only timestamps follow the wall clock).
"""

from __future__ import annotations

import random
from collections.abc import Iterator

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
    return kinds.encode_body(body_of(rng, kind))


def body_of(rng: random.Random, kind: str) -> kinds.Body:
    """A realistic body of ``kind`` (request.open, offer.open, claim.make, resource.share)."""
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
    return body


def make_events(
    n: int,
    *,
    authors: int = 4,
    seed: int = 0,
    pod: bytes | None = None,
    lane: Lane | None = None,
    prefix: str = "organizer",
) -> list[Event]:
    """``n`` signed events by ``authors`` organizers of one pod, in causal order.

    ``pod`` defaults to ``keypair("pod")``'s key; ``lane`` forces every event into one lane
    (``"network"``: all visible to peers); organizers are ``keypair(f"{prefix}-{i}")``."""
    return list(iter_events(n, authors=authors, seed=seed, pod=pod, lane=lane, prefix=prefix))


def iter_events(
    n: int,
    *,
    authors: int = 4,
    seed: int = 0,
    pod: bytes | None = None,
    lane: Lane | None = None,
    prefix: str = "organizer",
) -> Iterator[Event]:
    """:func:`make_events`, one event at a time (a million need not all be in memory)."""
    rng = random.Random(seed)
    pod = keypair("pod").public if pod is None else pod
    writers = [keypair(f"{prefix}-{i}") for i in range(authors)]
    clock = HybridClock(wall=lambda: now_ms() - 3_600_000)
    heads: dict[tuple[bytes, Lane], tuple[int, bytes]] = {}
    opened: list[bytes] = []
    for _ in range(n):
        author = rng.choice(writers)
        kind = rng.choices(
            ("request.open", "offer.open", "claim.make", "resource.share"), (4, 2, 3, 1)
        )[0]
        picked: Lane = "network" if kind == "resource.share" else rng.choice(("peers", "network"))
        lane_: Lane = lane or picked
        refs = [rng.choice(opened)] if kind == "claim.make" and opened else []
        if kind == "claim.make" and not refs:
            kind = "request.open"
        seq, prev = heads.get((author.public, lane_), (0, None))
        event = sign_event(
            author,
            pod=pod,
            lane=lane_,
            seq=seq + 1,
            prev=prev,
            ts=clock.now(),
            kind=kind,
            body=_body(rng, kind),
            refs=refs,
        )
        heads[(author.public, lane_)] = (seq + 1, event.id)
        if kind == "request.open":
            opened.append(event.id)
        yield event


def roster_events(
    authors: int, *, pod: Keypair | None = None, prefix: str = "organizer"
) -> list[Event]:
    """The pod key founding its pod and adding ``authors`` organizers (network lane), two
    hours in the past: what a ledger must hold before it stores those organizers' events
    (else it parks them as pending, waiting for their roster entry)."""
    pod_kp = keypair("pod") if pod is None else pod
    clock = HybridClock(wall=lambda: now_ms() - 7_200_000)
    out: list[Event] = []
    prev = None
    bodies: list[kinds.Body] = [kinds.PodFounded(name="Bench pod", zone="bench")]
    bodies += [
        kinds.OrganizerAdded(key=keypair(f"{prefix}-{i}").public, name=f"{prefix} {i}")
        for i in range(authors)
    ]
    for seq, body in enumerate(bodies, start=1):
        event = sign_event(
            pod_kp, pod=pod_kp.public, lane="network", seq=seq, prev=prev, ts=clock.now(),
            kind=type(body).KIND, body=kinds.encode_body(body),  # type: ignore[attr-defined]
        )  # fmt: skip
        prev = event.id
        out.append(event)
    return out


def member_events(
    n: int, *, pod: Keypair | None = None, seed: int = 0
) -> tuple[list[Event], dict[bytes, bytes]]:
    """``n`` members joining (pod lane, written by the pod key, details sealed with a member
    key each), and the member keys by member id (to hand to ``Ledger.put_member_key``)."""
    from podlink.protocol import boxes

    rng = random.Random(seed)
    pod_kp = keypair("pod") if pod is None else pod
    clock = HybridClock(wall=lambda: now_ms() - 5_400_000)
    events: list[Event] = []
    keys: dict[bytes, bytes] = {}
    prev = None
    for i in range(n):
        key = blake2b256(b"podlink-bench/member/" + str((seed, i)).encode())
        details = kinds.MemberDetails(
            name=_text(rng, 2),
            contact=_text(rng, 2),
            can=rng.sample(_CATEGORIES, 2),
            needs=rng.sample(_CATEGORIES, 1),
            languages=[rng.choice(("en", "es", "ar", "fr"))],
            notes=_text(rng, rng.randint(3, 20)),
        )
        body = kinds.MemberJoined(box=boxes.lock(key, kinds.encode_body(details)))
        event = sign_event(
            pod_kp, pod=pod_kp.public, lane="pod", seq=i + 1, prev=prev, ts=clock.now(),
            kind=body.KIND, body=kinds.encode_body(body),
        )  # fmt: skip
        prev = event.id
        keys[event.id] = key
        events.append(event)
    return events, keys


def pod_corpus(
    n: int, *, authors: int = 50, seed: int = 0, lane: Lane | None = None
) -> list[Event]:
    """A realistic remote-ingest corpus: the roster of ``authors`` organizers of
    ``keypair("pod")``'s pod, then ``n`` events by them (``n + authors + 1`` in all)."""
    return roster_events(authors) + make_events(n, authors=authors, seed=seed, lane=lane)


def pod_wires(n: int, *, authors: int = 50, seed: int = 0, lane: Lane | None = None) -> list[bytes]:
    """:func:`pod_corpus` in wire form, without holding every Event at once."""
    out = [e.to_wire() for e in roster_events(authors)]
    out += (e.to_wire() for e in iter_events(n, authors=authors, seed=seed, lane=lane))
    return out
