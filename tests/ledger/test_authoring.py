"""Author: each feed follows its own head, however far ahead it was stamped, and only
that feed (ledger/authoring.py ``floors``); the clock shared by the lanes follows heads
only within the future limit."""

from __future__ import annotations

from podlink.ledger.authoring import Author
from podlink.protocol import clock
from podlink.protocol import kinds as k
from podlink.protocol.keys import Keypair

HOURS_3 = 3 * 3600 * 1000


def test_a_head_stamped_hours_ahead_holds_back_its_own_feed_only() -> None:
    key = Keypair.generate()
    ahead = clock.pack(clock.now_ms() + HOURS_3)
    author = Author(key, key.public)
    author.set_head("network", 4, b"\x01" * 32, ahead)
    author.set_head("pod", 2, b"\x02" * 32, clock.pack(clock.now_ms() - 1000))

    network = author.write(k.PodInfoChanged(name="next"), "network")
    member = author.write(k.RequestOpened(title="Lift", category="transport"), "pod")

    assert network.header.ts > ahead and network.header.seq == 5  # follows its head
    assert network.header.prev == b"\x01" * 32
    # The pod lane is stamped now, not three hours ahead with the network feed.
    assert clock.wall_ms(member.header.ts) <= clock.now_ms() + 1000
    # Within the future limit, a head is followed by every lane (what is written next
    # sorts after it), as before.
    near = clock.pack(clock.now_ms() + 60_000)
    author.set_head("peers", 1, b"\x03" * 32, near)
    assert author.write(k.PodInfoChanged(name="after"), "pod").header.ts > near
    # A feed with no head yet starts on the clock.
    fresh = Author(key, key.public)
    assert clock.wall_ms(fresh.write(k.PodInfoChanged(name="x"), "network").header.ts) <= (
        clock.now_ms() + 1000
    )
