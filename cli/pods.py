"""Running a pod: init, serve, status, invites and peers, sync, the log, backup and restore."""

from __future__ import annotations

import os
import re
import socket
import sqlite3
import time
from contextlib import closing
from pathlib import Path
from typing import Any

import click
import yarl

from podlink.cli.output import (
    ago_ms,
    ago_s,
    ago_ts,
    echo,
    fields,
    print_json,
    short,
    show,
    table,
    warn,
    working,
)
from podlink.cli.restore import carry_over, copy_backup, keep_aside, no_trace, read_only
from podlink.cli.session import (
    ID_ARGUMENTS,
    ID_TEXT,
    OrderedGroup,
    Target,
    home_option,
    json_option,
    one_line,
    pod_options,
    run_sync,
)
from podlink.ledger import aside as aside_copies
from podlink.ledger.errors import LedgerError
from podlink.ledger.schema import SCHEMA_VERSION
from podlink.ledger.store import private_file
from podlink.node.config import ConfigError
from podlink.protocol.keys import KeyFileError, Keypair, load_keypair

# ---------------------------------------------------------------- the pod itself


@click.command()
@click.option("--name", required=True, help="The pod's name, as neighbours say it.")
@click.option("--zone", default="", help="The street, building or community it covers.")
@click.option("--listen", default="127.0.0.1:7654", show_default=True, metavar="HOST:PORT",
              help="Where the node listens.")  # fmt: skip
@click.option(
    "--url",
    default="",
    metavar="PUBLIC_URL",
    help="The URL other pods use to reach this node (default: http://HOST:PORT).",
)
@click.option("--organizer", "organizer_name", default="",
              help="Your name on the pod's roster of organizers.")  # fmt: skip
@home_option
@json_option
def init(pod: Target, name: str, zone: str, listen: str, url: str, organizer_name: str,
         as_json: bool) -> None:  # fmt: skip
    """Create a new pod: its keys, its config and its database, in --home.

    \b
    Example:
      podlink init --name "Maple Street" --zone "Maple St & Elm St"
    """
    from podlink.node.home import init_pod

    config = run_sync(init_pod(pod.home, name=name, zone=zone, listen=listen, url=url,
                               organizer_name=organizer_name))  # fmt: skip
    key = load_keypair(config.node_key_path).public_text
    if as_json:
        print_json({"home": str(config.home), "pod": key, "name": config.name,
                    "listen": config.listen, "url": config.public_url})  # fmt: skip
        return
    home = pod.home_words()
    echo(f"Created the pod {config.name!r} (pod {short(key)}) in {config.home}.")
    echo("Next:")
    echo(f"  podlink serve{home}      # start the node, and keep it running")
    echo(f"  podlink member add NAME --contact PHONE{home}")
    echo(f"  podlink request add TITLE --category food{home}")


@click.command()
@home_option
def serve(pod: Target) -> None:
    """Run the pod's node in the foreground until Ctrl-C.

    The node answers this CLI, pulls from peers and lets them pull. Logs go to stderr.

    \b
    Example:
      podlink serve --home ~/maple-street
    """
    from podlink.node.app import run_node

    config = pod.config()
    pod.own_folder(config, "serve")
    echo(f"{_directory_name(config)}: node on http://{config.listen}, peers reach it at "
               f"{config.public_url}; Ctrl-C stops it.", err=True)  # fmt: skip
    try:
        run_node(config)
    except (KeyFileError, ConfigError, LedgerError) as e:  # a newer or damaged database too
        raise click.ClickException(one_line(str(e))) from None
    except OSError as e:
        why = os.strerror(e.errno).lower() if e.errno else one_line(str(e))
        raise click.ClickException(
            f"cannot listen on {config.listen} ({why}); is the node already running? "
            "(or change listen in config.toml, or set PODLINK_LISTEN)"
        ) from None


