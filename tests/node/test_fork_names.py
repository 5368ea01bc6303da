"""`GET /v1/forks` names the keys of its page, as `GET /v1/log` does: `podlink log
--forks` read every roster and directory page of the network to name a few authors.

A real node on 127.0.0.1, a real SQLite file, forks made by real signatures.
"""

from __future__ import annotations

from podlink.ledger.authoring import Author
from podlink.protocol import kinds
from podlink.protocol.keys import Keypair
from podlink.protocol.text import b64e
from tests.node.conftest import Network


async def test_fork_rows_name_their_author_pod_and_source(network: Network) -> None:
    """Ann, an organizer of Alder, writes twice at one place of her feed (the twin came
    through Oak, a peer); the pod key forks too (from a laptop). Each row names the
    headers' pod, Ann as Alder's roster names her, and the peer by its directory name."""
    [alder] = await network(1)
    ann = Keypair.generate()
    await alder.write(kinds.OrganizerAdded(key=ann.public, name="Ann"), as_key=alder.keypair)
    oak_key = Keypair.generate()
    oak = Author(oak_key, oak_key.public)
    founded = oak.write(kinds.PodFounded(name="Oak"), "network")
    assert (await alder.ledger.ingest([founded.to_wire()], source="x"))[0].status == "stored"

    async def fork(key: Keypair, source: str) -> None:
        """``key`` writes twice at one place of its network feed; the twin is refused."""
        client = alder.client_for(key)
        try:
            author = await client.author()
        finally:
            await client.close()
        twin = Author(key, alder.pod, author.clock)
        seq, prev = author.heads.get("network", (0, None))
        kept = author.write(kinds.OfferOpened(title="soup", category="food"), "network")
        twin.set_head("network", seq, prev)
        other = twin.write(kinds.OfferOpened(title="bread", category="food"), "network")
        assert (await alder.ledger.ingest([kept.to_wire()], source="laptop"))[0].status == "stored"
        refused = await alder.ledger.ingest([other.to_wire()], source=source)
        assert refused[0].reason == "fork"

    await fork(ann, b64e(oak_key.public))
    await fork(alder.keypair, "laptop")

    rows = await alder.client.get("/v1/forks")
    by_author = {r["author"]: r for r in rows}
    ours = by_author[ann.public_text]
    assert (ours["pod"], ours["pod_name"], ours["author_name"]) == (alder.key, "Alder", "Ann")
    assert (ours["source"], ours["source_name"]) == (b64e(oak_key.public), "Oak")
    pods = by_author[alder.key]
    assert (pods["pod"], pods["pod_name"], pods["source_name"]) == (alder.key, "Alder", "")
