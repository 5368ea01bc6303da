"""Every endpoint of node/openapi.py ENDPOINTS refuses the same way, with one JSON shape.

Unsigned, unknown key, replayed, stale, tampered, wrong role, malformed, oversize and
unknown ids: each gets the status and reason word of node/errors.py, never a 5xx.
"""

from __future__ import annotations

import time
from typing import Any

import aiohttp
import msgspec
import pytest

from podlink.node.auth import role_for
from podlink.node.openapi import ENDPOINTS, Endpoint
from podlink.protocol.http_auth import sign_request
from podlink.protocol.keys import Keypair
from tests.node.helpers import PodNode, free_port, signed

UNKNOWN = "ZZZZZZZZZZ"  # an id prefix nothing has (ids are random)


def concrete(path: str) -> str:
    """A path of the endpoint with its {parameters} filled in (with unknown ids)."""
    return (
        path.replace("{id}", UNKNOWN)
        .replace("{key}", UNKNOWN)
        .replace("{table}", "requests")
        .replace("{prefix}", UNKNOWN)
    )


def valid_body(e: Endpoint) -> bytes:
    """A body that passes decoding (what is in it does not matter to auth)."""
    if e.path == "/v1/peer/redeem":
        return msgspec.json.encode(
            {"secret": "s" * 24, "url": "http://127.0.0.1:9", "name": "Nobody"}
        )
    return b""


GUARDED = [e for e in ENDPOINTS if e.role != "public"]
PUBLIC = [e for e in ENDPOINTS if e.role == "public"]
ORGANIZER = [e for e in ENDPOINTS if e.role == "organizer"]
PEER = [e for e in ENDPOINTS if e.role == "peer"]


def ident(e: Endpoint) -> str:
    return f"{e.method} {e.path}"


def error_of(status: int, raw: bytes) -> str:
    """The reason word of an error response, checking the one JSON error shape."""
    assert status < 500, (status, raw[:300])
    body = msgspec.json.decode(raw)
    assert isinstance(body, dict), body
    assert set(body) <= {"error", "message", "results"}, body
    assert isinstance(body["error"], str) and body["error"], body
    assert isinstance(body["message"], str) and body["message"], body
    return body["error"]


@pytest.fixture
async def pod(network: Any) -> tuple[PodNode, Keypair]:
    """One node, and the key of a pod it peers with (at an address where nothing listens)."""
    [node] = await network(1)
    peer = Keypair.generate()
    await node.client.post(
        "/v1/peers", {"url": f"http://127.0.0.1:{free_port()}", "key": peer.public_text}
    )
    return node, peer


async def send(
    session: aiohttp.ClientSession,
    node: PodNode,
    key: Keypair | None,
    e: Endpoint,
    path: str | None = None,
    body: bytes | None = None,
    **kw: Any,
) -> tuple[int, bytes, dict[str, str]]:
    target = node.url + (path or concrete(e.path))
    kw.setdefault("pod", node.pod)
    return await signed(
        session, key, e.method, target, valid_body(e) if body is None else body, **kw
    )


def role_key(pod: tuple[PodNode, Keypair], e: Endpoint) -> Keypair:
    """A key allowed past auth on ``e``."""
    node, peer = pod
    return peer if e.role == "peer" else node.organizer


# ---------------------------------------------------------------- the route table


async def test_openapi_lists_exactly_the_routes_served(network: Any) -> None:
    [node] = await network(1)
    assert node.app is not None
    served = {
        (r.method, r.resource.canonical)
        for r in node.app.router.routes()
        if r.method != "HEAD" and r.resource is not None
    }
    listed = {(e.method, e.path) for e in ENDPOINTS}
    assert served == listed
    assert len(listed) == len(ENDPOINTS), "an endpoint is listed twice"

    doc = await node.client.get("/v1/openapi.json")
    in_doc = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
    assert in_doc == listed
    for e in ENDPOINTS:  # the documented role is the one the middleware enforces
        assert role_for(concrete(e.path)) == e.role, ident(e)
        assert doc["paths"][e.path][e.method.lower()]["x-podlink-role"] == e.role