def _directory_name(config: Any) -> str:
    """The pod's name as its directory entry says (an organizer may have renamed it from
    a laptop: `podlink pod update`), read from the ledger; config.toml's name failing that."""
    try:
        pod = load_keypair(config.node_key_path).public
        with no_trace(config.ledger_path), closing(
            sqlite3.connect(read_only(config.ledger_path), uri=True)
        ) as db:
            found = db.execute("SELECT name FROM pods WHERE pod = ?", (pod,)).fetchone()
    except (sqlite3.Error, KeyFileError, OSError):
        return config.name
    return found[0] if found else config.name


@click.command()
@pod_options
@json_option
def status(pod: Target, as_json: bool) -> None:
    """Show the pod: name, key, URL, members, open requests, peers, events.

    \b
    Example:
      podlink status
    """
    data = pod.call(lambda s: s.get("/v1/status"))
    data["home"] = str(pod.home)
    if as_json:
        print_json(data)
        return
    fields([
        ("pod", f"{data['name']} ({short(data['pod'])})"),
        ("zone", data["zone"]),
        ("url", data["url"]),
        ("members", data["members"]),
        ("open needs", data["open_requests"]),
        ("organizers", data["organizers"]),
        ("peers", data["peers"]),
        ("events", f"{data['events']}" + (f" ({data['pending']} waiting for earlier ones)"
                                          if data["pending"] else "")),
        ("version", f"{data['version']} (protocol {data['protocol']})"),
        ("home", data["home"]),
    ])  # fmt: skip
    if data["forks"]:
        warn(f"{data['forks']} fork(s) recorded: a key signed two different events at one "
             "place; see `podlink log --forks` and docs/operations.md")  # fmt: skip


# ---------------------------------------------------------------- peers


@click.command()
@pod_options
@json_option
def invite(pod: Target, as_json: bool) -> None:
    """Make a one-time invite code for a nearby pod to peer with this one.

    \b
    Example:
      podlink invite            # then, on the other pod: podlink peer join CODE
    """
    data = pod.call(lambda s: s.post("/v1/invites"))
    if as_json:
        print_json(data)
        return
    echo(f"Invite code (one use, expires {ago_s(data['expires'])}):\n")
    echo(data["invite"])
    echo("\nOn the other pod's machine run:\n")
    echo(f"  podlink peer join {data['invite']}")


@click.group(cls=OrderedGroup)
def peer() -> None:
    """Pods this pod peers with: join by invite, add by URL and key, list, remove."""


@peer.command("join")
@click.argument("code")
@pod_options
@json_option
def peer_join(pod: Target, code: str, as_json: bool) -> None:
    """Peer with the pod that gave you an invite CODE (from its `podlink invite`).

    \b
    Example:
      podlink peer join podlink1.kGtodHRwOi8v...
    """
    if not code.strip().startswith("podlink1."):
        raise click.ClickException("an invite code starts with 'podlink1.'; copy the whole "
                                   "code from the other pod's `podlink invite`")  # fmt: skip
    data = pod.call(lambda s: s.post("/v1/peers/join", {"invite": code.strip()}))
    if as_json:
        print_json(data)
        return
    echo(f"Peered with {data['name'] or 'a pod'} (pod {short(data['pod'])}) at "
               f"{data['url']}. What they share will arrive within seconds.")  # fmt: skip


@peer.command("add")
@click.argument("url")
@click.option(
    "--key",
    "pod_key",
    required=True,
    metavar="POD_KEY",
    help="The other pod's key (its `podlink status --json` shows it as 'pod').",
)
@click.option("--name", default="", help="What to call that pod until it says its name.")
@pod_options
@json_option
def peer_add(pod: Target, url: str, pod_key: str, name: str, as_json: bool) -> None:
    """Peer with the pod at URL whose key is POD_KEY (both pods must add each other).

    \b
    Example:
      podlink peer add https://riverside.example.org --key 3q2-7wAAh1N...
    """

    if not re.fullmatch(r"https?://\S+", url):
        raise click.ClickException(f"{url!r} is not a URL; it starts with http:// or https://")
    if not re.fullmatch(r"[A-Za-z0-9_-]{43}", pod_key.strip()):
        raise click.ClickException("POD_KEY is the other pod's whole key: 43 characters, "
                                   "shown as 'pod' by its `podlink status --json`")  # fmt: skip

    async def go(s: Any) -> tuple[dict, dict]:
        added = await s.post("/v1/peers", {"url": url, "key": pod_key.strip(), "name": name})
        return added, await s.get("/v1/status")

    data, me = pod.call(go)
    if as_json:
        print_json(data)
        return
    echo(f"Added {data['name'] or 'the pod'} ({short(data['pod'])}) at {data['url']}.")
    echo("They must add you too:")
    echo(f"  podlink peer add {me['url']} --key {me['pod']}")


