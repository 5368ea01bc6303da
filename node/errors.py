"""One JSON error shape for every endpoint, produced in one middleware.

``{"error": REASON, "message": SENTENCE}``; reason words are the protocol's (DESIGN.md) plus
``not-found``, ``ambiguous``, ``forbidden`` and ``internal``. An unexpected exception is
logged with its traceback and answered with a generic 500: its text never reaches a client.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import msgspec
from aiohttp import web

from podlink.ledger.errors import Ambiguous, LedgerError, NotFound, StorageError
from podlink.node.api_types import Error, json_encoder
from podlink.protocol.errors import ProtocolError

log = logging.getLogger("podlink.node")

STATUS = {
    "invalid": 400, "too-large": 413, "forged": 401, "unauthorised": 401, "stale": 401,
    "replayed": 401, "forbidden": 403, "not-found": 404, "ambiguous": 409, "duplicate": 409,
    "fork": 409, "pending": 409, "too-far-ahead": 400, "rate-limited": 429,
    "unknown-kind": 400, "unavailable": 503, "internal": 500,
}  # fmt: skip


class APIError(Exception):
    """Raised by handlers to answer with a JSON error (reason word, message, HTTP status)."""

    def __init__(self, reason: str, message: str, status: int | None = None, **extra: object):
        super().__init__(message)
        self.reason, self.message = reason, message
        self.status = status or STATUS.get(reason, 400)
        self.extra = extra


def error_response(reason: str, message: str, status: int, **extra: object) -> web.Response:
    body = Error(error=reason, message=message, **extra)  # type: ignore[arg-type]
    return web.Response(
        status=status, body=json_encoder.encode(body), content_type="application/json"
    )


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except APIError as err:
        return error_response(err.reason, err.message, err.status, **err.extra)
    except ProtocolError as err:
        return error_response(err.reason, err.message, STATUS.get(err.reason, 400))
    except Ambiguous as err:
        return error_response("ambiguous", str(err), 409)
    except NotFound as err:
        return error_response("not-found", str(err), 404)
    except msgspec.ValidationError as err:
        return error_response("invalid", f"request body: {err}", 400)
    except msgspec.DecodeError as err:
        return error_response("invalid", f"request body is not valid JSON: {err}", 400)
    except RecursionError:  # msgspec skipping a hostile, deeply nested unknown field
        return error_response("invalid", "request body is nested too deeply", 400)
    except web.HTTPRequestEntityTooLarge as err:
        return error_response("too-large", err.text or "request body too large", 413)
    except web.HTTPException as err:
        if err.status < 400:
            raise
        reason = {404: "not-found", 405: "invalid", 413: "too-large"}.get(err.status, "invalid")
        response = error_response(reason, err.reason or "request refused", err.status)
        if "Allow" in err.headers:  # a 405 names the methods the path takes (RFC 9110)
            response.headers["Allow"] = err.headers["Allow"]
        return response
    except StorageError:
        log.exception("storage failure on %s %s", request.method, request.path)
        return error_response("unavailable", "the node could not write to its database", 503)
    except LedgerError as err:
        return error_response("invalid", str(err), 400)
    except Exception:
        log.exception("unexpected error on %s %s", request.method, request.path)
        return error_response("internal", "internal error; see the node's log", 500)
