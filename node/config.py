"""Node configuration: ``config.toml`` in the node's home folder, overridable by environment.

Every key of :class:`Config` may be set in ``config.toml`` (top level) or by the variable
``PODLINK_<KEY>`` (upper case), which wins. docs/operations.md lists them all.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import tomli_w

CONFIG_FILE = "config.toml"
NODE_KEY_FILE = "node.key"
ORGANIZER_KEY_FILE = "organizer.key"
LEDGER_FILE = "ledger.db"


class ConfigError(Exception):
    """Raised when config.toml or an environment override is missing or malformed."""


@dataclass
class Config:
    """What a node needs to run; defaults suit a pod on one laptop."""

    home: Path
    name: str = "pod"
    zone: str = ""
    listen: str = "127.0.0.1:7654"  # host:port the node binds
    url: str = ""  # the URL peers use to reach this node; defaults to http://<listen>
    max_request_bytes: int = 4 * 1024 * 1024  # any HTTP request body
    page_events: int = 1000  # events per page served to a peer (and per ingest transaction)
    rate_per_s: float = 200.0  # signed requests per key per second (burst: 5 s worth)
    pending_per_source: int = 10_000  # events parked per peer waiting for predecessors
    evidence_per_source: int = 1000  # fork evidence per peer waiting for its feed
    pending_ttl_s: int = 24 * 3600
    batch_size: int = 1000  # events per ingest transaction
    verify_workers: int = 2  # signature checkers: processes for large batches, else threads
    invite_ttl_s: int = 7 * 24 * 3600
    backoff_max_s: float = 60.0  # longest wait between attempts to reach a peer
    peer_timeout_s: float = 20.0  # connect/read timeout talking to a peer
    log_level: str = "INFO"
    # A folder on an organizer's laptop runs no node: its commands talk to the pod's node
    # at ``node``, and sign for the pod ``pod`` (its key, base64url), both written by
    # `podlink organizer setup`. A pod's own folder leaves them empty.
    node: str = ""
    pod: str = ""
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def host(self) -> str:
        return self.listen.rsplit(":", 1)[0]

    @property
    def port(self) -> int:
        return int(self.listen.rsplit(":", 1)[1])

    @property
    def public_url(self) -> str:
        return (self.url or f"http://{self.listen}").rstrip("/")

    @property
    def ledger_path(self) -> Path:
        return self.home / LEDGER_FILE

    @property
    def node_key_path(self) -> Path:
        return self.home / NODE_KEY_FILE

    @property
    def organizer_key_path(self) -> Path:
        return self.home / ORGANIZER_KEY_FILE


SETTABLE = [f for f in fields(Config) if f.name not in ("home", "extra")]


def _coerce(name: str, kind: Any, value: Any) -> Any:
    target = {"int": int, "float": float, "str": str}.get(str(kind), str)
    try:
        if target is int and isinstance(value, float):
            raise ValueError
        return target(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be {target.__name__}, got {value!r}") from None


def _check_listen(listen: str) -> None:
    host, sep, port = listen.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ConfigError(f"listen must be HOST:PORT (e.g. 127.0.0.1:7654), got {listen!r}")


def load_config(home: Path, env: dict[str, str] | None = None) -> Config:
    """Read ``home/config.toml`` and apply ``PODLINK_*`` overrides."""
    env = dict(os.environ) if env is None else env
    path = Path(home) / CONFIG_FILE
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(
            f"no podlink pod in {home} (no {CONFIG_FILE}); run `podlink init --name NAME`"
        ) from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: {err}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not UTF-8 text; fix or replace it") from None
    except OSError as err:  # a folder in its place, unreadable...
        raise ConfigError(f"cannot read {path}: {err.strerror or err}") from None
    values: dict[str, Any] = {}
    known = {f.name: f for f in SETTABLE}
    extra = {k: v for k, v in data.items() if k not in known}
    for name, f in known.items():
        if name in data:
            values[name] = _coerce(name, f.type, data[name])
        env_value = env.get(f"PODLINK_{name.upper()}")
        if env_value is not None:
            values[name] = _coerce(f"PODLINK_{name.upper()}", f.type, env_value)
    config = Config(home=Path(home), extra=extra, **values)
    _check_listen(config.listen)
    _check_ranges(config)
    return config


# Settings that must be at least 1 (a count) or above 0 (a rate or a time in seconds).
# (invite_ttl_s may be anything: 0 or less makes every new invite expire at once.)
AT_LEAST_ONE = ("max_request_bytes", "page_events", "pending_per_source", "batch_size",
                "verify_workers", "pending_ttl_s", "evidence_per_source")  # fmt: skip
POSITIVE = ("rate_per_s", "backoff_max_s", "peer_timeout_s")
# Times added to a clock in SQLite (expiries): beyond a century they overflow its 64 bits.
TTLS, TTL_MAX_S = ("invite_ttl_s", "pending_ttl_s"), 100 * 365 * 24 * 3600
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def _check_ranges(config: Config) -> None:
    """Values of the right type but no use (``verify_workers = -1`` crashed the node after
    it had opened its database, and it never exited) are refused at start."""
    for name in AT_LEAST_ONE:
        if getattr(config, name) < 1:
            raise ConfigError(f"{name} must be 1 or more, got {getattr(config, name)!r}")
    for name in POSITIVE:
        value = getattr(config, name)
        if not (value > 0 and math.isfinite(value)):
            raise ConfigError(f"{name} must be a number above 0, got {value!r}")
    for name in TTLS:
        if abs(getattr(config, name)) > TTL_MAX_S:
            raise ConfigError(f"{name} must be at most {TTL_MAX_S} (a century), "
                              f"got {getattr(config, name)!r}")  # fmt: skip
    if config.node and not re.fullmatch(r"https?://[^\s/]+\S*", config.node):
        raise ConfigError(f"node must be a URL like http://HOST:PORT, got {config.node!r}")
    if config.pod and not re.fullmatch(r"[A-Za-z0-9_-]{43}", config.pod):
        raise ConfigError(f"pod must be a pod's key (43 characters of base64url), "
                          f"got {config.pod!r}")  # fmt: skip
    config.log_level = config.log_level.upper()
    if config.log_level not in LOG_LEVELS:
        raise ConfigError(f"log_level must be one of {', '.join(LOG_LEVELS)}, "
                          f"got {config.log_level!r}")  # fmt: skip


def save_config(config: Config) -> None:
    """Write the settable fields that differ from the defaults (and the pod name)."""
    defaults = Config(home=config.home)
    data = {
        f.name: getattr(config, f.name)
        for f in SETTABLE
        if f.name == "name" or getattr(config, f.name) != getattr(defaults, f.name)
    }
    config.home.mkdir(parents=True, exist_ok=True)
    (config.home / CONFIG_FILE).write_text(tomli_w.dumps(data), encoding="utf-8")


def set_name(home: Path, name: str) -> None:
    """Write a new pod name into ``home``'s config.toml: its top-level ``name = ...`` line
    replaced (or one added at the top), every other line as the operator wrote it,
    comments included; atomically. Environment overrides are never written in."""
    path = Path(home) / CONFIG_FILE
    text = path.read_text(encoding="utf-8")
    line = tomli_w.dumps({"name": name}).strip()
    first_table = re.search(r"(?m)^[ \t]*\[", text)  # keys before it are top-level
    cut = first_table.start() if first_table else len(text)
    top, tables = text[:cut], text[cut:]
    new_top, found = re.subn(r"(?m)^[ \t]*name[ \t]*=.*$", lambda _: line, top, count=1)
    text = (new_top if found else f"{line}\n{top}") + tables
    tomllib.loads(text)  # never write a file the next start could not read
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def with_overrides(config: Config, **changes: Any) -> Config:
    return dataclasses.replace(config, **changes)
