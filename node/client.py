"""The one client of the organizer API: signs each request with an organizer's key.

Used by the CLI, the demo, the tests and the benchmarks alike. Errors come back as
:class:`ClientError` carrying the node's reason word and message.
"""

from __future__ import annotations

from typing import Any

import aiohttp
import msgspec
import yarl

from podlink.ledger.authoring import Author
from podlink.node.api_types import MemberKey, SubmitEvents, json_encoder
from podlink.protocol.envelope import Event
from podlink.protocol.errors import ProtocolError
from podlink.protocol.http_auth import sign_request
from podlink.protocol.keys import Keypair
from podlink.protocol.text import b64d, b64e

#: The most rows one answer of an organizer list holds (the node's MAX_LIST).
LIST_PAGE = 5000
#: Lists whose ``after`` is a row's text ``cursor`` (empty: the first page), not a store
#: position: their rows are not kept at one (see ledger/queries.py).
TEXT_CURSORS = frozenset({"/v1/members", "/v1/pods", "/v1/roster", "/v1/hours"})
#: Lists whose rows are numbered by another field than ``pos`` (``after`` takes it).
NUMBERED_BY = {"/v1/forks": "num"}


def _forward(after: int | str, nxt: int | str) -> bool:
    """Whether a keyset cursor moved on: a larger position, or a key (base64url parts,
    dot-separated for the roster) that sorts after the last one as bytes, as the node
    orders them."""
    if isinstance(after, int) or isinstance(nxt, int):
        return isinstance(after, int) and isinstance(nxt, int) and nxt > after
    try:
        last = () if after == "" else tuple(b64d(p) for p in after.split("."))
        return tuple(b64d(p) for p in nxt.split(".")) > last
    except (ProtocolError, ValueError):
        return False


class ClientError(Exception):
    """Raised when the node refuses a request (``reason`` is its reason word) or is down."""

    def __init__(self, reason: str, message: str, status: int = 0, body: Any = None) -> None:
        super().__init__(message)
        self.reason, self.message, self.status, self.body = reason, message, status, body


CONNECT_S = 10.0  # to reach the node at all: beyond this it is down or out of reach


def _timeout(total: float) -> aiohttp.ClientTimeout:
    """A request's limits: ``total`` for the answer, and at most CONNECT_S (and half of
    it) to connect, so that a node that cannot be reached is said to be so (a
    connection timeout is a ClientConnectionError), not to be "still at work"."""
    return aiohttp.ClientTimeout(total=total, connect=min(total / 2, CONNECT_S))


