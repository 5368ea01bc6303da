"""Writing this pod's own events: chain the next event of a feed and sign it.

Used by the CLI (organizers' keys) and the node (its pod key), and by tests; the head of
a feed comes from the ledger or from the node's organizer API.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import msgspec

from podlink.protocol import clock
from podlink.protocol.envelope import Event, Lane, sign_event
from podlink.protocol.keys import Keypair
from podlink.protocol.kinds import Body, encode_body


@dataclass
class Author:
    """A key writing for a pod: remembers its feed heads so each event chains on the last."""

    keypair: Keypair
    pod: bytes
    clock: clock.HybridClock = field(default_factory=clock.HybridClock)
    heads: dict[str, tuple[int, bytes]] = field(default_factory=dict)  # lane -> (seq, id)
    # lane -> the timestamp of its head: the feed's next event must follow it, however far
    # ahead it was stamped. Kept per feed, not pushed into the clock: a need written while
    # this machine ran three hours fast holds back that feed's next event (the node
    # refuses it as too far ahead, by name, until the time comes), not every lane's.
    floors: dict[str, int] = field(default_factory=dict)

    def set_head(self, lane: str, seq: int, id_: bytes | None, ts: int = 0) -> None:
        if seq and id_ is not None:
            self.heads[lane] = (seq, id_)
            self.floors[lane] = ts
        else:
            self.heads.pop(lane, None)
            self.floors.pop(lane, None)
        # Within the future limit the clock follows the head, as it does the pod's own
        # events (so what we write next sorts after it in every lane).
        self.clock.observe(ts, clock.FUTURE_LIMIT_MS)

    def write(
        self,
        body: Body | msgspec.Struct,
        lane: Lane,
        refs: list[bytes] | tuple[bytes, ...] = (),
        *,
        ts: int | None = None,
        not_before: int = 0,
    ) -> Event:
        """Sign the next event of this author's ``lane`` feed, stamped after its head and
        after ``not_before`` (what it changes: the newest event of its request)."""
        seq, prev = self.heads.get(lane, (0, None))
        if ts is None:
            ts = max(self.clock.now(), self.floors.get(lane, -1) + 1, not_before + 1)
        event = sign_event(
            self.keypair, pod=self.pod, lane=lane, seq=seq + 1, prev=prev, ts=ts,
            kind=type(body).KIND,  # type: ignore[attr-defined]
            body=encode_body(body), refs=refs,
        )  # fmt: skip
        self.heads[lane] = (seq + 1, event.id)
        self.floors[lane] = ts
        return event
