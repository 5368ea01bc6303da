"""One-time invite codes: how two pods come to peer.

A code is ``podlink1.`` followed by base64url of the msgpack array
``[url, pod key (32 bytes), secret, expires (unix seconds)]``. The inviting node keeps only
a hash of the secret; the joining node presents the secret in a request signed with its own
pod key, and both sides end up peered with each other's key and URL.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import msgspec
import yarl

from podlink.node.api_types import Peer, Redeem, json_encoder
from podlink.node.errors import APIError
from podlink.protocol.http_auth import sign_request
from podlink.protocol.text import b64d, b64e

if TYPE_CHECKING:
    from podlink.node.runtime import Node

PREFIX = "podlink1."
MAX_ANSWER = 64 * 1024  # bytes of the inviting node's answer we read, at most


class InviteCode(msgspec.Struct, array_like=True, frozen=True):
    url: Annotated[str, msgspec.Meta(pattern=r"^https?://", max_length=500)]
    pod: Annotated[bytes, msgspec.Meta(min_length=32, max_length=32)]
    secret: Annotated[str, msgspec.Meta(min_length=16, max_length=100)]
    expires: int


_decoder = msgspec.msgpack.Decoder(InviteCode)
_peer_decoder = msgspec.json.Decoder(Peer)


def encode(url: str, pod: bytes, secret: str, expires: int) -> str:
    return PREFIX + b64e(msgspec.msgpack.encode(InviteCode(url, pod, secret, expires)))


def decode(code: str) -> InviteCode:
    code = code.strip()
    if not code.startswith(PREFIX):
        raise APIError("invalid", f"an invite code starts with {PREFIX!r}")
    try:
        invite = _decoder.decode(b64d(code[len(PREFIX) :], what="invite"))
    except (msgspec.MsgspecError, RecursionError):  # RecursionError: hostile nesting
        raise APIError("invalid", "this invite code is damaged; copy it again") from None
    try:
        url: yarl.URL | None = yarl.URL(invite.url)  # checks brackets, port range...
    except ValueError:
        url = None
    if url is None or not url.host:
        raise APIError("invalid", "this invite's address is not a usable URL; ask for a new one")
    return invite


async def store(node: Node, secret: str, expires: int, made_by: bytes) -> None:
    """Keep the hash of a new code's secret, the key of the organizer who made it and the
    node's clock then (the code dies with the tenure it was made in: ``alive``)."""
    from podlink.node.peer_api import secret_hash

    await node.ledger.write(
        "INSERT INTO invites (secret_hash, created, expires, made_by, made_in) "
        "VALUES (?, strftime('%s','now'), ?, ?, ?)",
        (secret_hash(secret), expires, made_by, node.ledger.clock.now()),
    )


def alive(node: Node, made_by: bytes | None, made_in: int | None) -> bool:
    """Whether a code's maker still holds the tenure they made it in (always, for a code
    of the pod's own key or from before makers were kept): an open tenure begun by the
    time the code was made. The node's clock then was past every roster event it held
    (within the future limit), so a tenure begun later is a re-add after a removal; a
    roster.add signed earlier and arriving late only moves the tenure's start back."""
    if made_by is None or made_by == node.pod:
        return True
    tenure = node.ledger.roster.open_tenure(node.pod, made_by)
    return tenure is not None and (made_in is None or tenure.from_ts <= made_in)


async def redeem(node: Node, code: InviteCode) -> Peer:
    """Present the secret to the inviting node; returns who it is."""
    assert node.session is not None
    name, _ = await node.own_entry()
    body = json_encoder.encode(Redeem(secret=code.secret, url=node.config.public_url, name=name))
    url = yarl.URL(code.url.rstrip("/") + "/v1/peer/redeem")
    headers = sign_request(node.keypair, "POST", url.raw_path_qs, body, pod=code.pod)
    headers["Content-Type"] = "application/json"
    async with node.session.post(url, data=body, headers=headers, allow_redirects=False) as resp:
        data = await resp.content.read(MAX_ANSWER + 1)  # an answer is well under 1 kB
        if len(data) > MAX_ANSWER:
            raise APIError("unavailable", f"the node at {code.url} sent an answer over "
                           f"{MAX_ANSWER} bytes; is that a podlink node?", 424)  # fmt: skip
        if resp.status != 200:
            try:
                message = str(msgspec.json.decode(data)["message"])[:300]
            except (msgspec.MsgspecError, RecursionError, KeyError, TypeError):
                message = f"HTTP {resp.status}"
            # The invite is what was refused, not this organizer: invalid (400).
            raise APIError("invalid", f"the other pod refused the invite: {message}")
    try:
        peer = _peer_decoder.decode(data)
    except (msgspec.MsgspecError, RecursionError):
        raise APIError("unavailable", f"the node at {code.url} did not answer as a podlink "
                       "node would", 424) from None  # fmt: skip
    if b64d(peer.pod, length=32, what="pod") != code.pod:
        raise APIError("forged", "the node at the invite's URL is not the pod that invited us")
    return peer