@peer.command("list")
@pod_options
@json_option
def peer_list(pod: Target, as_json: bool) -> None:
    """List peered pods: whether the link is live, when it last synced, how far behind.

    \b
    Example:
      podlink peer list
    """
    data = pod.call(lambda s: s.get("/v1/peers"))
    if as_json:
        print_json(data)
        return
    t = table("POD", "~NAME", "~URL", "STATUS", "LAST SYNC", ">BEHIND")
    for p in data:
        behind = "" if p["behind"] is None else str(p["behind"])
        t.add_row(short(p["pod"]), p["name"], p["url"], p["status"], ago_s(p["last_sync"]),
                  behind)  # fmt: skip
    show(t, "No peers yet: `podlink invite` makes a code for a nearby pod.")
    for p in data:
        if p["last_error"] and p["status"] != "live":
            warn(f"{p['name'] or short(p['pod'])}: {p['last_error']}")


@peer.command("remove", context_settings=ID_ARGUMENTS)
@click.argument("pod_key", metavar="POD")
@pod_options
@json_option
def peer_remove(pod: Target, pod_key: str, as_json: bool) -> None:
    """Stop peering with POD (a key prefix from `podlink peer list`).

    \b
    Example:
      podlink peer remove 3q2-7wAA
    """
    prefix = pod_key.strip()
    if not ID_TEXT.match(prefix):
        raise click.ClickException(f"{prefix!r} is not a pod key; keys look like '3q2-7wAA' "
                                   "(see `podlink peer list`)")  # fmt: skip

    async def go(s: Any) -> dict:
        matches = [p["pod"] for p in await s.get("/v1/peers") if p["pod"].startswith(prefix)]
        if len(matches) != 1:
            raise click.ClickException(
                f"{len(matches)} peers have a key starting {prefix!r}; see `podlink peer list`"
            )
        return await s.client.request("DELETE", f"/v1/peers/{matches[0]}")

    data = pod.call(go)
    if as_json:
        print_json(data)
        return
    echo(f"No longer peered with {short(data['removed'])}.")


@click.command()
@pod_options
@json_option
def sync(pod: Target, as_json: bool) -> None:
    """Pull from every peer now, one round, and show what arrived.

    Peers also sync on their own, continuously; this is for "right now, please".

    \b
    Example:
      podlink sync
    """

    # The node waits up to 3 x peer_timeout_s for a link's own pull, then as long for
    # this one (organizer_api.sync): the client's usual 30 s would call it down.
    wait_s = 2 * 3 * pod.config().peer_timeout_s + 10

    async def go(s: Any) -> dict:
        peers = await s.get("/v1/peers")
        with working(f"Syncing with {len(peers)} peer(s)"):
            return await s.post("/v1/sync", wait_s=wait_s)

    data = pod.call(go)["peers"]
    if as_json:
        print_json(data)
    else:
        t = table("POD", "~NAME", "RESULT", ">RECEIVED", ">NEW")
        for p in data:
            t.add_row(short(p["pod"]), p["name"], "ok" if p["ok"] else "failed",
                      str(p["received"]), str(p["stored"]))  # fmt: skip
        show(t, "No peers yet: `podlink invite` makes a code for a nearby pod.")
    failed = [p for p in data if not p["ok"]]
    if failed:
        first = failed[0]
        raise click.ClickException(
            f"could not sync with {len(failed)} of {len(data)} peer(s); "
            f"{first['name'] or short(first['pod'])}: {one_line(first['error'])}"
        )


