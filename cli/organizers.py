"""Who may act for the pod: the roster of organizers, and a new organizer's laptop.

Coordination rotates and a pod must outlive its founders (../shared/DOMAIN.md): any
organizer adds a co-organizer's key and removes one that retired or was lost. Each is a
signed roster event in the ``network`` lane: every pod must know which keys speak for
this one, so an organizer's name and key travel as far as the pod's directory entry.

A new organizer's key is made on their own laptop (`organizer setup`), never on someone
else's: nobody but them ever holds it.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import sys
import unicodedata
from pathlib import Path
from typing import Any

import click

from podlink.cli.output import ago_ts, echo, print_json, short, show, table, warn
from podlink.cli.session import (
    ID_ARGUMENTS,
    ID_TEXT,
    OrderedGroup,
    PodSession,
    Target,
    check_body,
    home_option,
    json_option,
    one_line,
    pod_options,
    run_sync,
    same_name,
)
from podlink.node.client import NodeClient
from podlink.node.config import (
    CONFIG_FILE,
    NODE_KEY_FILE,
    ORGANIZER_KEY_FILE,
    Config,
    ConfigError,
    load_config,
    save_config,
)
from podlink.protocol import kinds
from podlink.protocol.errors import ProtocolError
from podlink.protocol.keys import KeyFileError, Keypair, load_keypair, save_keypair
from podlink.protocol.text import b64d

KEY_TEXT = re.compile(r"^[A-Za-z0-9_-]{43}$")
WHOLE_KEY = ("the whole key: 43 characters, printed by `podlink organizer setup` on the new "
             "organizer's laptop (or `podlink organizer key` there)")  # fmt: skip


@click.group(cls=OrderedGroup)
def organizer() -> None:
    """Who may act for the pod: list, add and remove organizers; set up a new one's laptop.

    Organizers' names and keys are shared with every pod in the network: other pods must
    know which keys speak for this one. Members' details never are.
    """


async def _roster(s: PodSession) -> list[dict[str, Any]]:
    """Every tenure on this pod's roster, oldest first (the node pages them by key)."""
    return sorted(await s.get_all("/v1/roster"), key=lambda r: r["from_ts"])


@organizer.command("list")
@click.option("--all", "show_all", is_flag=True, help="Also past organizers (removed).")
@pod_options
@json_option
def organizer_list(pod: Target, show_all: bool, as_json: bool) -> None:
    """List the pod's organizers: name, key, since when; "you" marks this folder's key.

    \b
    Example:
      podlink organizer list
    """

    async def go(s: PodSession) -> tuple[tuple[list[dict[str, Any]], bool], str]:
        return await s.first_page("/v1/roster"), s.client.keypair.public_text

    (rows, more), mine = pod.call(go)
    if more:  # never cut silently
        warn(f"showing the first {len(rows):,} tenures (oldest first), past ones among them")
    if not show_all:
        rows = [r for r in rows if r["active"]]
    if as_json:
        print_json(rows)
        return
    t = table("~NAME", "KEY", "SINCE", *(["UNTIL"] if show_all else []), "")
    for r in rows:
        until = [ago_ts(r["until_ts"]) if r["until_ts"] is not None else ""] if show_all else []
        t.add_row(r["name"] or "(no name)", short(r["key"]), ago_ts(r["from_ts"]), *until,
                  "you" if r["key"] == mine and r["active"] else "")  # fmt: skip
    show(t, "No organizers: only the pod's node key can act for it (see docs/operations.md).")


