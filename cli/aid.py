"""Mutual aid itself: members, needs (requests), offers, claims, matches, resources."""

from __future__ import annotations

import math
import sys
from typing import Any

import click

from podlink.cli import ops
from podlink.cli.output import (
    LANE_WORDS,
    ago_ts,
    echo,
    fields,
    joined,
    print_json,
    short,
    show,
    table,
    warn,
    warn_if_personal,
)
from podlink.cli.params import CATEGORY, PREFERS, URGENCY, NeededBy, changes_given, share_option
from podlink.cli.session import (
    ID_ARGUMENTS,
    OrderedGroup,
    PodSession,
    Target,
    json_option,
    pod_options,
)

HISTORY_ALL = 5000  # the most history steps a node answers (its MAX_LIST)
DATE_WORDS = "YYYY-MM-DD, today, tomorrow, a weekday, 'within 1-2 days', 'this week' or 'next week'"
NEEDED_BY_HELP = f"{DATE_WORDS} (leave it out for 'anytime')."
NEW_NEEDED_BY_HELP = f"A new date: {DATE_WORDS} (once set, a date cannot go back to 'anytime')."


async def _names(s: PodSession) -> dict[str, str]:
    """Member ids to names (this pod's members only; others' ids mean nothing here)."""
    return {m["id"]: m["name"] for m in await s.get_all("/v1/members")}


def _cut(data: list, more: bool, what: str, hint: str) -> None:
    """Say so, in one line, when a list shows only its first page (never cut silently)."""
    if more:
        warn(f"showing the first {len(data):,} {what}; {hint}")


def _done(as_json: bool, data: dict[str, Any], line: str) -> None:
    if as_json:
        print_json(data)
    else:
        echo(line)


# ---------------------------------------------------------------- members


@click.group(cls=OrderedGroup)
def member() -> None:
    """The pod's members: add, update, list, forget. Their details never leave the pod."""


@member.command("add")
@click.argument("name")
@click.option("--contact", default="", help="Phone, e-mail, door number… as they prefer.")
@click.option("--prefers", type=PREFERS, help="How they like to be contacted.")
@click.option("--can", multiple=True, type=CATEGORY, metavar="CATEGORY",
              help="What they can help with (repeat for several).")  # fmt: skip
@click.option("--needs", multiple=True, type=CATEGORY, metavar="CATEGORY",
              help="What they may need (repeat for several).")  # fmt: skip
@click.option("--co-organizer", is_flag=True, help="They want to help organize the pod.")
@click.option("--language", "languages", multiple=True, help="A language they speak.")
@click.option("--notes", default="", help="Anything else organizers should know.")
@pod_options
@json_option
def member_add(pod: Target, name: str, contact: str, prefers: str | None, can: tuple[str, ...],
               needs: tuple[str, ...], co_organizer: bool, languages: tuple[str, ...],
               notes: str, as_json: bool) -> None:  # fmt: skip
    """Add a member. Their details are locked with a key of their own and stay in the pod.

    \b
    Example:
      podlink member add "Agatha" --contact "555 0134" --prefers phone \\
          --needs medicine --can translation
    """
    data = pod.call(lambda s: ops.add_member(
        s, name, contact=contact, prefers=prefers, can=can, needs=needs,
        co_organizer=co_organizer, languages=languages, notes=notes))  # fmt: skip
    _done(as_json, data, f"Added {name} (member {short(data['id'])}); their details stay in "
          "this pod, locked with their own key.")  # fmt: skip


@member.command("update", context_settings=ID_ARGUMENTS)
@click.argument("member_ref", metavar="MEMBER")
@click.option("--name", help="Their name, as the pod calls them.")
@click.option("--contact", help="Phone, e-mail, door number… as they prefer.")
@click.option("--prefers", type=PREFERS, help="How they like to be contacted.")
@click.option("--can", multiple=True, type=CATEGORY, metavar="CATEGORY",
              help="What they can help with now (repeat for several; replaces the list).")
@click.option("--needs", multiple=True, type=CATEGORY, metavar="CATEGORY",
              help="What they may need now (repeat for several; replaces the list).")
