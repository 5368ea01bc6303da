"""Review: answers to claims (claim.accept / claim.decline), old (refs [claim]) and new
(refs [claim, request]), against the core promise of DESIGN.md: the read model is a
function of the SET of events, not of their arrival order, and ``rebuild`` equals the
live projections. Real ledger files, real signatures; the same events are delivered in
different orders (shuffled, duplicated, bodiless copies first, gaps filled later).
"""

from __future__ import annotations

import asyncio
import random
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hs

from podlink.ledger.authoring import Author
from podlink.ledger.ledger import Ledger, Limits
from podlink.protocol import clock
from podlink.protocol import kinds as k
from podlink.protocol.envelope import Event
from podlink.protocol.keys import Keypair
from tests.ledger.conftest import OpenLedger
from tests.ledger.helpers import World, bodiless, diff, request_row, wires

START_MS = 1_750_000_000_000  # a fixed past moment: same seed, same bytes


async def deliver(ledger: Ledger, batches: Sequence[Sequence[Event]]) -> None:
    for batch in batches:
        for res in await ledger.ingest(wires(batch)):
            assert res.status in ("stored", "duplicate"), res


# ------------------------------------------------------------------ adversarial histories


@dataclass
class Need:
    event: Event
    owner: str
    lane: str


@dataclass
class History:
    """Three pods (Elm, Oak, Ash), three needs, and a random mix of claims and answers.

    Claims: by any pod (the need's own pod too: accepted at once), in the need's lane or
    narrower (ignored by the lane rule), some by organizers removed meanwhile
    (soft-failed), some held only without their body, some by Ash's "ghost" organizer
    (never held where ``ghosts_missing``). Answers: mostly by the need's own pod (others
    must be ignored), accept or decline, naming [claim, its request], [claim] (an older
    writer), [claim, another request] or [claim, a claim]; timestamps drawn at random
    over a short span so answers often sort before their claims, accepts race, and
    cancels, fulfils and updates fall in between."""

    rng: random.Random
    two_refs_only: bool = False
    ghosts_missing: bool = True
    events: list[Event] = field(default_factory=list)
    dropped: set[bytes] = field(default_factory=set)  # held only without a body
    ghosts: set[bytes] = field(default_factory=set)
    needs: list[Need] = field(default_factory=list)
    claims: list[tuple[Event, Need]] = field(default_factory=list)
    last: dict[tuple[bytes, str], int] = field(default_factory=dict)

    def build(self, steps: int) -> History:
        rng, w = self.rng, World(START_MS)
        pods = {}
        for name in ("Elm", "Oak", "Ash"):
            pods[name], genesis = w.pod(name, key=Keypair.from_seed(rng.randbytes(32)))
            self.events += genesis
        self.elm = pods["Elm"]
        self.orgs: dict[str, Author] = {}
        for pod, name in (("Elm", "ana"), ("Elm", "dan"), ("Oak", "ben"), ("Oak", "eve"),
                          ("Ash", "cy"), ("Ash", "ghost")):  # fmt: skip
            w.tick()
            org, add = w.organizer(pods[pod], name, key=Keypair.from_seed(rng.randbytes(32)))
            self.orgs[name] = org
            self.events.append(add)
        self.pods = pods
        self.authors = {
            "Elm": [pods["Elm"].author, self.orgs["ana"], self.orgs["dan"]],
            "Oak": [pods["Oak"].author, self.orgs["ben"], self.orgs["eve"]],
            "Ash": [pods["Ash"].author, self.orgs["cy"]],
        }
        self.removed: set[str] = set()
        base = START_MS + 1000
        for owner, lane in (("Elm", "network"), ("Elm", rng.choice(["peers", "network"])),
                            ("Oak", "network")):  # fmt: skip
            author = rng.choice(self.authors[owner][:2])
            body = k.RequestOpened(title="Soup", category="food")
            self.needs.append(Need(self.write(author, body, lane, (), base + rng.randint(0, 20)),
                                   owner, lane))  # fmt: skip
        for _ in range(steps):
            self.step(base + rng.randint(0, 200))
        return self

    def write(self, author: Author, body: Any, lane: str, refs: Sequence[bytes], ms: int) -> Event:
        feed = (author.keypair.public, lane)
        ts = max(clock.pack(ms, self.rng.randint(0, 2)), self.last.get(feed, 0) + 1)
        event = author.write(body, lane, tuple(refs), ts=ts)  # type: ignore[arg-type]
        self.last[feed] = ts
        self.events.append(event)
        return event

    def step(self, ms: int) -> None:
        rng = self.rng
        action = rng.choices(["claim", "answer", "close", "update", "remove"], [6, 10, 1, 1, 1])[0]
        if action == "claim":
            need = rng.choice(self.needs)
            pod = rng.choice(["Elm", "Oak", "Ash", "Oak", "Ash"])
            ghost = pod == "Ash" and rng.random() < 0.3
            author = self.orgs["ghost"] if ghost else rng.choice(self.authors[pod])
            lanes = ["peers", "network"] + (["pod"] if pod == "Elm" else [])
            lane = need.lane if rng.random() < 0.6 else rng.choice(lanes)
            claim = self.write(author, k.ClaimMade(note=f"n{len(self.events)}"), lane,
                               (need.event.id,), ms)  # fmt: skip
            if ghost:
                self.ghosts.add(claim.id)
            elif rng.random() < 0.1:
                self.dropped.add(claim.id)
            self.claims.append((claim, need))
        elif action == "answer" and self.claims:
            claim, need = rng.choice(self.claims)
            owner = need.owner if rng.random() < 0.85 else rng.choice(list(self.authors))
            author = rng.choice(self.authors[owner])
            accept = rng.random() < 0.55
            body = k.ClaimAccepted() if accept else k.ClaimDeclined(reason=f"r{len(self.events)}")
            roll = rng.random()
            refs: tuple[bytes, ...] = (claim.id, need.event.id)
            if not self.two_refs_only and roll > 0.55:
                refs = (claim.id,) if roll < 0.8 else (claim.id, rng.choice(self.needs).event.id)
                if roll > 0.95:  # refs[1] a claim (this one or another): not its request
                    refs = (claim.id, rng.choice(self.claims)[0].id)
            lanes = ["peers", "network"] + (["pod"] if owner == "Elm" else [])
            lane = need.lane if rng.random() < 0.85 else rng.choice(lanes)
            self.write(author, body, lane, refs, ms)
        elif action in ("close", "update"):
            need = rng.choice(self.needs)
            owner = need.owner if rng.random() < 0.9 else rng.choice(list(self.authors))
            if action == "update":
                change: Any = k.RequestUpdated(area=f"a{len(self.events)}")
            elif rng.random() < 0.5:
                change = k.RequestCancelled(reason=f"m{len(self.events)}")
            else:
                change = k.RequestFulfilled(note="done")
            lane = need.lane if rng.random() < 0.9 else rng.choice(["peers", "network"])
            self.write(rng.choice(self.authors[owner]), change, lane, (need.event.id,), ms)
        elif action == "remove":
            who = rng.choice(["dan", "eve"])
            if who not in self.removed:
                self.removed.add(who)
                pod = self.pods["Elm" if who == "dan" else "Oak"]
                body = k.OrganizerRemoved(key=self.orgs[who].keypair.public)
                self.write(pod.author, body, "network", (), ms)

    def held(self, *, ghosts: bool | None = None) -> list[Event]:
        keep_ghosts = not self.ghosts_missing if ghosts is None else ghosts
        return [e for e in self.events if keep_ghosts or e.id not in self.ghosts]

    def wire(self, event: Event) -> bytes:
        return bodiless(event) if event.id in self.dropped else event.to_wire()

    def deliveries(self, rng: random.Random, events: list[Event]) -> list[list[bytes]]:
        """Shuffled, some twice, some first without their body, some held back to the end."""
        held, main = [], []
        for event in events:
            (held if rng.random() < 0.15 else main).append(self.wire(event))
            roll = rng.random()
            if roll < 0.1:
                main.append(self.wire(event))
            elif roll < 0.2:
                main.append(bodiless(event))
        rng.shuffle(main)
        rng.shuffle(held)
        batches: list[list[bytes]] = []
        for part in (main, held):
            i = 0
            while i < len(part):
                size = rng.choice((1, 2, 3, 5, 8, 40))
                batches.append(part[i : i + size])
                i += size
        return batches


