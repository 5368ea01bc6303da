"""Creating a pod's home folder: config, the node's key, the first organizer's key, the log.

The pod's first events are written here: its genesis and the roster entry of the
organizer whose key the CLI keeps (so the pod has an organizer from its first minute).
"""

from __future__ import annotations

import os
from pathlib import Path

from podlink.ledger.authoring import Author
from podlink.ledger.ledger import Ledger
from podlink.node.config import CONFIG_FILE, Config, ConfigError, _check_listen, save_config
from podlink.protocol import kinds
from podlink.protocol.keys import Keypair, load_keypair, save_keypair


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
    home.mkdir(parents=True, exist_ok=True)
    os.chmod(home, 0o700)
    config = Config(home=home, name=name.strip(), zone=zone, listen=listen, url=url)
    node_key = Keypair.generate()
    organizer = Keypair.generate()
    save_keypair(config.node_key_path, node_key)
    save_keypair(config.organizer_key_path, organizer)
    async with await Ledger.open(config.ledger_path) as ledger:
        await ledger.set_pod(node_key.public)
        pod = Author(node_key, node_key.public)
        events = [
            pod.write(kinds.PodFounded(name=config.name, zone=zone), "network"),
            pod.write(kinds.OrganizerAdded(key=organizer.public, name=organizer_name), "network"),
        ]
        results = await ledger.append([e.to_wire() for e in events])
        if not all(r.ok for r in results):  # pragma: no cover - a bug, not a user error
            raise ConfigError(f"could not write the pod's first events: {results}")
    save_config(config)
    return config


def load_node_key(config: Config) -> Keypair:
    return load_keypair(config.node_key_path)
