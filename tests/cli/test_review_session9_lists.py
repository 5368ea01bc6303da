"""Review of the paged organizer lists and of the CLI commands that read them (session 9).

Each failing test names, in its docstring, what is wrong. Real `podlink serve` nodes on
127.0.0.1 (or an in-process node of tests/node), real SQLite files, events signed with
real Ed25519 keys. The CLI runs in this process with a page size of 3
(``podlink.node.client.LIST_PAGE``) so that a handful of rows spans several pages; the
requests it sends are counted by wrapping ``NodeClient.request`` (every call still goes
to the real node over HTTP).
"""

from __future__ import annotations

import asyncio
import csv
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiosqlite
import pytest
from aiohttp import web

from podlink.cli.session import Target
from podlink.ledger import queries
from podlink.ledger.ledger import Ledger
from podlink.node import client as node_client
from podlink.node.client import ClientError, NodeClient
from podlink.protocol import clock, kinds
from podlink.protocol.envelope import Event
from podlink.protocol.keys import Keypair
from podlink.protocol.text import b64d, b64e
from tests.cli.conftest import Pod, make_pod, running
from tests.ledger.helpers import World, wires
from tests.node.helpers import PodNode, make_node

PAGE = 3
OTHERS = 15  # other pods in the directory, each with an open need and an open offer


def text_and_bytes_disagree(a: Event, b: Event) -> bool:
    """Whether the two ids sort one way as base64url text and the other way as bytes."""
    return (b64e(a.id) < b64e(b.id)) != (a.id < b.id)


def tied_needs(start_ms: int) -> list[Event]:
    """Two pods' genesis and one open need each, stamped at the same instant (each pod's
    clock reads the same wall: two pods of a large network opening a need in the same
    millisecond), both urgent (first in `request list`, whose first page is all it
    shows); their ids sort differently as text and as bytes."""
    for _attempt in range(200):  # about one random pair in three qualifies
        made = []
        for name in ("Tie A", "Tie B"):
            world = World(start_ms)  # a clock of its own, at the same wall time
            pod, genesis = world.pod(name)
            need = pod.author.write(
                kinds.RequestOpened(title=f"need of {name}", category="food", urgency="urgent"),
                "network",
            )
            made.append((genesis, need))
        (ga, na), (gb, nb) = made
        if na.ts == nb.ts and text_and_bytes_disagree(na, nb):
            return [*ga, *gb, na, nb]
    raise AssertionError("no pair of ids found whose text and byte orders differ")


def renamed_organizer(start_ms: int) -> list[Event]:
    """A pod ("Renamed pod") whose one organizer key was added as "Old name", removed,
    and added again as "New name" (a rename, or an organizer who came back), the first
    add's id sorting AFTER the second's as bytes (one pair in two does)."""
    for _attempt in range(100):
        world = World(start_ms)
        pod, genesis = world.pod("Renamed pod")
        key = Keypair.generate().public
        writes = []
        for body in (kinds.OrganizerAdded(key=key, name="Old name"),
                     kinds.OrganizerRemoved(key=key),
                     kinds.OrganizerAdded(key=key, name="New name")):  # fmt: skip
            world.tick()
            writes.append(pod.author.write(body, "network"))
        if writes[0].id > writes[2].id:
            return [*genesis, *writes]
    raise AssertionError("no pair of roster.add ids in the wanted order")


def network_rows() -> list[Event]:
    """OTHERS pods, each with a directory entry, an organizer, an open need and an open
    offer, all in the network lane."""
    world = World(clock.now_ms() - 120_000)
    events: list[Event] = []
    for i in range(OTHERS):
        pod, genesis = world.pod(f"Far {i:02}")
        events += genesis
        world.tick()
        events.append(
            pod.author.write(
                kinds.OrganizerAdded(key=Keypair.generate().public, name=f"org {i}"), "network"
            )
        )
        world.tick()
        events.append(
            pod.author.write(kinds.RequestOpened(title=f"far need {i}", category="food"), "network")
        )
        world.tick()
        events.append(
            pod.author.write(kinds.OfferOpened(title=f"far soup {i}", category="food"), "network")
        )
    return events


async def _ingest(path: Path, events: list[Event]) -> None:
    ledger = await Ledger.open(path)
    try:
        results = await ledger.ingest(wires(events))
        assert {r.status for r in results} == {"stored"}, [
            (r.status, r.message) for r in results if r.status != "stored"][:3]  # fmt: skip
    finally:
        await ledger.close()