@organizer.command("add", context_settings=ID_ARGUMENTS)
@click.argument("name")
@click.option(
    "--key",
    "key_text",
    required=True,
    metavar="KEY",
    help="The new organizer's key, from `podlink organizer setup` on their laptop.",
)
@pod_options
@json_option
def organizer_add(pod: Target, name: str, key_text: str, as_json: bool) -> None:
    """Make NAME, whose laptop holds KEY, an organizer of the pod.

    They can then do everything you can: record members, needs and help, peer with
    pods, add and remove organizers. Their name and key are shared with every pod in
    the network. In the pod's own folder, if its organizer.key was lost, or signed two
    histories (`podlink log --forks`), the pod's node key signs instead (so a pod whose
    only organizer lost their key, or forked it restoring a backup, gets a new one).

    \b
    Example:
      podlink organizer add "Jonny" --key 9hD0vXc2...   # KEY from Jonny's laptop
    """
    name = unicodedata.normalize("NFC", name.strip())
    key_text = key_text.strip()
    if not name:
        raise click.ClickException("give the new organizer's name, as the pod calls them")
    if not KEY_TEXT.match(key_text):
        raise click.ClickException(f"--key must be {WHOLE_KEY}")
    try:
        key = b64d(key_text, length=32, what="--key")
    except ProtocolError:  # 43 characters, but not a key (a typo in the last one)
        raise click.ClickException(f"--key is not a key; it must be {WHOLE_KEY}") from None
    body = kinds.OrganizerAdded(key=key, name=name)
    check_body(body)

    async def go(s: PodSession) -> dict[str, Any]:
        if key_text == await s.pod():
            raise click.ClickException("that is the pod's own key (its node's): it can always "
                                       "act for the pod; give the new organizer's key")  # fmt: skip
        held = next((r for r in await _roster(s) if r["key"] == key_text and r["active"]), None)
        if held is not None:
            raise click.ClickException(
                f"that key is an organizer already, as {held['name'] or 'an unnamed one'!r}"
            )
        event = await s.write(body, "network")
        return {"id": event, "kind": "roster.add", "lane": "network", "key": key_text,
                "name": name}  # fmt: skip

    async def forked(s: PodSession) -> bool:
        me = s.client.keypair.public_text
        mine = await s.get_all("/v1/forks", author=me)
        return any(f["lane"] == "network" for f in mine)

    # The node key signs in the pod's own folder when organizer.key is lost, or is a key
    # that signed two histories in the network lane (a restore written on before it
    # synced): the pods holding the other history refuse what it signs next there, so a
    # roster.add it signed would never reach them, nor anything of the organizer it adds.
    lost = not (pod.home / ORGANIZER_KEY_FILE).exists() and (pod.home / NODE_KEY_FILE).exists()
    use_pod_key = lost or pod.call(forked)
    if use_pod_key and not (pod.home / NODE_KEY_FILE).exists():
        raise click.ClickException(
            "this folder's organizer key signed two histories (`podlink log --forks`): the "
            "pods holding the other refuse what it signs next. Add the new key from another "
            "organizer's folder, or from the pod's own folder (it signs with the node key)")
    data = pod.call(go, pod_key=use_pod_key)
    if use_pod_key and not lost:
        warn("this folder's organizer key is forked (`podlink log --forks`): the pod's node "
             "key signed the addition instead; remove the forked key once the new one works")
    if as_json:
        print_json(data)
        return
    echo(f"{name} ({short(key_text)}) is now an organizer of the pod. On their laptop, "
         "`podlink status` works from now on.")  # fmt: skip


@organizer.command("remove", context_settings=ID_ARGUMENTS)
@click.argument("who")
@click.option("--reason", default="", help="Why (retired, lost laptop...); shared with the "
              "network, so keep it short and impersonal.")  # fmt: skip
@click.option("--yes", is_flag=True, help="Remove your own key without asking.")
@pod_options
@json_option
def organizer_remove(pod: Target, who: str, reason: str, yes: bool, as_json: bool) -> None:
    """Stop WHO (a name or a key prefix) from acting for the pod.

    What they signed before stays valid; anything their key signs later is kept but
    never applied. A lost laptop's key should be removed at once. The last organizer
    cannot be removed: add another first.

    \b
    Example:
      podlink organizer remove Jonny --reason "lost laptop"
    """
    body_check = kinds.OrganizerRemoved(key=bytes(32), reason=reason.strip())
    check_body(body_check)

    async def go(s: PodSession) -> dict[str, Any]:
        active = [r for r in await _roster(s) if r["active"]]
        found = _one(active, who.strip())
        if len({r["key"] for r in active}) == 1:
            raise click.ClickException(
                f"{found['name'] or short(found['key'])} is the pod's only organizer: add "
                "another first (`podlink organizer add`), or nobody could act for the pod "
                "but its node's key")  # fmt: skip
        if found["key"] == s.client.keypair.public_text and not yes:
            question = ("That is your own key: this folder could no longer act for the pod. "
                        "Remove it?")  # fmt: skip
            if not sys.stdin.isatty():
                raise click.ClickException(
                    "that is your own key: this folder could no longer act for the pod; "
                    "add --yes to remove it anyway")  # fmt: skip
            click.confirm(question, abort=True, err=True)
        body = kinds.OrganizerRemoved(key=b64d(found["key"], length=32), reason=reason.strip())
        event = await s.write(body, "network")
        return {"id": event, "kind": "roster.remove", "lane": "network", "key": found["key"],
                "name": found["name"], "reason": reason.strip()}  # fmt: skip

    data = pod.call(go)
    if as_json:
        print_json(data)
        return
    echo(f"{data['name'] or 'The organizer'} ({short(data['key'])}) can no longer act for "
         "the pod. What they recorded before stays.")  # fmt: skip


