"""Review probes of offers, shared resources, matching and the list/status queries.

Real signed events, real SQLite ledgers under tmp_path, real nodes on 127.0.0.1.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from podlink.ledger import queries
from podlink.ledger.authoring import Author
from podlink.ledger.ledger import Ledger
from podlink.protocol import boxes
from podlink.protocol import kinds as k
from podlink.protocol.envelope import Event, encode_wire
from podlink.protocol.keys import Keypair
from tests.ledger.conftest import OpenLedger
from tests.ledger.helpers import Scene, World, statuses, wires
from tests.node.helpers import PodNode, make_node


async def add_member(s: Scene, name: str, can: list[str]) -> Event:
    """An Elm member (joined by Ana) who can help with ``can``; their key is kept."""
    key = boxes.new_member_key()
    details = k.MemberDetails(name=name, contact="555 0100", can=can)
    join = s.ana.write(k.MemberJoined(box=boxes.lock(key, k.encode_body(details))), "pod")
    await s.feed(join)
    await s.ledger.put_member_key(join.id, key)
    return join


# ---------------------------------------------------------------- matching


async def test_match_suggests_our_members_for_another_pods_shared_need(scene: Scene) -> None:
    """A need another pod shares with the network is exactly the one DOMAIN.md says goes
    to "nearby pods": our organizer runs `podlink match` to find who among *our* members
    could meet it ("To take one on: podlink claim NEED --by MEMBER"). suggest_matches only
    looks at members for needs of our own pod (ledger/queries.py, ``if req["pod"] ==
    own_pod``), so Oak's shared need gets no suggestion at all on Elm's node although
    Elm's member Jonny can drive."""
    s = scene
    jonny = await add_member(s, "Jonny", ["transport"])
    lift = s.ben.write(k.RequestOpened(title="Lift to clinic", category="transport"), "network")
    await s.feed(lift)
    found = await queries.suggest_matches(s.ledger.db, s.elm.id)
    assert [(m["request"], m["via"], m["match"]) for m in found] == [(lift.id, "member", jonny.id)]


async def test_match_urgent_need_not_cut_by_low_needs(scene: Scene) -> None:
    """suggest_matches sorts by closeness ``rank`` *before* urgency and then cuts to
    ``limit`` (500): with 100 low-urgency needs that five members could each meet (500
    rank-0 suggestions), the one *urgent* need, met by an offer of our own pod (rank 1),
    is cut from the list entirely (ledger/queries.py, the ``suggestions.sort`` key and
    ``suggestions[:limit]``). The list is bounded to help organizers, and it drops the
    most urgent need first."""
    s = scene
    for i in range(5):
        await add_member(s, f"Cook {i}", ["food"])
    lows = [s.ana.write(k.RequestOpened(title=f"Soup {i}", category="food", urgency="low"),
                        "pod") for i in range(100)]  # fmt: skip
    urgent = s.ana.write(
        k.RequestOpened(title="Insulin", category="medicine", urgency="urgent"), "pod"
    )
    pharmacy = s.ana.write(k.OfferOpened(title="Pharmacy runs", category="medicine"), "pod")
    await s.feed(*lows, urgent, pharmacy)
    found = await queries.suggest_matches(s.ledger.db, s.elm.id)
    assert len(found) == 500
    assert urgent.id in {m["request"] for m in found}, "the urgent need was cut"


async def test_match_for_a_shared_need_keeps_our_own_offer(scene: Scene) -> None:
    """On Elm's node, for a need Oak shared, suggest_matches fills the 5 slots per need
    with Oak's *own* offers first (rank 1, "the needing pod's own offers come first"),
    then any other pod's: Elm's offer, the only one Elm's organizer can act on (claim the
    need with it), is cut. Oak's organizers see Oak's offers on Oak's node; on Elm's node
    they crowd out Elm's (ledger/queries.py suggest_matches ranks from the needing pod's
    point of view, never from ``own_pod``'s)."""
    s = scene
    lift = s.ben.write(k.RequestOpened(title="Lift", category="transport"), "network")
    oaks = [s.ben.write(k.OfferOpened(title=f"Oak rides {i}", category="transport"),
                        "network") for i in range(5)]  # fmt: skip
    ours = s.ana.write(k.OfferOpened(title="Elm van", category="transport"), "pod")
    await s.feed(lift, *oaks, ours)
    found = await queries.suggest_matches(s.ledger.db, s.elm.id)
    assert ours.id in {m["match"] for m in found}, "Elm's own offer is not suggested"


async def test_match_never_suggests_the_member_in_need_as_helper(scene: Scene) -> None:
    """Agatha needs a translator and can translate (for others): `podlink match` suggests
    Agatha to meet her own need. suggest_matches pairs members by category only and never
    compares the member with the request's ``for_member`` (nor an offer's ``by_member``)."""
    s = scene
    agatha = await add_member(s, "Agatha", ["translation"])
    need = s.ana.write(k.RequestOpened(title="Letter from the council", category="translation",
                                       for_member=agatha.id), "pod")  # fmt: skip
    await s.feed(need)
    found = await queries.suggest_matches(s.ledger.db, s.elm.id)
    assert agatha.id not in {m["match"] for m in found}, "Agatha is suggested to help herself"


