"""The directory of pods: which pods this one knows of, and this pod's own entry in it.

Pods find each other, and people find pods, through each pod's `pod.genesis` and
`pod.info` events in the ``network`` lane (DOMAIN.md: "a directory of pods so people and
other pods can find them"). Everything in an entry is public to the whole network.
"""

from __future__ import annotations

import contextlib
import unicodedata
from typing import Any

import click

from podlink.cli.ops import Refused
from podlink.cli.output import (
    ago_ts,
    echo,
    fields,
    joined,
    print_json,
    short,
    show,
    table,
    warn_if_personal,
)
from podlink.cli.params import CATEGORY, changes_given
from podlink.cli.session import (
    ID_ARGUMENTS,
    OrderedGroup,
    PodSession,
    Target,
    check_body,
    json_option,
    one_line,
    pod_options,
    pods_matching,
)
from podlink.node.config import NODE_KEY_FILE, set_name
from podlink.protocol import kinds

#: Fields of an entry `pod update --clear` can empty (the name cannot be).
CLEARABLE = {"zone": "", "description": "", "categories": [], "contact": ""}


@click.group("pod", cls=OrderedGroup)
def pod_group() -> None:
    """The directory of pods: list the pods this one knows of, show one; update this pod's
    own entry."""


async def _directory(s: PodSession) -> tuple[list[dict[str, Any]], str]:
    """The pods this one knows of, each with its relation to this pod, and this pod's key."""
    pods = await s.get_all("/v1/pods")  # every page: a name is matched among them all
    peers = {p["pod"] for p in await s.get("/v1/peers")}
    ours = await s.pod()
    for p in pods:
        p["relation"] = "this pod" if p["pod"] == ours else "peer" if p["pod"] in peers else (
            "network")  # fmt: skip
    return pods, ours


@pod_group.command("list")
@pod_options
@json_option
def pod_list(pod: Target, as_json: bool) -> None:
    """List the pods this one knows of: this pod, its peers, pods further in the network.

    \b
    Example:
      podlink pod list
    """
    pods, _ = pod.call(_directory)
    order = {"this pod": 0, "peer": 1, "network": 2}
    pods.sort(key=lambda p: (order[p["relation"]], p["name"].casefold(), p["pod"]))
    if as_json:
        print_json(pods)
        return
    t = table("KEY", "~NAME", "~ZONE", "~HELPS WITH", "CONTACT", "WHO")  # a contact whole
    for p in pods:
        t.add_row(short(p["pod"]), p["name"], p["zone"], joined(p["categories"]), p["contact"],
                  p["relation"])  # fmt: skip
    show(t, "No pods known yet.")
    if pods:
        echo("`podlink pod show POD` shows an entry whole, with its description.")


@pod_group.command("show", context_settings=ID_ARGUMENTS)
@click.argument("which", metavar="POD")
@pod_options
@json_option
def pod_show(pod: Target, which: str, as_json: bool) -> None:
    """Show one pod's directory entry whole: a name, or the start of its key.

    \b
    Example:
      podlink pod show Riverside
    """
    pods, _ = pod.call(_directory)
    want = which.strip()
    found = pods_matching(pods, want)
    if len(found) != 1:
        raise click.ClickException(
            f"no pod called {one_line(want)!r}, nor one whose key starts with it (see `podlink "
            "pod list`)" if not found else f"{len(found)} pods match {one_line(want)!r}; use a "
            "longer key: " + ", ".join(short(p["pod"]) for p in found))  # fmt: skip
    entry = found[0]
    if as_json:
        print_json(entry)
        return
    fields([("pod", f"{entry['name']} ({entry['pod']})"), ("who", entry["relation"]),
            ("zone", entry["zone"]), ("helps with", joined(entry["categories"])),
            ("contact", entry["contact"]), ("description", entry["description"]),
            ("since", ago_ts(entry["founded_ts"])),
            ("updated", ago_ts(entry["updated_ts"]))])  # fmt: skip


@pod_group.command("update")
@click.option("--name", help="The pod's name, as neighbours say it.")
@click.option("--zone", help="The street, building or community it covers.")
@click.option("--description", help="A few words on the pod, for other pods and neighbours.")
@click.option("--category", "categories", multiple=True, type=CATEGORY, metavar="CATEGORY",
              help="What the pod helps with (repeat for several; replaces the list).")  # fmt: skip
@click.option("--contact", help="A PUBLIC way to reach the pod: a phone tree number, an "
              "e-mail, a meeting place.")  # fmt: skip
@click.option("--clear", multiple=True, metavar="FIELD", type=click.Choice(sorted(CLEARABLE)),
              help="Empty a field: zone, description, categories or contact.")  # fmt: skip
@pod_options
@json_option
def pod_update(pod: Target, name: str | None, zone: str | None, description: str | None,
               categories: tuple[str, ...], contact: str | None, clear: tuple[str, ...],
               as_json: bool) -> None:  # fmt: skip
    """Change this pod's entry in the directory: only what you give changes.

    Every pod in the network sees the entry (that is what it is for): put no one's
    personal details in it.

    \b
    Example:
      podlink pod update --zone "Maple St & Elm St" --category food --category transport \\
          --contact "phone tree: 555 0100"
    """
    changes: dict[str, Any] = {
        "name": name, "zone": zone, "description": description, "contact": contact,
        "categories": list(categories) or None,
    }  # fmt: skip
    changes = changes_given(changes, clear, "--zone, --contact...")
    if "name" in changes:
        changes["name"] = unicodedata.normalize("NFC", changes["name"])

    async def go(s: PodSession) -> dict[str, Any]:
        pods, ours = await _directory(s)
        entry = next((p for p in pods if p["pod"] == ours), None)
        if entry is None:
            raise Refused("this pod has no directory entry yet (its genesis is missing)")
        fields = {k: entry[k] for k in ("name", "zone", "description", "categories", "contact")}
        new = {**fields, **{k: CLEARABLE[k] for k in clear}, **changes}
        if new == fields:
            raise Refused("nothing to change: the pod's entry says so already")
        body = kinds.PodInfoChanged(**new)
        check_body(body)
        # The contact is public on purpose; the rest should name no one.
        texts = [changes.get(k, "") for k in ("name", "zone", "description")]
        warn_if_personal("directory entry", "network", *texts)
        event = await s.write(body, "network")
        return {"id": event, "kind": "pod.info", "lane": "network", "pod": ours, **new}

    data = pod.call(go)
    if "name" in changes and (pod.home / NODE_KEY_FILE).exists():
        with contextlib.suppress(OSError, ValueError):  # the entry is what counts
            set_name(pod.home, data["name"])  # what `podlink serve` prints as it starts
    if as_json:
        print_json(data)
        return
    echo(f"Updated the directory entry of {data['name']} ({short(data['pod'])}); every pod in "
         "the network will see it.")  # fmt: skip
