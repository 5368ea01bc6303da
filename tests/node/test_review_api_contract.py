"""Review: the organizer HTTP API as a contract.

What /v1/openapi.json, docs/protocol.md ("Requests and roles", "Errors") and docs/cli.md
promise, against what a real node answers: status codes and reason words, the one JSON
error shape, id prefixes, and the CLI's ``--json``.
"""

from __future__ import annotations

import asyncio
import csv
import json
import time
from pathlib import Path
from typing import Any

import aiohttp
import jsonschema
import msgspec
from aiohttp import web
from click.testing import CliRunner, Result

from podlink.cli.main import main
from podlink.node.errors import STATUS
from podlink.node.invites import encode as encode_invite
from podlink.node.openapi import build
from podlink.protocol import kinds
from podlink.protocol.text import b64e
from tests.node.helpers import PodNode, free_port, join, signed

KEY43 = "A" * 43

ROOT = Path(__file__).resolve().parents[2]


def error_of(status: int, raw: bytes) -> str:
    """The reason word of a JSON error answer (checks the documented shape)."""
    body = msgspec.json.decode(raw)
    assert isinstance(body, dict) and set(body) <= {"error", "message", "results"}, raw[:300]
    assert isinstance(body["error"], str) and isinstance(body["message"], str), body
    return body["error"]


async def cli(*args: str, home: Path) -> Result:
    """`podlink ARGS --home HOME` through click, in a thread (the node runs on this loop)."""
    env = {"PODLINK_HOME": None, "COLUMNS": "80", "NO_COLOR": "1"}
    argv = [*args, "--home", str(home)]
    return await asyncio.to_thread(CliRunner().invoke, main, argv, env=env)


