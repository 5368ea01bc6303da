"""Every organizer list answers at most ``limit`` rows, and pages by keyset (``after``)
without skipping or repeating a row, also when rows are added or change between pages;
the inbox pages by ``before`` and lists one sender whole with ``from``.

Real nodes on 127.0.0.1, rows from real signed events: other pods' (ingested as a peer
would deliver them) and this pod's own (submitted by its organizer). Small ``limit``
values keep the data small.
"""

from __future__ import annotations

import base64
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from podlink.ledger.authoring import Author
from podlink.node.client import ClientError, NodeClient
from podlink.protocol import boxes, kinds
from podlink.protocol.envelope import Event
from podlink.protocol.keys import Keypair
from podlink.protocol.text import b64e
from tests.ledger.helpers import World, wires
from tests.node.conftest import Network
from tests.node.helpers import PodNode

Between = Callable[[int], Awaitable[None]]


async def ingest(node: PodNode, events: list[Event]) -> None:
    results = await node.ledger.ingest(wires(events))
    assert {r.status for r in results} == {"stored"}, [r for r in results if r.status != "stored"]


async def pages(
    client: NodeClient,
    path: str,
    limit: int,
    *,
    start: int | str,
    between: Between | None = None,
    **query: Any,
) -> tuple[list[dict[str, Any]], int]:
    """Every row of ``path``, ``limit`` at a time by ``after``; ``between(i)`` runs after
    page i. Returns the rows and how many pages it took."""
    found: list[dict[str, Any]] = []
    after, n = start, 0
    while True:
        page = await client.get(path, **query, limit=limit, after=after)
        assert len(page) <= limit
        found += page
        n += 1
        if len(page) < limit:
            return found, n
        after = page[-1]["cursor"] if isinstance(start, str) else page[-1]["pos"]
        if between is not None:
            await between(n)


def raw(key: str) -> bytes:
    """An id or key as the node orders it (its bytes)."""
    return base64.urlsafe_b64decode(key + "=")


def once(rows: list[dict[str, Any]], key: str = "id") -> list[Any]:
    """The keys of ``rows``, checked to hold no repeat."""
    keys = [r[key] for r in rows]
    assert len(keys) == len(set(keys)), "a row came back twice"
    return keys


class Other:
    """Another pod (not peered: its events are ingested as gossip would deliver them)."""

    def __init__(self, world: World, name: str = "Other") -> None:
        self.world = world
        self.pod, self.genesis = world.pod(name)
        self.sent = False

    def write(self, body: Any, refs: tuple[bytes, ...] = ()) -> Event:
        self.world.tick()
        return self.pod.author.write(body, "network", list(refs))

    def first(self, events: list[Event]) -> list[Event]:
        """``events``, after the pod's genesis the first time."""
        if self.sent:
            return events
        self.sent = True
        return [*self.genesis, *events]


# ---------------------------------------------------------------- store-position lists


async def test_offers_page_by_position_without_skip_or_repeat(network: Network) -> None:
    [node] = await network(1)
    other = Other(World())
    offers = [other.write(kinds.OfferOpened(title=f"soup {i}", category="food"))
              for i in range(10)]  # fmt: skip
    await ingest(node, other.first(offers))
    added: list[Event] = []

    async def between(i: int) -> None:  # new offers, and one already listed withdrawn
        new = [other.write(kinds.OfferOpened(title=f"late {i}.{j}", category="food"))
               for j in range(2)]  # fmt: skip
        gone = other.write(kinds.OfferWithdrawn(), (offers[i].id,))
        added.extend(new)
        await ingest(node, [*new, gone])

    rows, n = await pages(node.client, "/v1/offers", 4, start=0, between=between, status="all")
    assert n >= 4
    assert once(rows) == [b64e(e.id) for e in offers + added]  # store order, every one
    # Without after: the list's own order (oldest first), cut at limit, offset on.
    first = await node.client.get("/v1/offers", status="all", limit=3)
    rest = await node.client.get("/v1/offers", status="all", offset=3)
    assert len(first) == 3 and "pos" not in first[0]
    assert [o["id"] for o in first + rest] == [
        o["id"] for o in sorted(rows, key=lambda o: (o["opened_ts"], raw(o["id"])))]
    # One offer by id (whole, or a prefix), whatever its status.
    late = b64e(added[-1].id)
    assert [o["id"] for o in await node.client.get("/v1/offers", id=late)] == [late]
    assert [o["id"] for o in await node.client.get("/v1/offers", id=late[:12])] == [late]
    withdrawn = b64e(offers[1].id)
    assert await node.client.get("/v1/offers", id=withdrawn) == []  # open only by default
    [row] = await node.client.get("/v1/offers", id=withdrawn, status="all")
    assert row["status"] == "withdrawn"


