"""docs/protocol.md stays true to the code: every kind, reason word, field and limit."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from podlink.protocol import clock, envelope, http_auth, keys
from podlink.protocol.errors import REASONS
from podlink.protocol.kinds import (
    CATEGORIES,
    CONTACT_METHODS,
    KINDS,
    URGENCIES,
    ContactHandoff,
    MemberDetails,
)

DOCS = Path(__file__).resolve().parents[2] / "docs"
TEXT = (DOCS / "protocol.md").read_text(encoding="utf-8")
COMPACT = re.sub(r"\s+", "", TEXT)


def section(heading: str) -> str:
    """The text under a heading line, up to the next heading of any level."""
    start = TEXT.index(heading + "\n")
    end = re.search(r"^#{1,4} ", TEXT[start + len(heading) + 1 :], re.M)
    return TEXT[start : None if end is None else start + len(heading) + 1 + end.start()]


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_every_kind_is_documented_with_its_fields(kind: str) -> None:
    cls = KINDS[kind]
    assert f"`{kind}`" in TEXT
    body = section(f"#### `{kind}` — {cls.__name__}")
    for name in cls.__struct_fields__:
        assert f"`{name}`" in body, f"{kind}: field {name} is not documented"
    lanes = ", ".join(lane for lane in envelope.LANES if lane in cls.LANES)
    row = f"| `{kind}` | {cls.__name__} | {lanes} | {cls.REFS} |"
    assert row in TEXT, f"kinds table row should read: {row}"


def test_kinds_table_has_no_extra_rows() -> None:
    rows = re.findall(r"^\| `([a-z][a-z0-9.-]*)` \| [A-Z]\w+ \| [a-z, ]+ \| \d+ \|$", TEXT, re.M)
    assert sorted(rows) == sorted(KINDS)


@pytest.mark.parametrize("reason", REASONS)
def test_every_reason_word_is_documented(reason: str) -> None:
    assert f"| `{reason}` |" in section("### Reason words")


@pytest.mark.parametrize(
    ("struct", "heading"),
    [(MemberDetails, "### Member details (SecretBox)"),
     (ContactHandoff, "### Sealed messages (sealed box)")],
)  # fmt: skip
def test_box_contents_are_documented(struct: type, heading: str) -> None:
    for name in struct.__struct_fields__:
        assert f"| `{name}` |" in section(heading), name


def test_header_table_is_in_order() -> None:
    rows = re.findall(r"^\| (\d+) \| `(\w+)` \|", section("### Header"), re.M)
    assert [name for _, name in rows] == list(envelope.Header.__struct_fields__)
    assert [int(i) for i, _ in rows] == list(range(11))


def test_constants() -> None:
    values = {
        "PROTOCOL_VERSION": envelope.PROTOCOL_VERSION, "ID_LEN": envelope.ID_LEN,
        "KEY_LEN": keys.KEY_LEN, "SIG_LEN": keys.SIG_LEN, "MAX_HEADER": envelope.MAX_HEADER,
        "MAX_BODY": envelope.MAX_BODY, "MAX_REFS": envelope.MAX_REFS,
        "MAX_KIND_LEN": envelope.MAX_KIND_LEN, "MAX_EVENT": envelope.MAX_EVENT,
        "FUTURE_LIMIT_MS": clock.FUTURE_LIMIT_MS, "OBSERVE_LIMIT_MS": clock.OBSERVE_LIMIT_MS,
        "WINDOW_S": http_auth.WINDOW_S,
    }  # fmt: skip
    for name, value in values.items():
        assert f"| `{name}` | {value} |" in TEXT, name
    assert envelope.SIGN_PREFIX.hex() in TEXT and "podlink/http/v2\\x00" in TEXT
    assert "".join(envelope.LANES) == "podpeersnetwork"
    for name in http_auth.HEADERS:
        assert f"| `{name}` |" in TEXT


def test_enumerations() -> None:
    types = section("### Field types")
    assert all(f"`{c}`" in types for c in CATEGORIES)
    assert all(f"`{u}`" in types for u in URGENCIES)
    assert all(f"`{m}`" in section("### Member details (SecretBox)") for m in CONTACT_METHODS)


def test_worked_examples_match_the_vectors() -> None:
    data = json.loads((DOCS / "protocol-vectors.json").read_text(encoding="utf-8"))
    vector = next(v for v in data["vectors"] if v["name"] == "request-open")
    for key in ("seed", "payload", "body", "signature", "id", "wire"):
        assert vector[key] in COMPACT, f"worked example: {key} differs from the vector"
    assert vector["fields"]["pod"] in TEXT and vector["fields"]["author"] in TEXT
    assert str(vector["fields"]["ts"]) in TEXT and vector["fields"]["kind"] == "request.open"
    request = data["requests"][0]
    for name, value in request["headers"].items():
        assert f"{name}: {value}" in TEXT
    signed = bytes.fromhex(request["signing_input"]).decode().replace("\x00", "\\x00")
    assert signed in TEXT


def chapter(heading: str) -> str:
    """The text under a level-2 heading, subsections included, up to the next one."""
    start = TEXT.index(heading + "\n")
    end = TEXT.find("\n## ", start + 1)
    return TEXT[start : None if end == -1 else end]


SYNC = chapter("## Sync between nodes (HTTP)")


def test_sync_documents_every_peer_route() -> None:
    from aiohttp import web

    from podlink.node import auth, peer_api

    app = web.Application()
    peer_api.setup_routes(app)
    routes = {(r.method, r.resource.canonical) for r in app.router.routes()
              if r.resource and r.method != "HEAD"}  # aiohttp adds HEAD to every GET
    assert routes
    for method, path in routes:
        assert f"`{method} {path}" in SYNC, f"{method} {path} is not documented"
    for path in auth.PUBLIC_PATHS:
        assert f"`{path}`" in section("### Requests and roles"), path


def test_sync_error_statuses_are_the_nodes() -> None:
    from podlink.node.errors import STATUS

    documented: dict[str, int] = {}
    for words, status in re.findall(r"^\| (`[a-z-]+`(?:, `[a-z-]+`)*) \| (\d{3}) \|$",
                                    section("### Errors"), re.M):  # fmt: skip
        for word in re.findall(r"`([a-z-]+)`", words):
            documented[word] = int(status)
    assert documented == STATUS


def test_sync_messages_are_documented_field_by_field() -> None:
    from podlink.node.api_types import FeedHead, Info, Page, Peer, Redeem, StreamHello
    from podlink.node.invites import PREFIX, InviteCode

    for struct in (Info, Redeem, Peer):  # JSON objects
        for name in struct.__struct_fields__:
            assert f'"{name}"' in SYNC, f"{struct.__name__}.{name}"
    for struct in (Page, StreamHello, FeedHead, InviteCode):  # msgpack arrays, in order
        names = "".join(f"{n}:.*" for n in struct.__struct_fields__)
        assert re.search(r"\[ ?" + names + r"\]", SYNC), struct.__name__
    assert f'"{PREFIX}"' in SYNC


def test_length_faults_are_spelled_out() -> None:
    faults = section("### Length faults: too-large or invalid")
    for word in ("`too-large`", "`invalid`", "MAX_EVENT", "element", "body_size"):
        assert word in faults
