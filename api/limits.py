"""Bounds on what a caller can make the API do before anything authenticates them.

- Request bodies: a body over `NUDGE_MAX_BODY_BYTES` (1 MiB; `NUDGE_MAX_BATCH_BODY_BYTES`,
  16 MiB, on the batch routes in `BATCH_ROUTES`) is a 413: refused from its `Content-Length`
  before a byte is read, or as soon as a chunked body goes over, never read in full.
- The NUL character: never in a URL (PostgreSQL cannot store or compare it in text; a 422), nor
  in a JSON body's text (nudge.events.jsonbody names the field).
- Nesting: JSON bodies are parsed by nudge.events.jsonbody (bounded depth); anything else that
  still recurses too deep on input is a 422, never a 500.
"""

from __future__ import annotations

import json
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.deps import UNAUTHORIZED, key_ok
from api.errors import NudgeError, Unauthorized
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
        if _nul_in_url(scope):
            # Authentication still comes first: a /v1 call without the key is a 401 whatever
            # its URL (the cookie-signed dashboard calls carry no NUL).
            if scope["path"].startswith("/v1/") and not key_ok(self.settings, _bearer(scope)):
                await _refuse(send, UNAUTHORIZED, status=Unauthorized.status_code)
            else:
                await _refuse(send, "the URL may not contain the NUL character (%00)", status=422)
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


def _nul_in_url(scope: Scope) -> bool:
    query = bytes(scope.get("query_string", b"")).lower()
    return "\x00" in scope["path"] or b"%00" in query or b"\x00" in query


def _bearer(scope: Scope) -> str | None:
    header = dict(scope.get("headers") or []).get(b"authorization", b"").decode("latin-1")
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" else None


async def _refuse(send: Send, message: str, *, status: int = TooLarge.status_code) -> None:
    code = {TooLarge.status_code: TooLarge.code, Unauthorized.status_code: Unauthorized.code}.get(
        status, "invalid"
    )
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
                *([(b"www-authenticate", b"Bearer")] if status == Unauthorized.status_code else []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class Throttle:
    """Failures per caller in a sliding minute: `blocked` once a caller had `per_minute` of
    them, or every caller together ten times that (guesses spread over many addresses)."""

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_minute, self.clock = per_minute, clock
        self.failures: dict[str, deque[float]] = {}
        self.everyone: deque[float] = deque()

    def _recent(self, times: deque[float]) -> int:
        now = self.clock()
        while times and now - times[0] >= 60:
            times.popleft()
        return len(times)

    def blocked(self, caller: str) -> bool:
        mine = self.failures.get(caller)
        if mine is not None and not self._recent(mine):
            del self.failures[caller]
            mine = None
        return (mine is not None and len(mine) >= self.per_minute) or self._recent(
            self.everyone
        ) >= 10 * self.per_minute

    def failed(self, caller: str) -> None:
        now = self.clock()
        if len(self.failures) > 10_000:  # bounded memory: forget the quietest callers
            self.failures = {k: v for k, v in self.failures.items() if self._recent(v)}
        self.failures.setdefault(caller, deque()).append(now)
        self.everyone.append(now)


# Every HTML page (the dashboard, the preference and confirmation pages): nothing from elsewhere,
# never in a frame (clickjacking), forms post only here.
HTML_HEADERS = (
    (
        b"content-security-policy",
        b"default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
        b"object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    ),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
)


class HtmlHeaders:
    """ASGI middleware: `HTML_HEADERS` on every `text/html` response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers") or [])
                content_type = dict(headers).get(b"content-type", b"")
                if content_type.startswith(b"text/html"):
                    names = {name.lower() for name, _ in headers}
                    headers += [h for h in HTML_HEADERS if h[0] not in names]
                    message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, with_headers)


def install(app: FastAPI, settings: Settings) -> None:
    app.add_middleware(BodyLimit, settings=settings)
    app.add_middleware(HtmlHeaders)
    app.state.login_throttle = Throttle(settings.dashboard_login_attempts_per_minute)

    @app.exception_handler(RecursionError)
    async def _too_deep(_request: Request, _exc: Any) -> JSONResponse:
        body = {"error": {"code": "invalid", "message": "the input nests too deep", "fields": []}}
        return JSONResponse(body, status_code=422)
