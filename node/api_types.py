"""The JSON and msgpack bodies of the node's HTTP API, as msgspec Structs.

They are the single source of the OpenAPI document (node/openapi.py) and of validation:
request bodies are decoded with decoders built once, here. Keys and ids are base64url
text without padding.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from podlink.protocol.envelope import MAX_EVENT

B64 = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_-]*$", max_length=2 * MAX_EVENT)]
Key = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_-]{43}$")]
Id = Key
# Store positions (cursors, heads) anyone may send us: SQLite binds at most 2**63 - 1,
# and a node would need 4.6e18 events to reach this.
MAX_POSITION = 2**62
Position = Annotated[int, msgspec.Meta(ge=0, le=MAX_POSITION)]


class Error(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Every error response: a reason word and a sentence."""

    error: str
    message: str
    results: list[Result] | None = None


class Result(msgspec.Struct, kw_only=True, omit_defaults=True):
    status: Literal["stored", "duplicate", "pending", "refused"]
    id: str | None = None
    reason: str | None = None
    message: str = ""
    body_dropped: bool = False


class MemberKey(msgspec.Struct, kw_only=True):
    member: Id
    key: Key


class SubmitEvents(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Events signed by an organizer's CLI, in wire form, base64url; and member keys."""

    events: Annotated[list[B64], msgspec.Meta(min_length=1, max_length=1000)]
    member_keys: Annotated[list[MemberKey], msgspec.Meta(max_length=1000)] = []


class SubmitResults(msgspec.Struct, kw_only=True):
    results: list[Result]


class Head(msgspec.Struct, kw_only=True):
    seq: int
    id: Id
    ts: int


class Heads(msgspec.Struct, kw_only=True):
    """An author's feed heads by lane, and the node's clock (observe it before signing)."""

    author: Key
    pod: Key
    heads: dict[str, Head]
    clock: int


class PeerStatus(msgspec.Struct, kw_only=True):
    pod: Key
    name: str
    url: str
    status: str
    connected: bool
    last_sync: int | None
    last_error: str
    behind: int | None
    cursor: int
    received: int
    refused: int


class Status(msgspec.Struct, kw_only=True):
    pod: Key
    name: str
    zone: str
    url: str
    events: int
    peers: int
    version: str
    protocol: int
    organizers: int
    members: int
    open_requests: int
    forks: int
    pending: int
    clock: int


class Info(msgspec.Struct, kw_only=True):
    """Public: who this node is."""

    pod: Key
    name: str
    zone: str
    protocols: list[int]
    version: str


class Invite(msgspec.Struct, kw_only=True):
    invite: str
    expires: int


class JoinRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    invite: Annotated[str, msgspec.Meta(min_length=10, max_length=2000)]


class AddPeer(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    url: Annotated[str, msgspec.Meta(pattern=r"^https?://", max_length=500)]
    key: Key
    name: Annotated[str, msgspec.Meta(max_length=200)] = ""


class Redeem(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Sent by a joining node, signed with its pod key, to the node that made the invite."""

    secret: Annotated[str, msgspec.Meta(min_length=16, max_length=100)]
    url: Annotated[str, msgspec.Meta(pattern=r"^https?://", max_length=500)]
    name: Annotated[str, msgspec.Meta(max_length=200)] = ""


class Peer(msgspec.Struct, kw_only=True):
    pod: Key
    name: Annotated[str, msgspec.Meta(max_length=200)]
    url: Annotated[str, msgspec.Meta(pattern=r"^https?://", max_length=500)]


class SyncReport(msgspec.Struct, kw_only=True):
    peers: list[PeerSync]


class PeerSync(msgspec.Struct, kw_only=True):
    pod: Key
    name: str
    ok: bool
    received: int
    stored: int
    error: str = ""


class VerifyOut(msgspec.Struct, kw_only=True):
    ok: bool
    events: int
    problems: list[str]


# Rows of the read model: ids as base64url text, everything else as stored.
Rows = list[dict[str, Any]]


class Page(msgspec.Struct, kw_only=True, array_like=True):
    """msgpack: a page of events for a peer, in store order.

    ``cursor`` is where to ask from next; ``head`` the node's newest position; ``epoch``
    changes when the node's store was restored (then repair by heads). ``forks`` (changes
    and stream pages; 0 elsewhere) is the number of the newest fork evidence this peer
    may see: more than the peer's evidence cursor, and it asks ``/v1/peer/forks``. A
    trailing field with a default: nodes from before it send four elements, and they
    ignore a fifth."""

    epoch: bytes
    cursor: Position
    head: Position
    events: list[msgspec.Raw]
    forks: Position = 0


class ForkPage(msgspec.Struct, kw_only=True, array_like=True):
    """msgpack: a page of fork evidence for a peer, in evidence-number order.

    Each element of ``forks`` is one piece (protocol/evidence.py), checked by the
    receiver on its own; ``cursor`` and ``head`` work as a Page's, on evidence numbers."""

    cursor: Position
    head: Position
    forks: list[msgspec.Raw]


class FeedHead(msgspec.Struct, array_like=True):
    author: bytes
    lane: str
    seq: int
    id: bytes


class StreamHello(msgspec.Struct, kw_only=True, array_like=True):
    """msgpack: the first message a peer sends on the live stream."""

    since: Position
    epoch: bytes | None = None


submit_decoder = msgspec.json.Decoder(SubmitEvents)
join_decoder = msgspec.json.Decoder(JoinRequest)
add_peer_decoder = msgspec.json.Decoder(AddPeer)
redeem_decoder = msgspec.json.Decoder(Redeem)
page_decoder = msgspec.msgpack.Decoder(Page)
fork_page_decoder = msgspec.msgpack.Decoder(ForkPage)
heads_decoder = msgspec.msgpack.Decoder(list[FeedHead])
hello_decoder = msgspec.msgpack.Decoder(StreamHello)
json_encoder = msgspec.json.Encoder()
msgpack_encoder = msgspec.msgpack.Encoder()
