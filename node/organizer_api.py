"""The organizer API: submit signed events, read the pod's state, manage peers.

Handlers are thin: decode at the edge (api_types), call the ledger or the node, encode.
Ids in paths may be any unique prefix of the base64url id, like git's short hashes.
"""

from __future__ import annotations

import contextlib
import os
import time
from typing import Any

import aiohttp
import msgspec
from aiohttp import web

from podlink.ledger import projections, queries, state
from podlink.ledger.store import id_is, rows, scalar, twice
from podlink.node import invites
from podlink.node.api_types import (
    MAX_POSITION,
    Head,
    Heads,
    Invite,
    PeerStatus,
    Result,
    Status,
    SubmitResults,
    SyncReport,
    VerifyOut,
    add_peer_decoder,
    join_decoder,
    json_encoder,
    submit_decoder,
)
from podlink.node.auth import SIGNER
from podlink.node.errors import APIError
from podlink.node.peer_api import NODE, int_param, version
from podlink.protocol import boxes, clock, kinds
from podlink.protocol.envelope import PROTOCOL_VERSION, decode_event
from podlink.protocol.errors import ProtocolError
from podlink.protocol.text import b64d, b64e

MAX_LIST = 5000


def jsonable(value: Any) -> Any:
    """Rows as JSON: bytes become base64url text, recursively."""
    if isinstance(value, bytes):
        return b64e(value)
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return value


def reply(body: Any, status: int = 200) -> web.Response:
    if not isinstance(body, msgspec.Struct):
        body = jsonable(body)
    return web.Response(
        body=json_encoder.encode(body), status=status, content_type="application/json"
    )


def _page(request: web.Request) -> tuple[int, int]:
    """``limit`` (1..MAX_LIST, default MAX_LIST) and ``offset``: every list answers at
    most MAX_LIST rows, however large the network that filled it."""
    if "offset" in request.query and "after" in request.query:
        raise APIError("invalid", "give offset or after, not both")
    return (int_param(request, "limit", MAX_LIST, 1, MAX_LIST),
            int_param(request, "offset", 0, 0, MAX_POSITION))  # fmt: skip


def _after_pos(request: web.Request) -> int | None:
    """``after``: a store position (the ``pos`` of the last row of the page before; for
    fork evidence, its ``num``)."""
    if "after" not in request.query:
        return None
    return int_param(request, "after", 0, 0, MAX_POSITION)


def _after_key(request: web.Request, what: str) -> bytes | None:
    """``after``: a row's ``cursor`` (its key, base64url), or empty for the first page."""
    raw = request.query.get("after")
    if raw is None:
        return None
    if raw == "":
        return b""
    try:
        return b64d(raw, length=32)
    except ProtocolError:
        raise APIError("invalid", f"after must be the cursor of a {what} (43 base64url "
                       "characters, as the page before gave it), or empty for the "
                       "first page") from None  # fmt: skip


def _after_roster(request: web.Request) -> tuple[bytes, bytes, bytes] | None:
    """``after``: a roster row's ``cursor`` (POD.KEY.ADD_ID), or empty for the first page."""
    raw = request.query.get("after")
    if raw is None:
        return None
    if raw == "":
        return (b"", b"", b"")
    try:
        pod, key, add = raw.split(".")
        return (b64d(pod, length=32), b64d(key, length=32), b64d(add, length=32))
    except (ValueError, ProtocolError):
        raise APIError("invalid", "after must be the cursor of a roster row (POD.KEY.ADD_ID, "
                       "as the page before gave it), or empty for the first page") from None


async def _id_param(request: web.Request, table: str, what: str) -> bytes | None:
    """``id``: one row by id. A whole id filters (no such row: an empty list); a shorter
    prefix is expanded as GET /v1/resolve does (none, or several: 404, 409)."""
    raw = request.query.get("id")
    if raw is None:
        return None
    if len(raw) == 43:
        return b64d(raw, length=32, what="id")
    return await queries.resolve(request.app[NODE].ledger.reader, table, raw, what)


async def _pod_param(request: web.Request) -> bytes | None:
    """``pod``: only the rows of that pod (its key, or any unique start of it)."""
    raw = request.query.get("pod")
    if raw is None:
        return None
    return await queries.resolve(request.app[NODE].ledger.reader, "pods", raw, "pod")


