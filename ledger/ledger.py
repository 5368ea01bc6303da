"""The Ledger: a pod's memory, one SQLite file, one writer at a time.

``Ledger.open(path)`` gives a ledger; ``ingest`` takes events from peers (gaps wait in the
bounded pending area), ``append`` takes this pod's own events (gaps are refused, the client
must chain). Reads live in ledger/queries.py and take ``ledger.db``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import aiosqlite

from podlink.ledger import aside, fast, forks, projections
from podlink.ledger import state as st
from podlink.ledger.errors import LedgerError, StorageError
from podlink.ledger.ingest import IngestResult, Prepared, commit, merge_prepared, prepare
from podlink.ledger.schema import PROJECTIONS
from podlink.ledger.store import (
    BUSY_TIMEOUT_MS,
    connect,
    ids_joined,
    marks,
    rows,
    run_to_end,
    scalar,
    transaction,
    translated,
)
from podlink.ledger.verifier import Verifier
from podlink.ledger.writer import Landing, Streak, Writer
from podlink.protocol import clock, kinds
from podlink.protocol.boxes import MEMBER_KEY_LEN
from podlink.protocol.envelope import decode_header, verify_signature_parts
from podlink.protocol.errors import ProtocolError
from podlink.protocol.evidence import Fork
from podlink.protocol.evidence import describe as describe_fork
from podlink.protocol.text import b64e

if TYPE_CHECKING:
    from podlink.ledger.ingest import Batch

log = logging.getLogger("podlink.ledger")
INVITE_KEEP_S = 30 * 86400  # an unused invite code's row, after it expired
#: The event kinds podlink knew before a ledger recorded them (meta 'kinds'): every kind
#: but resource.withdraw, the first added after.
KINDS_BEFORE_RECORD = frozenset(kinds.KINDS) - {"resource.withdraw"}
Progress = Callable[[int, int], None]  # (done, total)
# Batches of one ingest checked (decoded, verified) while the one before them commits.
# Two keep the verify processes fed through a commit; each is one batch of events in
# memory. (One: the workers idled between batches. Until the twelfth round only one was
# ahead during a commit, the next one being asked for after it: 1.18 x raw at 100k
# events against 1.12, bench._threads-style interleaved pairs, docs/performance.md.)
PREPARE_AHEAD = 2


@dataclass(frozen=True)
class Limits:
    """Bounds that keep one source from filling memory or disk."""

    pending_per_source: int = 10_000
    pending_ttl_s: int = 24 * 3600  # parked events, and fork evidence waiting for its feed
    batch_size: int = 1000
    # Pieces of fork evidence about feeds we do not hold (yet) waiting per source, ~4 kB
    # each at most: a newcomer past this is not kept (see Ledger.store_forks).
    evidence_per_source: int = 1000


@dataclass(frozen=True)
class Checked:
    """Events that passed ``Ledger.check``, waiting for ``Ledger.store``."""

    batches: list[Prepared]


@dataclass(eq=False)
class _Queued:
    """An append waiting for the writer, and where its results go."""

    prepared: Prepared
    done: asyncio.Future[list[IngestResult]]


@dataclass
class VerifyReport:
    events: int = 0
    problems: list[str] | None = None

    @property
    def ok(self) -> bool:
        return not self.problems


def _storage_error(err: BaseException) -> BaseException:
    """A failed COMMIT as the ledger reports storage errors (``store.translated``)."""
    if isinstance(err, sqlite3.Error):
        return StorageError(f"ingest failed and was rolled back: {err}")
    return err


class Ledger:
    """One node's event store, ingest pipeline and read model."""

    def __init__(
        self,
        db: aiosqlite.Connection,
        reader: aiosqlite.Connection,
        path: Path,
        limits: Limits,
        workers: int,
    ) -> None:
        self.db = db  # the one writer; ingest transactions run here
        self.reader = reader  # queries: sees committed data only (WAL), never a half batch
        self.path = path
        self.limits = limits
        self.workers = workers
        # Signatures are checked on these threads (libsodium releases the GIL), never on
        # the event loop: a 1,000-event batch is ~40 ms of verification.
        self.executor = ThreadPoolExecutor(workers, "podlink-verify")
        self.verifier = Verifier(workers)  # worker processes for large batches
        self.pod: bytes | None = None
        self.epoch: bytes = b""
        self.restored = False  # put back from a backup once (rotate_epoch)
        self.clock = clock.HybridClock()
        self.roster = st.Roster()
        self.heads: dict[tuple[bytes, str], tuple[int, bytes, int]] = {}
        self.next_pos = 1
        self.pending_by_source: Counter[str] = Counter()
        self.pending_feeds: set[tuple[bytes, str]] = set()
        self.pending_roster: set[bytes] = set()
        self._write = Writer(self._before_writing)
        self._landing: Landing | None = None  # an ingest's COMMIT left to land (writer.py)
        self.closed = False  # set under the writer by close(): callers queued behind it stop
        self._appends: list[_Queued] = []  # local appends waiting for the writer, in order
        self._last_purge = 0.0
        self._stale_caches = False
        # Ids stored by the last few commits (id -> stored without its body), so a batch
        # checked for copies against the reader before those commits need not ask again.
        self.generation = 0
        self.recent: deque[tuple[int, dict[bytes, bool]]] = deque(maxlen=8)
        # The generation up to which every commit has landed: what a reader may be trusted
        # to see (a COMMIT left to land, ledger/writer.py, is in ``recent`` already).
        self.landed = 0
        self.folds = projections.FoldCache()  # requests folded, to continue next batch
        self.fast_memo = fast.Memo()  # request rows the fast path wrote last (ledger/fast.py)
        # Batches of the common case stored by ledger/fast.py; off: every batch the general
        # way (tests hold the two to the same outcome).
        self.fast_path = True
        self.stored_listeners: list[Callable[[int], None]] = []
        self.released_stored = 0  # events stored after waiting in pending (no result of theirs)
        # Fork evidence waiting for its feed (table forks_waiting): pieces per source, the
        # lowest waiting seq per feed, and the feeds with pieces now due to be checked.
        # An ingest looks at the second only when it is not empty.
        self.waiting_by_source: Counter[str] = Counter()
        self.waiting_feeds: dict[tuple[bytes, str], int] = {}
        self.waiting_due: set[tuple[bytes, str]] = set()
        # Told (outcome, count) of fork evidence that leaves the waiting area: stored,
        # held, forged, invalid or expired (the node counts them in its metrics).
        self.evidence_listeners: list[Callable[[str, int], None]] = []

    # ---------------------------------------------------------------- lifecycle

    @classmethod
    async def open(
        cls, path: Path | str, *, limits: Limits | None = None, workers: int | None = None
    ) -> Ledger:
        """Open or create the ledger at ``path`` (created 0600; schema migrated forward)."""
        path = Path(path)
        db = await connect(path)
        try:
            reader = await connect(path)
        except BaseException:
            await db.close()
            raise
        if workers is None:
            workers = min(2, os.cpu_count() or 1)
        try:
            ledger = cls(db, reader, path, limits or Limits(), workers)
        except BaseException:  # their threads would keep the process alive
            await reader.close()
            await db.close()
            raise
        try:
            await ledger._load()
            await ledger._learn_kinds()
            if await scalar(db, "SELECT 1 FROM meta WHERE key = 'rebuild'"):
                # A migration replaced projection tables: refill them from the log.
                log.warning("rebuilding the read model of %s after a schema upgrade", path)
                await ledger.rebuild()
            if ledger.waiting_due:  # pieces its feed reached before the node stopped
                await ledger._drain_waiting()
        except BaseException:
            await ledger.close()
            raise
        return ledger

    async def _load(self) -> None:
        db = self.db
        async with translated("loading the ledger"):
            epoch = await scalar(db, "SELECT value FROM meta WHERE key = 'epoch'")
            if epoch is None:
                epoch = os.urandom(16)
                await db.execute("INSERT INTO meta VALUES ('epoch', ?)", (epoch,))
                await db.commit()
            self.epoch = epoch
            # Restored from a backup once (rotate_epoch): a peer may hold our own events.
            self.restored = await scalar(db, "SELECT 1 FROM meta WHERE key = 'restored'") == 1
            self.pod = await scalar(db, "SELECT value FROM meta WHERE key = 'pod'")
            self.next_pos = (await scalar(db, "SELECT max(pos) FROM events") or 0) + 1
            # The clock resumes past our own pod's events as far as the future limit (one
            # written while this machine ran hours fast must not stamp everything written
            # after the clock is put right hours ahead: each feed follows its own head,
            # Author.set_head), and past others' only as far as observe() follows them
            # while running (not to one stamped 14.9 minutes ahead).
            own = await scalar(db, "SELECT max(ts) FROM events WHERE pod = ?", (self.pod,))
            self.clock = clock.HybridClock()
            self.clock.observe(own or 0, clock.FUTURE_LIMIT_MS)
            others = await scalar(db, "SELECT max(ts) FROM events WHERE pod != ?", (self.pod,))
            self.clock.observe(others or 0)
            self.roster = await projections.load_roster(db)
            self.pending_by_source.clear()
            for source, n in await rows(db, "SELECT source, count(*) FROM pending GROUP BY 1"):
                self.pending_by_source[source] = n
            for author, lane, why in await rows(
                db, "SELECT DISTINCT author, lane, why FROM pending"
            ):
                self._note_pending(author, lane, why)
            await self._load_waiting()

    async def _load_waiting(self) -> None:
        """What waits in forks_waiting, into memory (and which pieces are due already: a
        feed that reached them while no release ran, before a crash, say)."""
        by_source, first, due = await forks.waiting_counts(self.db)
        self.waiting_by_source = Counter(by_source)
        self.waiting_feeds = first
        self.waiting_due = due

    async def _learn_kinds(self) -> None:
        """Ask for a rebuild when this code knows event kinds that the code which last
        wrote the file did not, and the file holds events of them.

        Unknown kinds are stored and forwarded as they are, filed under no aggregate and
        with their bodies unchecked; a node upgraded to know one (resource.withdraw, say)
        would otherwise leave the events it already holds out of its folds for good, and
        differ from every node that received them after its upgrade. Files from before
        this record knew the kinds of KINDS_BEFORE_RECORD."""
        known = ",".join(sorted(kinds.KINDS)).encode()
        stored = await scalar(self.db, "SELECT value FROM meta WHERE key = 'kinds'")
        if stored == known:
            return
        before = set(stored.decode().split(",")) if stored is not None else KINDS_BEFORE_RECORD
        learned = sorted(set(kinds.KINDS) - before)
        async with translated("recording the event kinds this podlink knows"):
            if learned and await scalar(
                self.db, f"SELECT 1 FROM events WHERE kind IN ({marks(len(learned))}) LIMIT 1",
                learned,
            ):  # fmt: skip
                log.warning("events of kinds this podlink now knows (%s) are in %s",
                            ", ".join(learned), self.path)  # fmt: skip
                await self.db.execute("INSERT OR REPLACE INTO meta VALUES ('rebuild', x'01')")
            await self.db.execute("INSERT OR REPLACE INTO meta VALUES ('kinds', ?)", (known,))
            await self.db.commit()

    async def close(self) -> None:
        """Close the database (waiting for the batch in flight), the verify threads and
        processes. A caller cancelled meanwhile does not stop it halfway: a half-closed
        ledger kept its worker processes and aiosqlite's (non-daemon) thread alive."""
        await run_to_end(self._close())

    def _check_open(self) -> None:
        """Raise for a call that reaches the ledger once it is closed (one queued behind
        ``close``, or started after it), rather than failing inside aiosqlite."""
        if self.closed:
            raise LedgerError("the ledger is closed (the node is stopping)")

    async def _close(self) -> None:
        try:
            async with self._write:
                self.closed = True
                try:
                    await self.reader.close()
                finally:
                    await self.db.close()
        finally:
            self.executor.shutdown(wait=True)
            await self.verifier.close()

    async def __aenter__(self) -> Ledger:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def set_pod(self, pod: bytes) -> None:
        """Record which pod this ledger belongs to (pod-lane events of others are refused)."""
        async with self._write:
            await self.db.execute("INSERT OR REPLACE INTO meta VALUES ('pod', ?)", (pod,))
            await self.db.commit()
        self.pod = pod

    async def write(self, sql: str, params: Sequence[object] = ()) -> int:
        """One small local write (peers, invites) outside any ingest transaction; returns
        how many rows it changed."""
        async with self._write, translated("writing local state"):
            self._check_open()
            cursor = await self.db.execute(sql, params)
            await self.db.commit()
            return cursor.rowcount

    async def write_many(self, sql: str, rows: Sequence[Sequence[object]]) -> None:
        """``sql`` once per row, in one transaction (a restore's carried tables: one
        commit and fsync per row took ~40 s for 100,000 parked events)."""
        async with self._write, translated("writing local state"):
            self._check_open()
            await self.db.executemany(sql, rows)
            await self.db.commit()

    async def store_forks(
        self, found: Sequence[Fork], *, source: str, unplaced: Sequence[Fork] = ()
    ) -> list[str]:
        """Keep fork evidence a peer (``source``) sent: ``found`` checked already
        (ledger/forks.py), ``unplaced`` sound in shape only, about feed positions we did
        not hold when they were checked. Returns an outcome per piece, ``found``'s then
        ``unplaced``'s: ``stored`` (new), ``held`` (evidence at that feed position is kept
        already: recorded here or sent before, the same pair in either order or another;
        it is left as it is), ``waiting`` or ``overflow``.

        Evidence is kept only about a feed we hold, at most one past its head: two
        signatures of a key cost nothing to make, at any seq, so evidence kept is bounded
        by the positions of the feeds our ledger admitted, as their events are (a peer
        could otherwise fill the disk with forks of keys made for the purpose, or of its
        own at seq 2^53). A piece about another position is ``waiting``: it is put in the
        forks_waiting table, unchecked, and checked and stored as if it had just come when
        an ingest brings its feed that far (``_release_waiting``), or dropped after
        ``limits.pending_ttl_s``. Each source may have ``limits.evidence_per_source``
        pieces waiting; past that a newcomer is not kept (``overflow``): what waits stays,
        as with parked events, so a source that floods only loses its own new pieces and
        the bound costs no delete; its room comes back as its pieces are stored or expire.
        (Our cursor into the peer's evidence moves past a piece not kept: it is not sent
        again unless the peer numbers its evidence anew.)"""
        if not found and not unplaced:
            return []
        now = clock.now_ms()
        out: list[str] = []
        waited: list[Fork] = []  # pieces that added a row to forks_waiting
        async with self._write, translated("storing fork evidence"):
            self._check_open()
            heads = await forks.feed_heads(
                self.db, [(f.author, f.lane) for f in (*found, *unplaced)])  # fmt: skip
            room = self.limits.evidence_per_source - self.waiting_by_source[source]
            async with transaction(self.db):
                pieces = [*((f, True) for f in found), *((f, False) for f in unplaced)]
                for fork, verified in pieces:
                    if verified and forks.within(fork, heads):
                        [row] = forks.insert_rows([fork], source, now)
                        cursor = await self.db.execute(forks.INSERT_GOSSIPED, row)
                        out.append("stored" if cursor.rowcount else "held")
                    elif len(waited) >= room:
                        out.append("overflow")
                    else:  # (a verified piece past its feed's head: heads never go back)
                        cursor = await self.db.execute(
                            forks.INSERT_WAITING, forks.waiting_row(fork, source, now))
                        if cursor.rowcount:  # else a piece of this source waits there
                            waited.append(fork)
                        out.append("waiting")
            for fork in waited:
                self.waiting_by_source[source] += 1
                feed = (fork.author, fork.lane)
                self.waiting_feeds[feed] = min(self.waiting_feeds.get(feed, fork.seq), fork.seq)
                if forks.within(fork, heads):  # its feed came since it was placed: due now
                    self.waiting_due.add(feed)
            for fork, outcome in zip(found, out, strict=False):
                if outcome == "stored":
                    log.warning("fork: %s (evidence from %s)", describe_fork(fork), source)
            if "stored" in out:
                self.notify_stored()
        if self.waiting_due:
            await self._drain_waiting()
        return out

    async def _drain_waiting(self) -> None:
        """Check the fork evidence still due after an ingest (more than one transaction's
        ``forks.RELEASE_AT_ONCE``), that many per hold of the writer, so that other writes
        go in between. What can be due is bounded by the waiting room (its bound per
        source); a round that makes no progress (a storage error) stops it."""
        while self.waiting_due:
            async with self._write:
                if self.closed:
                    return
                before = (len(self.waiting_due), sum(self.waiting_by_source.values()))
                await run_to_end(self._release_waiting())
                if (len(self.waiting_due), sum(self.waiting_by_source.values())) == before:
                    return

    async def _release_waiting(self) -> None:
        """Check and store fork evidence that waited for its feed, now that the feed holds
        its position (``waiting_due``); the caller holds the writer. At most
        ``forks.RELEASE_AT_ONCE`` pieces at a time: the rest stay due for the next call
        (after the next ingest transaction or page of evidence).

        Each piece is checked as one that just came (its signatures now, off the event
        loop) and stored with its source, logged and passed on to peers alike. A piece
        whose signatures do not verify is dropped and counted (``forged``): it was never
        evidence against anyone. A failure here leaves the pieces waiting and due: the
        ingest that called it is committed already and is not failed for it."""
        try:
            found, done = await forks.take_due(
                self.db, sorted(self.waiting_due), forks.RELEASE_AT_ONCE)
            loop = asyncio.get_running_loop()
            checked = await loop.run_in_executor(
                self.executor, forks.verified, [p for *_, p in found])  # fmt: skip
            now = clock.now_ms()
            outcomes: list[str] = []
            async with transaction(self.db):
                for (_, source, _, _), piece in zip(found, checked, strict=True):
                    if isinstance(piece, Fork):
                        [row] = forks.insert_rows([piece], source, now)
                        cursor = await self.db.execute(forks.INSERT_GOSSIPED, row)
                        outcomes.append("stored" if cursor.rowcount else "held")
                    else:
                        assert isinstance(piece, ProtocolError)
                        outcomes.append(piece.reason)
                await self.db.executemany(
                    "DELETE FROM forks_waiting WHERE id = ?", [(r[0],) for r in found])
                touched = sorted({feed for _, _, feed, _ in found} | done)
                left = await forks.waiting_first(self.db, touched)
        except sqlite3.Error as err:
            log.warning("fork evidence that waited for its feed not checked yet: %s", err)
            return
        for (_, source, _, _), piece, outcome in zip(found, checked, outcomes, strict=True):
            self.waiting_by_source[source] -= 1
            if self.waiting_by_source[source] <= 0:
                del self.waiting_by_source[source]
            if outcome == "stored":
                assert isinstance(piece, Fork)
                log.warning("fork: %s (evidence from %s)", describe_fork(piece), source)
            elif isinstance(piece, ProtocolError):
                log.info("fork evidence from %s that waited for its feed is refused (%s): "
                         "dropped", source, piece.message)  # fmt: skip
        for feed in touched:
            if feed in left:
                self.waiting_feeds[feed] = left[feed]
            else:
                self.waiting_feeds.pop(feed, None)
        self.waiting_due -= done
        self.waiting_due &= self.waiting_feeds.keys()
        for outcome, n in Counter(outcomes).items():
            self._count_evidence(outcome, n)
        if "stored" in outcomes:
            self.notify_stored()

    def _count_evidence(self, outcome: str, n: int) -> None:
        for listener in list(self.evidence_listeners):
            listener(outcome, n)

    async def put_member_key(self, member: bytes, key: bytes) -> None:
        """Keep the SecretBox key of ``member`` (the id of its member.join event).

        Goes through the writer lock so that it never lands inside a batch's transaction.
        Refused once the member is forgotten: a forgotten member's key stays destroyed.
        A key already kept is never replaced (the member's box was sealed with it: another
        key, sent with a copy of the join, would only make their details unreadable)."""
        if len(member) != 32 or len(key) != MEMBER_KEY_LEN:
            raise ValueError("a member id is 32 bytes and a member key 32 bytes")
        async with self._write, translated("storing a member key"):
            self._check_open()
            if await scalar(
                self.db, "SELECT 1 FROM members WHERE id = ? AND status = 'forgotten'", (member,)
            ):
                raise LedgerError("this member was forgotten; their key is not kept again")
            cursor = await self.db.execute(
                "INSERT OR IGNORE INTO member_keys VALUES (?, ?)", (member, key)
            )
            await self.db.commit()
            if not cursor.rowcount:
                log.warning("member %s already has a key; the other one sent is ignored",
                            b64e(member)[:8])  # fmt: skip

    async def rotate_epoch(self) -> bytes:
        """Start a new store epoch after restoring a backup: peers notice and repair from
        us, and we repair from each of them (their heads include our own feeds)."""
        async with self._write:
            self.epoch = os.urandom(16)
            await self.db.execute("INSERT OR REPLACE INTO meta VALUES ('epoch', ?)", (self.epoch,))
            # Peers may hold events this copy lacks (our own included): repair from each.
            await self.db.execute("UPDATE peers SET repair = 1")
            # And from each pod peered with later: it may be one peered with after the
            # backup, whose peering the backup lacks (Node.add_peer).
            await self.db.execute("INSERT OR REPLACE INTO meta VALUES ('restored', x'01')")
            await self.db.commit()
            self.restored = True
        return self.epoch

    # ---------------------------------------------------------------- writing

    async def ingest(
        self, wires: Sequence[bytes], *, source: str = "peer", allow_pending: bool = True
    ) -> list[IngestResult]:
        """Ingest events in wire form, ``limits.batch_size`` per transaction."""
        size = self.limits.batch_size
        parts = [wires[i : i + size] for i in range(0, len(wires), size)]
        if not parts:
            return []
        self._check_open()
        results: list[IngestResult] = []
        # Pipeline: the next batches' signatures are checked while this one commits.
        probe = allow_pending  # peers send copies; local appends almost never do
        upcoming: deque[asyncio.Future[Prepared]] = deque()
        streak = Streak()  # the COMMITs it leaves to land (ledger/writer.py)
        try:
            for i in range(len(parts)):
                # The batch to commit next, and PREPARE_AHEAD more checked during its commit.
                while len(upcoming) <= PREPARE_AHEAD and i + len(upcoming) < len(parts):
                    part = parts[i + len(upcoming)]
                    upcoming.append(asyncio.ensure_future(prepare(self, part, probe=probe)))
                try:
                    prepared = await upcoming.popleft()
                except (ValueError, RuntimeError):  # aiosqlite's or the executor's, if
                    self._check_open()  # close() came while the batch was prepared
                    raise
                # Each COMMIT but the last is left to land while the next batch goes on.
                before = self._landing
                linger = i < len(parts) - 1 and not (source == "local" and not allow_pending)
                results += await self._commit(
                    prepared, source, allow_pending, linger=linger, owner=streak
                )
                if self._landing is not None and self._landing is not before:
                    streak.landings.append(self._landing)
        except BaseException as err:
            await self._stop_preparing(upcoming)
            await run_to_end(self._settle_all(streak))
            if streak.error is None or not isinstance(err, Exception):
                raise
            # A batch queued behind a failed COMMIT fails too; the COMMIT says why.
            raise _storage_error(streak.error) from err
        await self._settle_all(streak)
        if streak.error is not None:
            raise _storage_error(streak.error)
        if self.waiting_due:
            await self._drain_waiting()
        return results

    @staticmethod
    async def _stop_preparing(upcoming: deque[asyncio.Future[Prepared]]) -> None:
        for pending in upcoming:
            pending.cancel()
        for pending in upcoming:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await pending

    async def check(self, wires: Sequence[bytes]) -> Checked:
        """The stateless half of ``ingest`` (decode, signatures, bodies), no lock taken.

        For a caller that receives pages one by one (a peer sync): check the next page
        while the last one is stored, then ``store`` it."""
        size = self.limits.batch_size
        return Checked(
            [await prepare(self, wires[i : i + size]) for i in range(0, len(wires), size)]
        )

    async def store(
        self, checked: Checked, *, source: str = "peer", streak: Streak | None = None,
        then: tuple[str, Sequence[object]] | None = None,
    ) -> list[IngestResult]:  # fmt: skip
        """The other half: dedupe, chain, authorise, store and project checked events.

        For a pull, page after page: with ``streak`` each COMMIT is left to land while
        the caller goes on (ledger/writer.py). The streak's next call settles it after
        its BEGIN, and raises if it failed; ``settle`` waits for the last. ``then`` is
        one more statement, first in the first transaction: the pull saves its cursor
        past the page *before* this one there, which has landed by then, so a cursor
        is never on disk ahead of its page's events."""
        results: list[IngestResult] = []
        batches = checked.batches
        if not batches and then is not None:  # a page with no events: the cursor still
            batches = [Prepared([], [], [], clock.now_ms())]
        for i, prepared in enumerate(batches):
            before = self._landing
            results += await self._commit(
                prepared, source, True, linger=streak is not None, owner=streak,
                then=then if i == 0 else None,
            )  # fmt: skip
            if streak is not None and self._landing not in (None, before):
                streak.landings.append(self._landing)  # type: ignore[arg-type]
        if self.waiting_due:
            await self._drain_waiting()
        return results

    async def _commit(
        self, prepared: Prepared, source: str, allow_pending: bool, *,
        linger: bool = False, owner: Streak | None = None,
        then: tuple[str, Sequence[object]] | None = None,
    ) -> list[IngestResult]:  # fmt: skip
        if source == "local" and not allow_pending:
            return await self._commit_append(prepared)
        # A batch of the ingest that left a COMMIT to land settles it after its own BEGIN
        # (ingest.commit); any other settles it first (_commit_locked).
        async with self._write.continuing(), translated("ingest failed and was rolled back"):
            self._check_open()
            return await self._commit_locked(
                prepared, source, allow_pending, linger, owner, then
            )

    async def _commit_locked(
        self, prepared: Prepared, source: str, allow_pending: bool,
        linger: bool = False, owner: Streak | None = None,
        then: tuple[str, Sequence[object]] | None = None,
    ) -> list[IngestResult]:  # fmt: skip
        if owner is not None and owner.error is not None:
            raise owner.error  # a COMMIT it left failed (settled by another writer, say)
        landing = self._landing
        if landing is not None and (
            landing.owner is not owner  # (its outcome decides what is a copy here)
            or self._stale_caches or time.monotonic() - self._last_purge >= 60
        ):  # (the reload and the purge go by what is on disk)
            await self._settle_for(owner)
        if self._stale_caches:
            await self._load()
            self._stale_caches = False
        await self._purge_pending()
        results = await commit(
            self, prepared, source=source, allow_pending=allow_pending, linger=linger,
            owner=owner, then=then,
        )  # fmt: skip
        if self.waiting_due:  # this batch brought feeds that fork evidence waited for
            await self.settle_landed()  # the release reads what is on disk
            self.fast_memo.clear()
            await run_to_end(self._release_waiting())  # its memory follows its commit
        return results

    # A COMMIT left to land (ledger/writer.py) is settled by whoever writes next: the
    # next batch of an ingest after its BEGIN, any other writer on entering the lock,
    # and the ingest itself before it returns.

    def _land(self, landing: Landing) -> BaseException | None:
        """Take note, once, of how a COMMIT left to land ended (its task is done)."""
        if not landing.settled:
            landing.settled = True
            if self._landing is landing:
                self._landing = None
            task = landing.task
            landing.error = asyncio.CancelledError() if task.cancelled() else task.exception()
            if landing.error is None:
                self.landed = max(self.landed, landing.generation)
                if landing.news:
                    self.notify_stored(landing.head)
            else:  # what the writer holds in memory had the batch; the disk has not
                self.forget_caches()
                if landing.owner.error is None:
                    landing.owner.error = landing.error
        return landing.error

    async def settle_landed(self) -> None:
        """Wait for the COMMIT left to land, if any; if it failed, roll back (it may have
        left its transaction open) and raise its error. The caller holds the writer."""
        landing = self._landing
        if landing is None:
            return
        await asyncio.wait([landing.task])
        error = self._land(landing)
        if error is not None:
            await self.db.rollback()
            raise error

    async def _before_writing(self) -> None:
        """What any writer but an ingest's batch does on taking the lock (ledger/writer.py):
        it starts from what is on disk, and may change rows the fast path keeps."""
        await self._settle_quietly()
        self.fast_memo.clear()

    async def _settle_for(self, owner: Streak | None) -> None:
        """``settle_landed`` before a writer starts. A failed COMMIT is raised to the
        ingest that left it (``owner``), and to no other: that writer starts from what
        is on disk (the ingest that left it raises it at its next batch)."""
        landing = self._landing
        try:
            await self.settle_landed()
        except Exception:
            if landing is not None and landing.owner is owner:
                raise

    async def _settle_quietly(self) -> None:
        await self._settle_for(None)

    async def settle(self, streak: Streak) -> None:
        """Wait until every COMMIT ``streak`` left to land (``store``) has landed; raise
        the first that failed (its batch, and every later one of the streak, is not on
        disk)."""
        await run_to_end(self._settle_all(streak))
        if streak.error is not None:
            raise _storage_error(streak.error)

    async def _settle_all(self, streak: Streak) -> None:
        """Before an ingest returns or raises: every COMMIT it left to land has landed or
        failed (``Streak.error``; its batch and the ones after it are not stored)."""
        landings = streak.landings
        if landings and not landings[-1].settled:
            async with self._write.continuing():  # (or another writer settled it)
                await self._settle_quietly()

    async def _commit_append(self, prepared: Prepared) -> list[IngestResult]:
        """Group commit: appends that queued while a transaction held the writer go in
        the next one together, each with its own results, as if committed in turn.

        Each append was its own transaction and fsync, so 8 organizers submitting at once
        were no faster than one. Whichever queued append takes the writer first commits
        the queue from its front (see ``_commit_queued``); the others find their results
        ready when the writer comes to them. An append cancelled before a transaction took
        it is dropped from the queue; one cancelled after shares the fate of that
        transaction, like any append cancelled during its commit."""
        mine = _Queued(prepared, asyncio.get_running_loop().create_future())
        self._appends.append(mine)
        try:
            while not mine.done.done():  # a transaction may have taken others, not this one
                async with self._write:
                    if not mine.done.done():
                        # Every transaction sets or puts back what it took: still here.
                        assert mine in self._appends
                        if self.closed:
                            self._appends.remove(mine)
                            self._check_open()
                        await self._commit_queued()
        except asyncio.CancelledError:
            if mine in self._appends:
                self._appends.remove(mine)
            if not mine.done.done():
                mine.done.cancel()  # in a transaction still running: never put back
            elif not mine.done.cancelled():
                mine.done.exception()  # seen: asyncio would log it as never retrieved
            raise
        return mine.done.result()

    async def _commit_queued(self) -> None:
        """Commit queued appends from the front, as one transaction; the caller holds the
        writer. Every append taken gets its results or the transaction's error.

        A group holds up to ``limits.batch_size`` events and never two appends with an
        event in common: a copy in one batch shares the fate of the first (ingest._final),
        which would give the later append the earlier one's refusal, not its own."""
        group: list[_Queued] = []
        ids: set[bytes] = set()
        size = 0
        while self._appends:
            queued = self._appends[0]
            its = {c.event.id for c in queued.prepared.fresh}
            size += len(queued.prepared.wires)
            if group and (size > self.limits.batch_size or not ids.isdisjoint(its)):
                break
            group.append(self._appends.pop(0))
            ids |= its
        # The group's transaction runs to its end even if this append is cancelled while
        # it runs: a COMMIT under way finishes on aiosqlite's thread anyway, so stopping
        # here would tell the others "rolled back" for events it stored (they were put
        # back in the queue, and committed again as duplicates of themselves).
        await run_to_end(self._commit_group(group))

    async def _commit_group(self, group: list[_Queued]) -> None:
        try:
            merged = merge_prepared([q.prepared for q in group])
            async with translated("append failed and was rolled back"):
                results = await self._commit_locked(merged, "local", False)
        except Exception as err:  # each append raises it from its own future
            for queued in group:
                if not queued.done.done():
                    queued.done.set_exception(err)
            return
        start = 0
        for queued in group:
            end = start + len(queued.prepared.wires)
            if not queued.done.done():  # not cancelled while this transaction ran
                queued.done.set_result(results[start:end])
            start = end

    async def append(self, wires: Sequence[bytes]) -> list[IngestResult]:
        """This pod's own events: same pipeline, but a gap is refused, never parked."""
        return await self.ingest(wires, source="local", allow_pending=False)

    async def shred_wal(self) -> None:
        """Empty the WAL after a member was forgotten (the caller holds the writer; best
        effort, after the commit's caches are updated).

        ``secure_delete`` zeroes what a forget frees in the database file, but the WAL
        keeps the old page images (the member's key, their box) until they happen to be
        overwritten, and the node never truncates it: a copy of the folder would give them
        back. A TRUNCATE checkpoint copies the zeroed pages into the file and empties the
        WAL; it waits (busy_timeout) for a reader's snapshot to end, and is tried again
        if one keeps it busy."""
        await self._shred_copies()
        # Briefly, while holding the writer: a reader's long snapshot (a one-step
        # `podlink backup` of a large ledger) would otherwise hold every write of the
        # node for 20 x busy_timeout. The next checkpoint that empties the WAL will do.
        await self.db.execute("PRAGMA busy_timeout=100")
        try:
            for _ in range(10):
                try:
                    cursor = await self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                    busy = (await cursor.fetchone() or (1,))[0]
                except sqlite3.Error as err:  # the forget is committed: never fail it now
                    log.warning("could not empty the WAL after a forget: %s", err)
                    return
                if not busy:
                    return
                await asyncio.sleep(0.05)
        finally:
            await self.db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        log.warning("the WAL still holds a forgotten member's old pages; the next "
                    "checkpoint that empties it will remove them")  # fmt: skip

    async def _shred_copies(self) -> None:
        """The same forget in the copies a restore set aside in this folder (ledger/aside.py)."""
        if not aside.copies(self.path):
            return
        try:
            forgotten = [m for (m,) in await rows(
                self.db, "SELECT id FROM members WHERE status = 'forgotten'")]  # fmt: skip
        except sqlite3.Error as err:
            log.warning("could not list forgotten members for the copies aside: %s", err)
            return
        await asyncio.to_thread(aside.scrub, self.path, forgotten)

    def forget_caches(self) -> None:
        """After a rollback: in-memory heads, positions and roster may be ahead of disk."""
        self.heads.clear()
        self._stale_caches = True
        self.generation += 1
        self.recent.clear()
        self.folds.clear()  # they may hold events the rollback took back
        self.fast_memo.clear()

    def after_commit(
        self, batch: Batch, landing: asyncio.Future[None] | None = None,
        owner: Streak | None = None,
    ) -> None:  # fmt: skip
        """After a batch's transaction: its COMMIT landed, or is ``landing``, left by
        ``owner`` (writer.py)."""
        self.heads.update(batch.heads)
        if self.waiting_feeds:  # (nothing more to do on an ingest while no evidence waits)
            self._note_due(batch.heads)
        self.released_stored += batch.released
        if batch.stored_ids:
            self.generation += 1
            self.recent.append((self.generation, batch.stored_ids))
        news = bool(batch.stored or batch.forked)  # new fork evidence is news for peers too
        if landing is not None:
            assert owner is not None, "a COMMIT is left to land only by an ingest"
            self._landing = Landing(landing, self.generation, self.next_pos - 1, news, owner)
            return
        self.landed = self.generation
        if news:
            self.notify_stored()

    def _note_due(self, heads: dict[tuple[bytes, str], tuple[int, bytes, int]]) -> None:
        """Mark the feeds of ``heads`` (feed -> (seq, id, ts), just stored) that fork
        evidence waits for at most one past their new head: ``_release_waiting`` runs next."""
        waiting = self.waiting_feeds
        small, large = (waiting, heads) if len(waiting) < len(heads) else (heads, waiting)
        for feed in small:
            if feed in large and waiting[feed] <= heads[feed][0] + 1:
                self.waiting_due.add(feed)

    def notify_stored(self, head: int | None = None) -> None:
        """Tell the listeners (the node's live streams) that something new is stored, up to
        store position ``head`` (default: the last taken)."""
        for listener in list(self.stored_listeners):
            listener(self.next_pos - 1 if head is None else head)

    def stored_since(self, generation: int) -> dict[bytes, bool] | None:
        """Ids stored after ``generation`` (see ``recent``); None if not all remembered."""
        newer = [ids for gen, ids in self.recent if gen > generation]
        if len(newer) != self.generation - generation:
            return None
        return {k: v for ids in newer for k, v in ids.items()}

    # ---------------------------------------------------------------- pending accounting

    def pending_count(self, source: str) -> int:
        return self.pending_by_source[source]

    def pending_count_changed(
        self, source: str, delta: int, parked: list[tuple[bytes, str, str]]
    ) -> None:
        self.pending_by_source[source] += delta
        if self.pending_by_source[source] <= 0:
            del self.pending_by_source[source]
        for author, lane, why in parked:
            self._note_pending(author, lane, why)

    def _note_pending(self, author: bytes, lane: str, why: str) -> None:
        if why == "roster":
            self.pending_roster.add(author)
        else:
            self.pending_feeds.add((author, lane))

    async def purge_pending(self, now_ms: int | None = None) -> int:
        """Drop parked events older than ``limits.pending_ttl_s`` at ``now_ms`` (default:
        now); return how many. Ingest does this by itself at most once a minute."""
        async with self._write:
            return await run_to_end(
                self._expire_pending(clock.now_ms() if now_ms is None else now_ms)
            )

    async def _purge_pending(self) -> None:
        """Drop parked events older than the TTL (checked at most once a minute)."""
        now = time.monotonic()
        if now - self._last_purge < 60:
            return
        self._last_purge = now
        # To its end: the DELETE commits at once, and the counts of what waits per source
        # must follow it (a purge cut short left a source "full" of events it no longer has).
        await run_to_end(self._expire_pending(clock.now_ms()))

    async def _expire_pending(self, now_ms: int) -> int:
        """Drop parked events and waiting fork evidence received before the TTL; returns
        how many events (the evidence is counted as ``expired``)."""
        cutoff = now_ms - self.limits.pending_ttl_s * 1000
        async with translated("expiring pending events"):
            cur = await self.db.execute("DELETE FROM pending WHERE received < ?", (cutoff,))
            dropped = cur.rowcount
            cur = await self.db.execute("DELETE FROM forks_waiting WHERE received < ?", (cutoff,))
            expired = cur.rowcount
            # Invite codes nobody used, expired a month ago: kept that long so that a late
            # joiner hears "expired", not "not known". (Used ones stay: a removed peer must
            # not rejoin with its old code, peer_api.redeem.)
            await self.db.execute(
                "DELETE FROM invites WHERE used_by IS NULL AND expires < ?",
                (now_ms // 1000 - INVITE_KEEP_S,),
            )
            await self.db.commit()
            self.pending_by_source.clear()
            for source, n in await rows(
                self.db, "SELECT source, count(*) FROM pending GROUP BY 1"
            ):
                self.pending_by_source[source] = n
            if expired:
                await self._load_waiting()
        if expired:
            self._count_evidence("expired", expired)
        return dropped

    # ---------------------------------------------------------------- maintenance

    async def rebuild(self, progress: Progress | None = None) -> None:
        """Drop every projection and replay the log; the result equals the live state."""
        async with self._write, translated("rebuilding projections"):
            try:
                await self._rebuild(self.db, progress)
            except BaseException:
                self.forget_caches()  # reloaded from the file before the next batch
                raise

    async def _rebuild(self, db: aiosqlite.Connection, progress: Progress | None) -> None:
        async with transaction(db):
            for table in PROJECTIONS:
                await db.execute(f"DELETE FROM {table}")
            await _recompute_roots(db)
            roster = st.Roster()  # the ledger's own only once committed
            pods = [r[0] for r in await rows(
                db, "SELECT DISTINCT pod FROM events WHERE kind IN "
                "('roster.add', 'roster.remove')")]  # fmt: skip
            for pod in pods:
                await projections.refold_roster(db, roster, pod)
            # Pods fold under their key, found from their events (not feeds.pod: one
            # key may write two pods' events in one feed). Every other aggregate that
            # has rows has its anchor event (root = id) in the log: walk the log for
            # anchors, in pages, so memory stays flat at any size. Progress counts
            # positions walked.
            pod_roots = [r[0] for r in await rows(
                db, "SELECT DISTINCT root FROM events WHERE kind IN "
                "('pod.genesis', 'pod.info', 'roster.add', 'roster.remove')")]  # fmt: skip
            await projections.refold(db, pod_roots, roster, empty=True)
            total = await scalar(db, "SELECT max(pos) FROM events") or 0
            after = 0
            while True:
                page = await rows(
                    db, "SELECT pos, id FROM events WHERE pos > ? AND root = id "
                    "ORDER BY pos LIMIT 2000", (after,))  # fmt: skip
                if not page:
                    break
                await projections.refold(db, [r[1] for r in page], roster, empty=True)
                after = page[-1][0]
                if progress:
                    progress(after, total)
            if progress:
                progress(total, total)
            await db.execute("DELETE FROM meta WHERE key = 'rebuild'")
        self.roster = roster
        self.folds.clear()  # folded under the roster before; the log may have changed too

    async def verify(self, progress: Progress | None = None) -> VerifyReport:
        """Re-check every stored signature, body hash and feed chain, that each row's
        indexed columns say what its signed header says (folds, lists and the lanes served
        to peers read the columns), and that the feed heads table matches the log."""
        report = VerifyReport(problems=[])
        assert report.problems is not None
        # The reader's connection: committed rows only (the writer's would show a batch
        # in flight, and a rollback then as damage), up to the head as of now.
        end = await scalar(self.reader, "SELECT coalesce(max(pos), 0) FROM events") or 0
        total = await scalar(self.reader, "SELECT count(*) FROM events WHERE pos <= ?", (end,))
        heads: dict[tuple[bytes, str], tuple[int, bytes]] = {}
        last = 0
        loop = asyncio.get_running_loop()
        while True:
            batch = await rows(
                self.reader,
                "SELECT pos, id, author, lane, seq, payload, sig, body, pod, ts, kind "
                "FROM events WHERE pos > ? AND pos <= ? ORDER BY pos LIMIT 2000",
                (last, end),
            )
            if not batch:
                break
            last = batch[-1][0]
            checked = await loop.run_in_executor(self.executor, _verify_rows, batch)
            report.problems += checked
            for pos, id_, author, lane, seq, payload, _, _, pod, ts, kind in batch:
                prev_seq, prev_id = heads.get((author, lane), (0, None))
                heads[(author, lane)] = (seq, id_)
                try:
                    header = decode_header(payload)
                except ProtocolError:
                    continue  # reported by _verify_rows: its id is not its header's hash
                if header.seq != prev_seq + 1 or header.prev != prev_id:
                    report.problems.append(
                        f"chain broken at {lane} seq {seq} of {author.hex()[:12]}"
                    )
                columns = {"pod": pod, "author": author, "lane": lane, "seq": seq, "ts": ts,
                           "kind": kind}  # fmt: skip
                wrong = [name for name, value in columns.items() if getattr(header, name) != value]
                if wrong:
                    report.problems.append(
                        f"event at position {pos}: its {', '.join(wrong)} column"
                        f"{'s differ' if len(wrong) > 1 else ' differs'} from its signed header"
                    )
            report.events += len(batch)
            if progress:
                progress(report.events, total or 0)
        report.problems += await _check_feed_heads(self.reader, heads, end)
        return report

    async def dump(self) -> dict[str, list[list]]:
        """A canonical dump of every projection (equal dumps: equal state)."""
        return await projections.canonical_dump(self.db)


async def _check_feed_heads(
    db: aiosqlite.Connection, heads: dict[tuple[bytes, str], tuple[int, bytes]], end: int
) -> list[str]:
    """Problems where the feed heads table (what new events chain on, and what repairs
    compare) disagrees with the last event of each feed in the log up to position
    ``end``; a feed that moved on past ``end`` since is left alone."""
    problems = []
    table = {}
    for author, lane, seq, id_, pos in await rows(
        db, "SELECT f.author, f.lane, f.seq, f.id, e.pos FROM feeds AS f "
        f"LEFT JOIN events AS e ON {ids_joined('e.id', 'f.id')}"):  # fmt: skip
        if pos is not None and pos > end:  # stored after verify began
            heads.pop((author, lane), None)
            continue
        table[(author, lane)] = (seq, id_)
    for feed in sorted(set(table) | set(heads)):
        said, found = table.get(feed), heads.get(feed)
        if said != found:
            author, lane = feed
            table_seq = said[0] if said else "none"
            log_seq = found[0] if found else "none"
            problems.append(
                f"feed head of {lane} {author.hex()[:12]}: the feeds table says seq "
                f"{table_seq}, the log ends at seq {log_seq}"
                + (" (another event)" if table_seq == log_seq else "")
            )
    return problems


def _verify_rows(batch: list[tuple]) -> list[str]:
    problems = []
    for pos, id_, author, _lane, _seq, payload, sig, body, *_ in batch:
        problem = verify_signature_parts(id_, author, payload, sig, body)
        if problem:
            problems.append(f"event at position {pos}: {problem}")
    return problems


async def _recompute_roots(db: aiosqlite.Connection) -> None:
    """Set every event's aggregate root from its header alone, then re-home claim answers."""
    last = 0
    while True:
        page = await rows(
            db, "SELECT pos, id, pod, kind, payload FROM events WHERE pos > ? "
            "ORDER BY pos LIMIT 5000", (last,))  # fmt: skip
        if not page:
            break
        last = page[-1][0]
        updates = [
            (st.root_of(kind, id_, pod, tuple(decode_header(payload).refs)), pos)
            for pos, id_, pod, kind, payload in page
        ]
        await db.executemany("UPDATE events SET root = ? WHERE pos = ?", updates)
    await db.execute(
        "UPDATE events AS a SET root = c.root FROM events AS c "
        f"WHERE a.kind IN ('claim.accept', 'claim.decline') AND {ids_joined('c.id', 'a.root')} "
        "AND c.kind = 'claim.make' AND c.root IS NOT NULL"
    )
