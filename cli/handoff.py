"""Contact handoffs between the two pods of an accepted claim, and the inbox they land in.

Help across pods needs, in the end, a person to reach a person. The pod lane never
leaves the pod, so a contact travels as a **sealed** event instead: encrypted to the one
other pod of the claim (NaCl sealed box to its key), carried and checked by every pod in
between, opened only by that pod's node when its organizers read their inbox. Only
organizers send one, only once the claim is accepted, and only with the person's consent.
"""

from __future__ import annotations

import shlex
from typing import Any

import click

from podlink.cli.ops import Refused
from podlink.cli.output import ago_ts, echo, print_json, short, show, table, warn
from podlink.cli.params import PREFERS
from podlink.cli.session import (
    ID_ARGUMENTS,
    ID_TEXT,
    PodSession,
    Target,
    check_body,
    json_option,
    one_line,
    pod_options,
    pods_matching,
)
from podlink.node.client import ClientError
from podlink.protocol import boxes, kinds
from podlink.protocol.text import b64d


async def send_handoff(
    session: PodSession,
    claim_ref: str,
    *,
    member: str | None = None,
    name: str | None = None,
    contact: str | None = None,
    prefers: str | None = None,
    note: str = "",
) -> dict[str, Any]:
    """Seal a person's contact to the other pod of an accepted claim; a summary."""
    claim = await session.claim(claim_ref)
    request = await session.get(f"/v1/requests/{claim['request']}")
    ours = await session.pod()
    if ours not in (request["pod"], claim["pod"]):
        raise Refused("this pod neither asked for this help nor offered it: only the two "
                      "pods of a claim hand contacts to each other")  # fmt: skip
    to = claim["pod"] if request["pod"] == ours else request["pod"]
    if to == ours:
        raise Refused("the need and the helper are both of this pod: their details are "
                      "in `podlink member list`, nothing to hand over")  # fmt: skip
    if claim["status"] != "accepted":
        raise Refused(f"the claim is {claim['status']}: contacts are handed over only "
                      "once help is agreed (the asking pod runs `podlink accept`)")  # fmt: skip
    if request["status"] != "accepted" or request["accepted_claim"] != claim["id"]:
        # An accepted claim stays so once its request is cancelled or fulfilled.
        raise Refused(f"the request is {request['status']}: contacts are handed over only "
                      "while the help is under way")  # fmt: skip
    if member is not None:
        person = await session.member(member)
        if "contact" not in person:  # listed, but their details do not open here
            raise Refused(f"the details of member {person['id'][:8]} cannot be opened "
                          "here (no key): give --name and --contact")  # fmt: skip
        name = name or person["name"]
        contact = contact if contact is not None else person.get("contact", "")
        prefers = prefers or person.get("prefers") or ""
    if not name or not name.strip():
        raise click.UsageError("say whose contact this is: --member NAME, or --name and --contact")
    if not contact or not contact.strip():
        raise Refused(f"no contact details for {name.strip()}: give --contact")
    handoff = kinds.ContactHandoff(
        name=name.strip(), contact=contact.strip(), prefers=prefers or "", note=note.strip(),
        about=b64d(request["id"], length=32),
    )  # fmt: skip
    check_body(handoff, kinds.decode_contact_handoff)
    to_key = b64d(to, length=32)
    sealed = kinds.SealedMessage(to=to_key, box=boxes.seal_to(to_key, kinds.encode_body(handoff)))
    event = await session.write(sealed, request["lane"])
    to_name = request["pod_name"] if to == request["pod"] else claim["pod_name"]
    return {"id": event, "kind": "sealed", "lane": request["lane"], "to": to,
            "to_name": to_name, "about": request["id"], "claim": claim["id"],
            "name": handoff.name, "contact": handoff.contact, "prefers": handoff.prefers,
            "note": handoff.note}  # fmt: skip


@click.command(context_settings=ID_ARGUMENTS)
@click.argument("claim_ref", metavar="CLAIM")
@click.option("--member", help="The member whose contact it is (their name, phone and way "
              "to reach them are taken from the pod's records).")  # fmt: skip
@click.option("--name", help="Whose contact it is, if not a member (or another name).")
@click.option("--contact", help="How to reach them (instead of, or without, a member's).")
@click.option("--prefers", type=PREFERS, help="How they like to be contacted.")
@click.option("--note", default="", help="A word for the other pod (when to call...).")
@pod_options
@json_option
def handoff(pod: Target, claim_ref: str, member: str | None, name: str | None,
            contact: str | None, prefers: str | None, note: str,
            as_json: bool) -> None:  # fmt: skip
    """Hand a person's contact to the other pod of an accepted CLAIM, sealed to that pod.

    The pod that asked sends the contact of the person in need, or the helper's pod sends
    the helper's. Only the other pod can read it (`podlink inbox` there); the pods in
    between carry it sealed. Do it only with the person's consent.

    \b
    Examples:
      podlink handoff 7Hc2 --member Agatha --note "ring twice, 4th floor"
      podlink handoff 7Hc2 --name "Jonny" --contact "555 0199" --prefers text
    """
    data = pod.call(lambda s: send_handoff(
        s, claim_ref, member=member, name=name, contact=contact, prefers=prefers, note=note))
    if as_json:
        print_json(data)
        return
    to = data["to_name"] or short(data["to"])
    echo(f"Sealed {data['name']}'s contact to {to}: only that pod can open it (`podlink "
         "inbox` there); pods in between carry it unread.")  # fmt: skip