@pytest.fixture(scope="module")
def maple(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pod]:
    pod = make_pod(tmp_path_factory.mktemp("review9"), "Maple")
    events = (network_rows() + tied_needs(clock.now_ms() - 60_000)
              + renamed_organizer(clock.now_ms() - 30_000))  # fmt: skip
    asyncio.run(_ingest(pod.home / "ledger.db", events))
    with running(pod):
        pod("member", "add", "Ana", "--contact", "555 0100")
        pod("request", "add", "our own need", "--category", "food")
        yield pod


@pytest.fixture(autouse=True)
def small_pages(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(node_client, "LIST_PAGE", PAGE)


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, dict[str, Any]]]:
    """(path, query) of every request the CLI sends from now on (each still sent)."""
    calls: list[tuple[str, dict[str, Any]]] = []
    real = NodeClient.request

    async def counted(self: NodeClient, method: str, path: str, **kw: Any) -> Any:
        calls.append((path, dict(kw.get("query") or {})))
        return await real(self, method, path, **kw)

    monkeypatch.setattr(NodeClient, "request", counted)
    return calls


def paths(calls: list[tuple[str, dict[str, Any]]], path: str) -> int:
    return sum(1 for p, _ in calls if p == path)


# ---------------------------------------------------------------- order


def test_export_csv_requests_orders_tied_needs_otherwise_than_request_list(maple: Pod) -> None:
    """`export csv requests` claims the order `request list` shows (cli/export.py,
    _pressing_first: "As request list shows them"), and its members, offers and
    resources exports now sort ids as bytes (`_raw`) to match the node. Needs still
    break a tie (same status, urgency and opened_ts) by the id's base64url TEXT, while
    the node orders by the id's BYTES (ledger/queries.py list_requests, ``id``): two
    needs opened in the same millisecond come out in opposite orders in the list and
    in the export."""
    listed = [r["title"] for r in maple.json("request", "list")
              if r["title"].startswith("need of Tie")]  # fmt: skip
    exported = [
        r["title"]
        for r in csv.DictReader(io.StringIO(maple("export", "csv", "requests").stdout))
        if r["title"].startswith("need of Tie")
    ]
    assert len(listed) == 2
    assert exported == listed


def test_key_names_call_a_re_added_organizer_by_a_name_it_no_longer_has(maple: Pod) -> None:
    """KeyNames (cli/session.py) kept, for each (pod, key), the name of the LAST roster
    row it read; GET /v1/roster?pod=all pages come in (pod, key, add_id) order, so the
    name kept was that of the tenure whose roster.add id happens to sort last: a key
    removed and added again under a new name was shown by its old name one time in two.
    The node now names keys (``queries.organizer_names``, for `log` and `log --forks`):
    by the newest tenure, whatever the ids."""
    [renamed] = [p["pod"] for p in maple.json("pod", "list") if p["name"] == "Renamed pod"]
    roster = Target(maple.home).call(lambda s: s.get_all("/v1/roster", pod=renamed))
    assert {r["name"] for r in roster} == {"Old name", "New name"}

    async def name() -> dict[tuple[bytes, bytes], str]:
        path = maple.home / "ledger.db"
        async with aiosqlite.connect(f"file:{path}?mode=ro", uri=True) as db:
            pair = (b64d(renamed), b64d(roster[0]["key"]))
            return await queries.organizer_names(db, [pair])

    assert list(asyncio.run(name()).values()) == ["New name"]


# ---------------------------------------------------------------- cost


def test_export_sheet_pages_through_every_pods_open_needs_to_print_its_own(
    maple: Pod, sent: list[tuple[str, dict[str, Any]]]
) -> None:
    """`export sheet` prints this pod's own open needs, but reads every open need of the
    whole network, page after page, and drops the others' in the CLI (cli/export.py
    export_sheet: ``get_all("/v1/requests", status="open")`` then ``r["pod"] ==
    me["pod"]``), though GET /v1/requests filters by ``pod``: the sheet costs one page
    per LIST_PAGE needs of the network, not of the pod."""
    sheet = maple("export", "sheet").stdout
    assert "our own need" in sheet and "far need" not in sheet
    pages = [q for p, q in sent if p == "/v1/requests"]
    assert len(pages) <= 1, f"{len(pages)} pages of GET /v1/requests for one own need"


