"""Real pods for the CLI tests: `podlink init` homes served by `podlink serve` subprocesses
on free loopback ports; every command goes through the real click entry point."""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from podlink.cli.main import main
from tests.node.helpers import stable_port


def run(*args: str, home: Path | None = None, code: int | None = 0) -> Result:
    """`podlink ARGS --home HOME` through click's runner; checks the exit code."""
    argv = [*args, "--home", str(home)] if home is not None else list(args)
    env = {"PODLINK_HOME": None, "COLUMNS": "80", "NO_COLOR": "1"}
    result = CliRunner().invoke(main, argv, env=env, catch_exceptions=False)
    if code is not None:
        assert result.exit_code == code, (argv, result.exit_code, result.output)
    return result


def run_json(*args: str, home: Path) -> Any:
    return json.loads(run(*args, "--json", home=home).stdout)


def eventually(check: Callable[[], Any], timeout: float = 10.0) -> Any:
    """Poll ``check`` until it returns something truthy (gossip takes a moment)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {check}")
        time.sleep(0.05)


@dataclass
class Pod:
    name: str
    home: Path
    url: str
    proc: subprocess.Popen | None = None

    def __call__(self, *args: str, code: int | None = 0) -> Result:
        return run(*args, home=self.home, code=code)

    def json(self, *args: str) -> Any:
        return run_json(*args, home=self.home)

    @property
    def key(self) -> str:
        return self.json("status")["pod"]


def make_pod(root: Path, name: str) -> Pod:
    port = stable_port()  # pods are stopped and started again on it
    home = root / name.lower().replace(" ", "-")
    run("init", "--name", name, "--listen", f"127.0.0.1:{port}", home=home)
    return Pod(name, home, f"http://127.0.0.1:{port}")


def _die_with_parent() -> None:
    """Linux: a test run that is killed outright takes its nodes with it."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def serve(pod: Pod) -> None:
    log = open(pod.home / "serve.log", "wb")  # noqa: SIM115 - closed with the process
    env = {**os.environ, "PODLINK_LOG_LEVEL": "WARNING"}
    env.pop("PODLINK_HOME", None)
    pod.proc = subprocess.Popen(
        [sys.executable, "-m", "podlink.cli", "serve", "--home", str(pod.home)],
        stdout=log, stderr=subprocess.STDOUT, env=env,
        preexec_fn=_die_with_parent if sys.platform == "linux" else None,
    )  # fmt: skip
    log.close()


def wait_up(pod: Pod, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(pod.url + "/v1/info", timeout=1) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        assert pod.proc is not None
        if pod.proc.poll() is not None or time.monotonic() > deadline:
            log = (pod.home / "serve.log").read_text(errors="replace")
            raise AssertionError(f"{pod.name} did not start:\n{log}")
        time.sleep(0.05)


def stop(*pods: Pod) -> None:
    """SIGTERM every node at once (as systemd would), then wait for each to exit."""
    running = [p for p in pods if p.proc is not None]
    for pod in running:
        pod.proc.terminate()  # type: ignore[union-attr]
    for pod in running:
        assert pod.proc is not None
        try:
            pod.proc.wait(15)
        except subprocess.TimeoutExpired:
            pod.proc.kill()
            pod.proc.wait(5)
        pod.proc = None


@contextlib.contextmanager
def running(*pods: Pod) -> Iterator[None]:
    """Serve ``pods`` for the block, stopped at its end whatever happens."""
    try:
        for pod in pods:
            serve(pod)
        for pod in pods:
            wait_up(pod)
        yield
    finally:
        stop(*pods)


@dataclass
class Network:
    """Maple Street — Riverside — Hilltop peered in a line by invites; Lonely peers nobody."""

    maple: Pod
    riverside: Pod
    hilltop: Pod
    lonely: Pod


@pytest.fixture(scope="session")
def network(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Network]:
    root = tmp_path_factory.mktemp("pods")
    pods = [make_pod(root, n) for n in ("Maple Street", "Riverside", "Hilltop", "Lonely")]
    with running(*pods):
        net = Network(*pods)
        for inviter, joiner in ((net.maple, net.riverside), (net.riverside, net.hilltop)):
            code = inviter.json("invite")["invite"]
            joiner("peer", "join", code)
        yield net


@dataclass
class Pair:
    """Elm and Oak, peered by invite, for one test module (tests that change a pod's
    roster or members keep them out of the session's shared network)."""

    elm: Pod
    oak: Pod


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    root = tmp_path_factory.mktemp("pair")
    pods = [make_pod(root, "Elm"), make_pod(root, "Oak")]
    with running(*pods):
        elm, oak = pods
        oak("peer", "join", elm.json("invite")["invite"])
        yield Pair(elm, oak)