async def test_resources_page_by_position_and_by_id(network: Network) -> None:
    [node] = await network(1)
    other = Other(World())
    shared = [other.write(kinds.ResourceShared(name=f"pantry {i}", category="food"))
              for i in range(9)]  # fmt: skip
    await ingest(node, other.first(shared))
    added: list[Event] = []

    async def between(i: int) -> None:
        new = other.write(kinds.ResourceShared(name=f"late {i}", category="food"))
        added.append(new)
        await ingest(node, [new])

    rows, _ = await pages(node.client, "/v1/resources", 2, start=0, between=between)
    assert once(rows) == [b64e(e.id) for e in shared + added]
    only, _ = await pages(node.client, "/v1/resources", 2, start=0, category="medicine")
    assert only == []
    key = b64e(shared[4].id)
    [row] = await node.client.get("/v1/resources", id=key)
    assert row["name"] == "pantry 4"


async def test_claims_page_by_position(network: Network) -> None:
    [node] = await network(1)
    world = World()
    asker, helper = Other(world, "Asker"), Other(world, "Helper")
    needs = [asker.write(kinds.RequestOpened(title=f"need {i}", category="food"))
             for i in range(3)]  # fmt: skip
    claims = [helper.write(kinds.ClaimMade(note=f"on {i} #{j}"), (needs[i].id,))
              for j in range(3) for i in range(3)]  # fmt: skip
    await ingest(node, asker.first(needs) + helper.first(claims))
    added: list[Event] = []

    async def between(i: int) -> None:
        new = helper.write(kinds.ClaimMade(note=f"late {i}"), (needs[0].id,))
        added.append(new)
        await ingest(node, [new])

    rows, n = await pages(node.client, "/v1/claims", 2, start=0, between=between)
    assert n >= 5
    assert once(rows) == [b64e(e.id) for e in claims + added]
    on_first, _ = await pages(node.client, "/v1/claims", 2, start=0, request=b64e(needs[0].id))
    assert set(once(on_first)) == {b64e(e.id) for e in claims[0::3] + added}
    [one] = await node.client.get("/v1/claims", id=b64e(claims[5].id))
    assert one["note"] == "on 2 #1"


async def test_hours_page_by_fulfilment(network: Network) -> None:
    [node] = await network(1)
    asker = Other(World(), "Asker")
    events: list[Event] = []
    for i in range(7):
        need = asker.write(kinds.RequestOpened(title=f"need {i}", category="food"))
        events += [need, asker.write(kinds.RequestFulfilled(hours=i + 1), (need.id,))]
    await ingest(node, asker.first(events))
    added: list[bytes] = []

    async def between(i: int) -> None:
        need = asker.write(kinds.RequestOpened(title=f"late {i}", category="food"))
        done = asker.write(kinds.RequestFulfilled(hours=0.5), (need.id,))
        added.append(done.id)
        await ingest(node, [need, done])

    rows, n = await pages(node.client, "/v1/hours", 3, start="", between=between)
    assert n >= 3
    ids = once(rows)
    assert {b64e(e.id) for e in events[1::2]} <= set(ids) <= {
        b64e(e.id) for e in events[1::2]} | {b64e(a) for a in added}  # fmt: skip
    assert sum(r["hours"] for r in rows if r["id"] in {b64e(e.id) for e in events[1::2]}) == 28
    whole = await node.client.get("/v1/hours")  # no after: the old order, by time
    assert [r["ts"] for r in whole] == sorted(r["ts"] for r in whole)


# ---------------------------------------------------------------- lists by key