def _choice(request: web.Request, name: str, allowed: tuple[str, ...]) -> str | None:
    value = request.query.get(name)
    if value is not None and value not in allowed:
        raise APIError("invalid", f"{name} must be one of {', '.join(allowed)}")
    return value


# ---------------------------------------------------------------- writing


async def submit_events(request: web.Request) -> web.Response:
    """Store events signed by an organizer's CLI (and keys of members they describe)."""
    node = request.app[NODE]
    body = submit_decoder.decode(await request.read())
    wires = [b64d(e, what="event") for e in body.events]
    # (the kind is in the signed header). Only these wait for the lock: a new need or
    # anything else goes on to the group commit with whatever else is submitted.
    if any(kind in wire for wire in wires for kind in _CHANGE_BYTES):
        async with node.answer_lock:
            await _check_changes(node, wires)
            return await _after_roster_check(node, body, wires)
    return await _after_roster_check(node, body, wires)


CHANGES = ("claim.make", "claim.accept", "claim.decline", "request.update",
           "request.cancel", "request.fulfil")  # fmt: skip
_CHANGE_BYTES = tuple(kind.encode() for kind in CHANGES)


async def _check_changes(node: Any, wires: list[bytes]) -> None:
    """Refuse, on a request of ours, an organizer's change stamped at or before the newest
    event this pod already wrote on it, and an accept of one claim when another is
    accepted (unless the batch declines that one first). A claim of ours on our own
    request counts as an accept: the fold accepts it at once.

    Among pods, changes count in (ts, id) order, whatever order they arrive in: state is
    a function of the events. But every change of this pod's organizers goes through
    this node: one signed before another organizer's, and arriving after that was
    acknowledged as applied, would be folded before it and overturn it (an accept, and
    two helpers sent: DOMAIN.md's double match; a decline of an accept stamped ahead by a
    clock that ran fast, and the accept standing). Checked under ``node.answer_lock``
    until stored."""
    declined: set[bytes] = set()
    for wire in wires:
        with contextlib.suppress(ProtocolError):
            ev = decode_event(wire)
            if ev.pod != node.pod or not ev.header.refs or ev.kind not in CHANGES:
                continue
            held = f"SELECT 1 FROM events WHERE {id_is()}"
            if await scalar(node.ledger.reader, held, twice(ev.id)):
                continue  # sent again (a retry): a duplicate, changing nothing
            first = ev.header.refs[0]
            if ev.kind.startswith("request.") or ev.kind == "claim.make":
                request, claim = first, None
            elif len(ev.header.refs) > 1:
                request, claim = ev.header.refs[1], first
            else:  # an answer naming only its claim (an older writer)
                claim = first
                request = await scalar(
                    node.ledger.reader, "SELECT request FROM claims "
                    f"WHERE rowid = (SELECT pos FROM events WHERE {id_is()}) AND id = ?",
                    (claim, claim, claim),
                )  # fmt: skip
            if request is None:
                continue
            # Rows sit at their event's store position (schema V3): found by id through
            # the events index, never by a scan.
            found = await rows(
                node.ledger.reader,
                "SELECT status, accepted_claim FROM requests "
                f"WHERE rowid = (SELECT pos FROM events WHERE {id_is()}) AND id = ? AND pod = ?",
                (request, request, request, node.pod),
            )  # fmt: skip
            if not found:
                continue  # not a request of ours: its pod decides
            newest = await scalar(
                node.ledger.reader,
                f"SELECT max(ts) FROM (SELECT ts FROM events WHERE {id_is('root')} AND root != id "
                f"AND pod = ? UNION ALL SELECT ts FROM events WHERE {id_is()} AND pod = ?)",
                (request, request, node.pod, request, request, node.pod),
            )  # fmt: skip
            if newest is not None and ev.ts <= newest:
                raise APIError("invalid", _changed_since(ev.kind, newest), status=409)
            if ev.kind == "claim.decline":
                declined.add(first)
            elif ev.kind in ("claim.accept", "claim.make"):
                _refuse_if_taken(found, claim, declined)


