"""An organizer's week, as /work/shared/DOMAIN.md tells it, played through the CLI only:
members with contact preferences, needs (urgent, with a needed-by date), `match`, claims
for a member, accept and decline between pods, fulfilment with hours, a need shared with
nearby pods, backup and restore. Real nodes on 127.0.0.1 (tests/cli/conftest.py). Each
test's docstring tells the bug it found (fixed since: the test holds the fix)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.cli.conftest import Network, Pod, eventually, make_pod, run


def seen_on(pod: Pod, request_id: str) -> dict[str, Any] | None:
    """The request as ``pod`` shows it (``request show --json``), once it has arrived."""
    found = [r for r in pod.json("request", "list") if r["id"] == request_id]
    return pod.json("request", "show", request_id) if found else None


def claim_status(pod: Pod, request_id: str, claim_id: str) -> str | None:
    shown = seen_on(pod, request_id)
    claims = {c["id"]: c["status"] for c in (shown or {}).get("claims", [])}
    return claims.get(claim_id)


# ---------------------------------------------------------------- reasons given to other pods


def test_a_decline_reason_reaches_the_helpers_pod(network: Network) -> None:
    """`podlink decline --help`: "--reason TEXT  Why (the helper's pod sees it)".

    Maple Street shares a need, Riverside claims it, Maple declines with a reason. Riverside
    sees the claim declined, but the reason is nowhere: not in `request show` (table or
    --json), not in `log`, not in any export. The read model drops it: the `claims` table
    (ledger/schema.py) has no reason column, ledger/state.py never keeps ClaimDeclined.reason
    and queries.list_claims has nothing to return. The helper's pod only learns "declined"."""
    maple, riverside = network.maple, network.riverside
    riverside("member", "add", "Walkthrough Rosa", "--can", "childcare")
    rid = maple.json("request", "add", "Nappies size 4 (walkthrough)", "--category",
                     "childcare", "--share", "network")["id"]  # fmt: skip
    eventually(lambda: seen_on(riverside, rid))
    claim = riverside.json("claim", rid, "--by", "Walkthrough Rosa", "--note", "have a pack")
    eventually(lambda: claim_status(maple, rid, claim["id"]) == "pending")
    maple("decline", claim["id"], "--reason", "a neighbour brought some already")
    eventually(lambda: claim_status(riverside, rid, claim["id"]) == "declined")

    shown = (
        riverside("request", "show", rid).stdout
        + riverside("request", "show", rid, "--json").stdout
    )
    assert "a neighbour brought some already" in shown, shown


def test_a_cancel_reason_is_seen_wherever_the_need_was_shared(network: Network) -> None:
    """`podlink request cancel --help`: "--reason TEXT  Why (seen wherever the request was
    shared)". A need shared with the network and cancelled with a reason: the pods it was
    shared with see it cancelled, and the reason on none of them (nor on the pod itself):
    RequestCancelled.reason is dropped by the read model (ledger/state.py keeps only the
    state change; no column of `requests` holds it), so `request show` cannot show it."""
    maple, riverside = network.maple, network.riverside
    rid = maple.json("request", "add", "Ride to the market (walkthrough)", "--category",
                     "transport", "--share", "network")["id"]  # fmt: skip
    eventually(lambda: seen_on(riverside, rid))
    maple("request", "cancel", rid, "--reason", "her son came to visit")
    eventually(lambda: (seen_on(riverside, rid) or {}).get("status") == "cancelled")

    for pod in (maple, riverside):
        shown = pod("request", "show", rid).stdout + pod("request", "show", rid, "--json").stdout
        assert "her son came to visit" in shown, (pod.name, shown)


# ---------------------------------------------------------------- claims must not double up


def test_the_same_helper_cannot_claim_the_same_need_twice(network: Network) -> None:
    """DOMAIN.md: "a claim must not silently double up". Riverside claims Maple Street's
    shared need with its member Sid; `podlink match` on Riverside still suggests Sid for
    it, and the organizer who follows it claims again: a second pending claim by the same
    member of the same pod, recorded silently, exit 0 ("Maple Street will accept or decline
    it"). Maple now sees two claims from one helper. ops.make_claim (cli/ops.py) only
    refuses fulfilled and cancelled requests; it never looks at the claims already there.

    Fix: in make_claim, refuse (exit 1, "Sid already offered to help with this: claim
    3Fq9abcd, pending") a claim by a pod+member that already has a pending or accepted claim
    on the request, as `accept` refuses an already-accepted claim."""
    maple, riverside = network.maple, network.riverside
    riverside("member", "add", "Walkthrough Sid", "--can", "utilities")
    rid = maple.json("request", "add", "Firewood (walkthrough)", "--category", "utilities",
                     "--share", "network")["id"]  # fmt: skip
    eventually(lambda: seen_on(riverside, rid))
    first = riverside.json("claim", rid, "--by", "Walkthrough Sid")
    assert first["status"] == "pending"

    second = riverside("claim", rid, "--by", "walkthrough sid", code=None)
    doubled = [c for c in riverside.json("request", "show", rid)["claims"]
               if c["status"] == "pending"]  # fmt: skip
    assert second.exit_code != 0 or "already" in second.stderr, second.output
    assert len(doubled) == 1, doubled