async def test_pods_page_by_key_also_when_pods_arrive_between_pages(network: Network) -> None:
    [node] = await network(1)
    world = World()
    first = [Other(world, f"Pod {i:02}") for i in range(11)]
    await ingest(node, [e for o in first for e in o.genesis])
    late: list[str] = []

    async def between(i: int) -> None:  # some sort before the cursor, some after
        new = [Other(world, f"Late {i}.{j}") for j in range(3)]
        late.extend(b64e(o.pod.id) for o in new)
        await ingest(node, [e for o in new for e in o.genesis])

    rows, n = await pages(node.client, "/v1/pods", 3, start="", between=between)
    assert n >= 4
    keys = once(rows, "pod")
    assert keys == sorted(keys, key=raw)  # key order
    before = {b64e(o.pod.id) for o in first} | {node.key}
    assert before <= set(keys) <= before | set(late)
    # Without after: by name, as before, cut at limit.
    named = await node.client.get("/v1/pods", limit=4)
    assert len(named) == 4 and [p["name"] for p in named] == sorted(p["name"] for p in named)


async def test_roster_pages_by_key_for_all_pods_and_for_one(network: Network) -> None:
    [node] = await network(1)
    world = World()
    big = Other(world, "Big")
    adds = [big.write(kinds.OrganizerAdded(key=Keypair.generate().public, name=f"org {i}"))
            for i in range(8)]  # fmt: skip
    await ingest(node, big.first(adds))
    late: list[Event] = []

    async def between(i: int) -> None:
        late.append(big.write(kinds.OrganizerAdded(key=Keypair.generate().public,
                                                   name=f"late {i}")))  # fmt: skip
        await ingest(node, late[-1:])

    rows, n = await pages(node.client, "/v1/roster", 3, start="", between=between, pod="all")
    assert n >= 3
    once(rows, "cursor")
    names = {r["name"] for r in rows}
    assert {f"org {i}" for i in range(8)} <= names
    assert len({(r["pod"], r["key"]) for r in rows}) == len(rows)
    theirs, _ = await pages(node.client, "/v1/roster", 2, start="", pod=b64e(big.pod.id))
    assert {r["pod"] for r in theirs} == {b64e(big.pod.id)} and len(theirs) == 8 + len(late)
    ours = await node.client.get("/v1/roster")  # no pod, no after: this pod's, as before
    assert {r["pod"] for r in ours} == {node.key} and "cursor" not in ours[0]


async def add_members(node: PodNode, names: list[str]) -> list[bytes]:
    """Members of the node's own pod, written by its organizer (as `member add` does)."""
    author: Author = await node.client.author(node.pod)
    events, keys = [], {}
    for name in names:
        key = boxes.new_member_key()
        box = boxes.lock(key, kinds.encode_body(kinds.MemberDetails(name=name)))
        event = author.write(kinds.MemberJoined(box=box), "pod")
        events.append(event)
        keys[event.id] = key
    await node.client.submit(events, keys)
    return [e.id for e in events]


async def test_members_page_by_id(network: Network) -> None:
    [node] = await network(1)
    ids = await add_members(node, [f"member {i}" for i in range(10)])
    late: list[bytes] = []

    async def between(i: int) -> None:
        late.extend(await add_members(node, [f"late {i}"]))

    rows, n = await pages(node.client, "/v1/members", 3, start="", between=between)
    assert n >= 4
    keys = once(rows)
    assert {b64e(i) for i in ids} <= set(keys) <= {b64e(i) for i in ids + late}
    assert all(r["name"].startswith(("member", "late")) for r in rows)  # opened, page by page
    shown = await node.client.get("/v1/members", limit=4)  # no after: joining order
    assert [m["name"] for m in shown] == [f"member {i}" for i in range(4)]
    [one] = await node.client.get("/v1/members", id=b64e(ids[7]))
    assert one["name"] == "member 7"


# ---------------------------------------------------------------- bad parameters