async def replay(path: Path, pod: bytes, batches: list[list[bytes]], batch_size: int) -> Ledger:
    """A fresh ledger fed ``batches``; its live projections must equal its rebuild."""
    ledger = await Ledger.open(path, limits=Limits(batch_size=batch_size), workers=1)
    await ledger.set_pod(pod)
    for batch in batches:
        for res in await ledger.ingest(batch):
            assert res.reason not in ("invalid", "forged", "fork", "too-large"), res
    live = await ledger.dump()
    await ledger.rebuild()
    rebuilt = await ledger.dump()
    assert rebuilt == live, f"rebuild differs from the live projections: {diff(live, rebuilt)}"
    return ledger


# ------------------------------------------------------------------ pinned behaviour


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=hs.integers(0, 2**32),
    steps=hs.integers(10, 35),
    orders=hs.lists(hs.integers(0, 2**32), min_size=2, max_size=2),
    sizes=hs.lists(hs.sampled_from([2, 7, 1000]), min_size=2, max_size=2),
)
def test_mixed_answers_fold_to_one_state_in_any_order(
    seed: int, steps: int, orders: list[int], sizes: list[int]
) -> None:
    """Answers naming their request and older ones naming only the claim, before and
    after their claims in (ts, id) order, for claims soft-failed, bodiless, narrower than
    the need, never held, or on another need; answers by other pods; accepts racing;
    declines of claims that are not the accepted one; cancels and fulfils in between.
    Every delivery order gives the same dump, each equal to its own rebuild."""
    history = History(random.Random(seed)).build(steps)  # seeded: keys never repeat
    events = history.held()

    async def run(root: Path) -> list[dict]:
        dumps = []
        reference = await replay(root / "ref.db", history.elm.id,
                                 [[history.wire(e) for e in events]], 1000)  # fmt: skip
        dumps.append(await reference.dump())
        await reference.close()
        for i, (order, size) in enumerate(zip(orders, sizes, strict=True)):
            batches = history.deliveries(random.Random(order), events)
            ledger = await replay(root / f"{i}.db", history.elm.id, batches, size)
            dumps.append(await ledger.dump())
            await ledger.close()
        return dumps

    with tempfile.TemporaryDirectory() as tmp:
        dumps = asyncio.run(run(Path(tmp)))
    assert dumps[0]["requests"]
    for i, dump in enumerate(dumps[1:]):
        assert dump == dumps[0], f"order {i} differs: {diff(dumps[0], dump)}"


