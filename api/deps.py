"""Dependencies shared by the routers, as `Annotated` aliases."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio.client import Client

from api.errors import Unauthorized
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
        raise Unauthorized("missing or wrong API key: send `Authorization: Bearer <NUDGE_API_KEY>`")
