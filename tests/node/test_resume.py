"""Stops, restarts and restored backups: cursors resume, epochs trigger repair by heads."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from podlink.ledger import queries
from podlink.ledger.authoring import Author
from podlink.ledger.ledger import Ledger
from podlink.node import gossip
from podlink.protocol import kinds
from podlink.protocol.envelope import Event
from podlink.protocol.text import b64e
from tests.node.helpers import (
    PodNode,
    copy_db,
    peer_line,
    restore_db,
    wait_converged,
    wait_for,
)


async def same_events(nodes: list[PodNode]) -> bool:
    ids = [await n.event_ids() for n in nodes]
    return all(i == ids[0] for i in ids)


async def test_restart_resumes_from_the_cursor_without_resending(network: Any) -> None:
    a, b = nodes = await network(2)
    await peer_line(nodes)
    for i in range(3):
        await a.open_request(f"before {i}")
    await wait_converged(nodes)
    cursor = (await b.peers())[a.key]["cursor"]
    assert cursor == await a.event_count()
    a_received = (await a.peers())[b.key]["received"]
    b_events = await b.event_count()

    await b.stop()
    for i in range(4):
        await a.open_request(f"while away {i}")
    await a.open_request("private, skipped by the cursor", "pod")
    await b.start()
    await wait_converged(nodes)

    link = (await b.peers())[a.key]
    assert link["cursor"] == await a.event_count() > cursor  # saved across the restart
    assert link["received"] == 4, link  # only what was new: nothing sent twice
    assert b.node.metrics.get("events_stored_total", source="peer") == 4
    assert await b.event_count() == b_events + 4
    assert (await a.peers())[b.key]["received"] == a_received  # B had nothing new for A
    assert {f"while away {i}" for i in range(4)} <= await b.titles()


async def test_restored_backup_is_repaired_both_ways(
    network: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="podlink.gossip")
    a, b = nodes = await network(2)
    await peer_line(nodes)
    await a.open_request("old news")
    await b.open_request("Birch's old news")
    await wait_converged(nodes)

    # Time T: a backup of Birch's database.
    await b.stop()
    copy_db(b.home, tmp_path / "backup")
    await b.start()
    later = [await a.open_request(f"after the backup {i}") for i in range(3)]
    await wait_converged(nodes)
    a_cursor = (await a.peers())[b.key]["cursor"]

    # Birch's disk dies; the backup comes back with a new epoch, and Birch's organizer
    # writes again on the restored feeds before the node is back online.
    await b.stop()
    restore_db(tmp_path / "backup", b.home)
    async with await Ledger.open(b.config.ledger_path) as ledger:
        old_epoch = ledger.epoch
        assert await ledger.rotate_epoch() != old_epoch
        assert await queries.max_position(ledger.reader) < a_cursor
        fresh = await write_offline(ledger, b)
        assert await queries.max_position(ledger.reader) < a_cursor  # below Alder's cursor
    await b.start()

    # Birch catches up from its (old) cursor; Alder notices the epoch and repairs by heads.
    await wait_for(lambda: same_events(nodes), what="both nodes to hold the same events")
    await wait_converged(nodes)
    ids = await b.event_ids()
    assert {e.id_text for e in later} <= ids
    assert fresh.id_text in await a.event_ids()
    assert "After the restore" in await a.titles()
    assert any("store restored" in r.getMessage() for r in caplog.records)
    assert any("repair stored 1 events" in r.getMessage() for r in caplog.records)
    assert (await a.peers())[b.key]["cursor"] == await b.event_count()
    for n in nodes:
        assert (await n.client.post("/v1/verify"))["ok"] is True
        assert (await n.status())["forks"] == 0
    assert await a.ledger.dump() == await b.ledger.dump()


async def write_offline(ledger: Ledger, node: PodNode) -> Event:
    """What an organizer's CLI would write: chained on the (restored) feed heads."""
    author = Author(node.organizer, node.pod)
    for lane, (seq, id_, ts) in (
        await queries.feed_heads(ledger.reader, node.organizer.public)
    ).items():
        author.set_head(lane, seq, id_, ts)
    event = author.write(kinds.RequestOpened(title="After the restore", category="food"), "network")
    [result] = await ledger.append([event.to_wire()])
    assert result.status == "stored", result
    return event


@pytest.mark.parametrize("heads_page", [gossip.HEADS_PAGE, 1], ids=["one-page", "paged"])
async def test_restored_node_gets_back_its_own_events_from_a_peer(
    network: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, heads_page: int
) -> None:
    """Paged: the repair reads the peer's feed heads one per request, as it reads ~2,000
    at a time from a network too large for one answer."""
    monkeypatch.setattr(gossip, "HEADS_PAGE", heads_page)
    a, b = nodes = await network(2)
    await peer_line(nodes)
    await b.open_request("before the backup")
    await wait_converged(nodes)
    await b.stop()
    copy_db(b.home, tmp_path / "backup")
    await b.start()
    # Birch writes after the backup (both lanes a peer may hold); Alder receives them.
    lost = [await b.open_request("written after the backup"),
            await b.open_request("for direct peers only", "peers")]
    await wait_converged(nodes)

    await b.stop()
    restore_db(tmp_path / "backup", b.home)
    async with await Ledger.open(b.config.ledger_path) as ledger:
        await ledger.rotate_epoch()  # what a restore does; marks every peer for repair
        held = {b64e(r["id"]) for r in await queries.log_page(ledger.reader, 0, 1000)}
        assert not {e.id_text for e in lost} & held  # the backup predates them
    await b.start()

    async def back() -> bool:
        return {e.id_text for e in lost} <= await b.event_ids()

    await wait_for(back, what="Birch to get its own events back from Alder")
    # Its organizer now chains on the recovered head: no fork on the next write.
    await b.open_request("after the restore")
    await wait_converged(nodes)
    for n in nodes:
        assert (await n.status())["forks"] == 0
    assert await a.ledger.dump() == await b.ledger.dump()