# ---------------------------------------------------------------- the log


@click.command()
@click.option("--limit", default=20, show_default=True, type=click.IntRange(1, 5000),
              help="How many events, newest first.")  # fmt: skip
@click.option(
    "--verify",
    is_flag=True,
    help="Re-check every signature, body hash and feed chain in the ledger, that "
    "each row's columns say what its signed header says, and the feed heads.",
)
@click.option("--forks", is_flag=True, help="Show the forks recorded: a key that signed two "
              "different events at one place of its feed (the proof is kept), seen here or "
              "learned from a peer, which passed on the proof.")  # fmt: skip
@pod_options
@json_option
def log(pod: Target, limit: int, verify: bool, forks: bool, as_json: bool) -> None:
    """Show the newest events in the pod's ledger (who did what, when), verify it, or show
    the forks it recorded.

    With --verify the JSON is {"ok", "events", "problems"} and the exit code is 1 when a
    problem was found.

    \b
    Examples:
      podlink log --limit 50
      podlink log --verify
      podlink log --forks
    """
    if verify and forks:
        raise click.UsageError("--verify and --forks: give one of them")
    if forks:
        _forks(pod, as_json)
        return
    if verify:

        async def check(s: Any) -> dict:
            with working("Verifying every event"):
                return await s.post("/v1/verify")

        report = pod.call(check)
        if as_json:
            print_json(report)
        elif report["ok"]:
            echo(f"All {report['events']} events verify: signatures, body hashes and "
                       "feed chains hold.")  # fmt: skip
        else:
            for problem in report["problems"]:
                echo(problem)
        if not report["ok"]:
            raise click.ClickException(f"{len(report['problems'])} problem(s) in the ledger")
        return
    # Each row comes named (pod_name, author_name): naming them here read the whole
    # network's directory and rosters for a log of one line.
    data = pod.call(lambda s: s.get("/v1/log", order="newest", limit=limit))
    if as_json:
        print_json(data)
        return
    t = table(">#", "WHEN", "~POD", "~BY", "LANE", "KIND", "ID")
    for e in data:
        kind = e["kind"] + (" (body dropped)" if e["body_dropped"] else "")
        by = ("the pod" if e["author"] == e["pod"] else e["author_name"]) or short(e["author"])
        t.add_row(str(e["pos"]), ago_ts(e["ts"]), e["pod_name"] or short(e["pod"]), by,
                  e["lane"], kind, short(e["id"]))  # fmt: skip
    show(t, "The ledger is empty.")



def _forks(pod: Target, as_json: bool) -> None:
    """The fork evidence, with the name of each key where this pod knows it, and where
    it came from: the peer that delivered the event refused here, or the peer that sent
    the proof (``gossiped``). The node names each row's keys (as it does the log's):
    naming them here read every roster and directory page of the network."""
    found = pod.call(lambda s: s.get_all("/v1/forks"))
    for f in found:
        f["author_name"] = _fork_author(f)
    if as_json:
        print_json(found)
        return
    t = table("WHEN", "~KEY", "LANE", ">SEQ", "KEPT", "OTHER", "~FROM")
    for f in found:
        who = f"{f['author_name']} ({short(f['author'])})" if f["author_name"] else short(
            f["author"])  # fmt: skip
        # (.get: a node of the release before names no source)
        source = f.get("source_name") or (short(f["source"]) if len(f["source"]) == 43 else
                                          f["source"])  # fmt: skip
        origin = f"proof from {source}" if f.get("gossiped") else f"seen here, from {source}"
        t.add_row(ago_ms(f["received"]), who, f["lane"], str(f["seq"]), short(f["kept_id"]),
                  short(f["other_id"]), origin)  # fmt: skip
    show(t, "No forks recorded: every key has signed one history.")
    if found:
        warn("a fork is one key signing two histories: a backup restored and written on "
             "before it synced, or one organizer key on two machines. Give each machine "
             "its own key (`podlink organizer setup`); see docs/operations.md")  # fmt: skip


