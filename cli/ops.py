"""What organizers do, as signed events: one async function per action.

Each checks what it can first (is this our request? is the claim still pending?) so that an
event the pod's rules would ignore is never signed, writes the event through
:meth:`PodSession.write`, and returns a JSON-ready summary. The commands and the demo
both call these.
"""

from __future__ import annotations

import unicodedata
from typing import Any

import click
import msgspec

from podlink.cli.output import warn_if_personal
from podlink.cli.session import PodSession, check_body
from podlink.protocol import boxes, kinds
from podlink.protocol.text import b64d

Summary = dict[str, Any]


class Refused(click.ClickException):
    """Raised when an action does not apply (not our request, already closed, ...)."""


async def _our(session: PodSession, record: dict[str, Any], what: str, verb: str) -> None:
    if record["pod"] != await session.pod():
        owner = record.get("pod_name") or record["pod"][:8]
        raise Refused(f"only {owner}, the pod that posted this {what}, can {verb} it")


async def _member_id(session: PodSession, ref: str | None) -> str | None:
    return None if ref is None else (await session.member(ref))["id"]


# ---------------------------------------------------------------- members


async def add_member(
    session: PodSession,
    name: str,
    *,
    contact: str = "",
    prefers: str | None = None,
    can: tuple[str, ...] = (),
    needs: tuple[str, ...] = (),
    co_organizer: bool = False,
    languages: tuple[str, ...] = (),
    notes: str = "",
) -> Summary:
    """A new member: details locked with their own key, written in the pod lane."""
    details = kinds.MemberDetails(
        name=unicodedata.normalize("NFC", name.strip()), contact=contact.strip(),
        prefers=prefers,  # type: ignore[arg-type]
        can=list(can), needs=list(needs), languages=list(languages), notes=notes.strip(),
        role="co-organizer" if co_organizer else "participant",
    )  # fmt: skip
    check_body(details, kinds.decode_member_details)  # sealed: the node cannot check it
    key = boxes.new_member_key()
    box = boxes.lock(key, kinds.encode_body(details))
    member_id = await session.write(kinds.MemberJoined(box=box), "pod", member_key=key)
    return {"id": member_id, "kind": "member.join", "lane": "pod", "name": details.name,
            "contact": details.contact, "prefers": prefers, "can": list(can), "needs": list(needs),
            "role": details.role}  # fmt: skip


async def forget_member(session: PodSession, ref: str) -> Summary:
    """Forget a member, and withdraw the offers made in their name (they could no longer
    be taken up, and other pods would keep suggesting them). The withdrawals give no
    reason: that the member was forgotten stays inside the pod.

    Each write is its own request, and a run can be cut off between them (a dropped
    link, a laptop put to sleep). So the offers are withdrawn first and the forget
    signed last, and a second run for a member forgotten already withdraws what is
    still open in their name: running the command again always finishes the job."""
    member = await session.member(ref, forgotten=True)
    pod = await session.pod()
    theirs = [o for o in await session.get_all("/v1/offers", pod=pod)
              if o["by_member"] == member["id"]]  # fmt: skip
    done = member["status"] == "forgotten"
    if done and not theirs:
        raise click.ClickException(f"member {ref!r} was forgotten already; nothing is left to do")
    for offer in theirs:
        await session.write(kinds.OfferWithdrawn(), offer["lane"], (offer["id"],))
    event = None if done else await session.write(kinds.MemberForgotten(), "pod", (member["id"],))
    return {"id": event, "kind": "member.forget", "lane": "pod", "member": member["id"],
            "name": "" if done else member.get("name", ""),
            "withdrawn_offers": [o["id"] for o in theirs]}  # fmt: skip


DETAILS = ("name", "contact", "prefers", "can", "needs", "role", "languages", "notes")
#: Details a `member update` can empty with --clear, and the value that means "none".
CLEARABLE = {"contact": "", "prefers": None, "can": [], "needs": [], "languages": [],
             "notes": ""}  # fmt: skip


async def update_member(
    session: PodSession, ref: str, changes: dict[str, Any], clear: tuple[str, ...] = ()
) -> Summary:
    """New details for a member: the ones they have, with ``changes`` (field -> value)
    and the ``clear``ed fields replaced; locked with the member's own key, in the pod lane.

    A list given in ``changes`` replaces the list (what `member list` shows is what they
    can or need now). Nothing is signed when nothing would change."""
    member = await session.member(ref)
    if "contact" not in member:  # listed, but its details could not be opened
        raise Refused(f"the details of {member['name']} cannot be opened here (no key)")
    fields = {name: member[name] for name in DETAILS}
    fields.update({name: CLEARABLE[name] for name in clear})
    fields.update(changes)
    if "name" in changes:
        fields["name"] = unicodedata.normalize("NFC", changes["name"].strip())
    for name in ("contact", "notes"):
        fields[name] = fields[name].strip() if name in changes else fields[name]
    details = kinds.MemberDetails(**fields)
    check_body(details, kinds.decode_member_details)
    before = kinds.MemberDetails(**{name: member[name] for name in fields})
    if details == before:
        raise Refused(f"nothing to change: {member['name']}'s details are already so")
    key = b64d((await session.get(f"/v1/members/{member['id']}/key"))["key"], length=32)
    box = boxes.lock(key, kinds.encode_body(details))
    event = await session.write(kinds.MemberUpdated(box=box), "pod", (member["id"],))
    return {"id": event, "kind": "member.update", "lane": "pod", "member": member["id"],
            **msgspec.structs.asdict(details)}  # fmt: skip


