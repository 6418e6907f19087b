"""One error hierarchy, rendered by one handler as `{"error": {"code", "message", ...}}`."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from nudge.events import jsonbody


class NudgeError(Exception):
    status_code = 400
    code = "bad_request"
    headers: dict[str, str] | None = None

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


class BadToken(NudgeError):
    """A signed link that was forged, altered or is not ours: refused, nothing changes."""

    status_code = 400
    code = "invalid_token"


class Unauthorized(NudgeError):
    status_code = 401
    code = "unauthorized"
    headers = {"WWW-Authenticate": "Bearer"}


class Refused(NudgeError):
    """A webhook call that is unsigned or badly signed: 401, nothing changes."""

    status_code = 401
    code = "unauthorized"


class Forbidden(NudgeError):
    status_code = 403
    code = "forbidden"


class TooManyAttempts(NudgeError):
    status_code = 429
    code = "too_many_attempts"

    def __init__(self, message: str, headers: dict[str, str] | None = None, **details: Any) -> None:
        super().__init__(message, **details)
        self.headers = headers


class NotFound(NudgeError):
    status_code = 404
    code = "not_found"


class Conflict(NudgeError):
    status_code = 409
    code = "conflict"


class Invalid(NudgeError):
    status_code = 422
    code = "invalid"


class Unavailable(NudgeError):
    status_code = 503
    code = "unavailable"


TAG_ERRORS = ("union_tag_invalid", "union_tag_not_found")


def _field(loc: tuple[int | str, ...], error_type: str, tagged: bool) -> str:
    parts = [str(p) for p in loc]
    if parts and parts[0] == "body":
        parts = parts[1:]
    index = parts[:1] if parts and parts[0].isdigit() else []
    rest = parts[len(index) :]
    if tagged and error_type in TAG_ERRORS:
        rest = ["type"]
    elif tagged and rest:
        rest = rest[1:]  # a discriminated union puts the event type first in the path
    return ".".join(index + rest) or "body"


def invalid_from(err: ValidationError | RequestValidationError, *, tagged: bool = False) -> Invalid:
    fields = []
    for item in err.errors():
        error_type = str(item.get("type", ""))
        name = _field(tuple(item.get("loc", ())), error_type, tagged)
        message = "field required" if error_type == "missing" else str(item.get("msg", "invalid"))
        fields.append({"field": name, "message": message})
    summary = "; ".join(f"{f['field']}: {f['message']}" for f in fields[:5])
    return Invalid(f"invalid input: {summary}", fields=fields)


def invalid_json(err: ValueError) -> Invalid:
    """A body `nudge.events.jsonbody` refused: not JSON, nested too deep, or text with NUL in
    it (then the field is named, as a validation error would)."""
    fields = (
        [{"field": err.field, "message": str(err)}] if isinstance(err, jsonbody.NulInText) else []
    )
    return Invalid(f"the body is not valid JSON: {err}", fields=fields)


def install(app: FastAPI) -> None:
    @app.exception_handler(NudgeError)
    async def _nudge_error(_request: Request, exc: NudgeError) -> JSONResponse:
        body = {"error": {"code": exc.code, "message": exc.message, **exc.details}}
        return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return await _nudge_error(request, invalid_from(exc))
