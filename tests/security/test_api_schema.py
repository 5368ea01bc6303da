"""Schemathesis against the node's own OpenAPI document (GET /v1/openapi.json).

For every operation of node/openapi.py ENDPOINTS, Schemathesis generates requests from the
document — valid ones and (for organizers) invalid ones — and sends them to a real node in
a child process, in four runs:

* signed by an organizer of the pod (a hook signs each generated request: method, exact
  path and query, body hash, time, nonce) — positive and negative data;
* signed by a pod the node peers with;
* not signed at all (the generated, meaningless Podlink-* header values are sent as is).

Every answer must come within 10 s, never be a 5xx, and conform to the document (status
code, content type, JSON schema). URLs in generated bodies are pointed at a dead loopback
port before sending: the node must never be made to reach beyond 127.0.0.1.

The default (CI) run draws up to 20 examples per operation and run; PODLINK_LONG=1, 150.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, reject, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from podlink.node import invites
from podlink.node.errors import APIError
from podlink.node.openapi import build
from podlink.protocol.http_auth import sign_request
from podlink.protocol.keys import Keypair
from tests.node.helpers import make_node
from tests.reliability.served import SERVE, stable_port

LONG = os.environ.get("PODLINK_LONG") == "1"
EXAMPLES = 150 if LONG else 20
TIMEOUT_S = 10.0
DEAD_URL = "http://127.0.0.1:9"  # the discard port: nothing listens, refused at once
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]

SCHEMA = schemathesis.openapi.from_dict(build())
OPERATIONS = {op.label: op for op in (r.ok() for r in SCHEMA.get_all_operations())}
GUARDED = sorted(label for label, op in OPERATIONS.items()
                 if op.definition.raw.get("x-podlink-role") != "public")  # fmt: skip
BY_ROLE = {
    role: sorted(label for label, op in OPERATIONS.items()
                 if op.definition.raw.get("x-podlink-role") in (role, "signed", "public"))
    for role in ("organizer", "peer")
}  # fmt: skip

# Operations with something to get wrong besides the signature: a body, a query, a path.
NEGATABLE = sorted(
    label for label in BY_ROLE["organizer"]
    if OPERATIONS[label].definition.raw.get("requestBody")
    or any(not p["name"].startswith("Podlink-")
           for p in OPERATIONS[label].definition.raw.get("parameters", []))
)  # fmt: skip


@dataclass
class Target:
    url: str
    pod: bytes  # what signed requests to it name
    organizer: Keypair
    peer: Keypair
    session: requests.Session
    sent: Counter[str]
    statuses: Counter[int]


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    home = tmp_path_factory.mktemp("fuzzed") / "Fuzzed"
    pod = asyncio.run(make_node(home, "Fuzzed", port=stable_port(), backoff_max_s=30.0,
                                peer_timeout_s=2.0))  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("PODLINK_")}
    log = (home / "node.log").open("ab")
    proc = subprocess.Popen([sys.executable, "-c", SERVE, str(home)], stdout=log,
                            stderr=log, stdin=subprocess.DEVNULL, env=env)  # fmt: skip
    session = requests.Session()
    t = Target(pod.url, pod.pod, pod.organizer, Keypair.generate(), session, Counter(), Counter())
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if session.get(pod.url + "/v1/info", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            assert proc.poll() is None, (home / "node.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "the node did not start"
            time.sleep(0.05)
        ensure_peer(t)
        yield t
        assert proc.poll() is None, "the node died under fuzzing"
    finally:
        session.close()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        print(f"\nschemathesis: {sum(t.sent.values())} requests over {len(t.sent)} "
              f"(operation, run) pairs; statuses {dict(sorted(t.statuses.items()))}")  # fmt: skip
    assert proc.returncode == 0, (home / "node.log").read_text()[-3000:]
    assert b"Traceback" not in (home / "node.log").read_bytes()


def ensure_peer(t: Target) -> None:
    """(Re)peer the fuzzing peer key: fuzzed DELETE /v1/peers/{key} may have removed it."""
    body = f'{{"url": "{DEAD_URL}", "key": "{t.peer.public_text}", "name": "fuzz"}}'
    headers = sign_request(t.organizer, "POST", "/v1/peers", body.encode(), pod=t.pod)
    headers["Content-Type"] = "application/json"
    resp = t.session.post(t.url + "/v1/peers", data=body, headers=headers, timeout=TIMEOUT_S)
    assert resp.status_code == 201, resp.text


def disarm(label: str, kwargs: dict[str, Any]) -> None:
    """Point every URL in a generated body at the dead loopback port."""
    body = kwargs.get("json")
    if not isinstance(body, dict):
        return
    if isinstance(body.get("url"), str):
        body["url"] = DEAD_URL
    if label == "POST /v1/peers/join" and isinstance(body.get("invite"), str):
        try:
            code = invites.decode(body["invite"])
        except (APIError, ValueError):
            return
        body["invite"] = invites.encode(DEAD_URL, code.pod, code.secret, code.expires)


def send(t: Target, label: str, case: Any, key: Keypair | None, run: str) -> None:
    kwargs = case.as_transport_kwargs(base_url=t.url)
    disarm(label, kwargs)
    request = requests.Request(
        method=kwargs["method"], url=kwargs["url"], headers=kwargs.get("headers"),
        params=kwargs.get("params"), cookies=kwargs.get("cookies"), json=kwargs.get("json"),
        data=kwargs.get("data"), files=kwargs.get("files"),
    )  # fmt: skip
    try:
        prepared = t.session.prepare_request(request)
    except (ValueError, TypeError, UnicodeError, requests.RequestException):
        reject()  # not expressible as HTTP (NaN in JSON, a non-Latin-1 header...)
    if key is not None:
        body = prepared.body or b""
        if isinstance(body, str):
            body = body.encode("utf-8")
        for name in [h for h in prepared.headers if h.lower().startswith("podlink-")]:
            del prepared.headers[name]
        prepared.headers.update(sign_request(key, prepared.method or "GET",
                                             prepared.path_url, body, pod=t.pod))  # fmt: skip
    try:
        response = t.session.send(prepared, timeout=TIMEOUT_S)
    except (requests.exceptions.InvalidHeader, UnicodeError, ValueError):
        reject()
    except requests.Timeout:
        pytest.fail(f"{label}: no answer within {TIMEOUT_S} s ({run})")
    t.sent[f"{label} [{run}]"] += 1
    t.statuses[response.status_code] += 1
    assert response.status_code < 500, (label, run, response.status_code, response.text[:300])
    case.validate_response(response, checks=CHECKS)


def fuzz(t: Target, label: str, key: Keypair | None, run: str, mode: GenerationMode) -> None:
    operation = OPERATIONS[label]

    @settings(
        max_examples=EXAMPLES, deadline=None, derandomize=not LONG, database=None,
        suppress_health_check=list(HealthCheck),
    )  # fmt: skip
    @given(st.data())
    def examples(data: st.DataObject) -> None:
        send(t, label, data.draw(operation.as_strategy(mode)), key, run)

    examples()


@pytest.mark.slow
@pytest.mark.parametrize("label", [*GUARDED, "GET /v1/info"])
def test_unsigned(target: Target, label: str) -> None:
    fuzz(target, label, None, "unsigned", GenerationMode.POSITIVE)


@pytest.mark.slow
@pytest.mark.parametrize("label", BY_ROLE["peer"])
def test_signed_by_a_peer(target: Target, label: str) -> None:
    ensure_peer(target)
    fuzz(target, label, target.peer, "peer", GenerationMode.POSITIVE)


@pytest.mark.slow
@pytest.mark.parametrize("label", BY_ROLE["organizer"])
def test_signed_by_an_organizer(target: Target, label: str) -> None:
    fuzz(target, label, target.organizer, "organizer", GenerationMode.POSITIVE)


@pytest.mark.slow
@pytest.mark.parametrize("label", NEGATABLE)
def test_signed_by_an_organizer_invalid_data(target: Target, label: str) -> None:
    fuzz(target, label, target.organizer, "organizer-negative", GenerationMode.NEGATIVE)


def test_every_operation_is_fuzzed() -> None:
    assert set(BY_ROLE["organizer"]) | set(BY_ROLE["peer"]) == set(OPERATIONS)
    assert len(OPERATIONS) == len(build()["paths"]) + sum(
        len(ops) - 1 for ops in build()["paths"].values()
    )
