"""The gossip scheduler: one task per peer pulls what the peer lets us see.

Each :class:`PeerLink` loops: catch up over HTTP (pages since the stored cursor), then keep
the live WebSocket stream open, ingesting each page through the ledger and saving the
cursor after each batch. On failure it backs off exponentially with jitter; a peer that
sends forged or malformed events is backed off harder. A restored peer (new epoch, or a
head behind our cursor) is repaired by comparing feed heads. No peer can block another:
each has its own task, its own timeouts, and the ledger's bounded pending area.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import msgspec
import yarl

from podlink.ledger import forks as fork_rows
from podlink.ledger import queries
from podlink.ledger.ledger import Checked
from podlink.ledger.store import rows, run_to_end
from podlink.ledger.writer import Streak
from podlink.node.api_types import (
    FeedHead,
    Page,
    PeerSync,
    StreamHello,
    fork_page_decoder,
    heads_decoder,
    msgpack_encoder,
    page_decoder,
)
from podlink.node.runtime import Node, PeerRecord, cursor_update
from podlink.protocol.envelope import decode_event
from podlink.protocol.errors import ProtocolError
from podlink.protocol.evidence import Fork
from podlink.protocol.http_auth import sign_request
from podlink.protocol.text import b64e

log = logging.getLogger("podlink.gossip")
HOSTILE = frozenset({"forged", "invalid", "too-large"})
# Refusals that may turn into acceptance later: stamped ahead of our clock, or over the
# pending bound. The cursor moves past them with its page, so a repair fetches them again.
LATER = frozenset({"too-far-ahead", "rate-limited"})
REPAIR_RETRY_S = 30.0  # a live link with feeds left behind repairs again this often
MAX_RESPONSE_BYTES = 8 * 1024 * 1024  # twice the largest page a node serves
# What decoding a peer's bytes may raise: msgspec's errors, and RecursionError/ValueError
# for hostile nesting. All of them make it the peer's fault, never a crash of the link.
UNREADABLE = (msgspec.MsgspecError, RecursionError, ValueError)


HEADS_PAGE = 2000  # feed heads asked for at once in a repair (~160 kB)
FORK_PAGES = 50  # pages of fork evidence taken per page of changes that says there is more


class PeerError(Exception):
    """Raised when a peer answers with an error status or bytes we cannot read."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status  # the HTTP status, when the peer answered with an error


class LinkBusy(Exception):
    """`podlink sync` found the link's own pull (a long repair) still under way."""


class RepairStopped(PeerError):
    """A pull whose changes were taken but whose repair the peer cut short; what the pull
    received and stored comes with it."""

    def __init__(self, cut: PeerError, received: int, stored: int) -> None:
        super().__init__(f"repair stopped: {cut}", cut.status)
        self.received, self.stored = received, stored


@dataclass
class LinkStatus:
    state: str = "starting"  # starting | syncing | live | backoff | stopped
    connected: bool = False
    last_success: int | None = None
    last_error: str = ""
    behind: int | None = None
    received: int = 0
    stored: int = 0
    refused: int = 0
    hostile: int = 0