class NodeClient:
    """Signed requests to one node's API, over one ClientSession."""

    def __init__(
        self, url: str, keypair: Keypair, *, pod: bytes | None = None, timeout: float = 30.0
    ) -> None:
        """``pod``: the key of the pod whose node this is, which every request signs (so
        it cannot be replayed at another node). Give it where it is known for sure (the
        CLI reads it from the pod's folder); else it is read from the node's public
        ``/v1/info`` before the first signed request."""
        self.url = url.rstrip("/")
        self.keypair = keypair
        self.pod = pod
        self._timeout = _timeout(timeout)
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> NodeClient:
        self._session = aiohttp.ClientSession(timeout=self._timeout)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        query: dict[str, Any] | None = None,
        wait_s: float | None = None,
    ) -> Any:
        """Send one signed request; return the decoded JSON body. ``wait_s``: how long
        to wait for the answer, where the client's timeout is too short (a sync)."""
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        url = yarl.URL(self.url + path)
        if query:
            url = url.with_query({k: str(v) for k, v in query.items() if v is not None})
        body = b"" if json is None else json_encoder.encode(json)
        if self.pod is None:
            self.pod = b64d((await self.info())["pod"], length=32)
        headers = sign_request(self.keypair, method, url.raw_path_qs, body, pod=self.pod)
        if json is not None:
            headers["Content-Type"] = "application/json"
        return await self._send(method, url, body, headers, wait_s)

    async def info(self) -> dict[str, Any]:
        """The node's public ``/v1/info`` (unsigned): which pod it is, its name, versions."""
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        info = await self._send("GET", yarl.URL(self.url + "/v1/info"), b"", {})
        try:
            b64d(info["pod"], length=32, what="pod")
            if not isinstance(info.get("name", ""), str):
                raise TypeError
        except (TypeError, KeyError, ProtocolError):
            raise ClientError(
                "invalid",
                f"the node at {self.url} did not say which pod "
                "it is (GET /v1/info); is that a podlink node?",
            ) from None
        return info

    async def _send(
        self,
        method: str,
        url: yarl.URL,
        body: bytes,
        headers: dict[str, str],
        wait_s: float | None = None,
    ) -> Any:
        assert self._session is not None
        timeout = self._timeout if wait_s is None else _timeout(wait_s)
        try:
            async with self._session.request(method, url, data=body or None,
                                             headers=headers, timeout=timeout) as resp:  # fmt: skip
                data = await resp.read()
                status = resp.status
        except aiohttp.ClientConnectionError as err:  # (connect timeouts among them)
            raise ClientError(
                "unavailable",
                f"cannot reach the node at {self.url} ({type(err).__name__}); "
                "is it running? start it with `podlink serve`",
            ) from None
        except TimeoutError:
            # It answered the connection and then took too long: it runs, and may still
            # be at work (a long sync). Not "is it running?" (status 504: said as it is).
            raise ClientError(
                "unavailable",
                f"the node at {self.url} gave no answer within {timeout.total:g} s; it may "
                "still be at work (see `podlink status`)",
                504,
            ) from None
        except aiohttp.ClientError as err:  # e.g. the node stopped halfway through its answer
            raise ClientError(
                "unavailable",
                f"the node at {self.url} broke off its answer ({type(err).__name__}); "
                "try again once it is up",
            ) from None
        try:
            decoded = msgspec.json.decode(data) if data else None
        except msgspec.DecodeError:
            raise ClientError("invalid", f"the node sent a non-JSON answer (HTTP {status})",
                              status) from None  # fmt: skip
        if status >= 400:
            reason = decoded.get("error", "invalid") if isinstance(decoded, dict) else "invalid"
            message = decoded.get("message", "") if isinstance(decoded, dict) else ""
            raise ClientError(reason, message or f"HTTP {status}", status, decoded)
        return decoded

    async def get(self, path: str, **query: Any) -> Any:
        return await self.request("GET", path, query=query or None)

    async def get_all(self, path: str, page: int | None = None, **query: Any) -> list[Any]:
        """Every row of a paged list (GET /v1/requests, /v1/offers, /v1/claims, ...),
        page after page by keyset (``after``) until one comes back short. Keyset pages
        never skip nor repeat a row that changes meanwhile, as pages by offset would.

        Lists kept at store positions take the last row's ``pos``; the others (TEXT_CURSORS)
        its text ``cursor``, which is dropped from the rows returned (``pos`` stays)."""
        size = page or LIST_PAGE
        text = path in TEXT_CURSORS
        found: list[Any] = []
        after: int | str = "" if text else 0
        while True:
            rows = await self.get(path, **query, limit=size, after=after)
            if text:
                cursors = [row.pop("cursor") for row in rows]
            found += rows
            if len(rows) < size:
                return found
            nxt = cursors[-1] if text else rows[-1][NUMBERED_BY.get(path, "pos")]
            if not _forward(after, nxt):  # a node going back or round would keep us here
                raise ClientError("invalid", f"the node's pages of {path} do not move on")
            after = nxt

    async def post(self, path: str, body: Any = None, *, wait_s: float | None = None) -> Any:
        return await self.request("POST", path, json=body if body is not None else {},
                                  wait_s=wait_s)  # fmt: skip

    # ------------------------------------------------------------ writing events

    async def author(self, pod: bytes | None = None) -> Author:
        """An Author for this key, chained on the node's heads and clock."""
        heads = await self.get("/v1/heads")
        said = b64d(heads["pod"], length=32, what="pod")
        if pod is not None and said != pod:  # a node that is not the pod we act for
            raise ClientError(
                "invalid", f"the node at {self.url} says it is the pod {b64e(said)[:8]}, not "
                f"{b64e(pod)[:8]}; check --node (or node in config.toml)")  # fmt: skip
        author = Author(self.keypair, pod or said)
        for lane, head in heads["heads"].items():
            author.set_head(lane, head["seq"], b64d(head["id"], length=32), head["ts"])
        # Our own node's clock, followed however far ahead this laptop's clock is behind
        # (a roster.add stamped ahead must come before what its new organizer writes);
        # the node refuses by name anything it finds too far ahead. The node's clock
        # resumes within the future limit of its wall clock (Ledger.open), and a feed
        # head stamped further ahead holds back only its own feed (Author.set_head).
        author.clock.advance(heads["clock"])
        return author

    async def submit(
        self, events: list[Event], member_keys: dict[bytes, bytes] | None = None
    ) -> list[dict[str, Any]]:
        body = SubmitEvents(
            events=[b64e(e.to_wire()) for e in events],
            member_keys=[
                MemberKey(member=b64e(m), key=b64e(k)) for m, k in (member_keys or {}).items()
            ],
        )
        reply = await self.request("POST", "/v1/events", json=body)
        return reply["results"]