def _fork_author(fork: dict[str, Any]) -> str:
    """Who signed both histories: the pod (its key), or an organizer of the pod the
    headers name, with that pod ("Ann of Maple"); "" when this pod does not know."""
    pod_name = fork.get("pod_name") or (fork.get("pod") or "")[:8]
    if fork["author"] == fork.get("pod"):
        return pod_name
    return f"{fork['author_name']} of {pod_name}" if fork.get("author_name") else ""


# ---------------------------------------------------------------- backup and restore


@click.command()
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@home_option
def backup(pod: Target, file: Path) -> None:
    """Copy the pod's database to FILE, safely, even while the node runs.

    The copy holds members' personal details (encrypted with their keys, which are in the
    copy too): keep it as safe as the laptop.

    \b
    Example:
      podlink backup ~/backups/maple-$(date +%F).db
    """
    config = pod.config()
    pod.own_folder(config, "backup")
    if file.exists():
        raise click.ClickException(f"{file} exists; choose another name or remove it first")
    if not config.ledger_path.exists():  # sqlite3 would create an empty one, and back it up
        raise click.ClickException(f"no database at {config.ledger_path}; nothing to back up")
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        file.touch(mode=0o600)
    except OSError as e:  # a parent that is a file, a folder we may not write...
        raise click.ClickException(f"cannot create {file}: {e.strerror or e}") from None
    try:
        source = sqlite3.connect(config.ledger_path)
        target = sqlite3.connect(file)
        try:
            # One step, on one read snapshot: an online backup taken in steps starts
            # again from page 1 whenever the node commits between two of them, and a
            # busy node (a peer's sync) commits every few milliseconds: a large ledger
            # was never done. In WAL mode the snapshot does not hold the node's writer.
            with working("Backing up", total=None):
                source.backup(target, pages=-1)
        finally:
            target.close()
            source.close()
    except sqlite3.Error as e:
        file.unlink(missing_ok=True)
        raise click.ClickException(f"backup failed: {e}") from None
    echo(f"Backed up {config.name} to {file} ({file.stat().st_size // 1024} KiB).")


@click.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@home_option
def restore(pod: Target, file: Path) -> None:
    """Put a backup FILE back as the pod's database (stop the node first).

    What the current database holds and the backup lacks is carried over, if it can still
    be read: events (checked again), member keys, peers and invites. It is kept beside
    as ledger.db.before-restore-TIME. The store's epoch is rotated, so peers notice and
    repair; run `podlink sync` before writing, to fetch back from them what this pod
    shared since the backup.

    \b
    Example:
      podlink restore ~/backups/maple-2025-06-01.db
    """
    config = pod.config()
    pod.own_folder(config, "restore")
    if _node_answers(pod, config):
        raise click.ClickException(
            f"the node is running at {config.listen}; stop it (Ctrl-C or systemctl stop) first"
        )
    live = config.ledger_path
    if file.resolve() == live.resolve():
        raise click.ClickException(f"{file} is the pod's live database, not a backup")
    restoring = live.with_name(live.name + aside_copies.RESTORING)
    if file.resolve() in {restoring.with_name(restoring.name + extra).resolve()
                          for extra in ("", "-wal", "-shm", "-journal")}:  # fmt: skip
        raise click.ClickException(
            f"{file.name} is what a restore cut off left (restore prepares its database "
            "there, over it): move it out of the pod's folder to restore from it"
        )
    try:
        node_key = load_keypair(config.node_key_path)
    except KeyFileError as e:
        raise click.ClickException(one_line(str(e))) from None
    with no_trace(file):  # SQLite leaves -shm and -wal beside a WAL database it reads
        _restore(file, live, node_key)
    home = pod.home_words()
    echo(f"Start the node with `podlink serve{home}`, then run `podlink sync{home}` before "
         "recording anything new (until the events written since the backup come back, a "
         "new one would fork its organizer's feed).")  # fmt: skip