@click.option("--co-organizer/--participant", "co_organizer", default=None,
              help="Whether they want to help organize the pod.")
@click.option("--language", "languages", multiple=True,
              help="A language they speak (repeat for several; replaces the list).")
@click.option("--notes", help="Anything else organizers should know (replaces the notes).")
@click.option("--clear", multiple=True, metavar="FIELD",
              type=click.Choice(sorted(ops.CLEARABLE)),
              help="Empty a field: contact, prefers, can, needs, languages or notes.")
@pod_options
@json_option
def member_update(pod: Target, member_ref: str, name: str | None, contact: str | None,
                  prefers: str | None, can: tuple[str, ...], needs: tuple[str, ...],
                  co_organizer: bool | None, languages: tuple[str, ...], notes: str | None,
                  clear: tuple[str, ...], as_json: bool) -> None:  # fmt: skip
    """Change a member's details (by name or id): only what you give changes.

    A list option (--can, --needs, --language) replaces that list. The new details are
    locked with the member's own key and stay in the pod, like the old ones.

    \b
    Examples:
      podlink member update Agatha --contact "555 0177"
      podlink member update Jonny --can transport --can translation --co-organizer
      podlink member update Agatha --clear needs
    """
    changes: dict[str, Any] = {
        "name": name, "contact": contact, "prefers": prefers, "notes": notes,
        "can": list(can) or None, "needs": list(needs) or None,
        "languages": list(languages) or None,
        "role": None if co_organizer is None else
        ("co-organizer" if co_organizer else "participant"),
    }  # fmt: skip
    changes = changes_given(changes, clear, "--contact, --can, --needs...")
    data = pod.call(lambda s: ops.update_member(s, member_ref, changes, clear))
    _done(as_json, data, f"Updated {data['name']} (member {short(data['member'])}); their "
          "details stay in this pod.")  # fmt: skip


@member.command("list")
@click.option("--all", "everyone", is_flag=True, help="Include forgotten members.")
@pod_options
@json_option
def member_list(pod: Target, everyone: bool, as_json: bool) -> None:
    """List the pod's members, with contact details and what they can do or need.

    \b
    Example:
      podlink member list
    """
    data, more = pod.call(lambda s: s.first_page("/v1/members", all="1" if everyone else None))
    _cut(data, more, "members (in joining order)",
         "see them all with `podlink export csv members`")
    if as_json:
        print_json(data)
        return
    t = table("ID", "~NAME", "~CONTACT", "PREFERS", "~CAN", "~NEEDS", "ROLE")
    for m in data:
        role = {"co-organizer": "co-org"}.get(m.get("role", ""), "")
        t.add_row(short(m["id"]), m["name"], m.get("contact", ""), m.get("prefers") or "",
                  joined(m.get("can")), joined(m.get("needs")),
                  m["status"] if m["status"] != "active" else role)  # fmt: skip
    show(t, "No members yet: `podlink member add NAME --contact PHONE`.")


@member.command("forget", context_settings=ID_ARGUMENTS)
@click.argument("member_ref", metavar="MEMBER")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@pod_options
@json_option
def member_forget(pod: Target, member_ref: str, yes: bool, as_json: bool) -> None:
    """Forget a member (by name or id): their key and details are destroyed for good, and
    offers made in their name are withdrawn.

    \b
    Example:
      podlink member forget Agatha
    """
    if not yes and sys.stdin.isatty():
        click.confirm(f"Forget {member_ref} for good? Their details cannot be recovered",
                      abort=True)  # fmt: skip
    data = pod.call(lambda s: ops.forget_member(s, member_ref))
    offers = len(data["withdrawn_offers"])
    withdrawn = f" {offers} offer(s) in their name withdrawn." if offers else ""
    if data["id"] is None:  # forgotten by an earlier run, cut off before its withdrawals
        _done(as_json, data, f"Finished forgetting {short(data['member'])}:{withdrawn}")
        return
    _done(as_json, data, f"Forgot {data['name'] or 'the member'} ({short(data['member'])}); "
          f"their details are destroyed.{withdrawn}")  # fmt: skip


