"""``GET /v1/openapi.json``: an OpenAPI 3.1 document generated from the msgspec types.

ENDPOINTS lists every route with its role, parameters and body types; a test checks that
it names exactly the routes the application serves, so the document cannot drift.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import msgspec
from aiohttp import web

from podlink.node import api_types as t
from podlink.protocol.http_auth import HEADERS

ANY_ROWS = {"type": "array", "items": {"type": "object"}}
ANY_OBJECT = {"type": "object"}
MSGPACK = {"application/msgpack": {"schema": {"type": "string", "format": "binary"}}}

#: The paging parameters of every organizer list (at most 5000 rows an answer).
PAGE = {"limit": "1..5000 rows (default 5000)",
        "offset": "rows to skip, in the list's own order (not with `after`)"}  # fmt: skip
AFTER_POS = {"after": "a row's pos (0: from the first): the rows stored after it, in "
                      "store order, each with its pos"}  # fmt: skip


def after_key(what: str) -> dict[str, str]:
    return {"after": f"a row's cursor (empty: from the first): the {what} after it in key "
                     "order, each with its cursor"}  # fmt: skip



@dataclass(frozen=True)
class Endpoint:
    method: str
    path: str
    summary: str
    role: str  # public | signed | organizer | peer
    body: Any = None
    response: Any = None  # a Struct type, a JSON schema dict, or "msgpack"
    query: dict[str, str] = field(default_factory=dict)  # name -> description


ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint("GET", "/", "Where the API is.", "public", response=ANY_OBJECT),
    Endpoint("GET", "/v1/info", "Who this node is.", "public", response=t.Info),
    Endpoint("GET", "/v1/openapi.json", "This document.", "public", response=ANY_OBJECT),
    Endpoint("GET", "/metrics", "Prometheus metrics (text).", "public", response="text"),
    Endpoint("GET", "/v1/status", "Node status.", "organizer", response=t.Status),
    Endpoint("GET", "/v1/heads", "An author's feed heads and the node clock.", "organizer",
             response=t.Heads, query={"author": "base64url key (default: the caller)"}),
    Endpoint("POST", "/v1/events", "Submit signed events. A batch whose roster.remove "
             "events would leave the pod with no organizer is refused (`invalid`).",
             "organizer", body=t.SubmitEvents,
             response=t.SubmitResults),
    Endpoint("GET", "/v1/requests", "Requests this pod can see: open and accepted first, "
             "then most urgent, oldest; at most `limit` (5000) from `offset`.", "organizer",
             response=ANY_ROWS, query={"status": "open|accepted|fulfilled|cancelled",
                                       "category": "a category", "pod": "pod key prefix",
                                       "lane": "pod|peers|network", **PAGE, **AFTER_POS}),
    Endpoint("GET", "/v1/requests/{id}", "One request: its newest `claims` claims, oldest "
             "first, and the accepted one (`claims_total` counts all; page them with GET "
             "/v1/claims?request=), its fulfilment, and `history` steps of its history: the "
             "opening and the newest (`history_total` counts all), each with `author_name`.",
             "organizer", response=ANY_OBJECT,
             query={"claims": "0..5000 newest claims (default 100)",
                    "history": "1..5000 history steps (default 200)",
                    "event": "an event id (base64url): `step` is its history step, "
                             "wherever it is (null if not one of the request's)"}),
    Endpoint("GET", "/v1/offers", "Offers, oldest first; at most `limit` (5000).",
             "organizer", response=ANY_ROWS,
             query={"status": "open|withdrawn|all", "id": "one offer: its id or a prefix",
                    "pod": "only this pod's (its key, or a unique start of it)",
                    **PAGE, **AFTER_POS}),
    Endpoint("GET", "/v1/members", "Members (personal data: pod only), in joining order; at "
             "most `limit` (5000).", "organizer", response=ANY_ROWS,
             query={"all": "1 to include forgotten members",
                    "id": "one member: their id or a prefix", **PAGE, **after_key("members")}),
    Endpoint("GET", "/v1/members/{id}/key", "A member's key, to write an update.", "organizer",
             response=ANY_OBJECT),
    Endpoint("GET", "/v1/claims", "Claims, oldest first; at most `limit` (5000).",
             "organizer", response=ANY_ROWS,
             query={"request": "request id prefix", "status": "pending|accepted|declined|closed",
                    "id": "one claim: its id or a prefix",
                    "pod": "only this pod's (its key, or a unique start of it)",
                    **PAGE, **AFTER_POS}),
    Endpoint("GET", "/v1/resolve/{table}/{prefix}", "Expand a short id.", "organizer",
             response=ANY_OBJECT),
    Endpoint("GET", "/v1/pods", "The pod directory, by name; at most `limit` (5000).",
             "organizer", response=ANY_ROWS, query={**PAGE, **after_key("pods")}),
    Endpoint("GET", "/v1/hours", "Time-bank hours of fulfilled help, with who helped whom, "
             "oldest first; at most `limit` (5000).", "organizer", response=ANY_ROWS,
             query={**PAGE, **after_key("fulfilments")}),
    Endpoint("GET", "/v1/roster", "This pod's organizers (or another pod's, or all), oldest "
             "first; at most `limit` (5000).", "organizer", response=ANY_ROWS,
             query={"pod": "a pod key, or `all` (default: this pod)", **PAGE,
                    **after_key("tenures")}),
    Endpoint("GET", "/v1/resources", "The shared resource database, by category and name; "
             "at most `limit` (5000).", "organizer", response=ANY_ROWS,
             query={"category": "a category", "id": "one entry: its id or a prefix", **PAGE,
                    **AFTER_POS}),
    Endpoint("GET", "/v1/forks", "Equivocation evidence, recorded here or sent by peers; "
             "each row names its keys: `pod` (the headers' pod), `pod_name`, `author_name` "
             "(its name on that pod's roster), `source_name` (the delivering peer's).",
             "organizer", response=ANY_ROWS,
             query={"author": "only this key's (base64url)", **PAGE,
                    "after": "a row's num (0: from the first): the pieces numbered after it"}),
    Endpoint("GET", "/v1/log", "The event log.", "organizer", response=ANY_ROWS,
             query={"since": "store position", "limit": "max rows", "order": "newest"}),
    Endpoint("GET", "/v1/match", "Suggested matches of needs and offers.", "organizer",
             response=ANY_ROWS),
    Endpoint("GET", "/v1/inbox", "Sealed messages to this pod, opened: the newest `limit` "
             "(100), each with its pos; at most 10 from any one pod unless `from`.",
             "organizer", response=ANY_ROWS,
             query={"before": "a message's pos: the page of older ones",
                    "limit": "1..100 messages (default 100)",
                    "from": "a pod key: only (and all of) that pod's messages"}),
    Endpoint("POST", "/v1/verify", "Re-check every signature and chain.", "organizer",
             response=t.VerifyOut),
    Endpoint("GET", "/v1/peers", "Peers and their sync status.", "organizer",
             response=ANY_ROWS),
    Endpoint("POST", "/v1/peers", "Peer by URL and key.", "organizer", body=t.AddPeer,
             response=t.PeerStatus),
    Endpoint("DELETE", "/v1/peers/{key}", "Stop peering.", "organizer", response=ANY_OBJECT),
    Endpoint("POST", "/v1/invites", "Create a one-time invite code.", "organizer",
             response=t.Invite),
    Endpoint("POST", "/v1/peers/join", "Redeem another pod's invite.", "organizer",
             body=t.JoinRequest, response=t.PeerStatus),
    Endpoint("POST", "/v1/sync", "One sync round with every peer now.", "organizer",
             response=t.SyncReport),
    Endpoint("GET", "/v1/peer/changes", "Events after a cursor (msgpack Page).", "peer",
             response="msgpack", query={"since": "store position", "limit": "max events"}),
    Endpoint("GET", "/v1/peer/stream", "Live WebSocket of Pages.", "peer", response="msgpack"),
    Endpoint("GET", "/v1/peer/heads", "Visible feed heads (msgpack), by (author, lane).",
             "peer", response="msgpack",
             query={"limit": "max heads (1-10000; all if absent)",
                    "after_author": "base64url key of the last feed of the page before",
                    "after_lane": "its lane"}),
    Endpoint("GET", "/v1/peer/feed", "A range of one feed (msgpack Page).", "peer",
             response="msgpack", query={"author": "base64url key", "lane": "peers|network",
                                        "from": "first seq", "to": "last seq"}),
    Endpoint("GET", "/v1/peer/forks", "Fork evidence after a number (msgpack ForkPage).",
             "peer", response="msgpack",
             query={"after": "evidence number", "limit": "max pieces (1-100)"}),
    Endpoint("POST", "/v1/peer/redeem", "Present an invite's secret.", "signed",
             body=t.Redeem, response=t.Peer),
)  # fmt: skip

SIGNED_HEADERS = HEADERS  # Podlink-Key, -Time, -Nonce, -Pod, -Signature


def build() -> dict[str, Any]:
    structs = {e.body for e in ENDPOINTS if e.body} | {
        e.response for e in ENDPOINTS if isinstance(e.response, type)
    }
    structs.add(t.Error)
    ordered = sorted(structs, key=lambda s: s.__name__)
    schemas, components = msgspec.json.schema_components(
        ordered, ref_template="#/components/schemas/{name}"
    )
    by_type = dict(zip(ordered, schemas, strict=True))
    error = {"application/json": {"schema": by_type[t.Error]}}
    paths: dict[str, dict[str, Any]] = {}
    for e in ENDPOINTS:
        op: dict[str, Any] = {"summary": e.summary, "x-podlink-role": e.role, "parameters": []}
        for name in [seg[1:-1] for seg in e.path.split("/") if seg.startswith("{")]:
            op["parameters"].append(
                {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
            )
        for name, description in e.query.items():
            op["parameters"].append({"name": name, "in": "query", "required": False,
                                     "description": description, "schema": {"type": "string"}})
        if e.role != "public":
            for h in SIGNED_HEADERS:
                op["parameters"].append(
                    {"name": h, "in": "header", "required": True, "schema": {"type": "string"}}
                )
        if e.body is not None:
            op["requestBody"] = {
                "required": True, "content": {"application/json": {"schema": by_type[e.body]}},
            }
        if e.response == "msgpack":
            ok: dict[str, Any] = {"description": "msgpack", "content": MSGPACK}
        elif e.response == "text":
            ok = {"description": "text", "content": {"text/plain": {"schema": {"type": "string"}}}}
        else:
            schema = by_type[e.response] if isinstance(e.response, type) else e.response
            ok = {"description": "OK", "content": {"application/json": {"schema": schema}}}
        code = "201" if e.method == "POST" and e.path in (
            "/v1/peers", "/v1/invites", "/v1/peers/join") else "200"  # fmt: skip
        op["responses"] = {code: ok, "4XX": {"description": "refused", "content": error},
                           "5XX": {"description": "node failure", "content": error}}
        paths.setdefault(e.path, {})[e.method.lower()] = op
    from podlink.node.peer_api import version

    return {
        "openapi": "3.1.0",
        "info": {"title": "podlink node API", "version": version(),
                 "description": "Every non-public request is signed: see docs/protocol.md."},
        "paths": paths,
        "components": {"schemas": components},
    }  # fmt: skip


_cached: bytes | None = None


async def openapi_handler(request: web.Request) -> web.Response:
    global _cached
    if _cached is None:
        _cached = msgspec.json.encode(build())
    return web.Response(body=_cached, content_type="application/json")