class PeerLink:
    """Replication from one peer into this node."""

    def __init__(self, node: Node, record: PeerRecord) -> None:
        self.node = node
        self.record = record
        self.status = LinkStatus()
        self.source = b64e(record.pod)
        # Where the last repair's walk of the peer's feeds stopped (the peer's rate limit,
        # an error): the next walk starts there, so every feed is reached in the end.
        self._walk_from: tuple[bytes, str] | None = None
        # (epoch, cursor) when the stream ended on a page saying the peer's store was
        # restored: the pull after it must see that, or the peer contradicts itself.
        self._restore_seen: tuple[bytes | None, int] | None = None
        # The cursor past the page a pull stored last, moved in memory but not yet on
        # disk: it is written in the next page's transaction (see _take).
        self._unsaved: tuple[bytes, int, bytes, int] | None = None
        self._repair_error: PeerError | None = None  # what cut the last walk short
        self._lock = asyncio.Lock()  # one pull at a time (the loop and `podlink sync`)
        self.task: asyncio.Task[None] | None = None

    # ------------------------------------------------------------ HTTP

    def _url(self, path: str, **query: object) -> yarl.URL:
        url = yarl.URL(self.record.url + path)
        return url.with_query({k: str(v) for k, v in query.items()}) if query else url

    def _headers(self, method: str, url: yarl.URL, body: bytes = b"") -> dict[str, str]:
        return sign_request(self.node.keypair, method, url.raw_path_qs, body, pod=self.record.pod)

    async def _get(self, path: str, **query: object) -> bytes:
        session = self.node.session
        assert session is not None
        url = self._url(path, **query)
        async with session.get(url, headers=self._headers("GET", url)) as resp:
            if (resp.content_length or 0) > MAX_RESPONSE_BYTES:
                raise PeerError(f"{path}: answer of {resp.content_length} bytes is too large")
            # read(n) returns what has arrived so far, not n bytes: read to the end, capped.
            parts: list[bytes] = []
            size = 0
            async for part in resp.content.iter_chunked(64 * 1024):
                size += len(part)
                if size > MAX_RESPONSE_BYTES:
                    raise PeerError(f"{path}: answer larger than {MAX_RESPONSE_BYTES} bytes")
                parts.append(part)
            data = b"".join(parts)
            if resp.status != 200:
                raise PeerError(
                    f"{path}: HTTP {resp.status} {data[:200].decode(errors='replace')}",
                    resp.status,
                )
            return data

    # ------------------------------------------------------------ pulling

    async def pull(self) -> tuple[int, int]:
        """Fetch pages until caught up; returns (events received, events stored)."""
        async with self._lock:
            return await self._pull_held()

    async def pull_within(self, seconds: float) -> tuple[int, int]:
        """`podlink sync`'s pull: ``seconds`` to wait for the link's own pull (else
        LinkBusy), then ``seconds`` for this one. One limit for both spent the organizer's
        time waiting for our own lock, and then called the peer down."""
        try:
            await asyncio.wait_for(self._lock.acquire(), seconds)
        except TimeoutError:
            raise LinkBusy from None
        try:
            return await asyncio.wait_for(self._pull_held(), seconds)
        finally:
            self._lock.release()

    async def _pull_held(self) -> tuple[int, int]:
        state, self.status.state = self.status.state, "syncing"
        try:
            return await self._pull()
        finally:
            # A pull on a live link (`podlink sync`) leaves it shown as live, not
            # "syncing" until the connection happens to drop.
            if self.status.state == "syncing":
                self.status.state = "live" if self.status.connected else state

    async def _repair_again(self) -> int:
        """Repair from this peer; end the repair once one finds nothing more."""
        received, complete = await self.repair()
        if received == 0 and complete:
            # Only a repair that finds nothing more ends it: our own events still in
            # flight when we restarted reach the peer later, and pages never carry them
            # back to us, so each pull repairs again until none come.
            await self.node.repaired(self.record.pod)
        return received

    async def _pull(self) -> tuple[int, int]:
        self._repair_error = None
        received, stored = await self._pull_changes()
        # Then repair, if our store was restored, a repair left feeds behind, or events
        # were refused for now. After the changes, not before: a repair is one request
        # per feed we lack, and a long one could spend the peer's rate limit (429) before
        # the changes, which bring most of what we lack in a few pages, were asked for.
        if self.record.repair:
            repaired = await self._repair_again()
            received, stored = received + repaired, stored + repaired
        err, self._repair_error = self._repair_error, None
        if err is not None:  # what could be stored is: now report the peer's fault
            raise RepairStopped(err, received, stored)
        return received, stored

    async def _pull_changes(self) -> tuple[int, int]:
        """Fetch pages of changes from our cursor until caught up."""
        received = stored = 0
        # Pipelined: the next pages are fetched and their signatures checked while this
        # one is stored (a page's events chain onto the last page's, which the store
        # step takes in order). With one page ahead, node B waited ~20 % of a sync for
        # the next page once its store got faster (docs/performance.md, eleventh round).
        #
        # Each page's COMMIT is left to land while the next page is taken (ledger/writer.py:
        # the streak's next store settles it, and raises if it failed). So that a cursor is
        # never on disk ahead of its page, a page's cursor is written in the next page's
        # transaction, or once the last has landed.
        pages = _Ahead(self._fetch, self.record.cursor)
        streak = Streak()
        try:
            while True:
                page, checked = await pages.next()
                r, s = await self._take(page, checked, streak)
                received, stored = received + r, stored + s
                if _last(page):
                    break
                if self.record.cursor != page.cursor:  # a repair moved it: refetch from there
                    await pages.cancel()
                    pages = _Ahead(self._fetch, self.record.cursor)
        except BaseException:
            if streak.landings or self._unsaved is not None:
                await run_to_end(self._cursor_from_disk(streak))
            raise
        finally:
            self._unsaved = None
            await pages.cancel()
        return received, stored

    async def _cursor_from_disk(self, streak: Streak) -> None:
        """After a pull that stopped midway (cancelled, or a page failed): once every page
        it left to land has landed, the cursor past the last is saved; if one failed, the
        cursor stays where it is on disk. Then the cursor in memory is the one on disk."""
        unsaved, self._unsaved = self._unsaved, None
        try:
            await self.node.ledger.settle(streak)
        except Exception:  # (its error is the pull's to report)
            unsaved = None
        with contextlib.suppress(Exception):  # (a ledger closing: nothing to keep then)
            if unsaved is not None:
                await self.node.ledger.write(*cursor_update(*unsaved))
            await self.node.reload_cursor(self.record.pod)

    async def _fetch(self, since: int) -> tuple[Page, asyncio.Future[Checked | None]]:
        """One page of changes after ``since``, and its events' check under way (they are
        not stored yet)."""
        try:
            page = page_decoder.decode(await self._get("/v1/peer/changes", since=since))
        except UNREADABLE as err:
            raise PeerError(f"unreadable page: {err}") from None
        wires = [bytes(raw) for raw in page.events]
        return page, asyncio.ensure_future(self._check(wires))

    async def _check(self, wires: list[bytes]) -> Checked | None:
        return await self.node.ledger.check(wires) if wires else None

    async def _take(
        self, page: Page, checked: Checked | None = None, streak: Streak | None = None
    ) -> tuple[int, int]:
        """Ingest one page, repairing first if the peer's store was restored.

        ``streak``: a pull's (``_pull_changes``); the page's COMMIT is left to land, and
        its cursor waits for the next page's transaction, unless it is the last."""
        rec = self.record
        if (rec.epoch is not None and page.epoch != rec.epoch) or page.head < rec.cursor:
            log.warning("peer %s: store restored (epoch or head moved back); repairing",
                        self.source[:8])  # fmt: skip
            if streak is not None:  # the pages before it on disk first
                await self.node.ledger.settle(streak)
                self._unsaved = None
            _, complete = await self.repair()
            if not complete:  # the cursor moves on: what a feed left behind, a repair fetches
                await self.node.repaired(rec.pod, done=False)
            await self.node.save_cursor(rec.pod, page.head, page.epoch, int(time.time()))
            # Its evidence numbers start again too: take its evidence from the start (what
            # we hold already is not stored twice).
            await self.node.save_forks_cursor(rec.pod, 0)
            await self._take_forks(page.forks)
            return 0, 0
        wires = [bytes(raw) for raw in page.events]
        stored = 0
        if streak is not None:
            then = cursor_update(*self._unsaved) if self._unsaved is not None else None
            results = await self.node.submit(
                wires, source=self.source, checked=checked or Checked([]), streak=streak,
                then=then,
            )  # fmt: skip
            self._unsaved = None
        elif wires:
            results = await self.node.submit(wires, source=self.source, checked=checked)
        if wires:
            stored = sum(r.status == "stored" for r in results)
            later = [r for r in results if r.status == "refused" and r.reason in LATER]
            if later and not rec.repair:
                # The cursor moves past this page: without a repair, these events (and
                # every later one of their feeds, chained on them) would never come again.
                log.info("peer %s: %d events refused for now (%s); a repair will fetch "
                         "them again", self.source[:8], len(later), later[0].message)  # fmt: skip
                await self.node.repaired(rec.pod, done=False)
            self._count(results)
        self.status.received += len(wires)
        self.status.stored += stored
        self.status.behind = max(page.head - page.cursor, 0)
        self.node.metrics.set("peer_lag_events", self.status.behind, peer=self.source[:8])
        now = int(time.time())
        if streak is not None and not _last(page):
            self.node.cursor_moved(rec.pod, page.cursor, page.epoch, now)
            self._unsaved = (rec.pod, page.cursor, page.epoch, now)
        else:
            if streak is not None:
                await self.node.ledger.settle(streak)
            await self.node.save_cursor(rec.pod, page.cursor, page.epoch, now)
        self.status.last_success = now
        if page.cursor >= page.head:
            # Evidence once caught up, not before: a piece is kept only about a feed we
            # hold (Ledger.store_forks), and the author's events may be pages ahead. Taken
            # earlier, it would wait for them in the bounded waiting room (and be checked
            # then), where its source's room is better left for feeds no peer has yet.
            await self._take_forks(page.forks)
        return len(wires), stored

    # ------------------------------------------------------------ fork evidence

    async def _take_forks(self, newest: int) -> None:
        """Fetch the peer's fork evidence after our cursor into it, if a page says it has
        newer (``newest``, its number of the newest we may see). A number below our cursor
        means the peer numbers anew (its store was restored): from the start, then.

        Evidence never stops replication: a peer that cannot serve it, or serves junk,
        is logged and counted, and the events go on; the next page asks again."""
        rec = self.record
        if newest < rec.forks_cursor:
            await self.node.save_forks_cursor(rec.pod, 0)
        if newest <= rec.forks_cursor:
            return
        try:
            await self._pull_forks()
        except (PeerError, aiohttp.ClientError, TimeoutError) as err:
            log.info("peer %s: fork evidence not taken: %s", self.source[:8],
                     describe(err, self.node.config.peer_timeout_s))  # fmt: skip

    async def _pull_forks(self) -> None:
        """Pages of the peer's evidence after our cursor, each piece checked on its own
        (ledger/forks.py: signatures, shape, lane) and stored if new, until its head (at
        most FORK_PAGES pages, the rest at the next page that says so)."""
        rec, ledger, metrics = self.record, self.node.ledger, self.node.metrics
        for _ in range(FORK_PAGES):
            after = rec.forks_cursor
            try:
                page = fork_page_decoder.decode(await self._get(
                    "/v1/peer/forks", after=after, limit=fork_rows.FORKS_PAGE))  # fmt: skip
            except UNREADABLE as err:
                self._count([], hostile=1, what="pages of fork evidence", why=str(err)[:200])
                raise PeerError(f"unreadable fork evidence: {err}") from None
            pieces = [bytes(raw) for raw in page.forks[: fork_rows.FORKS_PAGE]]
            extra = len(page.forks) - len(pieces)  # more than asked for: not even read
            checked = await fork_rows.check_from_peer(ledger, pieces, rec.pod)
            good = [c for c in checked if isinstance(c, Fork)]
            bad = [c for c in checked if isinstance(c, ProtocolError)]
            # About a feed we do not hold, or past its head: it waits for the feed (not
            # the peer's fault, it may hold more of the feed than we were given yet).
            later = [c.fork for c in checked if isinstance(c, fork_rows.Unplaced)]
            for outcome in await ledger.store_forks(good, source=self.source, unplaced=later):
                metrics.inc("fork_evidence_total", outcome=outcome)
            for err in bad:
                metrics.inc("fork_evidence_total", outcome=err.reason)
            if bad or extra:
                self._count([], hostile=len(bad) + extra, what="pieces of fork evidence",
                            why=bad[0].message if bad else "more evidence than asked for")
            if page.cursor <= after:  # no progress: nothing more, or a peer going round
                return
            await self.node.save_forks_cursor(rec.pod, page.cursor)
            if page.cursor >= page.head:
                return

    def _count(
        self,
        results: list,
        hostile: int = 0,
        *,
        repair: bool = False,
        what: str = "events",
        why: str = "events it was not asked for",
    ) -> None:
        """Count what the peer sent us that was refused (and how much of it was hostile:
        forged, malformed, oversized), in every path that submits its events. A repair
        counts only the hostile: it asks again, by design, for what was refused for now
        or for good (a fork's other branch), and would count those once per repair."""
        refused = [r for r in results if r.status == "refused"]
        bad = [r for r in refused if r.reason in HOSTILE]
        self.status.refused += (len(bad) if repair else len(refused)) + hostile
        self.status.hostile += len(bad) + hostile
        if bad or hostile:
            why = bad[0].message if bad else why
            log.warning("peer %s sent %d bad %s (%s)", self.source[:8],
                        len(bad) + hostile, what, why)  # fmt: skip

    async def repair(self) -> tuple[int, bool]:
        """Compare feed heads with the peer and fetch every range we miss; returns (events
        stored, complete).

        Progress is our own feed head, read again after each page: an event that waits
        (say, ahead of the roster.add naming its author, which another feed brings) or is
        refused for now (too far ahead, the pending bound) does not move it, and the feed
        is left for the next repair rather than counted as fetched. (Counting pages, a
        repair after a peer's restore skipped such events, and the cursor then moved past
        them for good.) A feed whose next event is refused for good (the other branch of
        a fork, a forgery) is done: fetching it again would only be refused again, at
        every repair, for the life of the link.

        The peer's heads are read a page at a time, and the walk goes once round them
        from where the last one stopped. A walk the peer cuts short (its rate limit,
        an error) ends the repair, incomplete, rather than the pull: the changes after
        it still come, and the next repair goes on from that feed. (Ending the pull, a
        walk that met the rate limit before the feed naming the authors of the feeds
        before it failed the same way at every pull, and the link never synced again.)"""
        stored, complete = 0, True
        self._repair_error = None  # it says how the last walk ended
        done_to = self._walk_from  # the walk goes on after this feed
        head: FeedHead | None = None
        try:
            async for head in self._walk(done_to):
                got, done = await self._repair_feed(head)
                stored += got
                complete = complete and done
                done_to = (head.author, head.lane)
            self._walk_from = None
        except (PeerError, aiohttp.ClientError, TimeoutError) as cut:
            # Rate-limited: this feed again next time. Anything else (an error answer,
            # a connection reset, a timeout): the one after it, so that one feed the
            # peer cannot serve does not stop every walk there.
            err = cut if isinstance(cut, PeerError) else PeerError(
                f"{type(cut).__name__}: {cut}")  # fmt: skip
            if err.status != 429 and head is not None:
                done_to = (head.author, head.lane)
            self._walk_from = done_to
            self._repair_error = err
            complete = False
            log.warning("peer %s: repair stopped after %d events (%s); the next one goes "
                        "on from there", self.source[:8], stored, err)  # fmt: skip
        log.info("peer %s: repair stored %d events%s", self.source[:8], stored,
                 "" if complete else "; some feeds are left for the next one")  # fmt: skip
        return stored, complete

    async def _walk(self, after: tuple[bytes, str] | None) -> AsyncIterator[FeedHead]:
        """The peer's feed heads in (author, lane) order, once round from after ``after``."""
        async for head in self._heads(after=after):
            yield head
        if after is not None:
            async for head in self._heads(after=None):
                if (head.author, head.lane) > after:
                    return
                yield head

    async def _heads(self, after: tuple[bytes, str] | None) -> AsyncIterator[FeedHead]:
        """The peer's feed heads after ``after``, HEADS_PAGE at a time.

        A node from before paging answers every head at once, whatever is asked: more
        than a page is then the whole list, and heads up to ``after`` are skipped."""
        while True:
            query: dict[str, object] = {"limit": HEADS_PAGE}
            if after is not None:
                query.update(after_author=b64e(after[0]), after_lane=after[1])
            try:
                page = heads_decoder.decode(await self._get("/v1/peer/heads", **query))
            except UNREADABLE as err:
                raise PeerError(f"unreadable heads: {err}") from None
            fresh = [h for h in page if after is None or (h.author, h.lane) > after]
            for head in fresh:
                yield head
            if len(page) != HEADS_PAGE or not fresh:
                return
            after = (fresh[-1].author, fresh[-1].lane)

    async def _repair_feed(self, head: FeedHead) -> tuple[int, bool]:
        """Fetch what we miss of one feed the peer holds; (events stored, complete)."""
        have = await self._our_seq(head.author, head.lane)
        if have >= head.seq > 0:
            checked = await self._check_same_history(head)
            # refused for now (stamped ahead): check again later
            return 0, not any(r.status == "pending" or r.reason in LATER for r in checked)
        stored = 0
        while have < head.seq:
            try:
                page = page_decoder.decode(await self._get(
                    "/v1/peer/feed", author=b64e(head.author), lane=head.lane,
                    **{"from": have + 1, "to": head.seq}))  # fmt: skip
            except UNREADABLE as err:
                raise PeerError(f"unreadable page: {err}") from None
            if not page.events:
                return stored, False  # it has them, but not for us, or not now
            results = await self.node.submit(
                [bytes(r) for r in page.events], source=self.source
            )
            self._count(results, repair=True)
            now = await self._our_seq(head.author, head.lane)
            if now == have:  # nothing of it stored: the rest waits, or was refused
                # Refused for good at the feed's next position (the rest of the page
                # waits behind it, in vain) is done; pending or refused for now is not.
                first = results[0] if results else None
                for_good = first is not None and first.status == "refused" and (
                    first.reason not in LATER
                )  # fmt: skip
                later = any(r.status == "pending" or r.reason in LATER for r in results)
                return stored, for_good or not later
            stored += now - have
            have = now
        return stored, True

    async def _check_same_history(self, head: FeedHead) -> list:
        """When we hold a feed as far as the peer does, or further, the peer's head must
        be the event we hold at that place. If it is not, the key signed two histories
        (a store restored and written on before it synced): fetch the peer's event there
        so that the ledger records the fork. Comparing seqs alone, the two pods kept
        different events at one place without either ever knowing."""
        found = await rows(
            self.node.ledger.reader,
            "SELECT id FROM events WHERE author = ? AND lane = ? AND seq = ?",
            (head.author, head.lane, head.seq),
        )
        if not found or found[0][0] == head.id:
            return []
        try:
            page = page_decoder.decode(await self._get(
                "/v1/peer/feed", author=b64e(head.author), lane=head.lane,
                **{"from": head.seq, "to": head.seq}))  # fmt: skip
        except UNREADABLE as err:
            raise PeerError(f"unreadable page: {err}") from None
        # The one event asked for, and only that: anything else in the answer is counted
        # against the peer, never verified (a page of forgeries for one question).
        asked = [bytes(r) for r in page.events[:1]
                 if _at(bytes(r), head.author, head.lane, head.seq)]  # fmt: skip
        if not asked:
            self._count([], hostile=len(page.events), repair=True)
            return []
        results = await self.node.submit(asked, source=self.source)  # a fork: kept as proof
        self._count(results, hostile=len(page.events) - 1, repair=True)
        return results

    async def _our_seq(self, author: bytes, lane: str) -> int:
        ours = await queries.feed_heads(self.node.ledger.reader, author)
        return ours.get(lane, (0, b"", 0))[0]

    # ------------------------------------------------------------ live stream

    async def stream(self) -> bool:
        """Keep the WebSocket open and ingest pages as the peer pushes them; True when it
        ends for a repair that is due.

        While feeds are left behind (events refused for now), it ends every REPAIR_RETRY_S
        (whether pages keep coming or not) so that ``run`` pulls and repairs, then comes
        back. The repair ran here, holding the link without reading the socket: pings
        went unanswered, and the peer dropped a stream whose repair took over ~12 s."""
        session = self.node.session
        assert session is not None
        url = self._url("/v1/peer/stream")
        async with session.ws_connect(
            url, headers=self._headers("GET", url), heartbeat=30, max_msg_size=MAX_RESPONSE_BYTES
        ) as ws:
            hello = StreamHello(since=self.record.cursor, epoch=self.record.epoch)
            await ws.send_bytes(msgpack_encoder.encode(hello))
            self.status.state, self.status.connected = "live", True
            self.node.metrics.set("peer_connected", 1, peer=self.source[:8])
            try:
                due = time.monotonic() + REPAIR_RETRY_S
                while True:
                    if self.record.repair and time.monotonic() >= due:
                        return True
                    # (at least 1 ms: aiohttp takes a timeout of 0 for "none")
                    wait = max(1e-3, due - time.monotonic()) if self.record.repair else None
                    try:
                        msg = await ws.receive(wait)
                    except TimeoutError:
                        continue
                    if msg.type != aiohttp.WSMsgType.BINARY:
                        return False
                    try:
                        page = page_decoder.decode(msg.data)
                    except UNREADABLE as err:
                        raise PeerError(f"unreadable page: {err}") from None
                    async with self._lock:
                        rec = self.record
                        if page.epoch == rec.epoch and page.cursor <= rec.cursor:
                            # A pull (`podlink sync`) took it while this one waited, or it
                            # only says the peer holds new fork evidence (taken once we
                            # hold all it has, as in _take).
                            if rec.cursor >= page.head:
                                await self._take_forks(page.forks)
                            continue
                        if (rec.epoch is not None and page.epoch != rec.epoch) or (
                            page.head < rec.cursor
                        ):  # the peer's store was restored: a pull repairs
                            self._restore_seen = (rec.epoch, rec.cursor)
                            return True
                        await self._take(page)
            finally:
                self.status.connected = False
                self.node.metrics.set("peer_connected", 0, peer=self.source[:8])

    async def run(self) -> None:
        """Replicate forever: catch up, stream, and on failure back off with jitter."""
        delay = 1.0
        cap = self.node.config.backoff_max_s
        while True:
            try:
                started = time.monotonic()
                try:
                    await self.pull()
                    self.status.last_error = ""
                except RepairStopped as err:
                    # The changes are in; the repair goes on at the stream's next pause
                    # (REPAIR_RETRY_S). Backing off instead kept a peer with one feed it
                    # could not serve off its stream for good.
                    self.status.last_error = describe(err, self.node.config.peer_timeout_s)
                    log.info("peer %s: %s", self.source[:8], self.status.last_error)
                self._check_restore_seen()
                self.node.metrics.set(
                    "peer_sync_seconds", time.monotonic() - started, peer=self.source[:8]
                )
                delay = 1.0
                if await self.stream():
                    continue  # a repair is due: pull (changes, then the repair) at once
                self.status.last_error = "stream closed by peer"
            except asyncio.CancelledError:
                self.status.state = "stopped"
                raise
            except (aiohttp.ClientError, PeerError, TimeoutError, OSError) as err:
                self.status.last_error = describe(err, self.node.config.peer_timeout_s)
                log.info("peer %s: %s", self.source[:8], self.status.last_error)
            except Exception as err:  # a bug must not kill replication for good
                self.status.last_error = f"internal: {type(err).__name__}"
                log.exception("peer %s: unexpected error", self.source[:8])
            if self.status.hostile:
                delay = max(delay, cap / 2)  # a peer sending forgeries waits longer
            self.status.state = "backoff"
            await asyncio.sleep(random.uniform(0.5, 1.0) * min(delay, cap))
            delay *= 2


    def _check_restore_seen(self) -> None:
        """After a stream that ended on the peer's restore, the pull must have seen it
        (a new epoch, or the cursor moved back); else the peer's stream and changes
        disagree, and streaming again at once would loop: back off."""
        seen, self._restore_seen = self._restore_seen, None
        if seen is not None and seen == (self.record.epoch, self.record.cursor):
            raise PeerError(
                "its live stream says its store was restored, and its changes do not"
            )