async def test_nodes_without_some_claims_agree_on_every_need(tmp_path: Path) -> None:
    """Answers naming their request: a node that never holds Ash's "ghost" claims (they
    travelled where it cannot see) shows every need in the same status, with the same
    accepted claim, closing time and cancel reason, as a node that holds them all."""
    for seed in range(8):
        history = History(random.Random(seed), two_refs_only=True).build(30)
        full = history.held(ghosts=True)
        part = history.held(ghosts=False)
        assert len(part) < len(full) or not history.ghosts
        a = await replay(tmp_path / f"a{seed}.db", history.elm.id,
                         history.deliveries(random.Random(seed), full), 7)  # fmt: skip
        b = await replay(tmp_path / f"b{seed}.db", history.elm.id,
                         history.deliveries(random.Random(seed + 99), part), 1000)  # fmt: skip
        try:
            for need in history.needs:
                ra, rb = await request_row(a, need.event.id), await request_row(b, need.event.id)
                assert ra is not None and rb is not None
                keys = ("status", "accepted_claim", "closed_ts", "cancel_reason")
                assert [ra[c] for c in keys] == [rb[c] for c in keys], (seed, need.owner, ra, rb)
        finally:
            await a.close()
            await b.close()


async def test_answer_naming_its_claim_twice_folds_the_same_in_any_order(
    make_ledger: OpenLedger, world: World
) -> None:
    """An accept naming refs [claim, claim] (refs[1] is not the request). Before
    e5d30c2 a node that got the claim first showed the need open, one that got the accept
    first (and every rebuild) accepted. Now both, and their rebuilds, agree."""
    elm, setup = world.pod("Elm")
    oak, oak_setup = world.pod("Oak")
    ana, add_ana = world.organizer(elm, "Ana")
    ben, add_ben = world.organizer(oak, "Ben")
    world.tick()
    need = ana.write(k.RequestOpened(title="Soup", category="food"), "network")
    world.tick()
    claim = ben.write(k.ClaimMade(note="I cook"), "network", [need.id])
    world.tick()
    accept = ana.write(k.ClaimAccepted(), "network", [claim.id, claim.id])
    base = [*setup, *oak_setup, add_ana, add_ben, need]

    first_claim = await make_ledger("claim-first.db", pod=elm.id)
    await deliver(first_claim, [base, [claim], [accept]])
    first_answer = await make_ledger("answer-first.db", pod=elm.id)
    await deliver(first_answer, [base, [accept], [claim]])

    a, b = await first_claim.dump(), await first_answer.dump()
    assert a == b, diff(a, b)
    for ledger in (first_claim, first_answer):
        await ledger.rebuild()
        assert await ledger.dump() == a, "rebuild differs from the live projections"