# ---------------------------------------------------------------- authentication


async def test_public_endpoints_answer_unsigned(pod: Any, session: aiohttp.ClientSession) -> None:
    node, _ = pod
    for e in PUBLIC:
        status, raw, _ = await send(session, node, None, e)
        assert status == 200, (ident(e), raw[:200])
    [e] = [e for e in PUBLIC if e.path == "/v1/info"]
    info = msgspec.json.decode((await send(session, node, None, e))[1])
    assert info["pod"] == node.key and info["name"] == node.name


@pytest.mark.parametrize("e", GUARDED, ids=ident)
async def test_unsigned_is_401(pod: Any, session: aiohttp.ClientSession, e: Endpoint) -> None:
    node, _ = pod
    status, raw, _ = await send(session, node, None, e)
    assert (status, error_of(status, raw)) == (401, "unauthorised")


@pytest.mark.parametrize("e", GUARDED, ids=ident)
async def test_unknown_key_is_401(pod: Any, session: aiohttp.ClientSession, e: Endpoint) -> None:
    node, _ = pod
    stranger = Keypair.generate()
    status, raw, _ = await send(session, node, stranger, e)
    # Anyone may present an invite (role "signed"), but an unknown secret is refused alike.
    assert (status, error_of(status, raw)) == (401, "unauthorised"), ident(e)


@pytest.mark.parametrize("e", GUARDED, ids=ident)
async def test_replay_stale_and_tampered_are_401(
    pod: Any, session: aiohttp.ClientSession, e: Endpoint
) -> None:
    node, _ = pod
    key = role_key(pod, e)
    status, raw, headers = await send(session, node, key, e)
    assert status < 500, (ident(e), raw[:200])
    status, raw, _ = await send(session, node, key, e, headers=headers)
    assert (status, error_of(status, raw)) == (401, "replayed"), ident(e)

    status, raw, _ = await send(session, node, key, e, when=int(time.time()) - 3600)
    assert (status, error_of(status, raw)) == (401, "stale"), ident(e)
    status, raw, _ = await send(session, node, key, e, when=int(time.time()) + 3600)
    assert (status, error_of(status, raw)) == (401, "stale"), ident(e)

    status, raw, _ = await send(session, node, key, e, body=b'{"a": 1}', send_body=b'{"a": 2}')
    assert (status, error_of(status, raw)) == (401, "forged"), ident(e)
    # The signature covers the path and query too: headers signed for one path, sent to another.
    path = concrete(e.path)
    headers = sign_request(key, e.method, path, b"", pod=node.pod)
    status, raw, _ = await send(
        session, node, None, e, path=path + "?x=1", body=b"", headers=headers
    )
    assert (status, error_of(status, raw)) == (401, "forged"), ident(e)


@pytest.mark.parametrize("e", ORGANIZER + PEER, ids=ident)
async def test_wrong_role_is_403(pod: Any, session: aiohttp.ClientSession, e: Endpoint) -> None:
    node, peer = pod
    wrong = node.organizer if e.role == "peer" else peer
    status, raw, _ = await send(session, node, wrong, e)
    assert (status, error_of(status, raw)) == (403, "forbidden"), ident(e)


async def test_signed_role_takes_any_signer(pod: Any, session: aiohttp.ClientSession) -> None:
    """/v1/peer/redeem is open to organizers and peers alike (the secret decides)."""
    node, peer = pod
    [e] = [e for e in ENDPOINTS if e.role == "signed"]
    for key in (node.organizer, peer):
        status, raw, _ = await send(session, node, key, e)
        assert (status, error_of(status, raw)) == (401, "unauthorised")
        assert b"not known" in raw


# ---------------------------------------------------------------- malformed requests

