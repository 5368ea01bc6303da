"""The hybrid logical clock."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from podlink.protocol import clock
from podlink.protocol.clock import FUTURE_LIMIT_MS, OBSERVE_LIMIT_MS, HybridClock, pack, wall_ms

T0 = 1_750_000_000_000


class FakeWall:
    """A wall clock the test sets by hand."""

    def __init__(self, ms: int) -> None:
        self.ms = ms

    def __call__(self) -> int:
        return self.ms


def test_layout() -> None:
    ts = pack(T0, 5)
    assert ts == (T0 << 16) | 5
    assert wall_ms(ts) == T0 and ts & clock.LOGICAL_MASK == 5
    assert clock.MAX_TS == 2**63 - 1
    assert wall_ms(clock.MAX_TS) == 2**47 - 1  # about year 6429: never reached
    assert FUTURE_LIMIT_MS == 15 * 60 * 1000


def test_tracks_the_wall_clock() -> None:
    wall = FakeWall(T0)
    hlc = HybridClock(wall)
    assert hlc.now() == pack(T0)
    wall.ms += 7
    assert hlc.now() == pack(T0 + 7)


def test_same_millisecond_counts_up() -> None:
    hlc = HybridClock(FakeWall(T0))
    assert [hlc.now() for _ in range(3)] == [pack(T0), pack(T0, 1), pack(T0, 2)]


def test_monotonic_when_the_wall_clock_steps_back() -> None:
    wall = FakeWall(T0)
    hlc = HybridClock(wall)
    first = hlc.now()
    wall.ms -= 60_000  # NTP steps the clock back a minute
    second, third = hlc.now(), hlc.now()
    assert first < second < third
    assert wall_ms(third) == T0  # held at the last wall time, counting up
    wall.ms = T0 + 1
    assert hlc.now() == pack(T0 + 1)


def test_resumes_from_a_saved_last() -> None:
    hlc = HybridClock(FakeWall(T0 - 5000), last=pack(T0, 9))
    assert hlc.now() == pack(T0, 10)
    assert hlc.last == pack(T0, 10)


def test_observe_moves_past_remote_timestamps() -> None:
    wall = FakeWall(T0)
    hlc = HybridClock(wall)
    remote = pack(T0 + 60_000, 3)  # a peer whose clock runs a minute ahead
    hlc.observe(remote)
    assert hlc.now() > remote
    hlc.observe(pack(T0 - 1))  # older timestamps change nothing
    assert hlc.last == remote + 1


def test_observe_ignores_timestamps_too_far_ahead() -> None:
    """A clock follows what it receives only up to a minute short of the acceptance limit:
    what it then stamps stays acceptable to a receiver whose clock is a little behind."""
    wall = FakeWall(T0)
    hlc = HybridClock(wall)
    hlc.now()
    assert OBSERVE_LIMIT_MS == FUTURE_LIMIT_MS - 60_000
    hlc.observe(pack(T0 + FUTURE_LIMIT_MS))  # accepted by ingest, but not followed
    hlc.observe(pack(T0 + OBSERVE_LIMIT_MS + 1))
    assert hlc.now() == pack(T0, 1)
    hlc.observe(pack(T0 + OBSERVE_LIMIT_MS))  # exactly at the observe limit: followed
    assert wall_ms(hlc.now()) == T0 + OBSERVE_LIMIT_MS
    hlc.advance(pack(T0 + FUTURE_LIMIT_MS + 5_000))  # our own feed head: followed anyway
    assert wall_ms(hlc.now()) == T0 + FUTURE_LIMIT_MS + 5_000


def test_default_wall_clock_is_real_time() -> None:
    assert abs(clock.now_ms() - wall_ms(HybridClock().now())) < 5_000


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["tick", "observe"]),
                          st.integers(-600_000, 1_200_000)), max_size=40))  # fmt: skip
def test_now_is_strictly_increasing_whatever_happens(steps: list[tuple[str, int]]) -> None:
    wall = FakeWall(T0)
    hlc = HybridClock(wall)
    issued, highest_wall = [hlc.now()], T0
    for action, delta in steps:
        if action == "tick":
            wall.ms = T0 + delta
            highest_wall = max(highest_wall, wall.ms)
        else:
            hlc.observe(pack(wall.ms + delta))
        issued.append(hlc.now())
        # Never further ahead of the wall than the future limit lets a peer push it.
        assert wall_ms(issued[-1]) <= highest_wall + FUTURE_LIMIT_MS
    assert issued == sorted(set(issued))