def _changed_since(kind: str, newest: int) -> str:
    when = clock.ts_text(newest)
    ahead = clock.wall_ms(newest) > clock.now_ms() + clock.FUTURE_LIMIT_MS
    return (f"this {kind} is stamped before the need's newest change by this pod ({when})"
            + ("; that change was stamped ahead by a clock that ran fast: what changes the "
               "need can be written from then on" if ahead else
               ": another organizer changed it meanwhile; look at it again and retry"))


def _refuse_if_taken(found: list, claim: bytes | None, declined: set[bytes]) -> None:
    """Refuse (409) when the request row ``found`` has a claim other than ``claim``
    accepted, and the submission does not decline it."""
    if not found:
        return
    status, accepted = found[0]
    if status == "accepted" and accepted not in (None, claim) and accepted not in declined:
        raise APIError(
            "duplicate", f"claim {b64e(accepted)[:8]} was accepted meanwhile, by "
            "another organizer: decline it first if that help fell through",
        )  # fmt: skip


async def _after_roster_check(node: Any, body: Any, wires: list[bytes]) -> web.Response:
    batch = _roster_views(wires, node.pod)
    if not any(isinstance(v.body, kinds.OrganizerRemoved) for v in batch):
        return await _submit(node, body, wires)
    async with node.roster_lock:
        # The protocol lets a pod remove its last organizer (its node key can still act),
        # but a pod's folder acts through an organizer key: nobody could use the CLI any
        # more. The batch is folded with the stored roster, as the ledger will fold it (an
        # add that changes nothing, or stamped after its author's own removal, counts for
        # nothing); under a lock, so that two organizers stepping down at once cannot
        # both pass (a check in the CLI reads the roster before it signs).
        stored = await projections.roster_views(node.ledger.reader, node.pod)
        tenures = state.fold_roster(node.pod, stored + batch)
        if not any(t.until_ts is None for t in tenures):
            raise APIError("invalid", "this would leave the pod with no organizer: add "
                           "another first (podlink organizer add)")  # fmt: skip
        return await _submit(node, body, wires)


def _roster_views(wires: list[bytes], pod: bytes) -> list[state.EventView]:
    """``pod``'s roster events among ``wires``, as the roster fold reads them."""
    views = []
    for wire in wires:
        if b"roster." not in wire:  # the kind is in the signed header: most events skip here
            continue
        with contextlib.suppress(ProtocolError):
            ev = decode_event(wire)
            if ev.pod != pod or ev.kind not in ("roster.add", "roster.remove"):
                continue
            h = ev.header
            decoded = kinds.decode_body(ev.kind, ev.body) if ev.body is not None else None
            views.append(state.EventView(ev.id, h.pod, h.author, h.lane, h.seq, h.ts, h.kind,
                                         tuple(h.refs), decoded))  # fmt: skip
    return views


async def _submit(node: Any, body: Any, wires: list[bytes]) -> web.Response:
    member_keys = [
        (b64d(mk.member, length=32, what="member"), b64d(mk.key, length=32, what="member key"))
        for mk in body.member_keys
    ]
    # Keys first, then the joins: a join stored without its key (the request cut between
    # the two, at shutdown) could never be read, and the CLI sends a key only once. A key
    # whose join is refused protects nothing and is dropped below.
    submitted = set(_event_ids(wires))
    early = [(member, key) for member, key in member_keys if member in submitted]
    for member, key in early:  # a forgotten member's is refused: never kept again
        await node.ledger.put_member_key(member, key)
    results = await node.submit(wires, source="local", local=True)
    stored_ids = {b64d(r.id) for r in results if r.ok and r.id}
    for member, _ in early:
        if member not in stored_ids:
            await node.ledger.write(
                "DELETE FROM member_keys WHERE member = ? "
                f"AND NOT EXISTS (SELECT 1 FROM events WHERE {id_is()})", (member, *twice(member)),
            )  # fmt: skip
    out = [msgspec.convert(msgspec.to_builtins(r), Result) for r in results]
    refused = next((r for r in results if not r.ok and r.status != "pending"), None)
    if refused is None:
        refused = next((r for r in results if not r.ok), None)
    if refused is not None:
        why = _why(node, refused, wires[results.index(refused)])
        raise APIError(refused.reason or "invalid", why, results=out)
    return reply(SubmitResults(results=out))