BAD = [
    ("/v1/offers", {"limit": "0"}, "limit must be between 1 and 5000"),
    ("/v1/claims", {"limit": "5001"}, "limit must be between 1 and 5000"),
    ("/v1/resources", {"limit": "ten"}, "limit must be a whole number"),
    ("/v1/hours", {"offset": "-1"}, "offset must be a whole number"),
    ("/v1/pods", {"limit": "+5"}, "limit must be a whole number"),
    ("/v1/members", {"offset": "1", "after": ""}, "give offset or after, not both"),
    ("/v1/requests", {"offset": "1", "after": "0"}, "give offset or after, not both"),
    ("/v1/offers", {"after": "abc"}, "after must be a whole number"),
    ("/v1/claims", {"after": "1e3"}, "after must be a whole number"),
    ("/v1/pods", {"after": "abc"}, "after must be the cursor of a pod"),
    ("/v1/members", {"after": "x" * 43}, "after must be the cursor of a member"),
    ("/v1/hours", {"after": "0"}, "after must be the cursor of a fulfilment"),
    ("/v1/roster", {"pod": "all", "after": "abc"}, "after must be the cursor of a roster row"),
    ("/v1/roster", {"limit": "0", "pod": "all"}, "limit must be between 1 and 5000"),
    ("/v1/offers", {"id": "!!"}, "is not a offer id"),
    ("/v1/members", {"id": "!" * 43}, "id is not"),
    ("/v1/inbox", {"before": "0"}, "before must be between 1 and"),
    ("/v1/inbox", {"limit": "101"}, "limit must be between 1 and 100"),
    ("/v1/inbox", {"from": "nobody"}, "from (a pod key)"),
]


@pytest.mark.parametrize(("path", "query", "reason"), BAD)
async def test_bad_paging_parameters_get_400_with_the_reason(
    network: Network, path: str, query: dict[str, str], reason: str
) -> None:
    [node] = await network(1)
    with pytest.raises(ClientError) as refused:
        await node.client.get(path, **query)
    assert refused.value.status in (400, 404), refused.value.message
    assert refused.value.reason in ("invalid", "not-found")
    assert reason in refused.value.message, refused.value.message


# ---------------------------------------------------------------- the inbox


def sealed(to: bytes, name: str, note: str = "") -> kinds.SealedMessage:
    plain = kinds.encode_body(kinds.ContactHandoff(name=name, contact="555-0100", note=note))
    return kinds.SealedMessage(to=to, box=boxes.seal_to(to, plain))


async def inbox_pages(client: NodeClient, **query: Any) -> list[list[dict[str, Any]]]:
    out: list[list[dict[str, Any]]] = []
    before = None
    while True:
        page = await client.get("/v1/inbox", before=before, **query)
        if not page:
            return out
        assert [i["pos"] for i in page] == sorted((i["pos"] for i in page), reverse=True)
        assert before is None or page[0]["pos"] < before
        out.append(page)
        before = page[-1]["pos"]


async def test_inbox_pages_reach_a_contact_pushed_out_by_200_messages_from_50_pods(
    network: Network,
) -> None:
    [node] = await network(1)
    world = World()
    helper = Other(world, "Helper")
    events = helper.first([helper.write(sealed(node.pod, "Jonny"))])
    crowd = [Other(world, f"Crowd {i}") for i in range(50)]
    for _round in range(4):
        for i, pod in enumerate(crowd):
            events += pod.first([pod.write(sealed(node.pod, f"crowd {i}"))])
    await ingest(node, events)
    newest = await node.client.get("/v1/inbox")
    assert len(newest) == 100 and "Jonny" not in {i["message"]["name"] for i in newest}
    book = await inbox_pages(node.client)
    items = [i for page in book for i in page]
    assert [len(p) for p in book] == [100, 100, 1]
    assert len({i["id"] for i in items}) == 201  # every one, none twice
    assert items[-1]["message"]["name"] == "Jonny" and items[-1]["from_name"] == "Helper"


async def test_inbox_keeps_the_cap_per_page_and_lists_one_sender_whole(network: Network) -> None:
    [node] = await network(1)
    world = World()
    friend, stranger = Other(world, "Friend"), Other(world, "Stranger")
    events = friend.first([friend.write(sealed(node.pod, f"friend {i}")) for i in range(3)])
    events += stranger.first([stranger.write(sealed(node.pod, f"spam {i}")) for i in range(25)])
    await ingest(node, events)
    book = await inbox_pages(node.client, limit=5)  # the cap is never reached at 5 a page
    assert [len(p) for p in book] == [5] * 5 + [3]
    assert len({i["id"] for page in book for i in page}) == 28
    first = await node.client.get("/v1/inbox")
    spam = [i for i in first if i["from"] == b64e(stranger.pod.id)]
    assert len(spam) == 10 and len(first) == 13  # the cap, and every friend's message
    whole = await inbox_pages(node.client, limit=7, **{"from": b64e(stranger.pod.id)})
    names = [i["message"]["name"] for page in whole for i in page]
    assert names == [f"spam {i}" for i in reversed(range(25))]  # all 25, newest first
