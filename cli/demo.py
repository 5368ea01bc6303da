"""`podlink demo`: three pods on this machine play one story from DOMAIN.md, end to end.

Agatha, a member of Maple Street, needs a prescription picked up that her pod cannot
manage. Maple Street shares the need with the network (without her name); it travels two
hops to Hilltop, whose Jonny has a car; Hilltop claims it, Maple Street accepts, Hilltop
hands Jonny's contact to Maple Street sealed to it (Riverside carries it unread), and
Maple Street marks it fulfilled. Every node must end up showing the same state, Agatha's
name must appear nowhere outside Maple Street, and Jonny's number nowhere at Riverside.
The nodes are real (real keys, SQLite files, HTTP, gossip), run in this process on free
loopback ports.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import shutil
import signal
import socket
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
from aiohttp import web

from podlink.cli import ops
from podlink.cli.handoff import send_handoff
from podlink.cli.output import echo, emit, say, short, table
from podlink.cli.session import PodSession, run_sync
from podlink.node.client import ClientError, NodeClient
from podlink.protocol.keys import load_keypair

PODS = (
    ("Maple Street", "Maple St & Elm St"),
    ("Riverside", "the flats by the river"),
    ("Hilltop", "Hilltop estate"),
)
SECRET_NAME = "Agatha"
HELPER_PHONE = "555 0199"
WAIT_S = 15.0


class DemoFailed(Exception):
    """Raised when a step of the story does not happen in time (the nodes did not converge)."""


@dataclass
class DemoPod:
    """One pod of the demo: its home folder, its node (in this process), a CLI session."""

    name: str
    home: Path
    url: str
    runner: web.AppRunner
    session: PodSession

    @classmethod
    async def start(cls, root: Path, name: str, zone: str) -> DemoPod:
        from podlink.node.app import create_app
        from podlink.node.home import init_pod

        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))  # the socket is handed to the site: no port race
        port = sock.getsockname()[1]
        home = root / name.lower().replace(" ", "-")
        config = await init_pod(home, name=name, zone=zone, listen=f"127.0.0.1:{port}",
                                organizer_name=f"{name} organizer")  # fmt: skip
        runner = web.AppRunner(await create_app(config), access_log=None, shutdown_timeout=0.5)
        await runner.setup()
        await web.SockSite(runner, sock, shutdown_timeout=0.5).start()
        keypair, pod = load_keypair(config.organizer_key_path), load_keypair(config.node_key_path)
        client = NodeClient(config.public_url, keypair, pod=pod.public)
        return cls(name, home, config.public_url, runner, PodSession(client, home))

    async def status_of(self, request_id: str) -> dict[str, Any] | None:
        """The request as this pod sees it (None while it has not arrived)."""
        try:
            return await self.session.get(f"/v1/requests/{request_id}")
        except ClientError as e:
            if e.status == 404:
                return None
            raise

    async def stop_gossip(self) -> None:
        from podlink.node.peer_api import NODE

        gossip = self.runner.app[NODE].gossip
        if gossip is not None:
            await gossip.stop()  # type: ignore[attr-defined]

    async def stop(self) -> None:
        await self.session.client.close()
        await self.runner.cleanup()


class Story:
    """The demo's script: each step acts on a pod, then shows what every node sees."""

    def __init__(self, pods: list[DemoPod]) -> None:
        self.pods = pods
        self.maple, self.riverside, self.hilltop = pods
        self.number = 0
        self.request_id = ""

    def step(self, text: str) -> None:
        self.number += 1
        emit(f"\n[bold]{self.number}. {text}[/bold]")

    async def until(self, what: str, check: Callable[[], Awaitable[bool]]) -> float:
        """Wait until ``check`` holds on the nodes; the seconds it took."""
        started = time.monotonic()
        while not await check():
            if time.monotonic() - started > WAIT_S:
                raise DemoFailed(f"{what} did not happen within {WAIT_S:g} s")
            await asyncio.sleep(0.03)
        return time.monotonic() - started

    async def everyone(self, status: str) -> bool:
        seen = [await p.status_of(self.request_id) for p in self.pods]
        return all(r is not None and r["status"] == status for r in seen)

    async def show_state(self) -> None:
        t = table("POD", "SEES THE NEED", "STATUS", "~CLAIMS")
        for p in self.pods:
            r = await p.status_of(self.request_id)
            if r is None:
                t.add_row(p.name, "not yet", "", "")
                continue
            claims = ", ".join(f"{c['pod_name']}: {c['status']}" for c in r["claims"])
            t.add_row(p.name, "yes", r["status"], claims or "none")
        emit(t)

    # ------------------------------------------------------------ the story

    async def play(self) -> None:
        self.step("Three pods start on this machine")
        t = table("POD", "~ZONE", "NODE", "KEY")
        for p in self.pods:
            info = await p.session.get("/v1/status")
            t.add_row(p.name, info["zone"], p.url, short(info["pod"]))
        emit(t)

        self.step("They peer in a line, by invite: Maple Street — Riverside — Hilltop")
        for inviter, joiner in ((self.maple, self.riverside), (self.riverside, self.hilltop)):
            code = (await inviter.session.post("/v1/invites"))["invite"]
            await joiner.session.post("/v1/peers/join", {"invite": code})
            say(f"{joiner.name} joins {inviter.name} with the code {code[:24]}…")
        say("Maple Street and Hilltop do not know each other.")

        self.step("Each pod records its members (pod lane: locked, never leaves the pod)")
        await ops.add_member(self.maple.session, SECRET_NAME, contact="555 0134",
                             prefers="phone", needs=("medicine",),
                             can=("translation", "skills"), languages=("Polish",))  # fmt: skip
        await ops.add_member(self.maple.session, "Tom", contact="door 12", prefers="door",
                             can=("childcare",))  # fmt: skip
        await ops.add_member(self.riverside.session, "Priya", contact="priya@example.org",
                             prefers="email", can=("food",))  # fmt: skip
        await ops.add_member(self.hilltop.session, "Jonny", contact=HELPER_PHONE, prefers="text",
                             can=("transport", "medicine"), notes="has a car")  # fmt: skip
        await ops.add_offer(self.hilltop.session, "Rides and pickups in my car",
                            category="medicine", by="Jonny")  # fmt: skip
        t = table("POD", "MEMBER", "CAN HELP WITH", "NEEDS")
        for p in self.pods:
            for m in await p.session.get("/v1/members"):
                t.add_row(p.name, m["name"], ", ".join(m["can"]), ", ".join(m["needs"]))
        emit(t)

        self.step(f"{SECRET_NAME} needs her prescription picked up; nobody in Maple Street can")
        helpers = [m for m in await self.maple.session.get("/v1/members")
                   if {"medicine", "transport"} & set(m["can"])]  # fmt: skip
        say(f"Maple Street members who can help with medicine or transport: {len(helpers)}.")
        tomorrow = (dt.date.today() + dt.timedelta(days=1)).isoformat()
        made = await ops.add_request(
            self.maple.session, "Prescription pickup from the pharmacy on Main St",
            category="medicine", urgency="high", for_member=SECRET_NAME, share="network",
            needed_by=tomorrow,
        )  # fmt: skip
        self.request_id = made["id"]
        say(f"So Maple Street shares the need with the network: request "
                 f"{short(self.request_id)}, for a member id meaningless elsewhere.")

        self.step("The need travels two hops, through Riverside to Hilltop")
        took = await self.until("the request reaching Hilltop",
                                lambda: self.hilltop_sees_request())  # fmt: skip
        say(f"It reached Hilltop in {took:.2f} s.")
        await self.show_state()

        self.step("Hilltop's suggestions (podlink match) point at Jonny's offer; Hilltop claims")
        for m in await self.hilltop.session.get("/v1/match"):
            if m["request"] == self.request_id:
                say(f"{m['request_title']!r} ← {m['match_label']!r} ({m['via']})")
        claim = await ops.make_claim(self.hilltop.session, self.request_id, by="Jonny",
                                     note="A neighbour with a car can go tomorrow morning.")
        took = await self.until("the claim reaching Maple Street", self.maple_sees_claim)
        say(f"The claim came back to Maple Street in {took:.2f} s.")
        await self.show_state()

        self.step("Maple Street accepts the claim")
        await ops.decide_claim(self.maple.session, claim["id"], accept=True)
        await self.until("everyone seeing 'accepted'", lambda: self.everyone("accepted"))
        await self.show_state()

        self.step("Hilltop hands Jonny's contact to Maple Street, sealed to it (podlink handoff)")
        await send_handoff(self.hilltop.session, claim["id"], member="Jonny",
                           note=f"I'll text before I go; {SECRET_NAME} can expect me.")  # fmt: skip
        took = await self.until("the contact reaching Maple Street's inbox", self.maple_has_it)
        for item in await self.maple.session.get("/v1/inbox"):
            m = item["message"]
            say(f"Maple Street's inbox, {took:.2f} s later: {m['name']}, {m['contact']} "
                f"(prefers {m['prefers']}): {m['note']!r}")  # fmt: skip
        say("Riverside carried it on without being able to open it; Maple Street calls "
            f"{SECRET_NAME}, whose number never left her pod.")  # fmt: skip

        self.step("Jonny delivers; Maple Street marks the need fulfilled")
        await ops.fulfil_request(self.maple.session, self.request_id,
                                 note="Delivered. Thank you, Hilltop!", hours=1.0)  # fmt: skip
        await self.until("everyone seeing 'fulfilled'", lambda: self.everyone("fulfilled"))
        await self.show_state()

        self.step(f"Privacy check: is {SECRET_NAME}'s name anywhere outside Maple Street?")
        at_home = [m["name"] for m in await self.maple.session.get("/v1/members")]
        say(f"Maple Street knows her: {SECRET_NAME in at_home} (its own member list).")
        for p in (self.riverside, self.hilltop):
            found = await mentions(p, SECRET_NAME)
            if found:
                raise DemoFailed(f"{SECRET_NAME}'s name leaked to {p.name}: {', '.join(found)}")
            say(f"{p.name}: nowhere (every API answer and its database files searched).")
        found = await mentions(self.riverside, HELPER_PHONE)
        if found:
            raise DemoFailed(f"Jonny's sealed contact was read at Riverside: {', '.join(found)}")
        say(f"Jonny's number ({HELPER_PHONE}), sealed to Maple Street: nowhere at Riverside, "
            "which carried it.")  # fmt: skip

    async def hilltop_sees_request(self) -> bool:
        return await self.hilltop.status_of(self.request_id) is not None

    async def maple_has_it(self) -> bool:
        return bool(await self.maple.session.get("/v1/inbox"))

    async def maple_sees_claim(self) -> bool:
        r = await self.maple.status_of(self.request_id)
        return bool(r and r["claims"])