def test_match_stops_suggesting_a_helper_who_already_claimed_the_need(network: Network) -> None:
    """`podlink match` "Suggest who could meet each open need". After Riverside's Kai claims
    Maple Street's shared need (pending: Maple has not answered yet), Riverside's `match`
    still suggests Kai for that very need, with the hint "To take one on: podlink claim NEED
    --by MEMBER" — which records a second claim (see the test above). queries.suggest_matches
    (ledger/queries.py) pairs every open need with every member who can, and never looks at
    the claims the need already has from this pod.

    Fix: leave out (or mark "claimed") a (need, member) pair when this pod already has a
    pending or accepted claim on the need by that member."""
    maple, riverside = network.maple, network.riverside
    riverside("member", "add", "Walkthrough Kai", "--can", "companionship")
    rid = maple.json("request", "add", "Someone to talk to (walkthrough)", "--category",
                     "companionship", "--share", "network")["id"]  # fmt: skip
    eventually(lambda: seen_on(riverside, rid))
    kai = next(m["id"] for m in riverside.json("member", "list")
               if m["name"] == "Walkthrough Kai")  # fmt: skip
    assert (rid, kai) in {(m["request"], m["match"]) for m in riverside.json("match")}

    riverside("claim", rid, "--by", "Walkthrough Kai")
    suggested = {(m["request"], m["match"]) for m in riverside.json("match")}
    assert (rid, kai) not in suggested


def test_claiming_our_own_accepted_need_is_refused(network: Network) -> None:
    """Maple Street's own need is taken by Jo (a claim on our own need is "accepted at once",
    docs/cli.md). The organizer then claims it for Bea as well: exit 0 and "Claimed request
    …; Maple Street will accept or decline it." But Maple Street is this pod, and `accept` of
    that claim is refused ("this request already has an accepted claim …; decline it first").
    The claim is silently a second helper on the need, and the output points the organizer to
    a step that cannot be taken. cli/aid.py claim() picks the message from the claim's status
    alone (accepted -> "accepted at once", else "<owner> will accept or decline it").

    Fix: in ops.make_claim, for this pod's own request that is already accepted, refuse (or
    warn) naming the accepted claim and its helper ("Jo is already on it (claim 3Fq9abcd);
    `podlink decline 3Fq9abcd` first")."""
    maple = network.maple
    maple("member", "add", "Walkthrough Jo", "--can", "repairs")
    maple("member", "add", "Walkthrough Bea", "--can", "repairs")
    rid = maple.json("request", "add", "Fix a leaking tap (walkthrough)", "--category",
                     "repairs", "--urgency", "high", "--needed-by", "tomorrow")["id"]  # fmt: skip
    assert maple.json("claim", rid, "--by", "Walkthrough Jo")["status"] == "accepted"

    second = maple("claim", rid, "--by", "Walkthrough Bea", code=None)
    assert "will accept or decline it" not in second.output, second.output
    assert second.exit_code != 0 or "already" in second.stderr, second.output


# ---------------------------------------------------------------- pinned: the week that works


def test_a_shared_need_is_answered_and_its_hours_reach_the_helping_pod(network: Network) -> None:
    """PASSES. A need for a member, shared with the network, with a needed-by weekday: the
    helping pod sees the date resolved, never the member's name; its claim is accepted and
    the need fulfilled with hours, and the hours and note reach the helper's pod."""
    maple, riverside = network.maple, network.riverside
    maple("member", "add", "Walkthrough Agnieszka", "--contact", "555 0134", "--prefers",
          "phone", "--needs", "transport")  # fmt: skip
    riverside("member", "add", "Walkthrough Driver", "--can", "transport")
    made = maple.json("request", "add", "Ride to the clinic (walkthrough)", "--category",
                      "transport", "--urgency", "high", "--for", "Walkthrough Agnieszka",
                      "--needed-by", "friday", "--share", "network")  # fmt: skip
    rid = made["id"]
    assert len(made["needed_by"]) == 10  # an ISO date, the next Friday
    eventually(lambda: seen_on(riverside, rid))
    there = riverside("request", "show", rid).stdout
    assert made["needed_by"] in there and "a member of Maple Street" in there
    assert "Agnieszka" not in there and "555 0134" not in there

    claim = riverside.json("claim", rid, "--by", "Walkthrough Driver", "--note", "Fri 9:00")
    eventually(lambda: claim_status(maple, rid, claim["id"]) == "pending")
    maple("accept", claim["id"][:8])
    maple("fulfil", rid[:8], "--hours", "1.5", "--note", "thanks Riverside")
    eventually(lambda: (seen_on(riverside, rid) or {}).get("status") == "fulfilled")
    shown = riverside.json("request", "show", rid)
    assert [(c["id"], c["status"]) for c in shown["claims"]] == [(claim["id"], "accepted")]
    assert [(f["hours"], f["note"]) for f in shown["fulfilments"]] == [(1.5, "thanks Riverside")]
    assert "(1.5 h): thanks Riverside" in riverside("request", "show", rid).stdout