def _one(active: list[dict[str, Any]], who: str) -> dict[str, Any]:
    """The active organizer called ``who``, or whose key starts with it."""
    if not who:  # "" would match every organizer added without a name
        raise click.ClickException("say whom: an organizer's name or the start of their key "
                                   "(see `podlink organizer list`)")  # fmt: skip
    named = [r for r in active if same_name(r["name"], who)]
    if not named and ID_TEXT.match(who):
        named = [r for r in active if r["key"].startswith(who)]
    keys = {r["key"] for r in named}
    if not keys:
        raise click.ClickException(
            f"no organizer called {one_line(who)!r}, nor one whose key starts with it "
            "(see `podlink organizer list`)")  # fmt: skip
    if len(keys) > 1:
        raise click.ClickException(
            f"{len(keys)} organizers match {one_line(who)!r}; use a longer key: "
            + ", ".join(short(k) for k in sorted(keys)))  # fmt: skip
    return named[0]


@organizer.command("key")
@home_option
@json_option
def organizer_key(pod: Target, as_json: bool) -> None:
    """Show the organizer key this folder signs with (to be added by another organizer).

    \b
    Example:
      podlink organizer key
    """
    config = pod.config()
    try:
        key = load_keypair(config.organizer_key_path).public_text
    except KeyFileError as e:
        raise click.ClickException(one_line(str(e))) from None
    if as_json:
        print_json({"key": key})
        return
    echo(key)


@organizer.command("setup")
@click.option(
    "--node",
    "node_url",
    required=True,
    metavar="URL",
    help="The pod's node, as other machines reach it (its `url`: docs/operations.md).",
)
@click.option(
    "--pod",
    "pod_key",
    default="",
    metavar="POD_KEY",
    help="The pod's key, if you have it: setup checks the node is that pod.",
)
@click.option("--name", default="", help="Your name, to put in the command for the "
              "organizer who adds you.")  # fmt: skip
@home_option
@json_option
def organizer_setup(pod: Target, pod_key: str, name: str, as_json: bool) -> None:
    """Set up this laptop for a new organizer of the pod whose node runs at URL.

    Makes --home with your own organizer key (it never leaves this folder) and the
    node's address, and prints the command an organizer of the pod runs to add you.
    No node runs here: every command talks to the pod's node.

    \b
    Example:
      podlink organizer setup --node http://192.168.1.20:7654 --name Jonny
    """
    if (pod.home / CONFIG_FILE).exists():
        raise click.ClickException(f"{pod.home} holds a pod's folder already; use another "
                                   "--home")  # fmt: skip
    url = pod.url(Config(home=pod.home))  # --node (home_option hands it to the Target)
    if pod_key and not KEY_TEXT.match(pod_key.strip()):
        raise click.ClickException("--pod must be the pod's whole key: 43 characters, shown "
                                   "as 'pod' by `podlink status --json` on its node")  # fmt: skip
    keypair = Keypair.generate()

    async def ask() -> dict[str, Any]:
        async with NodeClient(url, keypair) as client:
            return await client.info()

    info = run_sync(ask())
    if pod_key and info["pod"] != pod_key.strip():
        raise click.ClickException(
            f"the node at {url} is the pod {short(info['pod'])}, not {short(pod_key.strip())}: "
            "check the URL and the key with the pod's host")  # fmt: skip
    config = Config(home=pod.home, name=info.get("name") or "pod", node=url, pod=info["pod"])
    _make_folder(config, keypair)
    home = pod.home_words()
    add = _add_command(name or "YOUR NAME", keypair.public_text)
    if as_json:
        print_json({"home": str(pod.home), "key": keypair.public_text, "pod": info["pod"],
                    "name": config.name, "node": url, "add": add})  # fmt: skip
        return
    echo(f"This folder ({pod.home}) now talks to {config.name!r} (pod {short(info['pod'])}) "
         f"at {url}.")  # fmt: skip
    echo(f"Your organizer key: {keypair.public_text}")
    echo("Ask an organizer of the pod to run:\n")
    echo(f"  {add}\n")
    echo(f"Then, here: podlink status{home}")


def _add_command(name: str, key: str) -> str:
    """The `organizer add` line to hand over (a name starting with '-' is taken as the
    name there: the command lets unknown options through as arguments)."""
    return f"podlink organizer add {shlex.quote(name)} --key {key}"


def _make_folder(config: Config, keypair: Keypair) -> None:
    """Write the folder's key and config, or nothing at all."""
    home = config.home
    new_home = not home.exists()
    created: list[Path] = []
    try:
        home.mkdir(parents=True, exist_ok=True)
        os.chmod(home, 0o700)  # it will hold a key: as `podlink init` leaves a pod's folder
        save_keypair(config.organizer_key_path, keypair)
        created.append(config.organizer_key_path)
        save_config(config)
        created.append(home / CONFIG_FILE)
        load_config(home)  # what every later command will read must read back
    except (OSError, KeyFileError, ConfigError) as e:
        for path in created:
            path.unlink(missing_ok=True)
        if new_home:
            with contextlib.suppress(OSError):
                home.rmdir()
        raise click.ClickException(one_line(str(e))) from None