async def mentions(pod: DemoPod, word: str) -> list[str]:
    """Where ``word`` appears in what ``pod`` holds: API answers and raw database files."""
    found = []
    for path, query in (("/v1/requests", {}), ("/v1/members", {"all": "1"}), ("/v1/claims", {}),
                        ("/v1/offers", {"status": "all"}), ("/v1/log", {"limit": 5000}),
                        ("/v1/match", {}), ("/v1/pods", {}), ("/v1/resources", {}),
                        ("/v1/inbox", {})):  # fmt: skip
        if word in json.dumps(await pod.session.get(path, **query), ensure_ascii=False):
            found.append(path)
    for file in sorted(pod.home.glob("ledger.db*")):
        if word.encode() in file.read_bytes():
            found.append(file.name)
    return found


async def run_demo(root: Path, keep: bool) -> bool:
    """Start the pods, play the story, report convergence; stop the nodes."""
    started = time.monotonic()
    pods: list[DemoPod] = []
    ok = False
    try:
        for name, zone in PODS:
            pods.append(await DemoPod.start(root, name, zone))
        story = Story(pods)
        try:
            await story.play()
        except DemoFailed as e:
            emit(f"\n[red]✗ {e}[/red]")
            await story.show_state()
        else:
            seen = {(await p.status_of(story.request_id) or {}).get("status") for p in pods}
            ok = seen == {"fulfilled"}
            verdict = "[green]✓ all three pods agree: fulfilled[/green]" if ok else \
                f"[red]✗ the pods disagree: {sorted(map(str, seen))}[/red]"  # fmt: skip
            emit(f"\n{verdict} ({time.monotonic() - started:.1f} s)")
        if keep:
            await _stay_up(pods)
    finally:
        for p in pods:
            await p.stop_gossip()
        for p in pods:
            await p.stop()
    return ok