# ---------------------------------------------------------------- requests


@click.group(cls=OrderedGroup)
def request() -> None:
    """Needs: add, update, list, show, cancel (claim, accept and fulfil are top-level)."""


@request.command("add")
@click.argument("title")
@click.option("--category", required=True, type=CATEGORY,
              help="food, medicine, transport, … or a new lowercase word.")
@click.option("--urgency", type=URGENCY, default="normal", show_default=True,
              help="How soon it is needed.")
@click.option("--for", "for_member", metavar="MEMBER",
              help="The member who needs it (name or id); stays a bare id outside the pod.")
@share_option("request")
@click.option("--details", default="", help="More words (no personal details if shared).")
@click.option("--needed-by", type=NeededBy(), help=NEEDED_BY_HELP)
@click.option("--area", default="", help="A rough area (a street, not an address).")
@pod_options
@json_option
def request_add(pod: Target, title: str, category: str, urgency: str, for_member: str | None,
                share: str, details: str, needed_by: str | None, area: str,
                as_json: bool) -> None:  # fmt: skip
    """Record a need. It stays in the pod unless --share says otherwise.

    \b
    Examples:
      podlink request add "Groceries for the week" --category food --for Agatha
      podlink request add "Prescription pickup" --category medicine --urgency high \\
          --share network --needed-by tomorrow
    """
    warn_if_personal("request", share, title, details, area)
    data = pod.call(lambda s: ops.add_request(
        s, title, category=category, urgency=urgency, for_member=for_member, share=share,
        details=details, needed_by=needed_by, area=area))  # fmt: skip
    _done(as_json, data, f"Recorded need {short(data['id'])} {title!r} ({category}, {urgency}), "
          f"shared with {LANE_WORDS[share]}.")  # fmt: skip


@request.command("update", context_settings=ID_ARGUMENTS)
@click.argument("request_ref", metavar="REQUEST")
@click.option("--title", help="A new title.")
@click.option("--category", type=CATEGORY, help="A new category.")
@click.option("--urgency", type=URGENCY, help="How soon it is needed now.")
@click.option("--details", help="New details (replaces them; \"\" empties them).")
@click.option("--needed-by", type=NeededBy(), help=NEW_NEEDED_BY_HELP)
@click.option("--area", help="A rough area (a street, not an address).")
@pod_options
@json_option
def request_update(pod: Target, request_ref: str, title: str | None, category: str | None,
                   urgency: str | None, details: str | None, needed_by: str | None,
                   area: str | None, as_json: bool) -> None:  # fmt: skip
    """Change one of this pod's open or accepted needs: only what you give changes.

    Every pod the need was shared with sees the change. A date, once set, can be moved
    but not taken away.

    \b
    Examples:
      podlink request update 3Fq9 --urgency urgent --needed-by today
      podlink request update 3Fq9 --details "two bags, not one"
    """
    changes = changes_given({"title": title, "category": category, "urgency": urgency,
                             "details": details, "needed_by": needed_by, "area": area},
                            None, "--urgency, --details, --needed-by...")  # fmt: skip
    data = pod.call(lambda s: ops.update_request(s, request_ref, changes))
    what = ", ".join(f"{k.replace('_', ' ')} {v!r}" for k, v in data["changed"].items())
    _done(as_json, data, f"Changed need {short(data['request'])}: {what}.")


@request.command("list")
@click.option("--status", type=click.Choice(["open", "accepted", "fulfilled", "cancelled"]),
              help="Only requests in this state.")
