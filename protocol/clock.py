"""A hybrid logical clock (HLC) for event timestamps.

A timestamp is one non-negative 63-bit integer: the wall-clock milliseconds since the Unix
epoch in the high 48 bits and a logical counter in the low 16 bits. It orders like wall
time when clocks agree, never runs backwards on one node even if the wall clock steps
back, and moves past every timestamp the node has seen (``observe``), so an event
written after receiving another always sorts after it.
"""

from __future__ import annotations

import time
from collections.abc import Callable

LOGICAL_BITS = 16
LOGICAL_MASK = (1 << LOGICAL_BITS) - 1
MAX_TS = (1 << 63) - 1  # fits msgpack int64 (and SQLite INTEGER)
FUTURE_LIMIT_MS = 15 * 60 * 1000  # events further ahead than this are refused
# A clock moves past what it receives only up to a minute short of that limit. Else one
# pod stamping 14:59 ahead (within the rules) pulls every clock that sees it to 14:59
# ahead, and a pod whose clock is two seconds behind those refuses their honest events.
OBSERVE_LIMIT_MS = FUTURE_LIMIT_MS - 60 * 1000


def pack(wall_ms: int, logical: int = 0) -> int:
    """Build a timestamp from wall milliseconds and a logical counter."""
    return (wall_ms << LOGICAL_BITS) | logical


def wall_ms(ts: int) -> int:
    """The wall-clock milliseconds of a timestamp."""
    return ts >> LOGICAL_BITS


def utc_text(unix_s: float) -> str:
    """A unix time as people read it in a message, in UTC (the machines that read it may
    be in other zones)."""
    try:
        return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(unix_s))
    except (OverflowError, OSError, ValueError):  # 12 digits may be past what gmtime takes
        return f"{int(unix_s)} (unix seconds)"


def ts_text(ts: int) -> str:
    """A timestamp's wall time, as :func:`utc_text` shows it."""
    return utc_text(wall_ms(ts) / 1000)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class HybridClock:
    """Issues strictly increasing timestamps that track the wall clock."""

    def __init__(self, wall: Callable[[], int] = now_ms, last: int = 0) -> None:
        self._wall = wall
        self._last = last

    @property
    def last(self) -> int:
        return self._last

    def now(self) -> int:
        """A timestamp greater than every one issued or observed before."""
        candidate = pack(self._wall())
        self._last = candidate if candidate > self._last else self._last + 1
        return self._last

    def advance(self, ts: int) -> None:
        """Move past ``ts`` however far ahead it is: for this writer's own last event, which
        its next one must follow (a node refuses a feed whose timestamps do not increase;
        if the head was stamped too far ahead, the next event is refused as
        ``too-far-ahead``, which names the cause, rather than as out of order)."""
        if ts > self._last:
            self._last = ts

    def observe(self, ts: int, limit_ms: int = OBSERVE_LIMIT_MS) -> None:
        """Move past a timestamp seen on a received event, ignoring ones more than
        ``limit_ms`` ahead of the wall clock (OBSERVE_LIMIT_MS; FUTURE_LIMIT_MS for the
        pod's own events and its node's clock, which its organizers must follow: an
        organizer added by a roster.add stamped 14.5 minutes ahead writes after it)."""
        if ts > self._last and wall_ms(ts) <= self._wall() + limit_ms:
            self._last = ts
