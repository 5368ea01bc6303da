"""The ledger's write lock, and the COMMIT that an ingest of many batches leaves to land.

A batch's COMMIT is ~10 ms of SQLite writing WAL frames per 1,000 events. An ingest used
to wait for it before it checked the next batch in memory. Now it puts the COMMIT on
aiosqlite's queue and goes on: the next batch's statements queue behind it on the same
thread, so the store takes the batches in order, and the next batch's Python runs while
SQLite writes. Two things wait until the COMMIT has landed:

- what readers may learn of the batch: the generation a probe on the reader connection
  trusts (``Ledger.landed``), and the listeners' wake-up;
- every other writer. Entering ``Writer`` settles a COMMIT still landing first.

What the writer knows (heads, positions, roster) moves on at once, as if the batch were
on disk. If its COMMIT fails, whoever settles it rolls back, and the ledger reloads those
from disk (``Ledger.forget_caches``). The next batch of the same ingest settles it right
after its own BEGIN, which aiosqlite runs after the COMMIT; if the COMMIT failed, that
batch is refused before it writes anything. Any other caller's batch (another ingest, a
sync page) settles it before it starts, and goes on from what is on disk whatever the
outcome: it is not failed by a COMMIT not its own, nor told "duplicate" of events not
yet on disk. The ingest that left the COMMIT raises its failure at its next batch, even
when another writer settled it. ``Ledger.ingest`` returns only once all its COMMITs have
landed, so "returned" still means "on disk".
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Literal


@dataclass(eq=False)
class Landing:
    """A batch's COMMIT on aiosqlite's queue, not yet seen to land."""

    task: asyncio.Future[None]
    generation: int  # Ledger.generation with the batch's ids in Ledger.recent
    head: int  # the last store position the batch took
    news: bool  # something for the listeners (events stored, fork evidence)
    owner: Streak  # the ingest call that left it
    settled: bool = False
    error: BaseException | None = None  # once settled: why the COMMIT failed


class Streak:
    """One ingest call's batches: the COMMITs it left to land, and the first of them that
    failed (set by whoever settled it). Its next batch is refused once that is set."""

    def __init__(self) -> None:
        self.landings: list[Landing] = []
        self.error: BaseException | None = None


class Writer(asyncio.Lock):
    """The ledger's write lock. Acquiring it first settles a COMMIT still landing, so each
    writer starts from what is on disk; an ingest's next batch enters ``continuing()``
    instead and settles that COMMIT after its own BEGIN."""

    def __init__(self, settle: Callable[[], Awaitable[None]]) -> None:
        super().__init__()
        self._settle = settle

    async def acquire(self) -> Literal[True]:
        await super().acquire()
        try:
            await self._settle()
        except BaseException:
            self.release()
            raise
        return True

    @contextlib.asynccontextmanager
    async def continuing(self) -> AsyncIterator[None]:
        """The lock alone, for a batch that settles the COMMIT before it after its BEGIN."""
        await super().acquire()
        try:
            yield
        finally:
            self.release()