async def _stay_up(pods: list[DemoPod]) -> None:
    echo("\nThe pods keep running (Ctrl-C stops them):")
    for p in pods:
        echo(f"  {p.name:<13} {p.url}  --home {p.home}")
    echo(f"Try, in another terminal:\n  podlink request list --home {pods[0].home}")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):  # Windows: Ctrl-C raises instead
            loop.add_signal_handler(sig, stop.set)
    await stop.wait()


@click.command()
@click.option("--keep", is_flag=True, help="Leave the pods running (and their folders) "
              "until Ctrl-C, to try commands on them.")  # fmt: skip
@click.option("--home", type=click.Path(file_okay=False, path_type=Path),
              help="Make the three pods inside DIR and keep them (default: a temporary "
              "folder, removed afterwards).")  # fmt: skip
@click.option("--verbose", is_flag=True, help="Show the nodes' logs.")
def demo(keep: bool, home: Path | None, verbose: bool) -> None:
    """Play a three-pod story on this machine, with real nodes: a need crosses two pods.

    Needs nothing but podlink itself; takes a few seconds; exits 0 only if every node
    ends up showing the same state.

    \b
    Examples:
      podlink demo
      podlink demo --keep        # then try: podlink request list --home <printed folder>
    """
    logging.basicConfig(level=logging.INFO if verbose else logging.ERROR,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")  # fmt: skip
    if home is not None and any(home.glob("*/config.toml")):
        raise click.ClickException(f"{home} already holds demo pods; choose an empty folder")
    root = home or Path(tempfile.mkdtemp(prefix="podlink-demo-"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        ok = run_sync(run_demo(root, keep))
    finally:
        if home is None and not keep:
            shutil.rmtree(root, ignore_errors=True)
    if keep or home is not None:
        echo(f"The pods' folders stay in {root}.")
    if not ok:
        raise click.ClickException("the demo's pods did not converge (see above)")