# ---------------------------------------------------------------- requests


async def add_request(
    session: PodSession,
    title: str,
    *,
    category: str,
    urgency: str = "normal",
    for_member: str | None = None,
    share: str = "pod",
    details: str = "",
    needed_by: str | None = None,
    area: str = "",
) -> Summary:
    member = await _member_id(session, for_member)
    body = kinds.RequestOpened(
        title=title.strip(), category=category, urgency=urgency, details=details,  # type: ignore[arg-type]
        needed_by=needed_by, area=area, for_member=b64d(member) if member else None,
    )  # fmt: skip
    request_id = await session.write(body, share)
    return {"id": request_id, "kind": "request.open", "lane": share, "share": share,
            "status": "open", "title": body.title, "category": category, "urgency": urgency,
            "for_member": member, "needed_by": needed_by}  # fmt: skip


async def _open_request(session: PodSession, ref: str, verb: str) -> dict[str, Any]:
    req = await session.request(ref)
    await _our(session, req, "request", verb)
    if req["status"] in ("fulfilled", "cancelled"):
        raise Refused(f"this request is already {req['status']}")
    return req


async def update_request(session: PodSession, ref: str, changes: dict[str, Any]) -> Summary:
    """New values for some fields of one of this pod's open or accepted requests, in its
    lane; nothing is signed when nothing would change."""
    req = await _open_request(session, ref, "change")
    changed = {k: v for k, v in changes.items() if req.get(k) != v}
    if not changed:
        raise Refused("nothing to change: the request says so already")
    body = kinds.RequestUpdated(**changed)
    check_body(body)
    warn_if_personal("request", req["lane"], *(changed.get(k, "") for k in
                                               ("title", "details", "area")))  # fmt: skip
    event = await session.write(body, req["lane"], (req["id"],), after=req)
    after = await session.check_applied(req["id"], event)
    return {"id": event, "kind": "request.update", "lane": req["lane"], "request": req["id"],
            "changed": changed, "title": after["title"], "status": after["status"]}  # fmt: skip


async def cancel_request(session: PodSession, ref: str, reason: str = "") -> Summary:
    req = await _open_request(session, ref, "cancel")
    warn_if_personal("reason", req["lane"], reason)
    event = await session.write(kinds.RequestCancelled(reason=reason), req["lane"], (req["id"],),
                                after=req)  # fmt: skip
    after = await session.check_applied(req["id"], event)
    return {"id": event, "kind": "request.cancel", "lane": req["lane"], "request": req["id"],
            "status": after["status"]}  # fmt: skip


async def fulfil_request(
    session: PodSession, ref: str, note: str = "", hours: float | None = None
) -> Summary:
    req = await _open_request(session, ref, "mark fulfilled")
    warn_if_personal("fulfilment note", req["lane"], note)
    body = kinds.RequestFulfilled(note=note, hours=hours)
    event = await session.write(body, req["lane"], (req["id"],), after=req)
    after = await session.check_applied(req["id"], event)
    return {"id": event, "kind": "request.fulfil", "lane": req["lane"], "request": req["id"],
            "status": after["status"], "hours": hours}  # fmt: skip


# ---------------------------------------------------------------- claims


async def make_claim(
    session: PodSession, ref: str, by: str | None = None, note: str = ""
) -> Summary:
    """Offer help on a request; it goes in the request's lane, where its pod can see it."""
    req = await session.request(ref)
    if req["status"] in ("fulfilled", "cancelled"):
        raise Refused(f"this request is already {req['status']}")
    pod = await session.pod()
    if req["pod"] == pod and req["status"] == "accepted":  # ours: we would accept it at once
        accepted = (req["accepted_claim"] or "")[:8]
        raise Refused(f"this need already has an accepted claim ({accepted}); decline it "
                      "first if that help fell through")  # fmt: skip
    member = await _member_id(session, by)
    # This pod's claims on it, wherever they are among all of them (the request's answer
    # holds only the newest claims: another pod's thousands would hide ours).
    ours = await session.get_all("/v1/claims", request=req["id"], pod=pod)
    # (c["pod"] checked too: a node of the release before ignores pod= and answers every
    # pod's claims, and another pod's claim "as the pod" is no claim of ours.)
    same = next((c for c in ours if c["pod"] == pod and c["by_member"] == member
                 and c["status"] in ("pending", "accepted")), None)  # fmt: skip
    if same is not None:  # a claim must not silently double up (DOMAIN.md)
        who = by or "this pod"
        raise Refused(f"{who} already offered to help with it: claim {same['id'][:8]}, "
                      f"{same['status']}")  # fmt: skip
    body = kinds.ClaimMade(by_member=b64d(member) if member else None, note=note)
    event = await session.write(body, req["lane"], (req["id"],), after=req)
    await session.check_applied(req["id"], event)
    mine = next(iter(await session.get("/v1/claims", id=event)), {"status": "pending"})
    return {"id": event, "kind": "claim.make", "lane": req["lane"], "request": req["id"],
            "request_pod": req["pod"], "request_pod_name": req["pod_name"],
            "by_member": member, "status": mine["status"]}  # fmt: skip