BAD_KEY = "not-a-key"
MALFORMED: dict[tuple[str, str], list[tuple[str, bytes]]] = {
    ("GET", "/v1/heads"): [("/v1/heads?author=" + BAD_KEY, b"")],
    ("POST", "/v1/events"): [
        ("", b"not json"),
        ("", b"[]"),
        ("", b'{"events": []}'),
        ("", b'{"events": ["@@"]}'),
        ("", b'{"events": ["AAAA"]}'),
        ("", b'{"events": ["AA"], "extra": 1}'),
        ("", b'{"events": ["AAAA"], "member_keys": [{"member": "x", "key": "y"}]}'),
        ("", b"\xff\xfe"),
    ],
    ("GET", "/v1/requests"): [("/v1/requests?status=maybe", b""), ("/v1/requests?lane=x", b"")],
    ("GET", "/v1/offers"): [("/v1/offers?status=maybe", b"")],
    ("GET", "/v1/roster"): [("/v1/roster?pod=" + BAD_KEY, b""), ("/v1/roster?pod=ALL", b"")],
    ("GET", "/v1/claims"): [("/v1/claims?status=maybe", b"")],
    ("GET", "/v1/resolve/{table}/{prefix}"): [("/v1/resolve/secrets/AAAA", b"")],
    ("GET", "/v1/log"): [
        ("/v1/log?since=x", b""),
        ("/v1/log?limit=ten", b""),
        ("/v1/log?limit=-1", b""),
        ("/v1/log?since=-5", b""),
    ],
    ("POST", "/v1/peers"): [
        ("", b"{"),
        ("", b'{"url": "ftp://x", "key": "' + b"A" * 43 + b'"}'),
        ("", b'{"url": "http://x", "key": "short"}'),
        ("", b'{"url": "http://x"}'),
    ],
    ("POST", "/v1/peers/join"): [
        ("", b'{"invite": "not-an-invite-code"}'),
        ("", b'{"invite": "podlink1.AAAAAAAAAA"}'),
        ("", b'{"invite": "podlink1.!!!!!!!!!!!!"}'),
        ("", b"{}"),
        ("", b"7"),
    ],
    ("GET", "/v1/peer/changes"): [
        ("/v1/peer/changes?since=-1", b""),
        ("/v1/peer/changes?limit=abc", b""),
        ("/v1/peer/changes?limit=0", b""),
    ],
    ("GET", "/v1/peer/stream"): [("", b"")],  # a plain GET, not a WebSocket upgrade
    ("GET", "/v1/peer/heads"): [
        ("/v1/peer/heads?limit=0", b""),
        ("/v1/peer/heads?limit=ten", b""),
        ("/v1/peer/heads?limit=10001", b""),
        ("/v1/peer/heads?limit=5&after_author=" + BAD_KEY + "&after_lane=network", b""),
        ("/v1/peer/heads?limit=5&after_author=" + "A" * 43 + "&after_lane=moon", b""),
    ],
    ("GET", "/v1/peer/feed"): [
        ("/v1/peer/feed?author=" + BAD_KEY + "&lane=network", b""),
        ("/v1/peer/feed?author=" + "A" * 43 + "&lane=pod", b""),
        ("/v1/peer/feed?author=" + "A" * 43 + "&lane=network&from=5&to=2", b""),
    ],
    ("GET", "/v1/peer/forks"): [
        ("/v1/peer/forks?after=-1", b""),
        ("/v1/peer/forks?after=x", b""),
        ("/v1/peer/forks?limit=0", b""),
        ("/v1/peer/forks?limit=101", b""),
    ],
    ("POST", "/v1/peer/redeem"): [
        ("", b"{}"),
        ("", b"garbage"),
        ("", b'{"secret": "short", "url": "http://x"}'),
    ],
}


