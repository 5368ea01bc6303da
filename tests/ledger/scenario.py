"""Random but honest mutual-aid histories, and random ways of delivering them.

A :class:`Scenario` is driven by a ``random.Random`` (hypothesis hands one in, the crash
writer seeds its own), so a seed reproduces the same keys, events and bytes. Honest means:
every event is well signed and chained, nobody forks; but organizers act concurrently, so
a removed organizer may keep writing for a while (those events must soft-fail), pods may
meddle with requests that are not theirs (those steps must be ignored), and answers may
race each other. Pod-lane events are only written by pod 0, the ledgers' own pod.

One exception, on purpose: a member.forget is only written by a key whose authority can
never be revoked retroactively (the pod's key, or an organizer it added who has not been
targeted by a removal yet). Forgetting destroys the member's key and boxes at once and
cannot be undone; if the forget's author later turns out to have been removed before it,
a ledger that saw the forget first has destroyed the data while one that saw the removal
first keeps it. That is inherent in crypto-shredding (see the ledger tests' report).
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field

import nacl.secret

from podlink.ledger.authoring import Author
from podlink.protocol import kinds as k
from podlink.protocol.envelope import Event, Lane
from podlink.protocol.keys import Keypair
from tests.ledger.helpers import Pod, World, bodiless

START_MS = 1_750_000_000_000  # a fixed past moment: same seed, same bytes
CATEGORIES = ("food", "transport", "medicine", "repairs", "childcare")


@dataclass
class Thing:
    """Something events can refer to: a request, claim, offer or member."""

    event: Event
    pod: int
    lane: Lane


@dataclass
class Scenario:
    rng: random.Random
    world: World = field(init=False)
    pods: list[Pod] = field(default_factory=list)
    removed: set[bytes] = field(default_factory=set)  # organizer keys removed so far
    sound: set[bytes] = field(default_factory=set)  # keys whose authority cannot be revoked
    events: list[Event] = field(default_factory=list)
    requests: list[Thing] = field(default_factory=list)
    claims: list[Thing] = field(default_factory=list)
    offers: list[Thing] = field(default_factory=list)
    resources: list[Thing] = field(default_factory=list)
    members: list[tuple[Thing, bytes]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.world = World(START_MS)
        self.salt = self.rng.randbytes(16)
        self.keys = 0

    # ------------------------------------------------------------------ building

    @classmethod
    def build(cls, rng: random.Random, *, pods: int | None = None, steps: int = 30) -> Scenario:
        s = cls(rng)
        for i in range(pods or rng.randint(2, 3)):
            pod, genesis = s.world.pod(f"Pod {i}", key=s.key())
            s.pods.append(pod)
            s.events += genesis
            for j in range(rng.randint(1, 2)):
                s.add_organizer(i, f"Org {i}.{j}", by=pod.author)
        for _ in range(steps):
            s.step()
        return s

    def key(self) -> Keypair:
        """A new key, never one used before (a drawn seed alone may repeat)."""
        self.keys += 1
        seed = hashlib.blake2b(self.salt + self.keys.to_bytes(4, "big"), digest_size=32)
        return Keypair.from_seed(seed.digest())

    def emit(self, author: Author, body: k.Body, lane: Lane, refs: list[bytes] = ()) -> Event:
        self.world.tick(self.rng.choice((0, 1, 1, 5, 1000)))
        event = author.write(body, lane, refs)
        self.events.append(event)
        return event

    def add_organizer(self, pod: int, name: str, by: Author) -> None:
        before = len(self.pods[pod].organizers)
        self.world.tick()
        org, add = self.world.organizer(self.pods[pod], name, key=self.key(), by=by)
        assert len(self.pods[pod].organizers) == before + 1
        if by is self.pods[pod].author:
            self.sound.add(org.keypair.public)
        self.events.append(add)

    def authors(self, pod: int) -> list[Author]:
        return [self.pods[pod].author, *self.pods[pod].organizers]

    def someone(self, pod: int | None = None) -> tuple[int, Author]:
        """An author of ``pod`` (or of any pod); removed organizers write now and then."""
        if pod is None:
            pod = self.rng.randrange(len(self.pods))
        live = [a for a in self.authors(pod) if a.keypair.public not in self.removed]
        gone = [a for a in self.authors(pod) if a.keypair.public in self.removed]
        if gone and self.rng.random() < 0.2:
            return pod, self.rng.choice(gone)
        return pod, self.rng.choice(live)

    def lane_for(self, pod: int, thing: Thing | None = None) -> Lane:
        if thing is not None and thing.lane == "pod":
            return "pod"
        lanes: list[Lane] = ["peers", "network"] + (["pod"] if pod == 0 else [])
        return self.rng.choice(lanes)

    def owner_or_meddler(self, thing: Thing) -> tuple[int, Author]:
        """Mostly the thing's own pod; sometimes another (whose step must be ignored)."""
        if thing.lane == "pod" or self.rng.random() < 0.8:
            return self.someone(thing.pod)
        return self.someone()

    def box(self, key: bytes, name: str) -> bytes:
        nonce = self.rng.randbytes(nacl.secret.SecretBox.NONCE_SIZE)
        details = k.encode_body(k.MemberDetails(name=name, contact="555"))
        return bytes(nacl.secret.SecretBox(key).encrypt(details, nonce))

    def step(self) -> None:
        rng = self.rng
        action = rng.choices(
            ["open", "claim", "answer", "close", "update", "offer", "withdraw", "resource",
             "unshare", "info", "add", "remove", "readd", "member", "tick"],
            weights=[8, 8, 8, 4, 3, 3, 2, 1, 1, 1, 1, 1, 1, 3, 1],
        )[0]  # fmt: skip
        if action == "open":
            pod, author = self.someone()
            lane = self.lane_for(pod)
            title = rng.choice(("Soup", "Lift", "Shelf", "Cat sitting"))
            body = k.RequestOpened(title=title, category=rng.choice(CATEGORIES),
                                   urgency=rng.choice(k.URGENCIES))  # fmt: skip
            self.requests.append(Thing(self.emit(author, body, lane), pod, lane))
        elif action == "claim" and self.requests:
            req = rng.choice(self.requests)
            pod, author = self.someone(0 if req.lane == "pod" else None)
            lane = self.lane_for(pod, req)
            ev = self.emit(author, k.ClaimMade(note=f"from {pod}"), lane, [req.event.id])
            self.claims.append(Thing(ev, req.pod, lane))  # pod: the request's owner
        elif action == "answer" and self.claims:
            claim = rng.choice(self.claims)
            pod, author = self.owner_or_meddler(claim)
            body = k.ClaimAccepted() if rng.random() < 0.7 else k.ClaimDeclined(reason="no")
            self.emit(author, body, self.lane_for(pod, claim), [claim.event.id])
        elif action == "close" and self.requests:
            req = rng.choice(self.requests)
            pod, author = self.owner_or_meddler(req)
            body = (k.RequestFulfilled(note="done", hours=rng.choice((None, 1.5)))
                    if rng.random() < 0.6 else k.RequestCancelled(reason="moot"))  # fmt: skip
            self.emit(author, body, self.lane_for(pod, req), [req.event.id])
        elif action == "update" and self.requests:
            req = rng.choice(self.requests)
            pod, author = self.owner_or_meddler(req)
            body = k.RequestUpdated(urgency=rng.choice(k.URGENCIES), area=f"area {rng.random()}")
            self.emit(author, body, self.lane_for(pod, req), [req.event.id])
        elif action == "offer":
            pod, author = self.someone()
            lane = self.lane_for(pod)
            body = k.OfferOpened(title="Rides", category=rng.choice(CATEGORIES))
            self.offers.append(Thing(self.emit(author, body, lane), pod, lane))
        elif action == "withdraw" and self.offers:
            offer = rng.choice(self.offers)
            pod, author = self.owner_or_meddler(offer)
            self.emit(author, k.OfferWithdrawn(), self.lane_for(pod, offer), [offer.event.id])
        elif action == "resource":
            pod, author = self.someone()
            lane = self.lane_for(pod)
            body = k.ResourceShared(name=f"Bank {len(self.events)}", category="food")
            self.resources.append(Thing(self.emit(author, body, lane), pod, lane))
        elif action == "unshare" and self.resources:
            entry = rng.choice(self.resources)
            pod, author = self.owner_or_meddler(entry)
            self.emit(author, k.ResourceWithdrawn(reason="closed"), self.lane_for(pod, entry),
                      [entry.event.id])  # fmt: skip
        elif action == "info":
            pod, author = self.someone()
            self.emit(author, k.PodInfoChanged(name=f"Pod {pod} v{len(self.events)}"), "network")
        elif action == "add":
            pod, author = self.someone()
            self.add_organizer(pod, f"Org {pod}.{len(self.events)}", by=author)
        elif action == "remove":
            pod = rng.randrange(len(self.pods))
            targets = [o for o in self.pods[pod].organizers
                       if o.keypair.public not in self.removed]  # fmt: skip
            if targets:
                target = rng.choice(targets)
                _, author = self.someone(pod)
                body = k.OrganizerRemoved(key=target.keypair.public, reason="stepped down")
                self.emit(author, body, "network")
                self.removed.add(target.keypair.public)
                self.sound.discard(target.keypair.public)
        elif action == "readd":
            # A removed organizer back in office: its feed goes on from where it was,
            # over whatever it wrote while out (stored, soft-failed, on every node).
            pod = rng.randrange(len(self.pods))
            gone = [o for o in self.pods[pod].organizers if o.keypair.public in self.removed]
            if gone:
                back = rng.choice(gone)
                body = k.OrganizerAdded(key=back.keypair.public, name="Back again")
                self.emit(self.pods[pod].author, body, "network")
                self.removed.discard(back.keypair.public)
        elif action == "member":
            _, author = self.someone(0)
            if self.members and rng.random() < 0.6:
                member, key = rng.choice(self.members)
                if rng.random() < 0.5:
                    body: k.Body = k.MemberUpdated(box=self.box(key, "Bea Updated"))
                else:
                    body = k.MemberForgotten()
                    author = rng.choice([a for a in self.authors(0)
                                         if a is self.pods[0].author
                                         or a.keypair.public in self.sound])  # fmt: skip
                self.emit(author, body, "pod", [member.event.id])
            else:
                key = rng.randbytes(32)
                ev = self.emit(author, k.MemberJoined(box=self.box(key, "Bea")), "pod")
                self.members.append((Thing(ev, 0, "pod"), key))
        else:
            self.world.tick(rng.randint(1, 60_000))


def deliveries(events: list[Event], rng: random.Random) -> list[list[bytes]]:
    """The same events as batches of wires in a random order: shuffled, some sent twice,
    some first without their body, some held back to fill gaps at the end."""
    held, main = [], []
    for event in events:
        (held if rng.random() < 0.15 else main).append(event.to_wire())
        roll = rng.random()
        if roll < 0.1:
            main.append(event.to_wire())  # a duplicate
        elif roll < 0.2:
            main.append(bodiless(event))  # a copy whose body was left behind
    rng.shuffle(main)
    rng.shuffle(held)
    batches: list[list[bytes]] = []
    for part in (main, held):
        i = 0
        while i < len(part):
            size = rng.choice((1, 2, 3, 5, 8, 13, 40))
            batches.append(part[i : i + size])
            i += size
    return batches