def _parties(need: dict[str, Any]) -> set[str]:
    """The pods of a need's help: the one that asked and the one whose claim it accepted."""
    accepted = {c["pod"] for c in need.get("claims", []) if c["id"] == need["accepted_claim"]}
    return {need["pod"], *accepted}


INBOX_PAGE = 100  # what GET /v1/inbox answers at once
PER_SENDER = 10  # at most this many from any one pod on a page (unless --from)


async def _sender(s: PodSession, which: str) -> str:
    """The key of the pod ``which`` names: its whole key, the start of it, or its name in
    the directory (matched as `podlink pod show` does: ``pods_matching``)."""
    want = which.strip()
    if len(want) == 43 and ID_TEXT.match(want):
        return want  # a stranger with no directory entry is named by its whole key
    found = [p["pod"] for p in pods_matching(await s.get_all("/v1/pods"), want)]
    if len(found) == 1:
        return found[0]
    raise click.ClickException(
        f"{len(found)} pods match {one_line(want)!r} (by name or key); give a longer key: "
        + ", ".join(k[:8] for k in found) if found else
        f"no pod called {one_line(want)!r}, nor one whose key starts with it: give the "
        "whole key `podlink inbox` shows with --json")  # fmt: skip


@click.command()
@click.option("--before", type=click.IntRange(min=1), metavar="POS",
              help="Older messages: those stored before POS (the line under a full page "
              "says which).")  # fmt: skip
@click.option("--from", "sender", metavar="POD",
              help="Only the messages of this pod (its name or key), all of them.")
@pod_options
@json_option
def inbox(pod: Target, before: int | None, sender: str | None, as_json: bool) -> None:
    """Contacts other pods handed to this one (sealed to this pod): the last 100 to arrive,
    at most 10 from any one pod; --before for older ones, --from for all of one pod's.

    A contact is filed under the need it names only if its sender is a party to that
    help (the pod that asked, or the one whose claim was accepted); the others are shown
    with no need, and counted.

    \b
    Examples:
      podlink inbox
      podlink inbox --before 18234
      podlink inbox --from Riverside
    """

    async def go(s: PodSession) -> list[dict[str, Any]]:
        key = await _sender(s, sender) if sender is not None else None
        items = await s.get("/v1/inbox", before=before, **{"from": key})
        needs: dict[str, dict[str, Any] | None] = {}
        for item in items:
            about = item["message"].get("about")
            if about and about not in needs:
                try:
                    needs[about] = await s.get(f"/v1/requests/{about}")
                except ClientError as e:
                    if e.reason != "not-found":
                        raise
                    needs[about] = None
            need = needs.get(about or "")
            # Anyone can seal a message naming any need it has seen: it is filed under
            # the need only if its sender asked for the help or is the accepted helper.
            item["party"] = need is not None and item["from"] in _parties(need)
            item["about_title"] = need["title"] if need is not None and item["party"] else ""
        return items

    items = pod.call(go)
    if as_json:
        print_json(items)
        return
    t = table("WHEN", "~FROM", "~NAME", "CONTACT", "PREFERS", "~ABOUT", "~NOTE")  # a contact whole
    broken = 0
    for item in items:
        m = item["message"]
        if "error" in m:
            broken += 1
            continue
        t.add_row(ago_ts(item["ts"]), item["from_name"] or short(item["from"]), m["name"],
                  m["contact"], m["prefers"], item["about_title"], m["note"])  # fmt: skip
    show(t, "No contacts handed to this pod yet (`podlink handoff` sends one)." if before is None
         and sender is None else "No contacts to show.")  # fmt: skip
    strangers = sum(1 for i in items if i["message"].get("about") and not i["party"]
                    and "error" not in i["message"])  # fmt: skip
    if strangers:
        warn(f"{strangers} contact(s) name a need their sender has no accepted part in: "
             "shown without it; check with that pod before you call")  # fmt: skip
    if broken:
        warn(f"{broken} sealed message(s) to this pod did not open: altered on the way, or "
             "not made by podlink")  # fmt: skip
    _older(items, pod, sender)


def _older(items: list[dict[str, Any]], pod: Target, sender: str | None) -> None:
    """Say, one line each, how to reach what this page does not show: older messages, and
    the rest of a pod's that hit the per-pod cap. Nothing sealed to the pod is out of reach."""
    if sender is None:
        counts: dict[str, int] = {}
        for item in items:
            counts[item["from"]] = counts.get(item["from"], 0) + 1
        for key, n in counts.items():
            if n >= PER_SENDER:
                name = next(i["from_name"] for i in items if i["from"] == key) or short(key)
                warn(f"{n} shown from {one_line(name)}, which may have sent more: `podlink "
                     f"inbox --from {key}{pod.home_words()}`")  # fmt: skip
    if len(items) >= INBOX_PAGE:
        more = f" --from {shlex.quote(sender)}" if sender is not None else ""
        warn(f"showing the newest {len(items)}; older ones: `podlink inbox --before "
             f"{items[-1]['pos']}{more}{pod.home_words()}`")  # fmt: skip