# ------------------------------------------------------------------ bugs


async def test_answer_naming_a_claim_on_a_claim_is_rehomed_once_live_and_by_rebuild(
    make_ledger: OpenLedger, world: World
) -> None:
    """Ben claims Elm's need (claim C). Oak's pod key writes a claim.make whose refs[0]
    is C, not a request (Y, a "claim on a claim": ingest never checks what refs[0] is, so
    Y's root is C). Ana accepts naming refs [C, Y] (refs[1] is not the need).

    Ingest re-homes an answer whose root is a claim each time that claim is stored
    (_flush: UPDATE events SET root = <claim's root> WHERE root = <claim id>): a node
    that gets the accept, then Y, then C moves it Y -> C -> the need, whose fold then
    applies it as an answer to C (a claim of the need) and shows the need accepted.
    rebuild (_recompute_roots) re-homes once, Y -> C, and so does ingest when Y or C
    came first (_resolve_root looks one level up): the need stays open. Expected: one
    state in every order, and live == rebuild. Found: accepted live, open after a rebuild
    on the node that got the accept first, open on the node that got C first."""
    elm, setup = world.pod("Elm")
    oak, oak_setup = world.pod("Oak")
    ana, add_ana = world.organizer(elm, "Ana")
    ben, add_ben = world.organizer(oak, "Ben")
    world.tick()
    need = ana.write(k.RequestOpened(title="Soup", category="food"), "network")
    world.tick()
    claim = ben.write(k.ClaimMade(note="I cook"), "network", [need.id])
    world.tick()
    on_claim = oak.author.write(k.ClaimMade(note="on a claim"), "network", [claim.id])
    world.tick()
    accept = ana.write(k.ClaimAccepted(), "network", [claim.id, on_claim.id])
    base = [*setup, *oak_setup, add_ana, add_ben, need]

    claims_first = await make_ledger("claims-first.db", pod=elm.id)
    await deliver(claims_first, [base, [claim], [on_claim], [accept]])
    accept_first = await make_ledger("accept-first.db", pod=elm.id)
    await deliver(accept_first, [base, [accept], [on_claim], [claim]])

    states = {}
    for name, ledger in (("claims first", claims_first), ("accept first", accept_first)):
        live = await request_row(ledger, need.id)
        await ledger.rebuild()
        rebuilt = await request_row(ledger, need.id)
        assert live is not None and rebuilt is not None
        states[name] = (live["status"], rebuilt["status"])
    assert len({s for pair in states.values() for s in pair}) == 1, (
        f"need status (live, after rebuild) by delivery order: {states}"
    )