@click.option("--category", type=CATEGORY, help="Only this category.")
@pod_options
@json_option
def request_list(pod: Target, status: str | None, category: str | None, as_json: bool) -> None:
    """List the needs this pod can see: its own, and those other pods shared with it.

    The table shows open and accepted needs first, most urgent first, then closed ones.

    \b
    Examples:
      podlink request list
      podlink request list --status open --category medicine --json
    """
    data, more = pod.call(lambda s: s.first_page("/v1/requests", status=status,
                                                 category=category))  # fmt: skip
    _cut(data, more, "needs (open and accepted first)", "narrow the list with --status or "
         "--category, or see them all with `podlink export csv requests`")  # fmt: skip
    if as_json:
        print_json(data)
        return
    t = table("ID", "~NEED", "~CATEGORY", "URGENCY", "STATUS", "~POD", "SHARE")
    for r in data:  # the node's order: open and accepted first, most urgent, oldest
        t.add_row(short(r["id"]), r["title"], r["category"], r["urgency"], r["status"],
                  r["pod_name"] or short(r["pod"]), r["share"])  # fmt: skip
    show(t, "No needs to show.")


@request.command("show", context_settings=ID_ARGUMENTS)
@click.argument("request_ref", metavar="REQUEST")
@click.option("--all", "everything", is_flag=True,
              help="Every claim (read page by page) and up to 5,000 steps of history, not "
              "the newest 100 claims and 200 steps.")
@pod_options
@json_option
def request_show(pod: Target, request_ref: str, everything: bool, as_json: bool) -> None:
    """Show one request (any unique id prefix): its claims and its history.

    A need shared with other pods can gather many claims: the newest 100 are shown (and
    the accepted one), with how many more there are; --all shows them all.

    \b
    Examples:
      podlink request show 3Fq9
      podlink request show 3Fq9 --all --json
    """

    async def go(s: PodSession) -> tuple[dict, dict[str, str]]:
        rid = await s.resolve("requests", request_ref)
        if not everything:
            return await s.get(f"/v1/requests/{rid}"), await _names(s)
        r = await s.get(f"/v1/requests/{rid}", claims=0, history=HISTORY_ALL)
        every = await s.get_all("/v1/claims", request=rid)  # pages in store order
        r["claims"] = sorted(every, key=lambda c: (c["ts"], c["id"]))
        return r, await _names(s)

    r, names = pod.call(go)
    if as_json:
        print_json(r)
        return
    for_who = ""
    if r["for_member"]:
        for_who = names.get(r["for_member"], f"a member of {r['pod_name'] or 'another pod'}")
    status = r["status"]
    if status == "cancelled" and r.get("cancel_reason"):
        status += f": {r['cancel_reason']}"
    fields([
        ("need", r["title"]), ("id", r["id"]), ("status", status),
        ("category", r["category"]), ("urgency", r["urgency"]), ("needed by", r["needed_by"]),
        ("pod", r["pod_name"] or r["pod"]), ("for", for_who), ("area", r["area"]),
        ("shared with", LANE_WORDS.get(r["share"], r["share"])),
        ("opened", ago_ts(r["opened_ts"])), ("details", r["details"]),
    ])  # fmt: skip
    if r["claims"]:
        echo()
        t = table("CLAIM", "~FROM", "~BY", "~NOTE", "STATUS", "WHEN", title="Claims")
        for c in r["claims"]:
            by = names.get(c["by_member"], "a member") if c["by_member"] else ""
            note = " · ".join(x for x in (c["note"], c.get("reason") and
                                          f"{c['status']}: {c['reason']}") if x)  # fmt: skip
            t.add_row(short(c["id"]), c["pod_name"] or short(c["pod"]), by, note,
                      c["status"], ago_ts(c["ts"]))  # fmt: skip
        show(t)
    older = r.get("claims_total", len(r["claims"])) - len(r["claims"])
    if older > 0:
        echo(f"{older:,} older claim{'s' if older > 1 else ''} not shown: podlink request "
             f"show {short(r['id'])} --all to see them")  # fmt: skip
    for f in r.get("fulfilments", []):
        hours = f" ({f['hours']:g} h)" if f["hours"] is not None else ""
        echo(f"Fulfilled {ago_ts(f['ts'])}{hours}: {f['note']}".rstrip(": "))
    echo()
    steps = r["history"]
    hidden = r.get("history_total", len(steps)) - len(steps)
    title = "History"
    if hidden > 0:
        title += f" (its opening and the newest {len(steps) - 1:,} of {r['history_total']:,} steps)"
    t = table("WHEN", "WHAT", "~POD", "~BY", "~RESULT", title=title)
    for i, h in enumerate(steps):
        if i == 1 and hidden > 0:
            t.add_row("", f"… {hidden:,} steps", "", "", "")
        result = h["outcome"] + (f": {h['why']}" if h["why"] else "")
        by = ("the pod" if h["author"] == h["pod"] else h.get("author_name")) or short(h["author"])
        t.add_row(ago_ts(h["ts"]), h["kind"], h["pod_name"] or short(h["pod"]), by, result)
    show(t)