async def decide_claim(session: PodSession, ref: str, *, accept: bool, reason: str = "") -> Summary:
    """Accept or decline a claim on one of this pod's requests."""
    claim = await session.claim(ref)
    req = await session.get(f"/v1/requests/{claim['request']}")
    verb = "accept" if accept else "decline"
    await _our(session, req, "request", f"{verb} claims on")
    if req["status"] in ("fulfilled", "cancelled"):
        raise Refused(f"this request is already {req['status']}")
    if accept and claim["status"] != "pending":
        raise Refused(f"this claim is already {claim['status']}")
    if accept and req["status"] != "open":
        raise Refused(
            f"this request already has an accepted claim ({(req['accepted_claim'] or '')[:8]});"
            " decline it first"
        )
    if not accept and claim["status"] not in ("pending", "accepted"):
        raise Refused(f"this claim is already {claim['status']}")
    body = kinds.ClaimAccepted() if accept else kinds.ClaimDeclined(reason=reason)
    warn_if_personal("reason", req["lane"], reason)
    # Naming the request too: the answer then reaches every reader of the request, even
    # those that can never hold the claim (it travelled in its pod's peers lane).
    event = await session.write(body, req["lane"], (claim["id"], req["id"]), after=req)
    after = await session.check_applied(req["id"], event)
    return {"id": event, "kind": body.KIND, "lane": req["lane"], "claim": claim["id"],
            "request": req["id"], "status": after["status"]}  # fmt: skip


# ---------------------------------------------------------------- offers and resources


async def add_offer(
    session: PodSession,
    title: str,
    *,
    category: str,
    by: str | None = None,
    share: str = "pod",
    details: str = "",
    availability: str = "",
) -> Summary:
    member = await _member_id(session, by)
    body = kinds.OfferOpened(
        title=title.strip(), category=category, details=details, availability=availability,
        by_member=b64d(member) if member else None,
    )  # fmt: skip
    offer_id = await session.write(body, share)
    return {"id": offer_id, "kind": "offer.open", "lane": share, "share": share,
            "status": "open", "title": body.title, "category": category,
            "by_member": member}  # fmt: skip


async def withdraw_offer(session: PodSession, ref: str, reason: str = "") -> Summary:
    offer = await session.offer(ref)
    await _our(session, offer, "offer", "withdraw")
    if offer["status"] != "open":
        raise Refused(f"this offer is already {offer['status']}")
    event = await session.write(kinds.OfferWithdrawn(reason=reason), offer["lane"], (offer["id"],))
    after = await session.offer(offer["id"])  # as for requests: say what the fold made of it
    if after["status"] != "withdrawn":
        raise click.ClickException(
            f"recorded, but it changed nothing: the offer is {after['status']}"
        )
    return {"id": event, "kind": "offer.withdraw", "lane": offer["lane"], "offer": offer["id"],
            "status": after["status"]}  # fmt: skip


async def add_resource(
    session: PodSession,
    name: str,
    *,
    category: str,
    what: str = "",
    where: str = "",
    when: str = "",
    contact: str = "",
    share: str = "pod",
) -> Summary:
    body = kinds.ResourceShared(name=name.strip(), category=category, what=what, where=where,
                                when=when, contact=contact)  # fmt: skip
    resource_id = await session.write(body, share)
    return {"id": resource_id, "kind": "resource.share", "lane": share, "share": share,
            "name": body.name, "category": category}  # fmt: skip


async def withdraw_resource(session: PodSession, ref: str, reason: str = "") -> Summary:
    """Withdraw one of this pod's entries from the resource directory, in its lane."""
    entry = await session.resource(ref)
    if entry is None:
        raise Refused("this resource is no longer in the directory")
    await _our(session, entry, "resource", "withdraw")
    body = kinds.ResourceWithdrawn(reason=reason.strip())
    check_body(body)
    warn_if_personal("reason", entry["lane"], reason)
    full = entry["id"]
    event = await session.write(body, entry["lane"], (full,))
    if await session.get("/v1/resources", id=full):
        raise click.ClickException("recorded, but it changed nothing: the entry is still listed")
    return {"id": event, "kind": "resource.withdraw", "lane": entry["lane"], "resource": full,
            "name": entry["name"]}  # fmt: skip