def _restore(file: Path, live: Path, node: Keypair) -> None:
    _check_backup(file, node.public)
    # Prepare the restored database beside the live one and swap it in last, so that a
    # failure on the way leaves the live ledger as it was.
    incoming = live.with_name(f"{live.name}{aside_copies.RESTORING}")
    aside = live.with_name(f"{live.name}.before-restore-{time.strftime('%Y%m%d-%H%M%S')}")
    # A restore cut off (killed, a power cut) left its whole ledger here: not ours to
    # finish, and a copy of member keys nothing else would remove.
    for extra in ("", "-wal", "-shm", "-journal"):
        incoming.with_name(incoming.name + extra).unlink(missing_ok=True)
    try:
        private_file(incoming)  # a whole ledger, member keys included: 0600 from the start
        copy_backup(file, incoming)  # with what the backup's -wal holds, if it has one
        carried = carry_over(live, incoming, node.public, signer=node)
        events = run_sync(_rotate_epoch(incoming))
        if live.exists():
            keep_aside(live, aside)
        for extra in ("-wal", "-shm"):
            live.with_name(live.name + extra).unlink(missing_ok=True)
        os.replace(incoming, live)
    except (OSError, sqlite3.Error, LedgerError) as e:
        raise click.ClickException(f"restore failed, the pod's database is unchanged: "
                                   f"{one_line(str(e))}") from None  # fmt: skip
    finally:
        for extra in ("", "-wal", "-shm"):
            incoming.with_name(incoming.name + extra).unlink(missing_ok=True)
    echo(f"Restored {file}: the pod's database now holds {events} events.")
    if not carried.unreadable or carried.events or carried.keys or carried.peers:
        echo(f"Carried over from the database it replaces: {carried.events} events "
                   f"the backup lacked, {carried.keys} member keys, "
                   f"{carried.peers} peers.")  # fmt: skip
    if carried.forgets:
        echo(f"{carried.forgets} member(s) it says were forgotten, whose forget could not be "
             "read, forgotten again (signed with the pod's node key).")  # fmt: skip
    if carried.unreadable:
        warn(f"nothing more could be carried over from the database it replaces "
             f"({one_line(carried.unreadable)}): what never left the pod after the backup "
             "(members, pod-only needs, peer removals) is lost, and so are the peerings "
             "made since: add each of those pods again (`podlink peer add URL --key KEY`, "
             "or a new invite); they give back what the pod shared with them.")  # fmt: skip
    if aside.exists():
        echo(f"The old database is in {aside.name}.")
    echo("The store epoch was rotated: peers will repair from it.")


def _node_answers(pod: Target, config: Any) -> bool:
    url = yarl.URL(pod.url(config))
    try:
        with socket.create_connection((url.host or "", url.port or 80), timeout=0.5):
            return True
    except OSError:
        return False


def _check_backup(file: Path, node_key: bytes) -> None:
    try:
        with closing(sqlite3.connect(read_only(file), uri=True)) as db:
            if db.execute("PRAGMA quick_check").fetchone()[0] != "ok":
                raise click.ClickException(f"{file} is damaged (sqlite quick_check failed)")
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:  # before reading tables a newer podlink may change
                raise click.ClickException(
                    f"this backup was written by a newer podlink (schema {version}, this one "
                    f"knows {SCHEMA_VERSION}); upgrade podlink to restore it"
                )
            found = db.execute("SELECT value FROM meta WHERE key = 'pod'").fetchone()
    except sqlite3.Error as e:
        raise click.ClickException(f"{file} is not a podlink database: {e}") from None
    if found is None or bytes(found[0]) != node_key:
        raise click.ClickException(f"{file} is the database of another pod, not this one")


async def _rotate_epoch(path: Path) -> int:
    from podlink.ledger.ledger import Ledger
    from podlink.ledger.queries import count_events

    async with await Ledger.open(path) as ledger:
        await ledger.rotate_epoch()
        return await count_events(ledger.reader)
