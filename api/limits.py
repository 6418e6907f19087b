"""Bounds on what a caller can make the API do before anything authenticates them.

- Request bodies: a body over `NUDGE_MAX_BODY_BYTES` (1 MiB; `NUDGE_MAX_BATCH_BODY_BYTES`,
  16 MiB, on the batch routes in `BATCH_ROUTES`) is a 413: refused from its `Content-Length`
  before a byte is read, or as soon as a chunked body goes over, never read in full.
- Nesting: JSON bodies are parsed by nudge.events.jsonbody (bounded depth); anything else that
  still recurses too deep on input is a 422, never a 500.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import NudgeError
from nudge.settings import Settings

#: Routes where large bodies are legitimate (batches of events, products, provider reports).
BATCH_ROUTES = ("/v1/events", "/v1/products", "/webhooks/sendgrid")


class TooLarge(NudgeError):
    status_code = 413
    code = "too_large"


def limit_for(settings: Settings, path: str) -> int:
    return settings.max_body_bytes if path not in BATCH_ROUTES else settings.max_batch_body_bytes


class BodyLimit:
    """ASGI middleware: the body limit of each route (see the module docstring)."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app, self.settings = app, settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = limit_for(self.settings, scope["path"])
        message = f"the request body is larger than {limit} bytes"
        declared = dict(scope.get("headers") or []).get(b"content-length")
        try:
            too_large = declared is not None and int(declared) > limit
        except ValueError:
            too_large = False
        if too_large:
            await _refuse(send, message)
            return
        seen = 0

        async def bounded() -> Message:
            nonlocal seen
            received = await receive()
            if received["type"] == "http.request":
                seen += len(received.get("body", b""))
                if seen > limit:
                    raise TooLarge(message)
            return received

        await self.app(scope, bounded, send)


async def _refuse(send: Send, message: str) -> None:
    body = json.dumps({"error": {"code": TooLarge.code, "message": message}}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def install(app: FastAPI, settings: Settings) -> None:
    app.add_middleware(BodyLimit, settings=settings)

    @app.exception_handler(RecursionError)
    async def _too_deep(_request: Request, _exc: Any) -> JSONResponse:
        body = {"error": {"code": "invalid", "message": "the input nests too deep", "fields": []}}
        return JSONResponse(body, status_code=422)
