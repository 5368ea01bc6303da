"""The running node: its key, ledger, peers, metrics, and the signal new events raise.

One :class:`Node` lives in the aiohttp application (``app[NODE]``); handlers and gossip
tasks share it. It holds no organizer's secret key, only the pod's own.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import aiohttp

from podlink.ledger import queries
from podlink.ledger.ingest import IngestResult
from podlink.ledger.ledger import Checked, Ledger
from podlink.ledger.store import rows
from podlink.ledger.writer import Streak
from podlink.node.config import Config
from podlink.node.metrics import Metrics
from podlink.protocol.keys import Keypair
from podlink.protocol.text import b64e

log = logging.getLogger("podlink.node")


def cursor_update(pod: bytes, cursor: int, epoch: bytes, now_s: int) -> tuple[str, tuple]:
    """The statement that saves where we are in a peer's changes."""
    return (
        "UPDATE peers SET cursor = ?, epoch = ?, last_sync = ? WHERE pod = ?",
        (cursor, epoch, now_s, pod),
    )


@dataclass
class PeerRecord:
    pod: bytes
    url: str
    name: str
    cursor: int
    epoch: bytes | None
    last_sync: int | None
    repair: bool = False  # our store was restored: compare heads with this peer first
    forks_cursor: int = 0  # the peer's newest fork evidence number we have taken