#: Endpoints with nothing to get wrong: no body, no constrained query (path ids: 404 test).
NO_INPUT = {
    ("GET", "/v1/status"),
    ("GET", "/v1/requests/{id}"),
    ("GET", "/v1/members"),
    ("GET", "/v1/members/{id}/key"),
    ("GET", "/v1/pods"),
    ("GET", "/v1/resources"),
    ("GET", "/v1/hours"),
    ("GET", "/v1/forks"),
    ("GET", "/v1/match"),
    ("GET", "/v1/inbox"),
    ("POST", "/v1/verify"),
    ("GET", "/v1/peers"),
    ("DELETE", "/v1/peers/{key}"),
    ("POST", "/v1/invites"),
    ("POST", "/v1/sync"),
}


def test_every_endpoint_with_input_has_malformed_cases() -> None:
    guarded = {(e.method, e.path) for e in GUARDED}
    assert set(MALFORMED) | NO_INPUT == guarded
    assert not set(MALFORMED) & NO_INPUT
    for e in GUARDED:
        if e.body is not None:
            assert (e.method, e.path) in MALFORMED, ident(e)


@pytest.mark.parametrize("where", sorted(MALFORMED), ids=lambda w: f"{w[0]} {w[1]}")
async def test_malformed_is_400_invalid(
    pod: Any, session: aiohttp.ClientSession, where: tuple[str, str]
) -> None:
    node, _ = pod
    [e] = [e for e in ENDPOINTS if (e.method, e.path) == where]
    key = role_key(pod, e)
    for path, body in MALFORMED[where]:
        if e.path == "/v1/peers" and b"A" * 43 in body:
            body = body.replace(b"A" * 43, node.key.encode())
        status, raw, _ = await send(session, node, key, e, path=path or None, body=body)
        assert (status, error_of(status, raw)) == (400, "invalid"), (ident(e), path, body, raw)


async def test_peering_with_itself_is_invalid(pod: Any) -> None:
    node, _ = pod
    from podlink.node.client import ClientError

    with pytest.raises(ClientError) as err:
        await node.client.post("/v1/peers", {"url": node.url, "key": node.key})
    assert (err.value.status, err.value.reason) == (400, "invalid")


# ---------------------------------------------------------------- size and ids


async def test_oversize_body_is_413_everywhere(
    network: Any, session: aiohttp.ClientSession
) -> None:
    [node] = await network(1, max_request_bytes=4096)
    peer = Keypair.generate()
    await node.client.post(
        "/v1/peers", {"url": f"http://127.0.0.1:{free_port()}", "key": peer.public_text}
    )
    big = b'{"events": ["' + b"A" * 8000 + b'"]}'
    for e in GUARDED:
        key = peer if e.role == "peer" else node.organizer
        status, raw, _ = await send(session, node, key, e, body=big)
        assert (status, error_of(status, raw)) == (413, "too-large"), ident(e)
    # A body under the limit still goes through.
    assert (await node.status())["name"] == node.name


ID_PATHS = [e for e in GUARDED if "{" in e.path]


@pytest.mark.parametrize("e", ID_PATHS, ids=ident)
async def test_unknown_id_is_404(pod: Any, session: aiohttp.ClientSession, e: Endpoint) -> None:
    node, _ = pod
    for prefix in (UNKNOWN, "!!", "Zz_-Zz_-Zz", "Q" * 50):
        path = concrete(e.path).replace(UNKNOWN, prefix)
        status, raw, _ = await send(session, node, node.organizer, e, path=path)
        assert (status, error_of(status, raw)) == (404, "not-found"), (ident(e), prefix, raw)


async def test_unknown_route_and_method(pod: Any, session: aiohttp.ClientSession) -> None:
    node, _ = pod
    status, raw, _ = await signed(session, None, "GET", node.url + "/v1/nothing-here")
    assert (status, error_of(status, raw)) == (401, "unauthorised")
    status, raw, _ = await signed(session, node.organizer, "GET", node.url + "/v1/nothing-here")
    assert (status, error_of(status, raw)) == (404, "not-found")
    status, raw, _ = await signed(session, node.organizer, "DELETE", node.url + "/v1/status")
    assert (status, error_of(status, raw)) == (405, "invalid")