def _why(node: Any, refused: Any, wire: bytes) -> str:
    """A refusal's message (of ``wire``); for an event too far ahead because its
    author's tenure starts ahead (a roster.add stamped by a clock that ran fast), that,
    not "check the author's clock", which may well be right."""
    if refused.reason != "too-far-ahead":
        return refused.message
    try:
        header = decode_event(wire).header
    except ProtocolError:
        return refused.message
    tenure = node.ledger.roster.open_tenure(node.pod, header.author)
    if tenure is None or clock.wall_ms(tenure.from_ts) <= clock.now_ms() + clock.FUTURE_LIMIT_MS:
        return refused.message  # the tenure is not what holds it back
    begins = clock.ts_text(tenure.from_ts)
    return (f"{refused.message.split(';')[0]}: this key's tenure as organizer begins at "
            f"{begins} (the roster.add that named it was stamped ahead, by a clock that ran "
            "fast); it can write from then on")  # fmt: skip


def _event_ids(wires: list[bytes]) -> list[bytes]:
    """The ids of the wires that decode (the others are refused by the submit)."""
    ids = []
    for wire in wires:
        with contextlib.suppress(ProtocolError):
            ids.append(decode_event(wire).id)
    return ids


async def heads(request: web.Request) -> web.Response:
    """An author's feed heads (default: the caller) and the node's clock, to chain on."""
    node = request.app[NODE]
    author = request[SIGNER]
    if "author" in request.query:
        author = b64d(request.query["author"], length=32, what="author")
    found = await queries.feed_heads(node.ledger.reader, author)
    # Never a clock before the start of the author's tenure: its roster.add may be
    # stamped ahead (a node clock that ran fast, put right since), and what it writes
    # before then would be stored and never count. After it, the node refuses by name
    # what is too far ahead, until the time comes.
    tenure = node.ledger.roster.open_tenure(node.pod, author)
    clock_now = node.ledger.clock.now()
    body = Heads(
        author=b64e(author), pod=b64e(node.pod),
        heads={lane: Head(seq=s, id=b64e(i), ts=t) for lane, (s, i, t) in found.items()},
        clock=max(clock_now, tenure.from_ts) if tenure else clock_now,
    )  # fmt: skip
    return reply(body)


# ---------------------------------------------------------------- reading


async def status(request: web.Request) -> web.Response:
    node = request.app[NODE]
    db = node.ledger.reader

    async def count(sql: str, params: tuple = ()) -> int:
        return (await rows(db, sql, params))[0][0]

    name, zone = await node.own_entry()
    body = Status(
        pod=b64e(node.pod), name=name, zone=zone,
        url=node.config.public_url, events=await queries.count_events(db),
        peers=len(node.peers), version=version(), protocol=PROTOCOL_VERSION,
        organizers=len(node.ledger.roster.active_keys(node.pod)),
        members=await count("SELECT count(*) FROM members WHERE status = 'active'"),
        open_requests=await count(  # this pod's own: others' shared needs are not ours
            "SELECT count(*) FROM requests WHERE status = 'open' AND pod = ?", (node.pod,)
        ),
        forks=await count("SELECT count(*) FROM forks"),
        pending=await count("SELECT count(*) FROM pending"),
        clock=node.ledger.clock.now(),
    )  # fmt: skip
    return reply(body)


async def list_requests(request: web.Request) -> web.Response:
    node = request.app[NODE]
    q = request.query
    pod = await _pod_param(request)
    limit, offset = _page(request)
    found = await queries.list_requests(
        node.ledger.reader,
        status=_choice(request, "status", ("open", "accepted", "fulfilled", "cancelled")),
        category=q.get("category"), pod=pod,
        lane=_choice(request, "lane", ("pod", "peers", "network")),
        limit=limit, offset=offset, after=_after_pos(request),
    )  # fmt: skip
    return reply(found)


