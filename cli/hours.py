"""Time-bank hours: who gave how much help, to whom, from the hours `podlink fulfil --hours`
recorded (DOMAIN.md: "some networks keep time-bank hours; many prefer not to keep score";
time banks "asked for hours that count across banks ... without sharing personal data").

This pod's members are named; another pod's members are not (their ids mean nothing
here, and stay so): hours across pods are counted pod by pod.
"""

from __future__ import annotations

from collections import defaultdict
from decimal import Decimal
from typing import Any

import click

from podlink.cli.output import echo, print_json, show, table
from podlink.cli.session import PodSession, Target, json_option, pod_options


def tally(rows: list[dict[str, Any]], ours: str, names: dict[str, str]) -> dict[str, Any]:
    """The hours of ``rows`` (GET /v1/hours) as this pod sees them: given and received by
    its members (here: for this pod's own needs; elsewhere: across pods), and by pod."""
    zero = Decimal(0)
    given: dict[str | None, dict[str, Decimal]] = defaultdict(lambda: {"here": zero, "away": zero})
    received: dict[str | None, dict[str, Decimal]] = defaultdict(
        lambda: {"here": zero, "away": zero})  # fmt: skip
    pods: dict[str, dict[str, Any]] = {}
    count, total = 0, zero
    for r in rows:
        # Summed as the decimals they were typed as (0.1 + 0.2 is 0.3, not 0.30000000000000004).
        hours, asked, helped = Decimal(str(r["hours"])), r["pod"], r["helper_pod"]
        if helped is None:
            if r["accepted_claim"] is not None:
                continue  # its claim never reached this node: who helped is not known here
            helped = asked  # no claim accepted: the pod that asked met the need itself
        if ours not in (asked, helped):
            continue  # other pods' exchange, seen through the network lane
        count, total = count + 1, total + hours
        if helped == ours:
            given[r["by_member"]]["here" if asked == ours else "away"] += hours
        if asked == ours:
            received[r["for_member"]]["here" if helped == ours else "away"] += hours
        other, name = (helped, r["helper_pod_name"]) if asked == ours else (asked, r["pod_name"])
        if other != ours:
            entry = pods.setdefault(other, {"pod": other, "name": name, "to_us": zero,
                                            "from_us": zero})  # fmt: skip
            entry["to_us" if asked == ours else "from_us"] += hours

    def people(found: dict[str | None, dict[str, Decimal]]) -> list[dict[str, Any]]:
        return sorted(
            ({"member": m, "name": names.get(m, "(a member no longer here)") if m else
              "(the pod, no member named)", "hours": float(v["here"] + v["away"]),
              "here": float(v["here"]), "away": float(v["away"])}
             for m, v in found.items()),
            key=lambda p: (-p["hours"], p["name"]))  # fmt: skip

    by_pod = [{**p, "to_us": float(p["to_us"]), "from_us": float(p["from_us"])}
              for p in sorted(pods.values(), key=lambda p: (p["name"], p["pod"]))]  # fmt: skip
    return {"given": people(given), "received": people(received), "pods": by_pod,
            "total": float(total), "fulfilments": count}


def _show(hours: float) -> str:
    """Hours for a table: every digit the sum has (no 1e+06, no 10000.2)."""
    text = f"{Decimal(str(hours)):f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


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
        members = {m["id"]: m["name"] for m in await s.get_all("/v1/members", all="1")}
        return tally(await s.get_all("/v1/hours"), await s.pod(), members)  # every page

    data = pod.call(go)
    if as_json:
        print_json(data)
        return
    if not data["fulfilments"]:
        echo("No hours recorded yet (`podlink fulfil REQUEST --hours H` records them).")
        return
    for key, title, here, away in (("given", "Given by this pod's members", "FOR US",
                                    "FOR OTHER PODS"),
                                   ("received", "Received by this pod's members", "FROM US",
                                    "FROM OTHER PODS")):  # fmt: skip
        if data[key]:
            t = table("~MEMBER", ">HOURS", f">{here}", f">{away}", title=title)
            for p in data[key]:
                t.add_row(p["name"], _show(p["hours"]), _show(p["here"]), _show(p["away"]))
            show(t)
    if data["pods"]:
        t = table("~POD", ">THEY GAVE US", ">WE GAVE THEM", title="Between pods")
        for p in data["pods"]:
            t.add_row(p["name"] or p["pod"][:8], _show(p["to_us"]), _show(p["from_us"]))
        show(t)
    echo(f"In all: {_show(data['total'])} hours.")