def test_a_log_of_one_event_reads_every_page_of_the_network_roster_and_directory(
    maple: Pod, sent: list[tuple[str, dict[str, Any]]]
) -> None:
    """`podlink log --limit 1` names the authors of the one row it shows, but reads every
    page of GET /v1/roster?pod=all and GET /v1/pods to do so (cli/pods.py log ->
    PodSession.key_names, cli/session.py): the cost of a one-line log grows with the
    network (here 19 pods: 7 pages of pods, and as many of rosters, at a page of 3)."""
    maple("log", "--limit", "1")
    reads = paths(sent, "/v1/pods") + paths(sent, "/v1/roster")
    assert reads <= 2, f"{reads} pages of the directory and rosters for a one-row log"


async def test_a_log_page_of_one_row_reads_the_whole_directory(tmp_path: Path) -> None:
    """GET /v1/log names each row's pod with ``pod_names(db)`` over the WHOLE pods table
    (ledger/queries.py log_page: ``names = await pod_names(db)``), though this session
    made pod_names take the pods of a page because "reading the whole directory for
    each page made every page cost as much as the network is large": a one-row page
    of the log reads every directory entry. Counted in SQLite VM steps on the node's
    reader connection: 20 more pods should not change a one-row page, 400 do."""
    node = await make_node(tmp_path / "alder", "Alder")
    await node.start()
    try:
        await _log_costs(node)
    finally:
        await node.stop()


async def _log_costs(node: PodNode) -> None:
    steps = [0]

    def step() -> int:
        steps[0] += 1
        return 0

    async def cost() -> int:
        await node.ledger.reader.set_progress_handler(step, 5)
        try:
            steps[0] = 0
            page = await node.client.get("/v1/log", limit=1)
            assert len(page) == 1
            return steps[0]
        finally:
            await node.ledger.reader.set_progress_handler(None, 0)

    def pods(n: int, first: int) -> list[Event]:
        world = World(clock.now_ms() - 60_000)
        return [e for i in range(n) for e in world.pod(f"Pod {first + i}")[1]]

    await node.ledger.ingest(wires(pods(20, 0)))
    small = await cost()
    results = await node.ledger.ingest(wires(pods(400, 20)))
    assert {r.status for r in results} == {"stored"}
    large = await cost()
    assert large <= 2 * small + 10, f"{small} steps with 21 pods, {large} with 421"


def test_forgetting_a_member_pages_through_every_open_offer_of_the_network(
    maple: Pod, sent: list[tuple[str, dict[str, Any]]]
) -> None:
    """`member forget` withdraws the offers made in the member's name, and to find them
    reads every open offer of the whole network, page after page, keeping this pod's own
    by that member in the CLI (cli/ops.py forget_member: ``get_all("/v1/offers")`` then
    ``o["pod"] == pod and o["by_member"] == ...``): forgetting one member costs a page per
    LIST_PAGE offers of the network (GET /v1/offers has no pod or member filter). Run
    last in this module: it forgets the fixture's only member."""
    ana = next(m for m in maple.json("member", "list") if m["name"] == "Ana")
    offer = maple.json("offer", "add", "Ana's soup", "--category", "food", "--by",
                       ana["id"])["id"]  # fmt: skip
    sent.clear()
    done = maple.json("member", "forget", ana["id"], "--yes")
    assert done["withdrawn_offers"] == [offer]
    pages = paths(sent, "/v1/offers")
    assert pages <= 1, f"{pages} pages of GET /v1/offers to find one member's offer"


# ---------------------------------------------------------------- get_all's cursor


async def test_get_all_follows_a_cursor_that_goes_back_for_ever() -> None:
    """NodeClient.get_all guards against "a node that does not move on" only when the
    next cursor EQUALS the last one (node/client.py: ``if nxt == after``). A node whose
    pages end at positions 5, 3, 5, 3 ... (or any cursor that does not sort after the
    one asked for) keeps the CLI asking for ever, holding every row in memory. The fake
    node below answers an error after 20 pages so that the test ends; get_all should
    have given up at the second page (a cursor that did not move forward)."""
    hits = [0]

    async def offers(request: web.Request) -> web.Response:
        hits[0] += 1
        if hits[0] > 20:
            return web.json_response({"error": "invalid", "message": "enough"}, status=400)
        last = 5 if hits[0] % 2 else 3
        rows = [{"id": f"o{last}-{i}", "pos": last - 2 + i} for i in range(3)]
        return web.json_response(rows)

    app = web.Application()
    app.router.add_get("/v1/offers", offers)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    key = Keypair.generate()
    client = NodeClient(f"http://127.0.0.1:{port}", key, pod=key.public)
    try:
        with pytest.raises(ClientError):
            await client.get_all("/v1/offers", page=3)
    finally:
        await client.close()
        await runner.cleanup()
    assert hits[0] <= 2, f"get_all asked {hits[0]} times"
