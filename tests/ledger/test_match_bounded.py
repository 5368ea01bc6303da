"""`GET /v1/match` reads what its suggestions need, not what the network holds.

Counted in SQLite VM steps on the ledger's reader connection (``set_progress_handler``),
never in time: real signed events, a real SQLite file under tmp_path.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import aiosqlite

from podlink.ledger import queries
from podlink.protocol import boxes
from podlink.protocol import kinds as k
from podlink.protocol.envelope import Event
from tests.ledger.helpers import Pod, Scene


async def steps(db: aiosqlite.Connection, read: Callable[[], Awaitable[Any]]) -> tuple[int, Any]:
    """The SQLite VM steps (in fives) that ``read`` costs on ``db``, and what it returned."""
    counted = [0]

    def step() -> int:
        counted[0] += 1
        return 0

    await db.set_progress_handler(step, 5)
    try:
        found = await read()
    finally:
        await db.set_progress_handler(None, 0)
    return counted[0], found


def offers(by: Any, n: int, category: str, lane: str = "network") -> list[Event]:
    return [by.write(k.OfferOpened(title=f"{category} {i}", category=category), lane)
            for i in range(n)]  # fmt: skip


async def test_match_reads_the_same_whatever_the_offers_nobody_needs_or_the_needed_category_hold(
    scene: Scene,
) -> None:
    """Elm has a need for food (and a member who drives), Oak shares a need for food.
    Oak and Ash post n open offers nobody needs (legal advice), and n more for food;
    then 3n more of each (4n). The suggestions do not change (each need gets the oldest
    five), and neither does the work: the matcher reads the food offers of each pod up
    to five, and never the legal ones. Before, it read every open offer (and every claim)
    of the network on each call: the control read below grows 4-fold."""
    s, n = scene, 100
    ash, ash_setup = s.world.pod("Ash")
    key = boxes.new_member_key()
    kit = s.ana.write(k.MemberJoined(box=boxes.lock(key, k.encode_body(
        k.MemberDetails(name="Kit", contact="555 0100", can=["transport"])))), "pod")  # fmt: skip
    await s.feed(*ash_setup, kit)
    await s.ledger.put_member_key(kit.id, key)
    ours = s.ana.write(k.RequestOpened(title="Soup", category="food"), "pod")
    theirs = s.ben.write(k.RequestOpened(title="Bread", category="food"), "network")
    lift = s.ben.write(k.RequestOpened(title="Lift", category="transport"), "network")
    kitchen = s.ana.write(k.OfferOpened(title="Elm kitchen", category="food"), "pod")
    await s.feed(ours, theirs, lift, kitchen)
    db = s.ledger.reader

    async def grow(times: int) -> None:
        for pod in (s.oak, ash):
            await s.feed(*offers(pod.author, times * n // 2, "legal"),
                         *offers(pod.author, times * n // 2, "food"))  # fmt: skip

    async def control() -> list[Any]:
        return await queries.list_offers(db, status="open")

    await grow(1)
    small, before = await steps(db, lambda: queries.suggest_matches(db, s.elm.id))
    seen_small, _ = await steps(db, control)
    await grow(3)
    large, after = await steps(db, lambda: queries.suggest_matches(db, s.elm.id))
    seen_large, _ = await steps(db, control)

    assert after == before
    pairs = [(m["request"], m["via"], m["match_pod"]) for m in after]
    assert [p for p in pairs if p[0] == lift.id] == [(lift.id, "member", s.elm.id)]  # Kit
    assert (ours.id, "offer", s.elm.id) in pairs and (theirs.id, "offer", s.elm.id) in pairs
    assert len(after) == 1 + 5 + 5  # the lift; five for each food need
    assert {m["match_pod"] for m in after if m["request"] == theirs.id} == {s.elm.id, s.oak.id}
    assert seen_large > 3 * seen_small, (seen_small, seen_large)  # the counter sees rows
    assert large <= small * 1.1 + 20, f"{small} steps with {2 * n} offers, {large} with {8 * n}"


async def test_match_weighs_a_bounded_number_of_pods_per_category(scene: Scene) -> None:
    """Elm's need for food, offered by ever more pods: beyond MATCH_PODS of them the
    matcher reads no more (one index step per pod, five offers at most of each), and
    Elm's own offer and the needing pod's always come first. The rows read with three
    times as many pods as MATCH_PODS are those read with MATCH_PODS + 10."""
    s = scene
    ours = s.ana.write(k.RequestOpened(title="Soup", category="food"), "pod")
    kitchen = s.ana.write(k.OfferOpened(title="Elm kitchen", category="food"), "pod")
    await s.feed(ours, kitchen)
    db = s.ledger.reader

    async def pods(n: int) -> list[Pod]:
        made = []
        for i in range(n):
            pod, setup = s.world.pod(f"Pod {i}")
            await s.feed(*setup, *offers(pod.author, 2, "food"))
            made.append(pod)
        return made

    await pods(queries.MATCH_PODS + 10)
    small, before = await steps(db, lambda: queries.suggest_matches(db, s.elm.id))
    await pods(2 * queries.MATCH_PODS)
    large, after = await steps(db, lambda: queries.suggest_matches(db, s.elm.id))
    assert [m["match"] for m in before][:1] == [m["match"] for m in after][:1] == [kitchen.id]
    assert len(before) == len(after) == 5
    assert large <= small * 1.1 + 20, f"{small} steps, then {large} with twice the pods"
