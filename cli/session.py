"""Which pod a command talks to, and the one conversation it has with that pod's node.

Every command takes ``--home`` (and ``--node``); :class:`Target` turns them into a config
and a signed :class:`~podlink.node.client.NodeClient`, and :func:`run_sync` is the one place
async work runs and the node's refusals become one-line ``click.ClickException``\\ s.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import re
import shlex
import unicodedata
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import click
import msgspec
import platformdirs
import yarl

from podlink.node import client as node_client
from podlink.node.client import ClientError, NodeClient
from podlink.node.config import CONFIG_FILE, NODE_KEY_FILE, Config, ConfigError, load_config
from podlink.protocol import clock, kinds
from podlink.protocol.errors import ProtocolError
from podlink.protocol.keys import KeyFileError, load_keypair
from podlink.protocol.text import b64d, b64e

try:  # a lock file keeps two commands of one organizer from signing the same seq
    import fcntl
except ImportError:  # pragma: no cover - Windows: no concurrent commands guard
    fcntl = None  # type: ignore[assignment]

T = TypeVar("T")
ID_TEXT = re.compile(r"^[A-Za-z0-9_-]{1,43}$")
# Ids are base64url, so one in 64 starts with '-': let such an argument through as an id.
ID_ARGUMENTS = {"ignore_unknown_options": True}
LIST_COMMAND = {"request": "request list", "offer": "offer list", "member": "member list",
                "claim": "request show REQUEST", "resource": "resource list"}  # fmt: skip


def one_line(message: str) -> str:
    """A message on one line, with no control character a terminal would act on (error
    messages quote other pods' names and titles)."""
    return " ".join(_CONTROLS.sub("\ufffd", str(message)).split())


_CONTROLS = re.compile("[\x00-\x08\x0b\x0e-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run a command's async work; turn what the node or the files refuse into exit 1."""
    try:
        return asyncio.run(coro)
    except ClientError as e:
        hint = ""
        if e.reason == "unauthorised" and e.status == 401:
            hint = " (is --node the node of this pod, and organizer.key one of its organizers?)"
        raise click.ClickException(one_line(e.message) + hint) from None
    except (ConfigError, KeyFileError, ProtocolError, OSError) as e:
        raise click.ClickException(one_line(str(e))) from None
    except UnicodeError:
        raise click.ClickException(NOT_UTF8) from None


NOT_UTF8 = "some text is not valid UTF-8; check your terminal's character encoding"


def default_home() -> Path:
    return Path(platformdirs.user_data_dir("podlink"))


@dataclass(frozen=True)
class Target:
    """The pod a command works on: its home folder, and optionally its node's URL."""

    home: Path
    node: str | None = None

    def config(self) -> Config:
        try:
            return load_config(self.home)
        except ConfigError as e:
            raise click.ClickException(one_line(str(e))) from None

    def url(self, config: Config) -> str:
        """--node, else the config's ``node`` (a folder on an organizer's laptop), else
        the node's listen address (a wildcard host means this machine)."""
        given = (self.node or config.node).strip()
        if given:
            try:
                node = yarl.URL(given)
            except ValueError:
                node = None
            if node is None or node.scheme not in ("http", "https") or not node.host:
                where = "--node" if self.node else f"node in {self.home / CONFIG_FILE}"
                raise click.ClickException(
                    f"{where} must be a URL like http://HOST:PORT, not {given!r}"
                )
            return str(node).rstrip("/")  # as yarl writes it: "HTTP://x" is http://x
        host = config.host.strip("[]")
        if host in ("", "0.0.0.0", "::"):
            host = "127.0.0.1"
        return f"http://[{host}]:{config.port}" if ":" in host else f"http://{host}:{config.port}"

    def home_words(self) -> str:
        """`` --home DIR`` to repeat in a command we print, or nothing for the default."""
        return "" if self.home == default_home() else f" --home {shlex.quote(str(self.home))}"

    def own_folder(self, config: Config, command: str) -> None:
        """Refuse ``podlink COMMAND`` (serve, restore: work on the node's own files) in a
        folder on an organizer's laptop, which holds no node."""
        if config.node and not config.node_key_path.exists():
            raise click.ClickException(
                f"{self.home} is an organizer's folder: its pod's node runs at {config.node}. "
                f"`podlink {command}` runs in the pod's own folder, on the machine that hosts it"
            )

    def session(self, *, pod_key: bool = False) -> PodSession:
        """``pod_key``: in the pod's own folder, sign with the pod's node key rather than
        organizer.key (always authorised: how a pod whose organizer key is lost, or
        forked, adds a new one)."""
        config = self.config()
        try:
            if pod_key and config.node_key_path.exists():
                keypair = load_keypair(config.node_key_path)
            else:
                keypair = load_keypair(config.organizer_key_path)
            # Requests sign the pod they are for: the pod's key from its own folder, not
            # from whatever answers at the URL. A folder on an organizer's laptop has no
            # node.key: its config names the pod (`podlink organizer setup` wrote it);
            # failing that, the client reads the key from the node's /v1/info.
            pod = None
            if config.node_key_path.exists():
                pod = load_keypair(config.node_key_path).public
            elif config.pod:
                pod = b64d(config.pod, length=32, what=f"pod in {self.home / CONFIG_FILE}")
        except KeyFileError as e:
            if config.organizer_key_path.exists():  # there, but refused (others may read it)
                raise click.ClickException(one_line(str(e))) from None
            raise click.ClickException(
                f"{one_line(str(e))}: this folder has no organizer key to sign with. If it "
                "was lost: `podlink organizer setup --node URL --home NEW-FOLDER` makes a "
                "new one, and another organizer adds it with `podlink organizer add` (or "
                "the pod's own folder does, with its node key); see docs/operations.md"
            ) from None
        except ProtocolError as e:
            raise click.ClickException(one_line(str(e))) from None
        return PodSession(NodeClient(self.url(config), keypair, pod=pod), self.home)

    def call(
        self,
        action: Callable[[PodSession], Awaitable[T]],
        *,
        pod_key: bool = False,
    ) -> T:
        """Open a session with the node, run ``action`` on it, close, translate errors."""
        session = self.session(pod_key=pod_key)

        async def go() -> T:
            async with session:
                try:
                    return await action(session)
                except ClientError as e:
                    if e.reason == "unauthorised" and "not an organizer" in e.message:
                        key = session.client.keypair.public_text
                        raise click.ClickException(
                            f"this folder's key ({key}) is not an organizer of the pod at "
                            f"{session.client.url}: an organizer adds it with `podlink "
                            f"organizer add NAME --key {key}` (or it was removed)"
                        ) from None
                    if e.reason != "unavailable" or e.status:
                        raise
                    if not (self.home / NODE_KEY_FILE).exists():  # a laptop: no node here
                        raise click.ClickException(
                            f"the pod's node does not answer at {session.client.url}; it "
                            "runs on the machine that hosts the pod (`podlink serve` there), "
                            "or check the address (node in config.toml, or --node)"
                        ) from None
                    raise click.ClickException(
                        f"the pod's node is not running at {session.client.url}; "
                        f"start it with `podlink serve{self.home_words()}`"
                    ) from None

        return run_sync(go())


class OrderedGroup(click.Group):
    """A group whose --help lists commands in the order a pod meets them, not A to Z."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(self.commands)


def home_option(f: Callable[..., Any]) -> Callable[..., Any]:
    """Add --home to a command that works on the pod's files; it receives ``pod: Target``."""

    @click.option(
        "--home", type=click.Path(file_okay=False, path_type=Path), envvar="PODLINK_HOME",
        default=default_home, show_default=False,
        help="The pod's folder (config.toml, keys, ledger.db); default: $PODLINK_HOME, "
        "else your user data folder.",
    )  # fmt: skip
    @functools.wraps(f)
    def wrapper(*args: Any, home: Path, **kwargs: Any) -> Any:
        return f(*args, pod=Target(home, kwargs.pop("node_url", None)), **kwargs)

    return wrapper


def pod_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """Add --home and --node to a command that talks to the pod's node."""
    return home_option(
        click.option("--node", "node_url", metavar="URL",
                     help="Talk to the node at URL instead of the one in the pod's config.")(f)
    )  # fmt: skip


def json_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--json", "as_json", is_flag=True,
                        help="Print only JSON (with full ids).")(f)  # fmt: skip


FIELD_WORDS = {"title": "the title", "name": "the name", "category": "the category",
               "languages": "--language"}  # fmt: skip


def pods_matching(pods: list[dict[str, Any]], want: str) -> list[dict[str, Any]]:
    """Directory entries ``want`` may mean: those whose key starts with it, then those
    called so. Names and key prefixes are matched together: any pod publishes any name,
    and may grind a key that starts like another pod's name, so a caller takes one
    match only, never a pick among several."""
    by_key = [p for p in pods if p["pod"].startswith(want)] if want and ID_TEXT.match(want) else []
    return by_key + [p for p in pods if same_name(p["name"], want) and p not in by_key]


def same_name(a: str, b: str) -> bool:
    """Names compared as people read them: any case, and é typed as one character or as
    e and an accent (macOS and pasted text send the second)."""
    return fold_name(a) == fold_name(b)


def fold_name(name: str) -> str:
    return unicodedata.normalize("NFC", name.strip()).casefold()


def plain(message: str) -> str:
    """A body's validation error in the words of the command's options."""
    found = re.search(
        r"Expected `(str|array)` of length ([<>]=) (\d+) - at `\$\.(\w+)(\[\d+\])?`", message
    )
    if found is None:
        return one_line(message.split(": ", 1)[-1])
    kind, op, limit, field, item = found.groups()
    what = FIELD_WORDS.get(field, f"--{field.replace('_', '-')}")
    if kind == "array":  # a list option given too many times
        return f"{what} may be given at most {limit} times"
    if item:  # one value of a list option
        what = f"each {what}"
    if op == ">=":
        return f"{what} must not be empty"
    return f"{what} is too long (at most {limit} characters)"


def check_body(body: msgspec.Struct, decode: Callable[[bytes], Any] | None = None) -> None:
    """Refuse, before signing, a body the node would refuse (msgspec checks limits only
    when decoding, so round-trip it)."""
    try:
        if decode is None:
            kinds.decode_body(body.KIND, kinds.encode_body(body))  # type: ignore[attr-defined]
        else:
            decode(kinds.encode_body(body))
    except ProtocolError as e:
        raise click.ClickException(plain(e.message)) from None
    except UnicodeError:  # e.g. "José" from a Latin-1 terminal: lone surrogates
        raise click.ClickException(NOT_UTF8) from None


def newest_of(request: dict[str, Any], pod: str) -> int:
    """The timestamp of the newest event ``pod`` wrote on ``request`` (a request's answer:
    its newest history steps), 0 if none is in view."""
    return max((s["ts"] for s in request.get("history", []) if s.get("pod") == pod), default=0)


class PodSession:
    """One command's conversation with its pod's node: reads, id lookups, signed writes."""

    def __init__(self, client: NodeClient, home: Path) -> None:
        self.client = client
        self.home = Path(home)
        self._pod: str | None = None

    async def __aenter__(self) -> PodSession:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.client.close()

    async def get(self, path: str, **query: Any) -> Any:
        return await self.client.get(path, **query)

    async def get_all(self, path: str, **query: Any) -> list[Any]:
        """Every row of a list, page by page (:meth:`NodeClient.get_all`)."""
        return await self.client.get_all(path, **query)

    async def first_page(self, path: str, **query: Any) -> tuple[list[Any], bool]:
        """The first page of a list in the node's order, as a person reads it, and
        whether there are more rows after it (the command says so: never cut silently)."""
        size = node_client.LIST_PAGE
        page = await self.get(path, **query, limit=size)
        more = len(page) >= size and bool(await self.get(path, **query, offset=size, limit=1))
        return page, more

    async def post(self, path: str, body: Any = None, *, wait_s: float | None = None) -> Any:
        return await self.client.post(path, body, wait_s=wait_s)

    async def pod(self) -> str:
        """This pod's key (base64url)."""
        if self._pod is None:
            self._pod = (await self.get("/v1/heads"))["pod"]
        return self._pod

    # ------------------------------------------------------------ finding things

    async def resolve(self, table: str, ref: str) -> str:
        """The full id in ``table`` (requests, offers, ...) that starts with ``ref``."""
        what = table.rstrip("s")
        ref = ref.strip()
        if not ID_TEXT.match(ref):
            raise click.ClickException(
                f"{ref!r} is not a {what} id; ids look like 'Xk3b9a1Q' "
                f"(see `podlink {LIST_COMMAND.get(what, what + ' list')}`)"
            )
        try:
            return (await self.get(f"/v1/resolve/{table}/{ref}"))["id"]
        except ClientError as e:
            if e.reason != "not-found":
                raise
            raise click.ClickException(
                f"{one_line(e.message)} (see `podlink {LIST_COMMAND.get(what, what + ' list')}`)"
            ) from None

    async def request(self, ref: str) -> dict[str, Any]:
        return await self.get(f"/v1/requests/{await self.resolve('requests', ref)}")

    async def _one(self, table: str, ref: str, **query: Any) -> dict[str, Any]:
        """One row of a list by id (any unique prefix): the list filtered by ``id``."""
        full = await self.resolve(table, ref)
        found = await self.get(f"/v1/{table}", id=full, **query)
        if not found:  # resolved, then gone (a rebuild between the two reads)
            raise click.ClickException(f"no {table.rstrip('s')} {full[:10]} any more")
        return found[0]

    async def offer(self, ref: str) -> dict[str, Any]:
        return await self._one("offers", ref, status="all")

    async def claim(self, ref: str) -> dict[str, Any]:
        return await self._one("claims", ref)

    async def resource(self, ref: str) -> dict[str, Any] | None:
        """A resource entry by id; None once it was withdrawn (its id still resolves:
        the event that shared it stays in the log)."""
        full = await self.resolve("resources", ref)
        found = await self.get("/v1/resources", id=full)
        return found[0] if found else None

    async def member(self, ref: str, *, forgotten: bool = False) -> dict[str, Any]:
        """A member of this pod by name (case-insensitive) or by id prefix; with
        ``forgotten``, one forgotten already too (by id: their name is gone with them)."""
        members = await self.get_all("/v1/members")  # names are sealed: the node matches none
        named = [m for m in members if same_name(m.get("name", ""), ref)]
        if len(named) > 1:
            ids = ", ".join(m["id"][:8] for m in named)
            raise click.ClickException(f"{len(named)} members are called {ref!r}; use an id: {ids}")
        if named:
            return named[0]
        if not ID_TEXT.match(ref.strip()):
            raise click.ClickException(f"no member called {ref!r} (see `podlink member list`)")
        try:
            full = await self.resolve("members", ref)
        except click.ClickException as e:
            if "no member" not in e.message:  # not just unknown: ambiguous, say
                raise
            raise click.ClickException(
                f"no member called {ref!r}, nor one whose id starts with it "
                "(see `podlink member list`)"
            ) from None
        found = await self.get("/v1/members", id=full, **({"all": "1"} if forgotten else {}))
        if not found:
            raise click.ClickException(f"member {ref!r} was forgotten")
        return found[0]

    # ------------------------------------------------------------ writing

    @contextlib.asynccontextmanager
    async def _writing(self) -> AsyncIterator[None]:
        """Hold the home's lock while chaining on the heads, signing and submitting."""
        if fcntl is None or not self.home.is_dir():
            yield
            return
        fd = os.open(self.home / ".cli.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            await asyncio.to_thread(fcntl.flock, fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    async def write(
        self,
        body: msgspec.Struct,
        lane: str,
        refs: tuple[str, ...] = (),
        *,
        member_key: bytes | None = None,
        after: dict[str, Any] | None = None,
    ) -> str:
        """Sign ``body`` as the next event of the organizer's ``lane`` feed; its id.
        ``after``: the request it changes, as the node answered it: the event is stamped
        after the newest this pod wrote on it (the node refuses one stamped before)."""
        check_body(body)
        async with self._writing():
            author = await self.client.author(self.client.pod)  # the pod requests sign for
            not_before = 0 if after is None else newest_of(after, await self.pod())
            ahead_ms = clock.wall_ms(not_before) - clock.now_ms()
            if ahead_ms > clock.FUTURE_LIMIT_MS:  # the node would refuse it, less clearly
                when = clock.ts_text(not_before)
                raise click.ClickException(
                    f"this need's newest change is stamped {when}, {ahead_ms // 60000} minutes "
                    "ahead of this machine's clock (a clock that ran fast wrote it): what "
                    "changes it must come after it, and can be written from then on"
                )
            event = author.write(body, lane, [b64d(r, length=32) for r in refs],  # type: ignore[arg-type]
                                 not_before=not_before)  # fmt: skip
            keys = {event.id: member_key} if member_key is not None else None
            await self.client.submit([event], keys)  # a refusal raises ClientError
        return b64e(event.id)

    async def check_applied(self, request_id: str, event_id: str) -> dict[str, Any]:
        """The request after our event; an error if the event was stored but ignored (a
        race: someone else's transition came first)."""
        after = await self.get(f"/v1/requests/{request_id}", event=event_id, claims=1,
                               history=1)  # the step of our event, wherever it is  # fmt: skip
        if "step" in after:
            step = after["step"]
        else:  # a node of the release before: no event=, its whole history instead
            step = next((h for h in after.get("history", []) if h["id"] == event_id), None)
        if step is not None and step["outcome"] != "applied":
            raise click.ClickException(f"recorded, but it changed nothing: {step['why']}")
        return after
