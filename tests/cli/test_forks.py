"""`podlink log --forks`: an organizer key used on two machines signs two events at one
place of its feed; the node keeps the proof and the CLI shows it, naming the key."""

from __future__ import annotations

import asyncio

import pytest

from podlink.node.client import ClientError, NodeClient
from podlink.protocol import kinds
from podlink.protocol.keys import load_keypair
from tests.cli.conftest import Pair


async def _fork(url: str, key_path: str) -> tuple[str, str]:
    """Two laptops with one organizer key, each writing its next event from the same
    heads: the second is refused as a fork. Their ids (kept, refused)."""
    async with NodeClient(url, load_keypair(key_path)) as client:
        here = await client.author()
        there = await client.author()
        first = here.write(kinds.OfferOpened(title="Fork: soup", category="food"), "network")
        second = there.write(kinds.OfferOpened(title="Fork: bread", category="food"), "network")
        await client.submit([first])
        with pytest.raises(ClientError) as refused:
            await client.submit([second])
        assert refused.value.reason == "fork"
        return first.id_text, second.id_text


def test_log_forks_shows_the_proof_and_status_points_to_it(pair: Pair) -> None:
    elm = pair.elm
    assert "No forks recorded" in elm("log", "--forks").stdout
    kept, other = asyncio.run(_fork(elm.url, str(elm.home / "organizer.key")))
    [fork] = elm.json("log", "--forks")
    me = elm.json("organizer", "list")[0]
    assert (fork["author"], fork["lane"], fork["kept_id"], fork["other_id"]) == (
        me["key"], "network", kept, other)  # fmt: skip
    result = elm("log", "--forks")
    assert kept[:8] in result.stdout and other[:8] in result.stdout
    assert "organizer setup" in result.stderr
    assert "podlink log --forks" in elm("status").stderr
    assert "one of them" in elm("log", "--forks", "--verify", code=2).output