async def test_pinned_match_skips_closed_and_withdrawn_and_ranks_closer_help_first(
    scene: Scene,
) -> None:
    """Pinned (passes): for our own needs, a member who can comes before our own offer,
    which comes before another pod's; withdrawn offers, forgotten members, offers of
    another category and needs no longer open are never suggested."""
    s = scene
    kit = await add_member(s, "Kit", ["transport"])
    gone = await add_member(s, "Gone", ["transport"])
    lift = s.ana.write(k.RequestOpened(title="Lift", category="transport"), "pod")
    done = s.ana.write(k.RequestOpened(title="Old lift", category="transport"), "pod")
    ours = s.ana.write(k.OfferOpened(title="Elm van", category="transport"), "pod")
    old = s.ana.write(k.OfferOpened(title="Old van", category="transport"), "pod")
    theirs = s.ben.write(k.OfferOpened(title="Oak rides", category="transport"), "network")
    food = s.ben.write(k.OfferOpened(title="Oak soup", category="food"), "network")
    await s.feed(
        lift, done, ours, old, theirs, food,
        s.ana.write(k.RequestFulfilled(), "pod", [done.id]),
        s.ana.write(k.OfferWithdrawn(), "pod", [old.id]),
        s.ana.write(k.MemberForgotten(), "pod", [gone.id]),
    )  # fmt: skip
    found = await queries.suggest_matches(s.ledger.db, s.elm.id)
    assert [(m["request"], m["via"], m["match"], m["rank"]) for m in found] == [
        (lift.id, "member", kit.id, 0),
        (lift.id, "offer", ours.id, 1),
        (lift.id, "offer", theirs.id, 2),
    ]


async def test_forgotten_members_offer_is_no_longer_suggested(scene: Scene) -> None:
    """`member forget` is for someone who left or asked to be forgotten: their key and
    details are destroyed. Their offer (``by_member``) stays open for good, keeps being
    suggested by `podlink match` to every need of its category and listed by `offer list`
    as "by a member" (ledger/state.py fold_offer never looks at the member; fold_member
    never closes what they offered). Organizers are sent to a helper who is gone."""
    s = scene
    jonny = await add_member(s, "Jonny", [])
    rides = s.ana.write(k.OfferOpened(title="Rides", category="transport", by_member=jonny.id),
                        "pod")  # fmt: skip
    lift = s.ana.write(k.RequestOpened(title="Lift", category="transport"), "pod")
    await s.feed(rides, lift)
    assert [m["match"] for m in await queries.suggest_matches(s.ledger.db, s.elm.id)] == [rides.id]
    await s.feed(s.ana.write(k.MemberForgotten(), "pod", [jonny.id]))
    suggested = [m["match"] for m in await queries.suggest_matches(s.ledger.db, s.elm.id)]
    assert rides.id not in suggested, "the forgotten member's offer is still suggested"


# ---------------------------------------------------------------- two nodes, same events


async def test_lists_agree_between_pods_holding_the_same_events(
    make_ledger: OpenLedger, world: World
) -> None:
    """DESIGN.md: every node that holds the same events shows the same state. Two pods
    both opening a need and an offer in the same millisecond (equal HLC ``ts``; both HLCs
    start their counter at 0) or sharing a resource of the same name: list_requests
    (ORDER BY urgency_rank, opened_ts), list_offers (ORDER BY opened_ts) and
    list_resources (ORDER BY category, name) have no tie-break on the id, so ties fall to
    the rowid = the local store position, and each node lists its *own* first. The two
    nodes show the same events in different orders (and, at the 5,000-row cap of
    /v1/requests, different sets). ledger/queries.py list_requests/list_offers/
    list_resources: add ``, id`` to each ORDER BY."""
    elm, elm_setup = world.pod("Elm")
    oak, oak_setup = world.pod("Oak")
    world.tick(10)
    ts = world.clock.now() + (1 << 16)  # one shared instant, after both setups
    mine: dict[bytes, list[Event]] = {}
    for pod in (elm, oak):
        a = Author(pod.key, pod.id, world.clock, dict(pod.author.heads))
        mine[pod.id] = [
            a.write(k.RequestOpened(title=f"Soup {pod.id[:2].hex()}", category="food"),
                    "network", ts=ts),
            a.write(k.OfferOpened(title="Bread", category="food"), "network", ts=ts + 1),
            a.write(k.ResourceShared(name="Food bank", category="food"), "network", ts=ts + 2),
        ]  # fmt: skip
    orders = []
    for me, other in ((elm, oak), (oak, elm)):
        ledger: Ledger = await make_ledger(f"{me.id.hex()[:6]}.db", pod=me.id)
        feed = [*elm_setup, *oak_setup, *mine[me.id], *mine[other.id]]
        assert statuses(await ledger.ingest(wires(feed))) == ["stored"] * len(feed)
        db = ledger.db
        orders.append((
            [r["id"] for r in await queries.list_requests(db)],
            [o["id"] for o in await queries.list_offers(db)],
            [r["id"] for r in await queries.list_resources(db)],
        ))  # fmt: skip
    assert orders[0] == orders[1]