@request.command("cancel", context_settings=ID_ARGUMENTS)
@click.argument("request_ref", metavar="REQUEST")
@click.option("--reason", default="", help="Why (seen wherever the request was shared).")
@pod_options
@json_option
def request_cancel(pod: Target, request_ref: str, reason: str, as_json: bool) -> None:
    """Cancel one of this pod's requests: it is no longer needed.

    \b
    Example:
      podlink request cancel 3Fq9 --reason "family helped"
    """
    data = pod.call(lambda s: ops.cancel_request(s, request_ref, reason))
    _done(as_json, data, f"Cancelled request {short(data['request'])}.")


# ---------------------------------------------------------------- claims and fulfilment


@click.command(context_settings=ID_ARGUMENTS)
@click.argument("request_ref", metavar="REQUEST")
@click.option("--by", "by_member", metavar="MEMBER", help="The member who will help.")
@click.option("--note", default="", help="A word for the requesting pod (when, how).")
@pod_options
@json_option
def claim(pod: Target, request_ref: str, by_member: str | None, note: str,
          as_json: bool) -> None:  # fmt: skip
    """Offer to meet a need (this pod's or another pod's); its pod then accepts or declines.

    The claim travels in the lane of the request, so the pod that asked can see it.

    \b
    Example:
      podlink claim 3Fq9 --by Jonny --note "can drive there this afternoon"
    """

    async def go(s: PodSession) -> dict:
        lane = (await s.request(request_ref))["lane"]
        warn_if_personal("claim", lane, note)
        return await ops.make_claim(s, request_ref, by_member, note)

    data = pod.call(go)
    owner = data["request_pod_name"] or "its pod"
    state = ("accepted at once (it is this pod's own request)" if data["status"] == "accepted"
             else f"{owner} will accept or decline it")  # fmt: skip
    _done(as_json, data, f"Claimed request {short(data['request'])} (claim {short(data['id'])});"
          f" {state}.")  # fmt: skip


@click.command(context_settings=ID_ARGUMENTS)
@click.argument("claim_ref", metavar="CLAIM")
@pod_options
@json_option
def accept(pod: Target, claim_ref: str, as_json: bool) -> None:
    """Accept a claim on one of this pod's requests: that helper will do it.

    \b
    Example:
      podlink accept Zk3b
    """
    data = pod.call(lambda s: ops.decide_claim(s, claim_ref, accept=True))
    _done(as_json, data, f"Accepted claim {short(data['claim'])}; request "
          f"{short(data['request'])} is now {data['status']}.")  # fmt: skip


@click.command(context_settings=ID_ARGUMENTS)
@click.argument("claim_ref", metavar="CLAIM")
@click.option("--reason", default="", help="Why (the helper's pod sees it).")
@pod_options
@json_option
def decline(pod: Target, claim_ref: str, reason: str, as_json: bool) -> None:
    """Decline a claim on one of this pod's requests (also one accepted earlier).

    \b
    Example:
      podlink decline Zk3b --reason "already sorted"
    """
    data = pod.call(lambda s: ops.decide_claim(s, claim_ref, accept=False, reason=reason))
    _done(as_json, data, f"Declined claim {short(data['claim'])}; request "
          f"{short(data['request'])} is {data['status']}.")  # fmt: skip


