"""The aiohttp application factory and the node's lifecycle.

``create_app(config)`` builds the application; the ledger, the one ClientSession and the
gossip tasks are each opened and closed by one cleanup context, so a stop (SIGINT/SIGTERM
through ``web.run_app``, or a test's teardown) cancels gossip, lets the batch in flight
commit, and closes the database.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

from podlink.ledger.ledger import Ledger, Limits
from podlink.node import organizer_api, peer_api
from podlink.node.auth import make_auth_middleware
from podlink.node.config import Config
from podlink.node.errors import error_middleware
from podlink.node.gossip import Gossip
from podlink.node.home import load_node_key
from podlink.node.openapi import openapi_handler
from podlink.node.peer_api import NODE
from podlink.node.runtime import Node

log = logging.getLogger("podlink.node")


async def metrics_handler(request: web.Request) -> web.Response:
    node = request.app[NODE]
    return web.Response(text=node.metrics.render(), content_type="text/plain")


async def index(request: web.Request) -> web.Response:
    return web.json_response({"podlink": "node", "info": "/v1/info", "api": "/v1/openapi.json"})


@web.middleware
async def count_requests(request: web.Request, handler):  # type: ignore[no-untyped-def]
    response = await handler(request)
    route = request.match_info.route.resource
    name = route.canonical if route is not None else "unmatched"
    request.app[NODE].metrics.inc("http_requests_total", route=name, status=str(response.status))
    return response


async def create_app(config: Config) -> web.Application:
    """Build a node's application (the ledger opens in its cleanup context)."""
    keypair = load_node_key(config)
    limits = Limits(
        pending_per_source=config.pending_per_source,
        pending_ttl_s=config.pending_ttl_s,
        evidence_per_source=config.evidence_per_source,
        batch_size=config.batch_size,
    )
    ledger = await Ledger.open(config.ledger_path, limits=limits, workers=config.verify_workers)
    if ledger.pod is None:
        await ledger.set_pod(keypair.public)
    node = Node(config, keypair, ledger)
    app = web.Application(
        client_max_size=config.max_request_bytes,
        # count_requests outermost: refusals (401, 413...) are counted like answers
        middlewares=[count_requests, error_middleware, make_auth_middleware(node)],
    )
    app[NODE] = node
    app.router.add_get("/", index)
    app.router.add_get("/metrics", metrics_handler)
    app.router.add_get("/v1/openapi.json", openapi_handler)
    peer_api.setup_routes(app)
    organizer_api.setup_routes(app)
    app.cleanup_ctx.extend([ledger_ctx, session_ctx, gossip_ctx])
    return app


async def ledger_ctx(app: web.Application) -> AsyncIterator[None]:
    node = app[NODE]
    await node.load_peers()
    name, _ = await node.own_entry()
    log.info("node up: pod %s (%s), %d peers", node.keypair.short, name, len(node.peers))
    yield
    await node.ledger.close()  # waits for the batch in flight to commit
    log.info("ledger closed")


async def session_ctx(app: web.Application) -> AsyncIterator[None]:
    node = app[NODE]
    timeout = aiohttp.ClientTimeout(
        total=None, connect=node.config.peer_timeout_s, sock_read=node.config.peer_timeout_s * 3
    )
    node.session = aiohttp.ClientSession(timeout=timeout, raise_for_status=False)
    yield
    await node.session.close()


async def gossip_ctx(app: web.Application) -> AsyncIterator[None]:
    node = app[NODE]
    gossip = Gossip(node)
    node.gossip = gossip
    await gossip.start()
    yield
    await gossip.stop()


def setup_logging(level: str) -> None:
    """One line per event of note: time, level, logger, message (key=value inside)."""
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def run_node(config: Config) -> None:
    """Serve in the foreground until SIGINT/SIGTERM."""
    setup_logging(config.log_level)
    web.run_app(
        create_app(config), host=config.host, port=config.port, print=None,
        shutdown_timeout=10, handle_signals=True,
    )  # fmt: skip
