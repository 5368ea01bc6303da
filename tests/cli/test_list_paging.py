"""The CLI reads every page where it needs every row (exports, hours, the directory, key
names, a member by name), one row by id where it needs one, and says in one line when a
list it shows is cut; `podlink inbox --before` and `--from` reach every sealed contact.

A real `podlink serve` node; the CLI runs in this process, where the page size
(``podlink.node.client.LIST_PAGE``) is made 3, so a handful of rows spans several pages
over real HTTP.
"""

from __future__ import annotations

import asyncio
import csv
import io
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from podlink.cli.session import Target
from podlink.ledger.authoring import Author
from podlink.ledger.ledger import Ledger
from podlink.node import client as node_client
from podlink.protocol import boxes, kinds
from podlink.protocol.envelope import Event
from podlink.protocol.keys import Keypair, load_keypair
from tests.cli.conftest import Pod, make_pod, running
from tests.ledger.helpers import World, wires

PAGE = 3


def sealed(to: bytes, name: str) -> kinds.SealedMessage:
    plain = kinds.encode_body(kinds.ContactHandoff(name=name, contact="555-0100"))
    return kinds.SealedMessage(to=to, box=boxes.seal_to(to, plain))


def network_rows(home: Path) -> list[Event]:
    """Other pods' directory entries, organizers, offers, resources and sealed contacts,
    and this pod's own fulfilled needs with hours (signed with its node key)."""
    world = World()
    pod_id = load_keypair(home / "node.key").public
    events: list[Event] = []
    others = []
    for i in range(7):
        other, genesis = world.pod(f"Pod {i}")
        others.append(other)
        events += genesis
    big = others[0]

    def write(body: object, author: Author = big.author) -> None:
        world.tick()
        events.append(author.write(body, "network"))  # type: ignore[arg-type]

    for i in range(7):
        write(kinds.OrganizerAdded(key=Keypair.generate().public, name=f"org {i}"))
        write(kinds.OfferOpened(title=f"soup {i}", category="food"))
        write(kinds.ResourceShared(name=f"pantry {i}", category="food"))
    own = Author(load_keypair(home / "node.key"), pod_id, world.clock)
    for i in range(7):
        world.tick()
        # The peers lane: the node key's network feed already holds its genesis.
        need = own.write(kinds.RequestOpened(title=f"need {i}", category="food"), "peers")
        world.tick()
        done = own.write(kinds.RequestFulfilled(hours=i + 1), "peers", [need.id])
        events += [need, done]
    write(sealed(pod_id, "Jonny"), others[1].author)  # the oldest contact
    strangers = []
    for j in range(35):
        stranger, genesis = world.pod(f"Stranger {j}")
        strangers.append(stranger)
        events += genesis
    for _round in range(3):  # 105 from 35 strangers, 3 each, push it out of the newest 100
        for j, stranger in enumerate(strangers):
            write(sealed(pod_id, f"crowd {j}"), stranger.author)
    for k in range(12):  # one pod over the cap of 10 a page
        write(sealed(pod_id, f"loud {k}"), others[2].author)
    return events


async def _ingest(path: Path, events: list[Event]) -> None:
    ledger = await Ledger.open(path)
    try:
        results = await ledger.ingest(wires(events))
        assert {r.status for r in results} == {"stored"}, [
            (r.status, r.message) for r in results if r.status != "stored"][:3]
    finally:
        await ledger.close()


@pytest.fixture(scope="module")
def maple(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pod]:
    pod = make_pod(tmp_path_factory.mktemp("paging"), "Maple")
    asyncio.run(_ingest(pod.home / "ledger.db", network_rows(pod.home)))
    with running(pod):
        for i in range(5):
            pod("member", "add", f"member {i}", "--contact", f"555 010{i}")
        yield pod


@pytest.fixture(autouse=True)
def small_pages(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(node_client, "LIST_PAGE", PAGE)


def test_hours_count_every_page(maple: Pod) -> None:
    tally = maple.json("hours")
    assert tally["fulfilments"] == 7 and tally["total"] == 28


def test_exports_hold_every_row_in_the_order_they_always_had(maple: Pod) -> None:
    offers = list(csv.DictReader(io.StringIO(maple("export", "csv", "offers").stdout)))
    assert [o["title"] for o in offers] == [f"soup {i}" for i in range(7)]
    members = list(csv.DictReader(io.StringIO(maple("export", "csv", "members").stdout)))
    assert [m["name"] for m in members] == [f"member {i}" for i in range(5)]
    sheet = maple("export", "sheet").stdout
    assert all(f"pantry {i}" in sheet for i in range(7)) and "member 4" in sheet


def test_the_directory_and_the_rosters_hold_every_page(maple: Pod) -> None:
    pods = maple.json("pod", "list")
    assert len(pods) == 8 + 35  # this pod, 7 others, 35 strangers
    assert maple.json("pod", "show", "Pod 6")["name"] == "Pod 6"
    roster = Target(maple.home).call(lambda s: s.get_all("/v1/roster", pod="all"))
    assert {r["name"] for r in roster if r["name"].startswith("org ")} == {
        f"org {i}" for i in range(7)}  # fmt: skip


def test_lists_a_person_reads_say_when_they_are_cut(maple: Pod) -> None:
    for args, what in ((("offer", "list"), "offers"), (("member", "list"), "members"),
                       (("resource", "list"), "entries")):  # fmt: skip
        result = maple(*args)
        assert f"showing the first {PAGE} {what}" in result.stderr, result.stderr
        assert len(maple.json(*args)) == PAGE
    shown = maple("offer", "list").stdout
    assert "soup 0" in shown and "soup 3" not in shown  # the node's order, first page
    quiet = maple("resource", "list", "--category", "medicine")
    assert "showing the first" not in quiet.stderr


def test_one_row_by_id_and_a_member_by_name_beyond_the_first_page(maple: Pod) -> None:
    maple("member", "update", "member 4", "--notes", "second floor")
    members = csv.DictReader(io.StringIO(maple("export", "csv", "members").stdout))
    assert {m["name"]: m["notes"] for m in members}["member 4"] == "second floor"
    offer = maple.json("offer", "add", "ladder", "--category", "tools")["id"]
    assert maple.json("offer", "withdraw", offer[:6])["status"] == "withdrawn"
    entry = maple.json("resource", "add", "Tool library", "--category", "tools")["id"]
    assert maple.json("resource", "withdraw", entry[:6])["resource"] == entry
    assert all(r["id"] != entry for r in maple.json("resource", "list", "--category", "tools"))


def test_the_inbox_reaches_every_contact(maple: Pod) -> None:
    newest = maple("inbox")
    assert "Jonny" not in newest.stdout
    older = re.search(r"podlink inbox --before (\d+)", newest.stderr)
    assert older, newest.stderr
    assert "Jonny" in maple("inbox", "--before", older.group(1)).stdout
    loud = re.search(r"10 shown from Pod 2, which may have sent more: `podlink inbox "
                     r"--from ([A-Za-z0-9_-]{43})", newest.stderr)  # fmt: skip
    assert loud, newest.stderr
    theirs = maple.json("inbox", "--from", loud.group(1))
    assert sorted(i["message"]["name"] for i in theirs) == sorted(f"loud {k}" for k in range(12))
    assert len(maple.json("inbox", "--from", "Pod 2")) == 12  # by name, from the directory
    assert "no pod called 'Nobody'" in maple("inbox", "--from", "Nobody", code=1).stderr