def test_forgetting_a_member_withdraws_their_offer_on_the_other_pods(network: Network) -> None:
    """PASSES. `member forget`: "offers made in their name are withdrawn" — also where the
    offer was shared, so nearby pods stop seeing (and matching) it."""
    maple, riverside = network.maple, network.riverside
    maple("member", "add", "Walkthrough Leaver", "--can", "translation")
    offer = maple.json(
        "offer",
        "add",
        "Polish lessons (walkthrough)",
        "--category",
        "translation",
        "--by",
        "Walkthrough Leaver",
        "--share",
        "network",
    )
    eventually(lambda: offer["id"] in {o["id"] for o in riverside.json("offer", "list")})
    gone = maple.json("member", "forget", "walkthrough leaver", "--yes")
    assert gone["withdrawn_offers"] == [offer["id"]]
    eventually(lambda: offer["id"] not in {o["id"] for o in riverside.json("offer", "list")})
    assert offer["id"] not in {m["match"] for m in riverside.json("match")}


# ---------------------------------------------------------------- the paper side


def test_the_contact_sheet_lists_urgent_needs_first(network: Network) -> None:
    """`podlink export sheet`: "the phone tree, members, open needs" on paper, for when the
    internet is down (DOMAIN.md: "when a crisis hits, the network must already know who is
    vulnerable"). `request list` and `export csv requests` show the most urgent need first;
    the sheet lists open needs in the order they were stored, so an urgent need written
    today sits under every older low-urgency one: "Insulin today (urgent)" prints last.

    Cause: cli/export.py export_sheet reads the needs with get_all (pages by store position,
    node/client.py) and, unlike _rows for the CSV, never sorts them again; before b868464 it
    read GET /v1/requests, which the node sorts. Fix: sort them as _rows does (urgency
    rank, then opened_ts, then id) before render_sheet."""
    lonely = network.lonely
    lonely("request", "add", "Seed swap, whenever (walkthrough)", "--category", "food",
           "--urgency", "low")  # fmt: skip
    lonely("request", "add", "Insulin today (walkthrough)", "--category", "medicine",
           "--urgency", "urgent", "--needed-by", "today")  # fmt: skip
    listed = [r["title"] for r in lonely.json("request", "list", "--status", "open")]
    assert listed.index("Insulin today (walkthrough)") < listed.index(
        "Seed swap, whenever (walkthrough)"
    )  # the table: most urgent first

    sheet = lonely("export", "sheet").stdout
    needs = sheet[sheet.index("Open needs") :]
    assert needs.index("Insulin today (walkthrough)") < needs.index(
        "Seed swap, whenever (walkthrough)"
    ), needs


# ---------------------------------------------------------------- backup and restore


def test_restore_names_the_serve_and_sync_commands_with_the_pods_home(tmp_path: Path) -> None:
    """docs/cli.md: commands "name the command that starts" the node. After `podlink restore
    FILE --home DIR`, the last line says "Start the node with `podlink serve`" — without
    --home, so an organizer who copies it starts the pod in the default folder (another
    pod, or "no podlink pod in ~/.local/share/podlink"). `podlink init` and the "node is not
    running" errors add `--home DIR` when it is not the default (cli/pods.py init and
    cli/session.py Target.call); cli/pods.py _restore does not.

    Fix: pass the home to _restore and end with f"`podlink serve{home}`, then `podlink
    sync{home}`" (docs/operations.md asks for a sync before recording anything new)."""
    pod = make_pod(tmp_path, "Restored Street")
    run("backup", str(tmp_path / "monday.db"), home=pod.home)
    out = run("restore", str(tmp_path / "monday.db"), home=pod.home).output
    serve_line = next(line for line in out.splitlines() if "podlink serve" in line)
    assert f"--home {pod.home}" in serve_line, out
    # docs/operations.md, "Backup and restore": serve, "then, before recording anything
    # new: podlink sync" (security.md: writing before the repair forks the feed).
    assert "podlink sync" in out, out