async def show_request(request: web.Request) -> web.Response:
    """One request: its newest ``claims`` claims (0..MAX_LIST) and ``history`` steps
    (1..MAX_LIST), with the counts of all; ``event``: that event's step too."""
    node = request.app[NODE]
    db = node.ledger.reader
    event = request.query.get("event")
    claims = int_param(request, "claims", queries.CLAIMS_SHOWN, 0, MAX_LIST)
    history = int_param(request, "history", queries.HISTORY_SHOWN, 1, MAX_LIST)
    rid = await queries.resolve(db, "requests", request.match_info["id"], "request")
    found = await queries.get_request(
        db, rid, claims=claims, history=history,
        event=None if event is None else b64d(event, length=32, what="event"),
    )  # fmt: skip
    return reply(found)


async def list_offers(request: web.Request) -> web.Response:
    node = request.app[NODE]
    wanted = _choice(request, "status", ("open", "withdrawn", "all")) or "open"
    limit, offset = _page(request)
    found = await queries.list_offers(
        node.ledger.reader, status=None if wanted == "all" else wanted,
        id=await _id_param(request, "offers", "offer"), pod=await _pod_param(request),
        limit=limit, offset=offset,
        after=_after_pos(request),
    )  # fmt: skip
    return reply(found)


async def list_members(request: web.Request) -> web.Response:
    node = request.app[NODE]
    everyone = _choice(request, "all", ("1", "true", "0", "false")) in ("1", "true")
    limit, offset = _page(request)
    found = await queries.list_members(
        node.ledger.reader, include_forgotten=everyone,
        id=await _id_param(request, "members", "member"), limit=limit, offset=offset,
        after=_after_key(request, "member"),
    )  # fmt: skip
    return reply(found)


async def member_key(request: web.Request) -> web.Response:
    """A member's key, for an organizer's CLI writing an update about them."""
    node = request.app[NODE]
    db = node.ledger.reader
    member = await queries.resolve(db, "members", request.match_info["id"], "member")
    key = await queries.member_key(db, member)
    if key is None:
        raise APIError("not-found", "this member was forgotten; their key is gone")
    return reply({"member": member, "key": key})


async def list_hours(request: web.Request) -> web.Response:
    node = request.app[NODE]
    limit, offset = _page(request)
    found = await queries.list_hours(node.ledger.reader, limit=limit, offset=offset,
                                     after=_after_key(request, "fulfilment"))  # fmt: skip
    return reply(found)


async def list_claims(request: web.Request) -> web.Response:
    node = request.app[NODE]
    db = node.ledger.reader
    rid = None
    if "request" in request.query:
        rid = await queries.resolve(db, "requests", request.query["request"], "request")
    wanted = _choice(request, "status", ("pending", "accepted", "declined", "closed"))
    limit, offset = _page(request)
    found = await queries.list_claims(
        db, request=rid, status=wanted, id=await _id_param(request, "claims", "claim"),
        pod=await _claims_pod(request), limit=limit, offset=offset,
        after=_after_pos(request),
    )  # fmt: skip
    return reply(found)


async def _claims_pod(request: web.Request) -> bytes | None:
    """``pod`` of GET /v1/claims: a whole key filters as it is (a claiming pod need not
    be in the directory; `podlink claim` asks for its own pod's claims this way), a
    shorter start is resolved in the directory."""
    raw = request.query.get("pod")
    if raw is not None and len(raw) == 43:
        return b64d(raw, length=32, what="pod")
    return await _pod_param(request)


async def resolve_id(request: web.Request) -> web.Response:
    """Expand a short id: ``GET /v1/resolve/{table}/{prefix}``."""
    node = request.app[NODE]
    table = request.match_info["table"]
    allowed = ("requests", "offers", "members", "claims", "pods", "resources")
    if table not in allowed:
        raise APIError("invalid", f"table must be one of {', '.join(allowed)}")
    found = await queries.resolve(
        node.ledger.reader, table, request.match_info["prefix"], table.rstrip("s")
    )
    return reply({"id": found})


async def list_pods(request: web.Request) -> web.Response:
    node = request.app[NODE]
    limit, offset = _page(request)
    found = await queries.list_pods(node.ledger.reader, limit=limit, offset=offset,
                                    after=_after_key(request, "pod"))  # fmt: skip
    return reply(found)