def _finite(ctx: click.Context, param: click.Parameter, value: float | None) -> float | None:
    """Refuse 'nan', which FloatRange lets through (every comparison with it is false)."""
    if value is not None and not math.isfinite(value):
        error = click.ClickException(f"Invalid value for '{param.opts[0]}': {value} is not "
                                     "a number")  # fmt: skip
        error.exit_code = 2  # a usage error, in one line (click's own adds the usage text)
        raise error
    return value


@click.command(context_settings=ID_ARGUMENTS)
@click.argument("request_ref", metavar="REQUEST")
@click.option("--note", default="", help="How it went.")
@click.option("--hours", type=click.FloatRange(0, 1000), callback=_finite,
              help="Time-bank hours, if you keep them.")  # fmt: skip
@pod_options
@json_option
def fulfil(pod: Target, request_ref: str, note: str, hours: float | None, as_json: bool) -> None:
    """Mark one of this pod's requests as met.

    \b
    Example:
      podlink fulfil 3Fq9 --note "delivered, thanks Hilltop" --hours 1.5
    """
    data = pod.call(lambda s: ops.fulfil_request(s, request_ref, note, hours))
    _done(as_json, data, f"Request {short(data['request'])} is fulfilled.")


@click.command()
@pod_options
@json_option
def match(pod: Target, as_json: bool) -> None:
    """Suggest who could meet each open need: members who can, and open offers.

    Most urgent needs first. For this pod's own need: a member, then its own offer, then
    another pod's; for a need another pod shared: this pod's offer, then a member (answer
    it with `podlink claim NEED --by MEMBER`), then other offers. Never the member in
    need, a member who already claimed it, or an offer by a forgotten member.

    \b
    Example:
      podlink match
    """
    data = pod.call(lambda s: s.get("/v1/match"))
    if as_json:
        print_json(data)
        return
    t = table("NEED", "~TITLE", "URGENCY", "~SUGGESTION", "~FROM")
    for m in data:
        t.add_row(short(m["request"]), m["request_title"], m["urgency"],
                  f"{m['match_label']} ({m['via']})",
                  m["match_pod_name"] or ("us" if m["via"] == "member" else ""))  # fmt: skip
    show(t, "No suggestions: no open need has a member or offer of the same category.")
    if data:
        echo("To take one on: podlink claim NEED --by MEMBER")


# ---------------------------------------------------------------- offers


@click.group(cls=OrderedGroup)
def offer() -> None:
    """What members or the pod can give: add, list, withdraw."""


@offer.command("add")
@click.argument("title")
@click.option("--category", required=True, type=CATEGORY,
              help="food, transport, tools, … or a new lowercase word.")
@click.option("--by", "by_member", metavar="MEMBER", help="The member offering (name or id).")
@share_option("offer")
@click.option("--details", default="", help="More words (no personal details if shared).")
@click.option("--availability", default="", help="When, e.g. 'weekday evenings'.")
@pod_options
@json_option
def offer_add(pod: Target, title: str, category: str, by_member: str | None, share: str,
              details: str, availability: str, as_json: bool) -> None:  # fmt: skip
    """Record an offer of help.

    \b
    Example:
      podlink offer add "Rides to appointments" --category transport --by Jonny
    """
    warn_if_personal("offer", share, title, details, availability)
    data = pod.call(lambda s: ops.add_offer(
        s, title, category=category, by=by_member, share=share, details=details,
        availability=availability))  # fmt: skip
    _done(as_json, data, f"Recorded offer {short(data['id'])} {title!r} ({category}), shared "
          f"with {LANE_WORDS[share]}.")  # fmt: skip


@offer.command("list")
@click.option("--status", type=click.Choice(["open", "withdrawn", "all"]), default="open",
              show_default=True)  # fmt: skip
@pod_options
@json_option
def offer_list(pod: Target, status: str, as_json: bool) -> None:
    """List offers this pod can see.

    \b
    Example:
      podlink offer list --status all
    """

    async def go(s: PodSession) -> tuple[tuple[list, bool], dict[str, str]]:
        return await s.first_page("/v1/offers", status=status), await _names(s)

    (data, more), names = pod.call(go)
    _cut(data, more, "offers (oldest first)",
         "see them all with `podlink export csv offers`")
    if as_json:
        print_json(data)
        return
    t = table("ID", "~OFFER", "~CATEGORY", "~BY", "~POD", "SHARE", "STATUS")
    for o in data:
        by = names.get(o["by_member"], "a member") if o["by_member"] else ""
        t.add_row(short(o["id"]), o["title"], o["category"], by, o["pod_name"] or short(o["pod"]),
                  o["share"], o["status"])  # fmt: skip
    show(t, "No offers to show.")


