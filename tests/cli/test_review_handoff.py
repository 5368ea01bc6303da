"""Review of `podlink handoff`, `podlink inbox` and `podlink member update`: real nodes
(Elm and Oak, peered), real Ed25519 signatures, real sealed boxes."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import nacl.signing

from podlink.cli.session import PodSession, Target
from podlink.protocol import boxes, kinds
from podlink.protocol.text import b64d
from tests.cli.conftest import Pair, Pod, eventually
from tests.cli.test_pod import one_error_line


def call(pod: Pod, action: Callable[[PodSession], Awaitable[Any]]) -> Any:
    """Run ``action`` in a real signed session with ``pod``'s node (as a command would)."""
    return Target(pod.home).call(action)


def request_on(pod: Pod, request_id: str) -> dict[str, Any] | None:
    return next((r for r in pod.json("request", "list") if r["id"] == request_id), None)


def agreed_claim(pair: Pair, tag: str) -> tuple[str, str]:
    """Elm asks on the network lane, Oak claims, Elm accepts: (request id, claim id)."""
    elm, oak = pair.elm, pair.oak
    need = elm.json("request", "add", f"Review {tag}: a lift", "--category", "transport",
                    "--share", "network")["id"]  # fmt: skip
    eventually(lambda: request_on(oak, need), 20)
    claim = oak.json("claim", need)["id"]
    eventually(lambda: any(c["id"] == claim
                           for c in elm.json("request", "show", need)["claims"]), 20)  # fmt: skip
    elm("accept", claim)
    eventually(lambda: oak.json("request", "show", need)["status"] == "accepted", 20)
    return need, claim


def seal(pod: Pod, to: str, plaintext: bytes, box: bytes | None = None) -> str:
    """``pod``'s organizer signs a sealed event to ``to`` (base64url key), network lane,
    as a tool other than `podlink handoff` would: any box, any plaintext."""
    to_key = b64d(to, length=32)
    body = kinds.SealedMessage(to=to_key, box=box or boxes.seal_to(to_key, plaintext))
    return str(call(pod, lambda s: s.write(body, "network")))


def handoff_bytes(name: str, contact: str, about: str | None = None) -> bytes:
    return kinds.encode_body(
        kinds.ContactHandoff(
            name=name, contact=contact, about=None if about is None else b64d(about, length=32)
        )
    )


def sealed_noise(count: int) -> Callable[[PodSession], Awaitable[None]]:
    """``count`` sealed events to pods other than Elm and Oak, in the network lane."""

    async def go(s: PodSession) -> None:
        author = await s.client.author(b64d(await s.pod(), length=32))
        others = [nacl.signing.SigningKey.generate().verify_key.encode() for _ in range(8)]
        events = []
        for i in range(count):
            to = others[i % len(others)]
            box = boxes.seal_to(to, kinds.encode_body(kinds.ContactHandoff(
                name=f"Someone {i}", contact="elsewhere")))  # fmt: skip
            events.append(author.write(kinds.SealedMessage(to=to, box=box), "network", []))
        for start in range(0, count, 200):
            await s.client.submit(events[start : start + 200])

    return go


# ---------------------------------------------------------------- handoff


def test_no_handoff_once_the_request_is_cancelled(pair: Pair) -> None:
    """The asking pod cancels its need after accepting a claim: the help is off, yet
    `podlink handoff` still seals the member's contact to the other pod. The fold leaves
    an accepted claim 'accepted' when its request is cancelled (ledger/state.py
    _close_pending closes only pending claims) and cli/handoff.py checks only the
    claim's status, never the request's."""
    elm, oak = pair.elm, pair.oak
    need, claim = agreed_claim(pair, "cancelled")
    elm("member", "add", "Cora Cancel", "--contact", "555 0300 11")
    elm("request", "cancel", need)
    assert elm.json("request", "show", need)["status"] == "cancelled"
    before = elm.json("status")["events"]
    sent = elm("handoff", claim, "--member", "Cora Cancel", code=None)
    assert sent.exit_code == 1, sent.output
    assert "cancelled" in one_error_line(sent)
    assert elm.json("status")["events"] == before  # nothing sealed, nothing sent
    eventually(lambda: oak.json("request", "show", need)["status"] == "cancelled", 20)
    back = oak("handoff", claim, "--name", "Olaf", "--contact", "555 0300 22", code=None)
    assert back.exit_code == 1, back.output


def test_a_member_whose_details_do_not_open_is_not_handed_over_as_no_key(pair: Pair) -> None:
    """A member listed without details (their box does not open here: `member list` says
    "(no key)"): `member update` refuses them, but `podlink handoff --member ID --contact
    C` seals the placeholder "(no key)" to the other pod as the person's name.
    cli/handoff.py takes ``person["name"]`` without checking that the details opened (the
    check update_member does in cli/ops.py)."""
    elm = pair.elm
    _, claim = agreed_claim(pair, "no key")
    details = kinds.encode_body(kinds.MemberDetails(name="Nadia Nokey", contact="555 0500"))
    joined = kinds.MemberJoined(box=boxes.lock(boxes.new_member_key(), details))
    member_id = str(call(elm, lambda s: s.write(joined, "pod")))  # its key is not kept
    listed = next(m for m in elm.json("member", "list") if m["id"] == member_id)
    assert listed["name"] == "(no key)" and "contact" not in listed
    refused = elm("member", "update", member_id, "--notes", "x", code=1)
    assert "cannot be opened" in one_error_line(refused)
    before = elm.json("status")["events"]
    sent = elm("handoff", claim, "--member", member_id, "--contact", "555 0500 99", code=None)
    assert sent.exit_code == 1, sent.output  # actual: 0, name "(no key)" sealed to Oak
    assert elm.json("status")["events"] == before