async def roster(request: web.Request) -> web.Response:
    node = request.app[NODE]
    which = request.query.get("pod")
    if which is None:
        pod: bytes | None = node.pod
    elif which == "all":
        pod = None
    else:
        pod = b64d(which, length=32, what="pod")
    limit, offset = _page(request)
    found = await queries.list_roster(node.ledger.reader, pod, limit=limit, offset=offset,
                                      after=_after_roster(request))  # fmt: skip
    return reply(found)


async def list_resources(request: web.Request) -> web.Response:
    node = request.app[NODE]
    limit, offset = _page(request)
    found = await queries.list_resources(
        node.ledger.reader, category=request.query.get("category"),
        id=await _id_param(request, "resources", "resource"), limit=limit, offset=offset,
        after=_after_pos(request),
    )  # fmt: skip
    return reply(found)


async def list_forks(request: web.Request) -> web.Response:
    node = request.app[NODE]
    limit, offset = _page(request)
    author = request.query.get("author")
    found = await queries.list_forks(
        node.ledger.reader, limit=limit, offset=offset, after=_after_pos(request),
        author=None if author is None else b64d(author, length=32, what="author"),
    )  # fmt: skip
    return reply(found)


async def log(request: web.Request) -> web.Response:
    node = request.app[NODE]
    since = int_param(request, "since", 0, 0, MAX_POSITION)
    # At least 1 (SQLite reads LIMIT -1 as "no limit"); more than MAX_LIST is cut to it.
    limit = min(int_param(request, "limit", 100, 1, MAX_POSITION), MAX_LIST)
    newest = _choice(request, "order", ("oldest", "newest")) == "newest"
    return reply(await queries.log_page(node.ledger.reader, since, limit, newest_first=newest))


async def match(request: web.Request) -> web.Response:
    node = request.app[NODE]
    return reply(await queries.suggest_matches(node.ledger.reader, node.pod))


INBOX_PAGE = 100  # messages per page of the inbox
INBOX_PER_SENDER = 10  # at most this many from any one pod on a page (unless ``from``)


async def inbox(request: web.Request) -> web.Response:
    """Sealed messages addressed to this pod, opened with the pod's key: the newest
    ``limit`` stored before ``before``, each with its ``pos`` (the next page is before
    the last one's); at most INBOX_PER_SENDER from any one pod, unless ``from`` names
    the one pod whose messages to list (all of them)."""
    node = request.app[NODE]
    db = node.ledger.reader
    sender = None
    if "from" in request.query:
        sender = b64d(request.query["from"], length=32, what="from (a pod key)")
    found = await queries.sealed_for(
        db, node.pod, int_param(request, "limit", INBOX_PAGE, 1, INBOX_PAGE),
        per_sender=INBOX_PER_SENDER, sender=sender,
        before=int_param(request, "before", 0, 1, MAX_POSITION) if "before" in request.query
        else None,
    )  # fmt: skip
    names = await queries.pod_names(db, (item["from"] for item in found))
    out = []
    for item in found:
        try:
            handoff = kinds.decode_contact_handoff(boxes.open_sealed(node.keypair, item["box"]))
            # Fields as they are (msgspec's to_builtins would write the request id in
            # standard base64; reply() writes every id in base64url).
            opened: dict[str, Any] = msgspec.structs.asdict(handoff)
        except ProtocolError as err:
            opened = {"error": err.message}
        out.append({"id": item["id"], "from": item["from"],
                    "from_name": names.get(item["from"], ""), "ts": item["ts"],
                    "pos": item["pos"], "message": opened})  # fmt: skip
    return reply(out)


async def verify(request: web.Request) -> web.Response:
    node = request.app[NODE]
    report = await node.ledger.verify()
    return reply(VerifyOut(ok=report.ok, events=report.events, problems=report.problems or []))


# ---------------------------------------------------------------- peers


def _peer_status(node: Any, record: Any, names: dict[bytes, str]) -> PeerStatus:
    """A peer's link; its name as the directory says once its entry arrived (a pod may
    rename itself), else the one given when it was added."""
    link = node.gossip.links.get(record.pod) if node.gossip else None
    st = link.status if link else None
    return PeerStatus(
        pod=b64e(record.pod), name=names.get(record.pod) or record.name, url=record.url,
        status=st.state if st else "stopped", connected=bool(st and st.connected),
        last_sync=record.last_sync, last_error=st.last_error if st else "",
        behind=st.behind if st else None, cursor=record.cursor,
        received=st.received if st else 0, refused=st.refused if st else 0,
    )  # fmt: skip


