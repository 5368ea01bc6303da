"""Time-bank hours: who gave how much help, to whom, from the hours `podlink fulfil --hours`
recorded (DOMAIN.md: "some networks keep time-bank hours; many prefer not to keep score";
time banks "asked for hours that count across banks ... without sharing personal data").

This pod's members are named; another pod's members are not (their ids mean nothing
here, and stay so): hours across pods are counted pod by pod.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import click

from podlink.cli.output import echo, print_json, show, table
from podlink.cli.session import PodSession, Target, json_option, pod_options


def tally(rows: list[dict[str, Any]], ours: str, names: dict[str, str]) -> dict[str, Any]:
    """The hours of ``rows`` (GET /v1/hours) as this pod sees them: given and received by
    its members (here: for this pod's own needs; elsewhere: across pods), and by pod."""
    given: dict[str | None, dict[str, float]] = defaultdict(lambda: {"here": 0.0, "away": 0.0})
    received: dict[str | None, dict[str, float]] = defaultdict(lambda: {"here": 0.0, "away": 0.0})
    pods: dict[str, dict[str, Any]] = {}
    for r in rows:
        # No accepted claim: the pod that asked met the need itself.
        hours, asked, helped = r["hours"], r["pod"], r["helper_pod"] or r["pod"]
        if helped == ours:
            given[r["by_member"]]["here" if asked == ours else "away"] += hours
        if asked == ours:
            received[r["for_member"]]["here" if helped == ours else "away"] += hours
        other, name = (helped, r["helper_pod_name"]) if asked == ours else (asked, r["pod_name"])
        if other and other != ours and ours in (asked, helped):
            entry = pods.setdefault(other, {"pod": other, "name": name, "to_us": 0.0,
                                            "from_us": 0.0})  # fmt: skip
            entry["to_us" if asked == ours else "from_us"] += hours

    def people(found: dict[str | None, dict[str, float]]) -> list[dict[str, Any]]:
        return sorted(
            ({"member": m, "name": names.get(m, "(a member no longer here)") if m else
              "(the pod, no member named)", **v, "hours": v["here"] + v["away"]}
             for m, v in found.items()),
            key=lambda p: (-p["hours"], p["name"]))  # fmt: skip

    total = sum(r["hours"] for r in rows if ours in (r["pod"], r["helper_pod"]))
    return {"given": people(given), "received": people(received),
            "pods": sorted(pods.values(), key=lambda p: (p["name"], p["pod"])),
            "total": total}  # fmt: skip


@click.command()
@pod_options
@json_option
def hours(pod: Target, as_json: bool) -> None:
    """Time-bank hours: what this pod's members gave and received, and between pods.

    Counts the hours recorded with `podlink fulfil --hours` (help fulfilled without hours
    counts for nothing here). Other pods' members are never named: hours with another
    pod are counted by pod.

    \b
    Example:
      podlink hours
    """

    async def go(s: PodSession) -> dict[str, Any]:
        members = {m["id"]: m["name"] for m in await s.get("/v1/members", all="1")}
        return tally(await s.get("/v1/hours"), await s.pod(), members)

    data = pod.call(go)
    if as_json:
        print_json(data)
        return
    if not data["total"]:
        echo("No hours recorded yet (`podlink fulfil REQUEST --hours H` records them).")
        return
    for key, title, here, away in (("given", "Given by this pod's members", "FOR US",
                                    "FOR OTHER PODS"),
                                   ("received", "Received by this pod's members", "FROM US",
                                    "FROM OTHER PODS")):  # fmt: skip
        if data[key]:
            t = table("~MEMBER", ">HOURS", f">{here}", f">{away}", title=title)
            for p in data[key]:
                t.add_row(p["name"], f"{p['hours']:g}", f"{p['here']:g}", f"{p['away']:g}")
            show(t)
    if data["pods"]:
        t = table("~POD", ">THEY GAVE US", ">WE GAVE THEM", title="Between pods")
        for p in data["pods"]:
            t.add_row(p["name"] or p["pod"][:8], f"{p['to_us']:g}", f"{p['from_us']:g}")
        show(t)
    echo(f"In all: {data['total']:g} hours.")