class Node:
    """State shared by the API handlers and the gossip tasks of one node."""

    def __init__(self, config: Config, keypair: Keypair, ledger: Ledger) -> None:
        self.config = config
        self.keypair = keypair
        self.ledger = ledger
        self.metrics = Metrics()
        self.peers: dict[bytes, PeerRecord] = {}
        self.session: aiohttp.ClientSession | None = None
        self.gossip: object | None = None  # node.gossip.Gossip, set by its cleanup context
        self._changed = asyncio.Event()
        # Held while a submission that removes organizers checks and stores (see
        # organizer_api.submit_events): two removals racing must not both pass the check.
        self.roster_lock = asyncio.Lock()
        # Organizers' changes of the pod's requests, checked against the stored request
        # and stored one at a time (organizer_api._check_changes).
        self.answer_lock = asyncio.Lock()
        ledger.stored_listeners.append(self._on_stored)
        ledger.evidence_listeners.append(self._on_evidence)
        self.metrics.set("ledger_events", ledger.next_pos - 1)  # not only after a store
        self._released_seen = ledger.released_stored

    @property
    def pod(self) -> bytes:
        return self.keypair.public

    async def own_entry(self) -> tuple[str, str]:
        """This pod's name and zone as its directory entry says (pod.genesis, then the
        latest pod.info: `podlink pod update`); the config's until it has one."""
        found = await rows(
            self.ledger.reader, "SELECT name, zone FROM pods WHERE pod = ?", (self.pod,)
        )
        return (found[0][0], found[0][1]) if found else (self.config.name, self.config.zone)

    # ------------------------------------------------------------ new events

    def _on_evidence(self, outcome: str, n: int) -> None:
        """Fork evidence that waited for its feed, checked (or expired) by the ledger."""
        self.metrics.inc("fork_evidence_total", n, outcome=outcome)

    def _on_stored(self, head: int) -> None:
        self.metrics.set("ledger_events", head)
        event, self._changed = self._changed, asyncio.Event()
        event.set()

    def change_marker(self) -> asyncio.Event:
        """An event set at the next store; take it *before* reading, then wait on it."""
        return self._changed

    async def wait_for_events(self, marker: asyncio.Event, seconds: float) -> bool:
        """Wait until ``marker`` fires (True) or ``seconds`` pass (False)."""
        try:
            await asyncio.wait_for(marker.wait(), seconds)
        except TimeoutError:
            return False
        return True

    # ------------------------------------------------------------ roles

    def roles_of(self, key: bytes) -> set[str]:
        roles: set[str] = set()
        if key == self.pod or key in self.ledger.roster.active_keys(self.pod):
            roles.add("organizer")
        if key in self.peers:
            roles.add("peer")
        return roles

    # ------------------------------------------------------------ writing

    async def submit(
        self,
        wires: Sequence[bytes],
        *,
        source: str,
        local: bool = False,
        checked: Checked | None = None,
        streak: Streak | None = None,
        then: tuple[str, Sequence[object]] | None = None,
    ) -> list[IngestResult]:
        """Ingest events through the ledger, counting outcomes for /metrics.

        ``checked``: ``wires`` went through ``ledger.check`` already; only store them
        (with ``streak`` and ``then`` as ``Ledger.store`` takes them: a pull's)."""
        if local:
            results = await self.ledger.append(wires)
        elif checked is not None:
            results = await self.ledger.store(checked, source=source, streak=streak, then=then)
        else:
            results = await self.ledger.ingest(wires, source=source)
        for r in results:
            if r.status == "stored":
                self.metrics.inc("events_stored_total", source="local" if local else "peer")
            elif r.status == "refused":
                self.metrics.inc("events_refused_total", reason=r.reason or "invalid")
            elif r.status == "pending":
                self.metrics.inc("events_pending_total")
        # Events a peer parked earlier, stored now that this call brought what they waited
        # for, have no result of their own: count them from the ledger.
        released, self._released_seen = (
            self.ledger.released_stored - self._released_seen, self.ledger.released_stored
        )
        if released:
            self.metrics.inc("events_stored_total", released, source="peer")
        return results

    # ------------------------------------------------------------ peers

    async def load_peers(self, only: bytes | None = None) -> None:
        """Read the peers from the database (at start), or ``only`` one of them (when it
        is added). Reading them all while links run would put back values a link saved
        meanwhile (its cursor, its repair flag) with the older ones just read."""
        sql = (
            "SELECT pod, url, name, cursor, epoch, last_sync, repair, forks_cursor FROM peers "
            "WHERE removed IS NULL" + (" AND pod = ?" if only is not None else "")
        )
        found = await queries.rows(self.ledger.reader, sql, (only,) if only else ())
        peers = {r[0]: PeerRecord(*r[:6], repair=bool(r[6]), forks_cursor=r[7]) for r in found}
        for pod, fresh in peers.items():
            # Keep the record a running gossip link holds: its cursor must stay the one
            # save_cursor moves (a copy left behind made the link re-pull from a stale one).
            kept = self.peers.get(pod)
            if kept is not None:
                kept.__dict__.update(fresh.__dict__)
                peers[pod] = kept
        self.peers = {**self.peers, **peers} if only is not None else peers

    async def add_peer(self, pod: bytes, url: str, name: str) -> PeerRecord:
        """Peer with ``pod`` at ``url`` (idempotent; a new URL replaces the old one)."""
        if pod == self.pod:
            from podlink.node.errors import APIError

            raise APIError("invalid", "a pod cannot peer with itself")
        url = url.rstrip("/")
        # A peer sends us none of our own events (queries.visible_clause): a store put back
        # from a backup repairs from each pod it peers with, new ones too, for those it
        # shared after the backup, with a pod perhaps peered with after the backup.
        repair = int(self.ledger.restored)
        await self.ledger.write(
            "INSERT INTO peers (pod, url, name, added, repair) "
            "VALUES (?, ?, ?, strftime('%s','now'), ?) "
            "ON CONFLICT (pod) DO UPDATE SET url = excluded.url, "
            "name = CASE WHEN excluded.name != '' THEN excluded.name ELSE peers.name END, "
            "removed = NULL, repair = max(peers.repair, excluded.repair)",
            (pod, url, name, repair),
        )
        await self.load_peers(only=pod)
        record = self.peers[pod]
        log.info("peer added: %s %s at %s", b64e(pod)[:8], record.name, url)
        if self.gossip is not None:
            self.gossip.start_peer(record)  # type: ignore[attr-defined]
        return record

    async def remove_peer(self, pod: bytes) -> None:
        await self.ledger.write(
            "UPDATE peers SET removed = strftime('%s','now') WHERE pod = ?", (pod,)
        )
        self.peers.pop(pod, None)
        if self.gossip is not None:
            await self.gossip.stop_peer(pod)  # type: ignore[attr-defined]
        for name in ("peer_connected", "peer_lag_events", "peer_sync_seconds"):
            self.metrics.drop(name, peer=b64e(pod)[:8])
        log.info("peer removed: %s", b64e(pod)[:8])

    async def repaired(self, pod: bytes, done: bool = True) -> None:
        """Mark the repair from ``pod`` done, or (``done=False``) still to do: the next
        pull from it repairs again."""
        await self.ledger.write("UPDATE peers SET repair = ? WHERE pod = ?", (int(not done), pod))
        record = self.peers.get(pod)
        if record is not None:
            record.repair = not done

    async def save_forks_cursor(self, pod: bytes, cursor: int) -> None:
        """Where we are in the peer's fork evidence (its numbers, see ledger/forks.py)."""
        await self.ledger.write("UPDATE peers SET forks_cursor = ? WHERE pod = ?", (cursor, pod))
        record = self.peers.get(pod)
        if record is not None:
            record.forks_cursor = cursor

    async def save_cursor(self, pod: bytes, cursor: int, epoch: bytes, now_s: int) -> None:
        await self.ledger.write(*cursor_update(pod, cursor, epoch, now_s))
        self.cursor_moved(pod, cursor, epoch, now_s)

    def cursor_moved(self, pod: bytes, cursor: int, epoch: bytes, now_s: int) -> None:
        """The peer's record in memory (a pull writes the cursor with its next page)."""
        record = self.peers.get(pod)
        if record is not None:
            record.cursor, record.epoch, record.last_sync = cursor, epoch, now_s

    async def reload_cursor(self, pod: bytes) -> None:
        """The peer's cursor in memory as on disk again (a pull that failed midway)."""
        found = await rows(
            self.ledger.reader, "SELECT cursor, epoch, last_sync FROM peers WHERE pod = ?", (pod,)
        )
        record = self.peers.get(pod)
        if found and record is not None:
            record.cursor, record.epoch, record.last_sync = found[0]