def test_no_handoff_after_the_claim_is_declined(pair: Pair) -> None:
    """Pins: the helper fell through (the accepted claim declined): neither pod can hand
    a contact over any more, and nothing is signed."""
    elm, oak = pair.elm, pair.oak
    need, claim = agreed_claim(pair, "declined")
    elm("decline", claim, "--reason", "fell through")
    eventually(lambda: oak.json("request", "show", need)["claims"][0]["status"] == "declined",
               20)  # fmt: skip
    for pod in (elm, oak):
        before = pod.json("status")["events"]
        line = one_error_line(pod("handoff", claim, "--name", "Dee", "--contact", "1", code=1))
        assert "the claim is declined" in line
        assert pod.json("status")["events"] == before


# ---------------------------------------------------------------- inbox


def test_the_inbox_credits_a_stranger_with_a_need_it_has_no_part_in(pair: Pair) -> None:
    """Oak has no claim on Elm's need, yet a sealed "handoff" it signs with ``about`` =
    that need is listed by `podlink inbox` on Elm under the need's title, exactly like
    the contact of an agreed helper. `podlink handoff` refuses any pod that is not a party
    to an accepted claim, but cli/handoff.py ``inbox`` trusts the sender's ``about``
    as is (it only looks the title up), so any pod on the network can pose as the helper
    of a need it learnt of (the request is on the network lane)."""
    elm, oak = pair.elm, pair.oak
    need = elm.json("request", "add", "Review spoof: insulin pickup", "--category",
                    "medicine", "--share", "network")["id"]  # fmt: skip
    eventually(lambda: request_on(oak, need), 20)
    assert elm.json("request", "show", need)["claims"] == []
    event = seal(oak, elm.key, handoff_bytes("Your driver", "555 0666", about=need))
    [got] = eventually(lambda: [i for i in elm.json("inbox") if i["id"] == event], 20)
    assert got["from"] == oak.key and got["message"]["about"] == need
    assert got["about_title"] == "", "a stranger's message is filed under the need"


def test_junk_in_the_inbox_is_counted_and_hides_nothing(pair: Pair) -> None:
    """Pins: a hostile peer's sealed events to Elm that do not open, or open to something
    that is not a ContactHandoff, are shown as errors (JSON) and counted in one warning
    (table); a handoff about a request Elm cannot see has an empty title; exit 0."""
    elm, oak = pair.elm, pair.oak
    stranger = nacl.signing.SigningKey.generate().verify_key.encode()
    junk = seal(oak, elm.key, b"", box=boxes.seal_to(stranger, b"not for Elm at all"))
    odd = seal(oak, elm.key, b"\x93\x01\x02\x03")  # opens: a msgpack array, not a map
    unknown = "A" * 42 + "E"  # a 32-byte id no pod wrote
    good = seal(oak, elm.key, handoff_bytes("Gus Good", "555 0777", about=unknown))
    ids = {junk, odd, good}
    items = eventually(lambda: (lambda got: got if {i["id"] for i in got} >= ids else None)(
        [i for i in elm.json("inbox") if i["id"] in ids]), 20)  # fmt: skip
    by_id = {i["id"]: i for i in items}
    assert "error" in by_id[junk]["message"] and "error" in by_id[odd]["message"]
    assert by_id[good]["message"]["contact"] == "555 0777"
    assert by_id[good]["about_title"] == ""
    shown = elm("inbox")
    assert "Gus Good" in shown.stdout and "555 0777" in shown.stdout
    assert "did not open" in shown.stderr


def test_the_inbox_loses_a_handoff_behind_sealed_events_for_other_pods(pair: Pair) -> None:
    """Oak hands a contact to Elm; then Elm stores 1000 sealed events for other pods (here
    its own handoffs elsewhere; the ones it carries for its peers count the same). `podlink
    inbox` on Elm no longer lists Oak's handoff, though it is stored and is one of the few
    sealed to Elm. ledger/queries.py sealed_for scans only the newest ``limit * 10``
    sealed events of any recipient (ORDER BY pos DESC LIMIT 1000) and filters on ``to``
    in Python, so other pods' traffic pushes this pod's messages out of its inbox. Kept
    last in the file: Elm's inbox stays broken afterwards."""
    elm, oak = pair.elm, pair.oak
    _, claim = agreed_claim(pair, "flood")
    sent = oak.json("handoff", claim, "--name", "Fern Flood", "--contact", "555 0400 11")
    mine = lambda: [i for i in elm.json("inbox") if i["id"] == sent["id"]]  # noqa: E731
    eventually(mine, 20)
    start = elm.json("status")["events"]
    call(elm, sealed_noise(1000))
    assert elm.json("status")["events"] == start + 1000
    assert mine(), "the handoff to Elm is gone from its inbox"