def deep_json(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


# ---------------------------------------------------------------- id prefixes


async def test_one_character_prefix_is_resolved_among_many(network: Any) -> None:
    """docs/cli.md: "Any unique prefix works wherever a command takes an id". A one-character
    prefix is resolved by ledger/queries.py:resolve with the byte range [b"", ff...) (a
    lone base64 character fixes no whole byte, _prefix_range keeps 0 bytes) and
    ``LIMIT 50`` is applied in SQL *before* the startswith filter in Python. With more
    than 50 rows, a prefix whose ids sort after the 50th is answered 404 "not-found"
    although the id exists (and is unique, or ambiguous). Fix: for a partial group keep
    the determined high bits (lo = v << 2 for one char, hi = lo + 4) or filter in SQL
    (e.g. compare a prefix range on the top bits) before LIMIT."""
    [node] = await network(1)
    author = await node.client.author()
    events = [author.write(kinds.RequestOpened(title=f"need {i}", category="food"), "pod")
              for i in range(60)]  # fmt: skip
    results = await node.client.submit(events)
    assert all(r["status"] == "stored" for r in results)
    # The request with the greatest id sorts past the 50th row of the id range.
    last = max(events, key=lambda e: e.id)
    prefix = b64e(last.id)[0]
    matching = [b64e(e.id) for e in events if b64e(e.id).startswith(prefix)]
    async with aiohttp.ClientSession() as s:
        for path in (f"/v1/resolve/requests/{prefix}", f"/v1/requests/{prefix}"):
            status, raw, _ = await signed(s, node.organizer, "GET", node.url + path,
                                          pod=node.pod)  # fmt: skip
            if len(matching) == 1:
                assert status == 200, (path, matching, raw[:200])
                assert msgspec.json.decode(raw)["id"] == matching[0]
            else:
                assert (status, error_of(status, raw)) == (409, "ambiguous"), (path, raw)


# ---------------------------------------------------------------- malformed bodies


async def test_deeply_nested_json_in_events_body_is_400_not_500(network: Any) -> None:
    """POST /v1/events with an extra key in a ``member_keys`` item (MemberKey does not
    forbid unknown fields, so msgspec skips the value) holding a 5,000-deep array: 10 kB,
    well under the body limit. msgspec raises RecursionError, which is neither a
    DecodeError nor a ValidationError: node/errors.py:error_middleware answers 500
    "internal" (and logs a traceback) for a malformed request body, where docs/protocol.md
    promises ``invalid`` 400 and says 500 means a bug. Fix: catch RecursionError next to
    msgspec.DecodeError in error_middleware (400 invalid), as protocol/kinds.py does."""
    [node] = await network(1)
    item = b'{"member": "%s", "key": "%s", "x": %s}' % (
        KEY43.encode(),
        KEY43.encode(),
        deep_json(5000),
    )
    body = b'{"events": ["AAAA"], "member_keys": [' + item + b"]}"
    async with aiohttp.ClientSession() as s:
        status, raw, _ = await signed(s, node.organizer, "POST", node.url + "/v1/events", body,
                                      pod=node.pod)  # fmt: skip
    assert (status, error_of(status, raw)) == (400, "invalid"), raw[:300]


async def test_deeply_nested_invite_code_is_400_not_500(network: Any) -> None:
    """An invite code is msgpack [url, pod, secret, expires]; InviteCode is array_like, so
    msgspec skips trailing elements, and a fifth element nested 1,400 deep (a 1,960-char
    code, under JoinRequest's 2,000) raises RecursionError in node/invites.py:decode, which
    catches only msgspec.MsgspecError. POST /v1/peers/join then answers 500 "internal"
    for a damaged code pasted by an organizer, instead of 400 "invalid" ("this invite
    code is damaged") like every other damaged code (tests/node/test_api_errors.py).
    Fix: catch RecursionError there too (and in error_middleware, for every decoder)."""
    [node] = await network(1)
    good = msgspec.msgpack.encode(["http://127.0.0.1:9", b"\x01" * 32, "s" * 20,
                                   int(time.time()) + 3600])  # fmt: skip
    assert good[0] == 0x94
    crafted = b"\x95" + good[1:] + b"\x91" * 1400 + b"\x90"
    code = "podlink1." + b64e(crafted)
    assert len(code) <= 2000
    async with aiohttp.ClientSession() as s:
        body = msgspec.json.encode({"invite": code})
        status, raw, _ = await signed(s, node.organizer, "POST", node.url + "/v1/peers/join",
                                      body, pod=node.pod)  # fmt: skip
    assert (status, error_of(status, raw)) == (400, "invalid"), raw[:300]


async def test_join_answer_nested_deep_is_not_a_500(network: Any) -> None:
    """The inviting "pod" answers POST /v1/peer/redeem with a 200 Peer whose extra key holds
    a 2,000-deep array (6 kB, under MAX_ANSWER's 64 kB). node/invites.py:redeem decodes it
    with _peer_decoder and catches only msgspec.MsgspecError: RecursionError escapes
    (organizer_api.join catches only network errors), and the organizer's join is
    answered 500 "internal" — the OpenAPI's "node failure" — for another node's bad
    answer, where 424 "unavailable" ("did not answer as a podlink node would") is meant.
    Fix: catch RecursionError with MsgspecError in invites.redeem (both decodes)."""
    [node] = await network(1)
    port = free_port()
    fake_pod = b"\x02" * 32

    async def redeem(request: web.Request) -> web.Response:
        await request.read()
        body = b'{"pod": "%s", "name": "x", "url": "http://127.0.0.1:9", "z": %s}' % (
            b64e(fake_pod).encode(),
            deep_json(2000),
        )
        return web.Response(body=body, content_type="application/json")

    app = web.Application()
    app.router.add_post("/v1/peer/redeem", redeem)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        code = encode_invite(f"http://127.0.0.1:{port}", fake_pod, "s" * 20,
                             int(time.time()) + 3600)  # fmt: skip
        async with aiohttp.ClientSession() as s:
            body = msgspec.json.encode({"invite": code})
            status, raw, _ = await signed(
                s, node.organizer, "POST", node.url + "/v1/peers/join", body, pod=node.pod
            )
    finally:
        await runner.cleanup()
    assert status < 500, (status, raw[:300])
    assert error_of(status, raw) in ("invalid", "unavailable"), raw[:300]


# ---------------------------------------------------------------- statuses and reasons


async def test_method_not_allowed_names_the_allowed_methods(network: Any) -> None:
    """405 answers lose the ``Allow`` header: node/errors.py:error_middleware turns
    aiohttp's HTTPMethodNotAllowed into a fresh JSON response without copying
    ``err.headers``. RFC 9110 §15.5.6: the server MUST send Allow with a 405 (a client
    has no other way to learn that DELETE /v1/status wants GET). Fix: pass
    ``headers=err.headers`` (at least Allow) through error_response for HTTPExceptions."""
    [node] = await network(1)
    async with aiohttp.ClientSession() as s:
        status, raw, _ = await signed(s, node.organizer, "DELETE", node.url + "/v1/status",
                                      pod=node.pod)  # fmt: skip
        assert (status, error_of(status, raw)) == (405, "invalid")
        async with s.post(node.url + "/v1/info") as resp:  # a public path: no signature
            assert resp.status == 405
            allow = resp.headers.get("Allow", "")
    assert "GET" in allow, f"405 without Allow (got {allow!r})"


async def test_join_refusals_use_the_documented_status_of_their_reason(network: Any) -> None:
    """docs/protocol.md "Errors": "The HTTP status follows from the reason word"
    (unauthorised 401, unavailable 503). POST /v1/peers/join breaks it twice:
    node/invites.py:redeem answers a refused invite (already used) with
    ``unauthorised`` and status 400, and invites.py / organizer_api.join answer an
    unreachable inviter with ``unavailable`` and status 424 (the docs say unavailable is
    "the node cannot write its database"). A client going by the table misreads both.
    Fix: one (reason, status) pair from the table — e.g. a refused invite as ``invalid``
    (400) or ``forbidden`` (403), an unreachable inviter with its own documented word —
    or document the exceptions in the table."""
    a, b, c = await network(3)
    wrong: list[tuple[str, int, str]] = []
    invite = await a.client.post("/v1/invites")
    await b.client.post("/v1/peers/join", {"invite": invite["invite"]})
    dead = encode_invite(f"http://127.0.0.1:{free_port()}", a.pod, "s" * 20,
                         int(time.time()) + 3600)  # fmt: skip
    async with aiohttp.ClientSession() as s:
        for what, code in (("used invite", invite["invite"]), ("dead inviter", dead)):
            body = msgspec.json.encode({"invite": code})
            status, raw, _ = await signed(s, c.organizer, "POST", c.url + "/v1/peers/join",
                                          body, pod=c.pod)  # fmt: skip
            reason = error_of(status, raw)
            # The one documented exception: an inviter that cannot be reached is
            # unavailable with 424 (nothing failed on this node; docs/protocol.md).
            documented = 424 if (what, reason) == ("dead inviter", "unavailable") else None
            if (documented or STATUS.get(reason)) != status:
                wrong.append((what, status, reason))
    assert not wrong, f"status does not follow the reason word: {wrong}"
    assert "One exception to the table" in (ROOT / "docs" / "protocol.md").read_text()


# ---------------------------------------------------------------- the CLI's words


async def test_cli_peer_join_with_a_used_invite_does_not_blame_the_organizer_key(
    network: Any,
) -> None:
    """`podlink peer join CODE` with a code another pod already used: the inviting pod
    refuses, node/invites.py:redeem re-raises that as reason ``unauthorised`` and
    cli/session.py:run_sync appends to every ``unauthorised`` the hint "(is --node the node
    of this pod, and organizer.key one of its organizers?)": the organizer is told their
    own key or node is wrong, when the invite was. Fix: give a refused invite another
    reason word than ``unauthorised`` (e.g. ``invalid``/``forbidden``), or add the hint
    only for 401 answers to this organizer's own request."""
    a, b, c = await network(3)
    invite = (await a.client.post("/v1/invites"))["invite"]
    await join_with(b, invite)
    result = await cli("peer", "join", invite, home=c.home)
    assert result.exit_code == 1, result.output
    assert "already used" in result.output, result.output
    assert "organizer.key" not in result.output, result.output


async def join_with(node: PodNode, invite: str) -> dict[str, Any]:
    return await node.client.post("/v1/peers/join", {"invite": invite})


async def test_cli_request_add_json_reports_the_title_it_recorded(network: Any) -> None:
    """`podlink request add "  Groceries  " --json` records the title stripped
    (cli/ops.py:add_request signs ``title.strip()``) but its JSON summary says
    ``"title": title``, unstripped: the --json answer disagrees with what was recorded and
    what `request show --json` prints for the same id (offer add and resource add do the
    same with ``title``/``name``). Fix: report ``body.title`` (the value signed)."""
    [node] = await network(1)
    result = await cli("request", "add", "  Groceries  ", "--category", "food", "--json",
                       home=node.home)  # fmt: skip
    assert result.exit_code == 0, result.output
    added = json.loads(result.stdout)
    shown = await node.client.get(f"/v1/requests/{added['id']}")
    assert len(added["id"]) == 43 and shown["id"] == added["id"]
    assert added["title"] == shown["title"], (added["title"], shown["title"])


# ---------------------------------------------------------------- pinned: the schemas


def schema_of(doc: dict[str, Any], path: str, method: str, code: str) -> dict[str, Any]:
    """The JSON schema the document declares for one answer, with its components."""
    op = doc["paths"][path][method]
    schema = op["responses"][code]["content"]["application/json"]["schema"]
    return {**schema, "components": doc["components"]}


async def test_typed_answers_of_a_populated_node_validate_against_openapi(
    network: Any,
) -> None:
    """Pin: with data in it (requests, a peer, a refused submission), every answer with a
    typed schema in /v1/openapi.json validates against it, errors included (the fuzzing in
    tests/security/test_api_schema.py runs on an empty node)."""
    a, b = await network(2)
    doc = await a.client.get("/v1/openapi.json")
    await a.open_request("Bread")
    await join(a, b)
    checks: list[tuple[str, str, str, Any]] = [
        ("/v1/status", "get", "200", await a.client.get("/v1/status")),
        ("/v1/heads", "get", "200", await a.client.get("/v1/heads")),
        ("/v1/invites", "post", "201", await a.client.post("/v1/invites")),
        ("/v1/verify", "post", "200", await a.client.post("/v1/verify")),
        ("/v1/sync", "post", "200", await a.client.post("/v1/sync")),
    ]
    for peer in await a.client.get("/v1/peers"):
        checks.append(("/v1/peers", "post", "201", peer))  # the PeerStatus schema
    async with aiohttp.ClientSession() as s:
        async with s.get(a.url + "/v1/info") as resp:
            checks.append(("/v1/info", "get", "200", await resp.json()))
        author = await a.client.author()
        event = author.write(kinds.RequestOpened(title="Milk", category="food"), "pod")
        await a.client.submit([event])
        wire = msgspec.json.encode({"events": [b64e(event.to_wire())]})
        status, raw, _ = await signed(s, a.organizer, "POST", a.url + "/v1/events", wire,
                                      pod=a.pod)  # fmt: skip
        assert status == 200  # a duplicate is fine
        checks.append(("/v1/events", "post", "200", msgspec.json.decode(raw)))
        bad = msgspec.json.encode({"events": [b64e(event.to_wire()[:-40])]})  # cut short
        status, raw, _ = await signed(s, a.organizer, "POST", a.url + "/v1/events", bad,
                                      pod=a.pod)  # fmt: skip
        assert 400 <= status < 500 and b'"results"' in raw, raw[:300]
        checks.append(("/v1/events", "post", "4XX", msgspec.json.decode(raw)))
    for path, method, code, body in checks:
        jsonschema.validate(body, schema_of(doc, path, method, code))
    assert build()["paths"].keys() == doc["paths"].keys()


async def test_documented_query_values_are_checked_like_the_others(network: Any) -> None:
    """/v1/openapi.json documents ``order`` as "newest" on /v1/log and ``all`` as "1 to
    include forgotten members"; ``status`` and ``lane`` check their values (400 "invalid"
    for ``status=maybe``), but node/organizer_api.py:log and list_members read these two
    with ``==``/``in`` and silently ignore anything else: ``order=newset`` (a typo)
    answers oldest first, ``all=yes`` hides the forgotten members, both 200. A client is
    answered something other than it asked, with nothing to tell it so. Fix: read them
    with ``_choice`` (order: newest|oldest, all: 0|1|true|false) so others are 400."""
    [node] = await network(1)
    wrong = []
    async with aiohttp.ClientSession() as s:
        for path in ("/v1/log?order=newset", "/v1/members?all=yes"):
            status, raw, _ = await signed(s, node.organizer, "GET", node.url + path,
                                          pod=node.pod)  # fmt: skip
            if status != 400:
                wrong.append((path, status, raw[:80]))
    assert not wrong, wrong


async def test_export_csv_requests_holds_every_request(network: Any, tmp_path: Path) -> None:
    """`podlink export csv requests` (cli/export.py:_rows) reads GET /v1/requests once, and
    node/organizer_api.py:list_requests cuts every answer at MAX_LIST = 5000 rows — with
    no paging parameter, no "more" marker, nothing in /v1/openapi.json. On a node that has
    seen 5,001 needs (its own and the network's, closed ones included) the CSV silently
    lacks one, and since the rows are ordered by urgency then age, it is the newest
    ordinary need that is missing (and missing from `request list` too). Fix: page the
    list (e.g. ``after``/``limit`` parameters and a cursor in the answer) and have the
    export follow the pages; at the least say the answer was cut."""
    [node] = await network(1)
    author = await node.client.author()
    for batch in range(6):
        count = 1000 if batch < 5 else 1
        events = [
            author.write(kinds.RequestOpened(title=f"need {batch}-{i}", category="food"), "pod")
            for i in range(count)
        ]
        assert all(r["status"] == "stored" for r in await node.client.submit(events))
    out = tmp_path / "needs.csv"
    result = await cli("export", "csv", "requests", "-o", str(out), home=node.home)
    assert result.exit_code == 0, result.output
    with out.open(newline="", encoding="utf-8") as f:
        titles = {row["title"] for row in csv.DictReader(f)}
    assert len(titles) == 5001, f"{5001 - len(titles)} request(s) missing from the export"


def test_prefix_bounds_hold_exactly_the_ids_with_that_prefix() -> None:
    """queries._prefix_range for every prefix length, 1 to 43 characters (a 43-character
    id's last group has 2 padding bits): the bytes range holds the ids whose text starts
    with the prefix, and no other."""
    import os
    import random

    from podlink.ledger.queries import _prefix_range
    from podlink.protocol.text import b64e

    rng = random.Random(6)
    ids = [os.urandom(32) for _ in range(2000)] + [b"\xff" * 32, b"\x00" * 32]
    for _ in range(2000):
        text = b64e(rng.choice(ids))
        prefix = text[: rng.randint(1, 43)]
        lo, hi = _prefix_range(prefix)
        inside = {i for i in ids if lo <= i < hi}
        assert inside == {i for i in ids if b64e(i).startswith(prefix)}, prefix
