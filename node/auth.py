"""One authentication mechanism for the whole API: signed requests, then a role.

Every request but the public ones carries the sender's signature (protocol/http_auth.py).
The middleware verifies it, refuses replays and floods, then asks what role the key has:

* ``organizer`` — an active key on this pod's roster (or the pod's own key);
* ``peer`` — a pod this node peers with;
* ``signed`` — any key with a valid signature (redeeming an invite).

Unknown keys, stale or replayed requests get 401; a known key in the wrong role gets 403.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Literal

from aiohttp import web

from podlink.node.errors import APIError, Handler
from podlink.protocol.errors import ProtocolError
from podlink.protocol.http_auth import NonceCache, verify_request

Role = Literal["public", "signed", "organizer", "peer"]
# The verified sender's key and roles live on the request under typed keys (aiohttp 3.13+
# warns about plain string keys; older versions have no RequestKey and take the strings).
_RequestKey = getattr(web, "RequestKey", None)
SIGNER: Any = _RequestKey("signer", bytes) if _RequestKey else "signer"
ROLES: Any = _RequestKey("roles", set) if _RequestKey else "roles"
PUBLIC_PATHS = frozenset({"/v1/info", "/v1/openapi.json", "/metrics", "/"})


def role_for(path: str) -> Role:
    """The role a path needs (by prefix, so no route can be left unprotected)."""
    if path in PUBLIC_PATHS:
        return "public"
    if path == "/v1/peer/redeem":
        return "signed"
    if path.startswith("/v1/peer/"):
        return "peer"
    return "organizer"


@dataclass
class Bucket:
    tokens: float
    at: float


class RateLimiter:
    """A token bucket per key: ``rate`` requests per second, bursts of ``burst``."""

    def __init__(self, rate: float, burst: float, max_keys: int = 10_000) -> None:
        self.rate, self.burst, self.max_keys = rate, burst, max_keys
        self._buckets: dict[bytes, Bucket] = {}

    def allow(self, key: bytes, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self.max_keys:
                self._buckets.clear()  # crude but bounded; keys are few in practice
            bucket = self._buckets[key] = Bucket(self.burst, now)
        bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.at) * self.rate)
        bucket.at = now
        if bucket.tokens < 1:
            return False
        bucket.tokens -= 1
        return True


def make_auth_middleware(node: object) -> object:
    """The middleware, bound to a node (which knows organizers and peers)."""
    from podlink.node.runtime import Node

    assert isinstance(node, Node)
    # The replay memory starts empty at every start; refusing what was signed before the
    # start keeps a request captured before a restart from being replayed after it.
    nonces = NonceCache(floor=int(time.time()))
    # Bursts of 5 s worth, and never below one request (a rate under 0.2/s would
    # otherwise refuse every request).
    limiter = RateLimiter(node.config.rate_per_s, max(1.0, node.config.rate_per_s * 5))

    @web.middleware
    async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        needed = role_for(request.path)
        if needed == "public":
            return await handler(request)
        try:
            await admit(request, needed)
        except (APIError, ProtocolError) as err:
            node.metrics.inc("requests_refused_total", reason=err.reason)
            raise
        return await handler(request)

    async def admit(request: web.Request, needed: Role) -> None:
        """Check the signature, replay, rate and role; note the signer on the request."""
        if request.headers.get("Content-Encoding", "identity").lower() != "identity":
            # aiohttp would hash the decompressed body, not the bytes that were signed.
            raise APIError("invalid", "signed requests must not use a Content-Encoding")
        body = await request.read()
        signed = verify_request(
            request.headers, request.method, request.raw_path, body, pod=node.pod
        )
        roles = node.roles_of(signed.key)
        # A key with no role here is refused before it costs any memory: its nonces would
        # fill the replay memory (and, stamped minutes ahead, push its floor past the
        # present, so every organizer and peer would be refused as stale), its buckets
        # the limiter's. Keys without a role share one bucket (redeeming an invite).
        if needed != "signed" and not roles:
            raise APIError("unauthorised", "this key is not an organizer or a peer of this pod")
        # The nonce before the rate: a replay must not spend its victim's tokens (a dozen
        # replays of one captured request would lock an organizer out), and a request
        # refused for its rate is remembered too, so it cannot be replayed later. Only
        # keys with a role get here: their nonces are what the bounded memory is for.
        if roles:  # without a role: refused above, or an idempotent invite redemption
            nonces.check_and_add(signed)
        if not limiter.allow(signed.key if roles else b""):
            raise APIError("rate-limited", "too many requests from this key; slow down")
        if needed != "signed" and needed not in roles:
            raise APIError("forbidden", f"this key may not use the {needed} API", 403)
        request[SIGNER] = signed.key
        request[ROLES] = roles

    return auth_middleware
