"""Dependencies shared by the routers, as `Annotated` aliases."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated, Any, TypeVar

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ValidationError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio.client import Client

from api.errors import Unauthorized, invalid_from, invalid_json
from nudge.events import jsonbody
from nudge.journeys.routing import EventRouter, Flow
from nudge.settings import Settings


def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def _sessions(request: Request) -> async_sessionmaker[AsyncSession]:
    sessions: async_sessionmaker[AsyncSession] = request.app.state.sessions
    return sessions


async def _session(request: Request) -> AsyncIterator[AsyncSession]:
    async with _sessions(request)() as session:
        yield session


def _routing(request: Request) -> EventRouter:
    routing: EventRouter = request.app.state.routing
    return routing


def _temporal(request: Request) -> Client:
    return _routing(request).client


def _flows(request: Request) -> tuple[type[Flow], ...]:
    return _routing(request).flows


SettingsDep = Annotated[Settings, Depends(_settings)]
SessionsDep = Annotated[async_sessionmaker[AsyncSession], Depends(_sessions)]
SessionDep = Annotated[AsyncSession, Depends(_session)]
TemporalClientDep = Annotated[Client, Depends(_temporal)]
FlowsDep = Annotated[tuple[type[Flow], ...], Depends(_flows)]
#: The routing service (nudge.journeys.routing), built once at start with the app's flows.
RoutingDep = Annotated[EventRouter, Depends(_routing)]

_bearer = HTTPBearer(auto_error=False, description="`Authorization: Bearer $NUDGE_API_KEY`")


UNAUTHORIZED = "missing or wrong API key: send `Authorization: Bearer <NUDGE_API_KEY>`"


def key_ok(settings: Settings, given: str | None) -> bool:
    """Whether `given` is the API key; never when either is empty: a missing header, or an empty
    NUDGE_API_KEY, opens nothing."""
    if not given or not settings.api_key:
        return False
    return secrets.compare_digest(given.encode(), settings.api_key.encode())


async def require_api_key(
    settings: SettingsDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    if not key_ok(settings, credentials.credentials if credentials else None):
        raise Unauthorized(UNAUTHORIZED)


Model = TypeVar("Model", bound=BaseModel)
#: The models read by `json_body`, whose schemas the app publishes (api/app.py `openapi`).
BODY_MODELS: list[type[BaseModel]] = []


def json_body(model: type[Model]) -> Callable[[Request], Awaitable[Model]]:
    """A dependency: the request's JSON body as `model`. Unlike a FastAPI body parameter it
    is read after the route's other dependencies, so a call without the API key is a 401
    whatever its body, and it is parsed with bounded nesting (nudge.events.jsonbody)."""
    BODY_MODELS.append(model)

    async def parse(request: Request) -> Model:
        try:
            data = jsonbody.loads(await request.body())
        except ValueError as err:
            raise invalid_json(err) from None
        try:
            return model.model_validate(data)
        except ValidationError as err:
            raise invalid_from(err) from None

    return parse


def body_schema(model: type[BaseModel]) -> dict[str, Any]:
    """`openapi_extra` that documents a `json_body(model)` route's body."""
    schema = {"$ref": f"#/components/schemas/{model.__name__}"}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}