class Gossip:
    """One PeerLink task per peer, started and stopped with the node."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.links: dict[bytes, PeerLink] = {}

    def start_peer(self, record: PeerRecord) -> PeerLink:
        link = self.links.get(record.pod)
        if link is not None:
            link.record = record
            if link.task is not None and not link.task.done():
                return link
        link = self.links[record.pod] = PeerLink(self.node, record)
        link.task = asyncio.create_task(link.run(), name=f"gossip-{b64e(record.pod)[:8]}")
        return link

    async def stop_peer(self, pod: bytes) -> None:
        link = self.links.pop(pod, None)
        if link is not None and link.task is not None:
            link.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await link.task

    async def start(self) -> None:
        for record in self.node.peers.values():
            self.start_peer(record)

    async def stop(self) -> None:
        for pod in list(self.links):
            await self.stop_peer(pod)

    async def sync_all(self, seconds: float) -> list[PeerSync]:
        """One pull from every peer now, side by side (for `podlink sync`)."""

        names = await queries.pod_names(self.node.ledger.reader)  # a peer may rename itself

        async def one(link: PeerLink) -> PeerSync:
            name = names.get(link.record.pod) or link.record.name
            try:
                received, stored = await link.pull_within(seconds)
            except LinkBusy:  # the link's own pull (a long repair): not the peer's fault
                return PeerSync(pod=link.source, name=name, ok=False, received=0, stored=0,
                                error="a pull from this peer was already under way (a "
                                "repair can take a while); its status shows how it goes")
            except RepairStopped as err:  # the changes are in: say what they brought
                link.status.last_error = describe(err, seconds)
                return PeerSync(pod=link.source, name=name, ok=False, received=err.received,
                                stored=err.stored, error=link.status.last_error)  # fmt: skip
            except Exception as err:
                if not isinstance(err, (aiohttp.ClientError, PeerError, TimeoutError, OSError)):
                    # A bug: logged, and this peer's row says so; the others still sync.
                    log.exception("peer %s: unexpected error in sync", link.source[:8])
                link.status.last_error = describe(err, seconds)
                return PeerSync(pod=link.source, name=name, ok=False, received=0, stored=0,
                                error=link.status.last_error)  # fmt: skip
            link.status.last_error = ""  # it answered: an older failure is no longer news
            return PeerSync(pod=link.source, name=name, ok=True, received=received, stored=stored)

        return list(await asyncio.gather(*(one(link) for link in self.links.values())))


def describe(err: BaseException, seconds: float) -> str:
    """A peer's failure in a line an organizer can act on ("TimeoutError: " said nothing)."""
    if isinstance(err, TimeoutError) and not str(err):
        return f"no answer within {seconds:g} s (is that node up?)"
    text = str(err)
    if isinstance(err, PeerError) and err.status == 401 and "not an organizer or a peer" in text:
        # Its peers table lost us: it removed us, or put back a backup older than our
        # peering. Only its organizers can mend that, and only they need to hear it.
        return ("it does not know this pod as a peer (it removed us, or restored a backup "
                "from before we peered): ask its organizers for a new invite, or to run "
                "`podlink peer add` with this pod's URL and key (`podlink status` shows "
                "them)")  # fmt: skip
    return (f"{type(err).__name__}: {text}" if text else type(err).__name__)[:300]