@offer.command("withdraw", context_settings=ID_ARGUMENTS)
@click.argument("offer_ref", metavar="OFFER")
@click.option("--reason", default="", help="Why.")
@pod_options
@json_option
def offer_withdraw(pod: Target, offer_ref: str, reason: str, as_json: bool) -> None:
    """Withdraw one of this pod's offers.

    \b
    Example:
      podlink offer withdraw 9xQa
    """
    data = pod.call(lambda s: ops.withdraw_offer(s, offer_ref, reason))
    _done(as_json, data, f"Withdrew offer {short(data['offer'])}.")


# ---------------------------------------------------------------- resources


@click.group(cls=OrderedGroup)
def resource() -> None:
    """The resource directory: food banks, clinics, tool libraries, shared between pods:
    add, list, withdraw."""


@resource.command("add")
@click.argument("name")
@click.option("--category", required=True, type=CATEGORY, help="What kind of help it gives.")
@click.option("--what", default="", help="What it offers.")
@click.option("--where", default="", help="Its address or area (it is a public place).")
@click.option("--when", default="", help="Opening times.")
@click.option("--contact", default="", help="Its public phone, e-mail or website.")
@share_option("resource")
@pod_options
@json_option
def resource_add(pod: Target, name: str, category: str, what: str, where: str, when: str,
                 contact: str, share: str, as_json: bool) -> None:  # fmt: skip
    """Add a place or service to the resource directory.

    \b
    Example:
      podlink resource add "Eastside Food Bank" --category food --where "12 Mill Rd" \\
          --when "Tue & Fri 10-14" --share network
    """
    data = pod.call(lambda s: ops.add_resource(
        s, name, category=category, what=what, where=where, when=when, contact=contact,
        share=share))  # fmt: skip
    _done(as_json, data, f"Added {name!r} ({category}) to the directory, shared with "
          f"{LANE_WORDS[share]}.")  # fmt: skip


@resource.command("list")
@click.option("--category", type=CATEGORY, help="Only this category.")
@pod_options
@json_option
def resource_list(pod: Target, category: str | None, as_json: bool) -> None:
    """List the resource directory this pod can see.

    \b
    Example:
      podlink resource list --category food
    """
    data, more = pod.call(lambda s: s.first_page("/v1/resources", category=category))
    _cut(data, more, "entries (by category and name)", "narrow the list with --category")
    if as_json:
        print_json(data)
        return
    t = table("ID", "~NAME", "~CATEGORY", "~WHERE", "~WHEN", "~CONTACT", "~POD")
    for r in data:
        t.add_row(short(r["id"]), r["name"], r["category"], r["where"], r["when"], r["contact"],
                  r["pod_name"] or short(r["pod"]))  # fmt: skip
    show(t, "The directory is empty: `podlink resource add NAME --category food`.")


@resource.command("withdraw", context_settings=ID_ARGUMENTS)
@click.argument("resource_ref", metavar="RESOURCE")
@click.option("--reason", default="", help="Why (closed, moved...); seen where it was shared.")
@pod_options
@json_option
def resource_withdraw(pod: Target, resource_ref: str, reason: str, as_json: bool) -> None:
    """Take one of this pod's entries out of the resource directory (it closed, it moved).

    Pods running a podlink from before this command keep showing the entry.

    \b
    Example:
      podlink resource withdraw 4Rt7 --reason "closed for good"
    """
    data = pod.call(lambda s: ops.withdraw_resource(s, resource_ref, reason))
    _done(as_json, data, f"Withdrew {data['name']!r} ({short(data['resource'])}) from the "
          "directory.")  # fmt: skip