async def list_peers(request: web.Request) -> web.Response:
    node = request.app[NODE]
    names = await queries.pod_names(node.ledger.reader, node.peers)  # theirs, not the directory
    return reply([_peer_status(node, r, names) for r in node.peers.values()])


async def add_peer(request: web.Request) -> web.Response:
    node = request.app[NODE]
    body = add_peer_decoder.decode(await request.read())
    record = await node.add_peer(b64d(body.key, length=32, what="key"), body.url, body.name)
    names = await queries.pod_names(node.ledger.reader, [record.pod])
    return reply(_peer_status(node, record, names), status=201)


async def remove_peer(request: web.Request) -> web.Response:
    node = request.app[NODE]
    prefix = request.match_info["key"]
    matches = [p for p in node.peers if b64e(p).startswith(prefix)]
    if len(matches) != 1:
        raise APIError("not-found" if not matches else "ambiguous",
                       f"{len(matches)} peers match {prefix!r}")  # fmt: skip
    await node.remove_peer(matches[0])
    return reply({"removed": matches[0]})


async def create_invite(request: web.Request) -> web.Response:
    node = request.app[NODE]
    secret = b64e(os.urandom(24))
    expires = int(time.time()) + node.config.invite_ttl_s
    await invites.store(node, secret, expires, request[SIGNER])
    code = invites.encode(node.config.public_url, node.pod, secret, expires)
    return reply(Invite(invite=code, expires=expires), status=201)


async def join(request: web.Request) -> web.Response:
    """Redeem another pod's invite: they add us, then we add them."""
    node = request.app[NODE]
    try:
        body = join_decoder.decode(await request.read())
    except msgspec.ValidationError:  # the one field is the code: say so in those words
        raise APIError("invalid", "this invite code is damaged; copy it again") from None
    code = invites.decode(body.invite)
    if code.expires < time.time():
        raise APIError("invalid", "this invite has expired; ask the other pod for a new one")
    try:
        peer = await invites.redeem(node, code)
    except (aiohttp.ClientError, TimeoutError, OSError) as err:
        # 424: the request was fine but the pod it names cannot be reached (never a 5xx:
        # nothing failed on this node).
        raise APIError(
            "unavailable",
            f"could not reach {code.url}: {type(err).__name__}; is that node up?",
            424,
        ) from None
    record = await node.add_peer(code.pod, code.url, peer.name)
    names = await queries.pod_names(node.ledger.reader, [record.pod])
    return reply(_peer_status(node, record, names), status=201)


async def sync(request: web.Request) -> web.Response:
    node = request.app[NODE]
    report = await node.gossip.sync_all(node.config.peer_timeout_s * 3)
    return reply(SyncReport(peers=report))


def setup_routes(app: web.Application) -> None:
    r = app.router
    r.add_get("/v1/status", status)
    r.add_get("/v1/heads", heads)
    r.add_post("/v1/events", submit_events)
    r.add_get("/v1/requests", list_requests)
    r.add_get("/v1/requests/{id}", show_request)
    r.add_get("/v1/offers", list_offers)
    r.add_get("/v1/members", list_members)
    r.add_get("/v1/members/{id}/key", member_key)
    r.add_get("/v1/claims", list_claims)
    r.add_get("/v1/hours", list_hours)
    r.add_get("/v1/resolve/{table}/{prefix}", resolve_id)
    r.add_get("/v1/pods", list_pods)
    r.add_get("/v1/roster", roster)
    r.add_get("/v1/resources", list_resources)
    r.add_get("/v1/forks", list_forks)
    r.add_get("/v1/log", log)
    r.add_get("/v1/match", match)
    r.add_get("/v1/inbox", inbox)
    r.add_post("/v1/verify", verify)
    r.add_get("/v1/peers", list_peers)
    r.add_post("/v1/peers", add_peer)
    r.add_delete("/v1/peers/{key}", remove_peer)
    r.add_post("/v1/invites", create_invite)
    r.add_post("/v1/peers/join", join)
    r.add_post("/v1/sync", sync)