async def test_withdrawal_in_a_narrower_lane_does_not_split_the_network(
    scene: Scene, make_ledger: OpenLedger
) -> None:
    """An offer shared with the network, withdrawn by an event in the ``pod`` lane (any
    client of the organizer API may sign it; only the CLI takes care to reuse the offer's
    lane): Elm's node stores it and shows the offer withdrawn, but the withdrawal can never
    reach another pod, so every other node shows (and suggests) the offer open for ever,
    while Elm's organizers believe it is gone. fold_offer (ledger/state.py) accepts an
    offer.withdraw from any lane; it should count only one at least as wide as the offer
    (or ingest should refuse it), so that nodes holding what they may see agree."""
    s = scene
    off = s.ana.write(k.OfferOpened(title="Spare heater", category="utilities"), "network")
    gone = s.ana.write(k.OfferWithdrawn(reason="given away"), "pod", [off.id])
    await s.feed(off, gone)
    oak = await make_ledger("oak.db", pod=s.oak.id)
    visible, _, _ = await queries.select_visible(s.ledger.db, 0, 10_000, pod=s.elm.id)
    got = await oak.ingest([encode_wire(p, sig, body) for _, p, sig, body in visible])
    assert "stored" in statuses(got)
    at_elm = {o["id"]: o["status"] for o in await queries.list_offers(s.ledger.db, status=None)}
    at_oak = {o["id"]: o["status"] for o in await queries.list_offers(oak.db, status=None)}
    assert at_elm == at_oak, (at_elm[off.id], at_oak[off.id])


# ---------------------------------------------------------------- through a real node


@pytest.fixture
async def alder(tmp_path: Path) -> AsyncIterator[PodNode]:
    """One running node (pod Alder) on 127.0.0.1, its organizer client signing."""
    node = await make_node(tmp_path / "Alder", "Alder")
    await node.start()
    yield node
    await node.stop()


def other_pod_needs(n: int, **fields: object) -> tuple[Keypair, list[Event]]:
    """A second pod (its own key writes, so no roster is needed) sharing ``n`` needs."""
    key = Keypair.generate()
    oak = Author(key, key.public)
    events = [oak.write(k.PodFounded(name="Oak"), "network")]
    events += [oak.write(k.RequestOpened(title=f"Oak need {i}", category="food",
                                         **fields), "network")  # type: ignore[arg-type]
               for i in range(n)]  # fmt: skip
    return key, events


async def test_status_open_needs_counts_only_this_pods_needs(alder: PodNode) -> None:
    """`podlink status` "Show[s] the pod: ... open requests" and prints ``open needs``;
    the printed sheet's "Open needs" keeps only this pod's (cli/export.py). /v1/status
    counts every open request the node holds, other pods' shared ones included
    (node/organizer_api.py status: ``SELECT count(*) FROM requests WHERE status =
    'open'``), so an organizer whose pod has 1 open need reads "open needs 4" after a
    nearby pod shares three. Fix: ``... AND pod = ?`` with node.pod (or report both)."""
    await alder.open_request("Our need", lane="pod")
    _, events = other_pod_needs(3)
    assert statuses(await alder.ledger.ingest(wires(events))) == ["stored"] * 4
    assert (await alder.status())["open_requests"] == 1


async def test_request_list_shows_a_new_need_after_5000_closed_ones(alder: PodNode) -> None:
    """/v1/requests cuts every list at MAX_LIST = 5,000 rows, silently (no flag, no
    header, no "more" in the CLI), and it cuts *before* the CLI sorts open needs first:
    the SQL orders by urgency then opened_ts over all statuses (ledger/queries.py
    list_requests). A pod (or a network of pods sharing with it) that has closed 5,000
    needs of normal urgency over time never again sees a new normal need in `podlink
    request list`: the 5,000 oldest, all fulfilled, fill the page (node/organizer_api.py
    list_requests, ``limit=MAX_LIST``). Fix: order active needs first in SQL (``status
    IN ('open','accepted') DESC``) and say when the list was cut (a ``truncated`` field or
    a Link/next cursor), as /v1/log pages do."""
    author = await alder.author()
    old = []
    for i in range(5000):
        need = author.write(k.RequestOpened(title=f"Old {i}", category="food"), "pod")
        old += [need, author.write(k.RequestFulfilled(), "pod", [need.id])]
    assert set(statuses(await alder.ledger.ingest(wires(old)))) == {"stored"}
    new = await alder.open_request("Prescription pickup", lane="pod")
    listed = await alder.client.get("/v1/requests")
    assert len(listed) == 5000
    assert new.id_text in {r["id"] for r in listed}, "the new open need is not listed"
