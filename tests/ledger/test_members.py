"""Members: personal details only inside a per-member SecretBox; forgetting a member
destroys the key and the boxes (crypto-shredding) while every chain still verifies."""

from __future__ import annotations

from pathlib import Path

import pytest

from podlink.ledger.errors import LedgerError
from podlink.ledger.ledger import Ledger
from podlink.protocol import boxes
from podlink.protocol import kinds as k
from tests.ledger.helpers import World, count, one, query, statuses, wires

NAME = "Zuzanna Quetzalcoatl-Brightwater"
CONTACT = "+1 555 0142 ext 9"


def details(name: str = NAME) -> bytes:
    return k.encode_body(k.MemberDetails(name=name, contact=CONTACT, can=["transport"]))


def file_bytes(path: Path) -> bytes:
    out = b""
    for suffix in ("", "-wal", "-shm", "-journal"):
        p = path.with_name(path.name + suffix)
        if p.exists():
            out += p.read_bytes()
    return out


async def checkpoint(ledger: Ledger) -> None:
    busy, _, _ = (await query(ledger, "PRAGMA wal_checkpoint(TRUNCATE)"))[0]
    assert busy == 0


async def test_join_update_forget(tmp_path: Path, world: World) -> None:
    elm, setup = world.pod("Elm")
    ana, add = world.organizer(elm)
    cai, add_cai = world.organizer(elm, "Cai")
    key = boxes.new_member_key()
    join = ana.write(k.MemberJoined(box=boxes.lock(key, details())), "pod")
    update = ana.write(
        k.MemberUpdated(box=boxes.lock(key, details(NAME + " Jr"))), "pod", [join.id]
    )
    need = ana.write(k.RequestOpened(title="Lift", category="transport", for_member=join.id),
                     "pod")  # fmt: skip
    other_key = boxes.new_member_key()
    other = cai.write(k.MemberJoined(box=boxes.lock(other_key, details("Other Person"))), "pod")

    path = tmp_path / "pod.db"
    ledger = await Ledger.open(path)
    try:
        await ledger.set_pod(elm.id)
        results = await ledger.ingest(wires([*setup, add, add_cai, join, update, need, other]))
        assert statuses(results) == ["stored"] * 7
        await ledger.put_member_key(join.id, key)
        await ledger.put_member_key(other.id, other_key)
        row = await one(ledger, "SELECT status, box, joined_ts, updated_ts FROM members "
                                "WHERE id = ?", (join.id,))  # fmt: skip
        assert row == ("active", update.body and k.decode_body("member.update", update.body).box,
                       join.ts, update.ts)  # fmt: skip
        stored_key = await one(ledger, "SELECT key FROM member_keys WHERE member = ?", (join.id,))
        name = k.decode_member_details(boxes.unlock(stored_key, row[1])).name
        assert name == NAME + " Jr"
        await checkpoint(ledger)
        raw = file_bytes(path)
        assert key in raw and NAME.encode() not in raw  # only ever stored boxed

        forget = cai.write(k.MemberForgotten(), "pod", [join.id])  # any organizer may
        assert statuses(await ledger.ingest([forget.to_wire()])) == ["stored"]

        assert await one(ledger, "SELECT key FROM member_keys WHERE member = ?", (join.id,)) is None
        assert await one(ledger, "SELECT status, box, updated_ts FROM members WHERE id = ?",
                         (join.id,)) == ("forgotten", None, forget.ts)  # fmt: skip
        dropped = await query(ledger, "SELECT kind, body, dropped FROM events WHERE root = ? "
                                      "ORDER BY pos", (join.id,))  # fmt: skip
        assert dropped == [("member.join", None, 1), ("member.update", None, 1),
                           ("member.forget", None, 1)]  # fmt: skip
        # The rest of the pod is untouched: the other member, the request naming the member.
        assert await one(ledger, "SELECT status FROM members WHERE id = ?", (other.id,)) == "active"
        assert await one(ledger, "SELECT key FROM member_keys WHERE member = ?",
                         (other.id,)) == other_key  # fmt: skip
        assert await one(ledger, "SELECT for_member FROM requests") == join.id
        assert (await ledger.verify()).ok
        assert (await ledger.verify()).events == 8

        # A peer still holding the bodies cannot bring them back, nor can a key be re-kept.
        results = await ledger.ingest(wires([join, update]))
        assert statuses(results) == ["duplicate", "duplicate"]
        assert await one(ledger, "SELECT count(*) FROM events WHERE root = ? AND body IS NOT NULL",
                         (join.id,)) == 0  # fmt: skip
        with pytest.raises(LedgerError):
            await ledger.put_member_key(join.id, key)
        live = await ledger.dump()
        await ledger.rebuild()
        assert await ledger.dump() == live

        await checkpoint(ledger)
        raw = file_bytes(path)
        for secret in (key, NAME.encode(), CONTACT.encode(), join.body, update.body):
            assert secret and secret not in raw
        assert other_key in raw  # the check would see a key that is still there
    finally:
        await ledger.close()
    raw = file_bytes(path)
    assert key not in raw and other_key in raw


async def test_a_forget_that_arrives_before_the_join(tmp_path: Path, world: World) -> None:
    """Organizers write in their own feeds: the forget can overtake the join."""
    elm, setup = world.pod("Elm")
    ana, add = world.organizer(elm)
    cai, add_cai = world.organizer(elm, "Cai")
    key = boxes.new_member_key()
    join = ana.write(k.MemberJoined(box=boxes.lock(key, details())), "pod")
    forget = cai.write(k.MemberForgotten(), "pod", [join.id])
    async with await Ledger.open(tmp_path / "pod.db") as ledger:
        await ledger.set_pod(elm.id)
        await ledger.ingest(wires([*setup, add, add_cai, forget]))
        await ledger.put_member_key(join.id, key)  # the node kept it at the join, say
        assert statuses(await ledger.ingest([join.to_wire()])) == ["stored"]
        assert await one(ledger, "SELECT status, box FROM members") == ("forgotten", None)
        assert await count(ledger, "member_keys") == 0
        assert await query(ledger, "SELECT body, dropped FROM events WHERE root = ?",
                           (join.id,)) == [(None, 1), (None, 1)]  # fmt: skip
        assert (await ledger.verify()).ok


async def test_member_events_stay_in_the_pod_lane(tmp_path: Path, world: World) -> None:
    elm, setup = world.pod("Elm")
    oak, oak_setup = world.pod("Oak")
    box = boxes.lock(boxes.new_member_key(), details())
    ours = elm.author.write(k.MemberJoined(box=box), "pod")
    theirs = oak.author.write(k.MemberJoined(box=box), "pod")
    async with await Ledger.open(tmp_path / "pod.db") as ledger:
        await ledger.set_pod(elm.id)
        results = await ledger.ingest(wires([*setup, *oak_setup, ours, theirs]))
        assert [(r.status, r.reason) for r in results] == [
            ("stored", None), ("stored", None), ("stored", None), ("refused", "unauthorised"),
        ]  # fmt: skip
        for lane in ("peers", "network"):
            stray = elm.author.write(k.MemberJoined(box=box), lane)  # type: ignore[arg-type]
            (res,) = await ledger.ingest([stray.to_wire()])
            assert (res.status, res.reason) == ("refused", "invalid")
            elm.author.heads.pop(lane)

