"""Creating a pod's home folder: config, the node's key, the first organizer's key, the log.

The pod's first events are written here: its genesis and the roster entry of the
organizer whose key the CLI keeps (so the pod has an organizer from its first minute).
"""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path

from podlink.ledger.authoring import Author
from podlink.ledger.ledger import Ledger
from podlink.node.config import CONFIG_FILE, Config, ConfigError, _check_listen, save_config
from podlink.protocol import kinds
from podlink.protocol.errors import ProtocolError
from podlink.protocol.keys import Keypair, load_keypair, save_keypair

# The options of `podlink init` that fill the fields of the pod's first events.
OPTION_WORDS = {("pod.genesis", "name"): "the name", ("pod.genesis", "zone"): "--zone",
                ("roster.add", "name"): "--organizer"}  # fmt: skip


async def init_pod(
    home: Path,
    *,
    name: str,
    zone: str = "",
    listen: str = "127.0.0.1:7654",
    url: str = "",
    organizer_name: str = "",
) -> Config:
    """Create a new pod in ``home``; refuses a folder that already holds one."""
    home = Path(home)
    if (home / CONFIG_FILE).exists():
        raise ConfigError(f"{home} already holds a pod; use another --home")
    if not name.strip():
        raise ConfigError("a pod needs a name (--name)")
    _check_listen(listen)
    if url and not re.fullmatch(r"https?://\S+", url):  # what peers are told to reach us at
        raise ConfigError(f"--url must start with http:// or https://, got {url!r}")
    config = Config(home=home, name=name.strip(), zone=zone, listen=listen, url=url)
    node_key = Keypair.generate()
    organizer = Keypair.generate()
    first = [kinds.PodFounded(name=config.name, zone=zone),
             kinds.OrganizerAdded(key=organizer.public, name=organizer_name)]  # fmt: skip
    for body in first:
        _check_first_body(body)
    pod = Author(node_key, node_key.public)
    events = [pod.write(body, "network").to_wire() for body in first]
    db = config.ledger_path
    files = [config.node_key_path, config.organizer_key_path, home / CONFIG_FILE, db,
             db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")]  # fmt: skip
    created = [path for path in files if not path.exists()]
    new_home = not home.exists()
    try:
        home.mkdir(parents=True, exist_ok=True)
        os.chmod(home, 0o700)
        save_keypair(config.node_key_path, node_key)
        save_keypair(config.organizer_key_path, organizer)
        async with await Ledger.open(config.ledger_path) as ledger:
            await ledger.set_pod(node_key.public)
            results = await ledger.append(events)
        failed = [r for r in results if not r.ok]
        if failed:  # pragma: no cover - a bug, not a user error
            raise ConfigError(f"could not write the pod's first events: {failed[0].message}")
        save_config(config)
    except BaseException:
        # Leave no half-made pod behind: it would block the next `podlink init`.
        for path in created:
            path.unlink(missing_ok=True)
        if new_home:
            with contextlib.suppress(OSError):
                home.rmdir()
        raise
    return config


def _check_first_body(body: kinds.Body) -> None:
    """Refuse, before any file is written, a first event the ledger would refuse (msgspec
    checks limits only when decoding, so round-trip it), in the words of init's options."""
    try:
        kinds.decode_body(body.KIND, kinds.encode_body(body))
    except UnicodeEncodeError:
        raise ConfigError("the name, --zone and --organizer must be UTF-8 text") from None
    except ProtocolError as err:
        found = re.search(r"length <= (\d+) - at `\$\.(\w+)`", str(err))
        if found is None:
            raise ConfigError(" ".join(str(err).split())) from None
        limit, field = found.groups()
        what = OPTION_WORDS.get((body.KIND, field), f"the {field}")
        raise ConfigError(f"{what} is too long (at most {limit} characters)") from None


def load_node_key(config: Config) -> Keypair:
    return load_keypair(config.node_key_path)