PAGES_AHEAD = 2  # pages of changes fetched and checked while one is stored


def _last(page: Page) -> bool:
    """Whether ``page`` is the last of a pull: it reaches the head the peer reported."""
    return page.cursor >= page.head or (not page.events and page.cursor == page.head)


class _Ahead:
    """Pages of changes asked for ahead of the one being stored, up to PAGES_AHEAD.

    A page is asked for with the cursor of the page before it, so one task asks for each
    as soon as the one before has come, starts its check, and hands both over in order;
    it waits while PAGES_AHEAD pages are handed over and not taken. A fetch's error is
    handed over in the same queue, after the pages before it, and raised by ``next``
    when it is taken: as a pull with one page ahead raised it.

    Everything passes through the queue because ``Queue.get`` never loses an item to a
    cancellation (a review found both ways a side task did: a page taken by a ``get``
    cancelled with the pull, whose check then ran on, unowned; and a stop swallowed while
    that ``get`` was cancelled, so that the link took the stop for a peer's error and
    never ended)."""

    def __init__(
        self,
        fetch: Callable[[int], Awaitable[tuple[Page, asyncio.Future[Checked | None]]]],
        since: int,
    ) -> None:
        self._fetch = fetch
        # One page waits here, and the task holds the next (its check under way). An
        # item is (page, its check) or (None, the error that ended the task).
        self._ready: asyncio.Queue[tuple[Page | None, Any]] = asyncio.Queue(
            maxsize=PAGES_AHEAD - 1
        )
        self._task = asyncio.ensure_future(self._run(since))

    async def _run(self, since: int) -> None:
        while True:
            try:
                page, checking = await self._fetch(since)
            except Exception as err:  # taken, and raised, after the pages before it
                await self._ready.put((None, err))
                return
            try:
                await self._ready.put((page, checking))
            except BaseException:
                checking.cancel()
                raise
            if _last(page):
                return
            since = page.cursor

    async def next(self) -> tuple[Page, Checked | None]:
        """The next page and its checked events, in order."""
        page, checking = await self._ready.get()
        if page is None:
            raise checking
        return page, await checking

    async def cancel(self) -> None:
        """Stop asking; cancel the checks of pages that will not be taken (all of it
        before the first wait, so that a stop of the caller meanwhile leaves nothing)."""
        self._task.cancel()
        checks = []
        while not self._ready.empty():
            page, checking = self._ready.get_nowait()
            if page is not None:
                checking.cancel()
                checks.append(checking)
        for task in (self._task, *checks):
            await _cancel(task)


async def _cancel(task: asyncio.Future | None) -> None:
    """Cancel a task that will not be used (a page fetched ahead, its check), and wait
    for it to stop.

    A cancellation of the caller while it waits is passed on, not swallowed with the
    task's own: a stopping link must stop."""
    if task is None:
        return
    if not task.done():
        task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise
    except Exception:  # the task's own failure: nobody needs it any more
        pass


def _at(wire: bytes, author: bytes, lane: str, seq: int) -> bool:
    """Whether ``wire`` decodes to an event at that feed position."""
    try:
        h = decode_event(wire).header
    except ProtocolError:
        return False
    return (h.author, h.lane, h.seq) == (author, lane, seq)
