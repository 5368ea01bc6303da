"""The protocol's one exception type and its reason words.

Every refusal carries a machine-readable reason word (after Nostr's ``OK`` prefixes) and a
sentence a person can act on. Nothing in podlink raises a bare ``ValueError`` at a peer.
"""

from __future__ import annotations

from typing import Literal, get_args

Reason = Literal[
    "duplicate",
    "invalid",
    "forged",
    "fork",
    "unauthorised",
    "too-large",
    "rate-limited",
    "too-far-ahead",
    "pending",
    "stale",
    "replayed",
    "unknown-kind",
]
REASONS: tuple[str, ...] = get_args(Reason)


class ProtocolError(Exception):
    """Raised when bytes, an event or a signed request break the protocol.

    ``reason`` is one of :data:`REASONS`; ``str(err)`` is the human message.
    """

    def __init__(self, reason: Reason, message: str) -> None:
        if reason not in REASONS:  # a programming error, never a peer's fault
            raise AssertionError(f"unknown reason word {reason!r}")
        super().__init__(message)
        self.reason: Reason = reason
        self.message = message

    def __repr__(self) -> str:
        return f"ProtocolError({self.reason!r}, {self.message!r})"
