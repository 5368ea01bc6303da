"""``GET /v1/forks`` pages like the other organizer lists: fork evidence now comes from
peers as well as from this node's own checks, so the list grows with the network.

Real node on 127.0.0.1, real SQLite file, forks made by real signatures: a second
laptop's events at the places an organizer (or the pod key) already wrote.
"""

from __future__ import annotations

import asyncio
import json

import pytest

from podlink.node import client as node_client
from podlink.node import organizer_api
from podlink.node.client import ClientError
from tests.cli.conftest import run
from tests.node.conftest import Network
from tests.node.helpers import forks_by


async def test_the_fork_list_pages_whole_and_by_author(
    network: Network, monkeypatch: pytest.MonkeyPatch
) -> None:
    [alder] = await network(1)
    await forks_by(alder, alder.organizer, 5)
    await forks_by(alder, alder.keypair, 2)  # the pod key forks too

    every = await alder.client.get_all("/v1/forks", page=3)  # 3 pages: 3, 3, 1
    nums = [f["num"] for f in every]
    assert len(every) == 7 and nums == sorted(set(nums))
    first = await alder.client.get("/v1/forks", limit=3)
    assert [f["num"] for f in first] == nums[:3]
    rest = await alder.client.get("/v1/forks", after=nums[2])
    assert [f["num"] for f in rest] == nums[3:]

    mine = await alder.client.get_all("/v1/forks", page=2, author=alder.organizer.public_text)
    assert len(mine) == 5 and {f["author"] for f in mine} == {alder.organizer.public_text}
    pods = await alder.client.get("/v1/forks", author=alder.keypair.public_text)
    assert len(pods) == 2

    for query, word in (({"after": -1}, "after"), ({"limit": 0}, "limit"),
                        ({"after": 1, "offset": 1}, "offset or after"),
                        ({"author": "not-a-key"}, "author")):  # fmt: skip
        with pytest.raises(ClientError) as err:
            await alder.client.get("/v1/forks", **query)
        assert err.value.reason == "invalid" and word in str(err.value), query

    # `podlink log --forks` reads every page, in the node's order, from a node that
    # answers at most 3 rows at once.
    monkeypatch.setattr(organizer_api, "MAX_LIST", 3)
    monkeypatch.setattr(node_client, "LIST_PAGE", 3)
    assert len(await alder.client.get("/v1/forks")) == 3
    shown = await asyncio.to_thread(run, "log", "--forks", "--json", home=alder.home)
    assert [f["num"] for f in json.loads(shown.stdout)] == nums
