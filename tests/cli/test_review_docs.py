"""Review of the docs against the code: promises the docs make that the code breaks.

Each test quotes the doc it holds the code to; where the doc was wrong instead, the doc
was corrected rather than tested here.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest

from podlink.protocol.keys import Keypair
from tests.cli.conftest import Pod, make_pod, running
from tests.node.helpers import PodNode, make_node, signed

LONG_NAME = "Maple Street Tenants Association, Block C"  # 41 characters, a real-world name


@pytest.fixture(scope="module")
def long_named(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pod]:
    """A running pod whose name is long, as tenants' associations' names are."""
    pod = make_pod(tmp_path_factory.mktemp("docs"), LONG_NAME)
    with running(pod):
        yield pod


def first_column(output: str) -> list[str]:
    """The first cell of each body row of a table (after the ──── rule)."""
    lines = output.splitlines()
    rule = next(i for i, line in enumerate(lines) if line.startswith("─"))
    return [line.split()[0] for line in lines[rule + 1 :] if line.strip()]


def test_request_list_keeps_ids_and_states_whole_with_a_long_pod_name(long_named: Pod) -> None:
    """docs/cli.md, "Output and exit codes": "Tables fit 80 columns: ids, states and times
    stay whole and the longest text column is shortened with `…`".

    With a 41-character pod name in the POD column, `podlink request list` cuts the ids
    to 5 characters ("oj2US…", not a usable prefix to type), the status ("fulfil…") and
    the category ("medic…"), while the POD column keeps 39 characters. cli/output.py:143
    `_fit` shortens only the one column marked `~` (NEED) and never below 10 characters;
    the remaining excess is left to rich, which squeezes every column, ids and states
    included. Fix: after the flexible column hits its floor, shorten the next widest text
    column (POD, BY, CATEGORY...), never the ID, STATUS and WHEN columns (give those
    `min_width` = their widest cell)."""
    pod = long_named
    need = pod.json("request", "add", "Prescription pickup", "--category", "medicine")
    pod("member", "add", "Jonny")
    pod("claim", need["id"][:8], "--by", "Jonny")
    pod("fulfil", need["id"][:8])
    shown = pod("request", "list").stdout
    assert max(len(line) for line in shown.splitlines()) <= 80, shown
    assert need["id"][:8] in first_column(shown), shown
    assert "fulfilled" in shown, shown


def test_offer_list_keeps_ids_and_states_whole_with_a_long_pod_name(long_named: Pod) -> None:
    """docs/cli.md, "Output and exit codes": ids and states stay whole in 80 columns.

    `podlink offer list --status all` of a pod with a 41-character name shows a withdrawn
    offer as "VN6i-a… Rid… transpo… … withdra…": its id cut to 6 characters and its state
    cut, while the POD column keeps 39 characters. The flexible column (OFFER) is at its
    10-character floor with a short title, so rich takes the excess from every column.
    Same cause and fix as the request list (cli/output.py:143 `_fit`)."""
    pod = long_named
    offer = pod.json("offer", "add", "Rides", "--category", "transport")
    pod("offer", "withdraw", offer["id"][:8])
    shown = pod("offer", "list", "--status", "all").stdout
    assert offer["id"][:8] in first_column(shown), shown
    assert "withdrawn" in shown, shown


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[PodNode]:
    pod = await make_node(tmp_path / "pod", "Metrics Street")
    await pod.start()
    try:
        yield pod
    finally:
        await pod.stop()


async def test_requests_refused_before_their_handler_are_counted_by_reason(
    node: PodNode,
) -> None:
    """docs/operations.md, "Metrics": `podlink_requests_refused_total{reason}` counts
    "requests refused before their handler" (the metric's HELP says "by reason").

    An unsigned request (401 `unauthorised`), a request by an unknown key (401
    `unauthorised`) and a tampered one (401 `forged`) are all refused by the auth
    middleware before their handler, yet the metric never appears: node/auth.py:106 is
    the only place that increments it, for `rate-limited` alone. An operator watching
    for forged or stray requests sees nothing. Fix: in the auth middleware, catch the
    ProtocolError/APIError it raises and `node.metrics.inc("requests_refused_total",
    reason=err.reason)` before re-raising (or count in error_middleware for errors raised
    before request[SIGNER] is set)."""
    url = node.url + "/v1/status"
    stranger = Keypair.generate()
    async with aiohttp.ClientSession() as session:
        status, _, _ = await signed(session, None, "GET", url)
        assert status == 401
        status, _, _ = await signed(session, stranger, "GET", url)
        assert status == 401
        status, _, _ = await signed(session, node.organizer, "POST", node.url + "/v1/sync",
                                    b"{}", send_body=b'{"x": 1}')  # fmt: skip
        assert status == 401
        async with session.get(node.url + "/metrics") as resp:
            metrics = await resp.text()
    assert 'podlink_requests_refused_total{reason="unauthorised"} 2' in metrics, metrics
    assert 'podlink_requests_refused_total{reason="forged"} 1' in metrics, metrics
