"""The FastAPI application: `uvicorn api.app:app`."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI
from fastapi.openapi.utils import get_openapi
from temporalio.client import Client

from api import errors, limits
from api.deps import BODY_MODELS, require_api_key
from api.routers import (
    contacts,
    dashboard,
    email_links,
    events,
    health,
    products,
    reports,
    segments,
    suppressions,
    tracking,
    webhooks,
)
from nudge.events import schemas as ev
from nudge.journeys.connection import connect
from nudge.journeys.routing import EventRouter
from nudge.segments.catalogue import ensure_builtin_segments
from nudge.settings import Settings, UnsafeSecrets, get_settings
from nudge.storage.db import create_engine, session_maker
from nudge.storage.models import utcnow
from workflows import FLOWS
from workflows.journey import Journey


def create_app(
    settings: Settings | None = None,
    temporal: Client | None = None,
    flows: Sequence[type[Journey]] = FLOWS,
) -> FastAPI:
    """Build the app; tests pass their own settings, Temporal client and flows. Raises
    UnsafeSecrets when the secrets are not fit to run with (`Settings.check_secrets`)."""
    settings = settings or get_settings()
    settings.check_secrets()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = create_engine(settings.database_url)
        app.state.sessions = session_maker(engine)
        # Idempotent; the worker does the same at its start, whichever comes first seeds them.
        async with app.state.sessions.begin() as session:
            await ensure_builtin_segments(session, utcnow())
        client = temporal or await connect(settings)
        app.state.routing = EventRouter(app.state.sessions, client, settings, flows)
        try:
            yield
        finally:
            await engine.dispose()

    app = FastAPI(
        title="Nudge",
        version="0.1.0",
        summary="E-commerce email flows as Python code, run on Temporal.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    errors.install(app)
    limits.install(app, settings)
    include_routers(app)

    app.openapi = lambda: openapi(app)  # type: ignore[method-assign]
    return app


def include_routers(app: FastAPI) -> None:
    """Every route, each with how it authenticates."""
    key = [Depends(require_api_key)]
    app.include_router(events.router, prefix="/v1", dependencies=key)
    app.include_router(products.router, prefix="/v1", dependencies=key)
    app.include_router(contacts.router, prefix="/v1", dependencies=key)
    app.include_router(segments.router, prefix="/v1", dependencies=key)
    # Signed links act without a key: the token is the credential.
    app.include_router(email_links.router)
    # Deliverability (README "Deliverability and consent"): each authenticates its own way.
    app.include_router(suppressions.router, prefix="/v1", dependencies=key)
    app.include_router(webhooks.router)
    # Reports take the key as a header or as the dashboard's cookie (api/routers/reports.py).
    app.include_router(reports.router, prefix="/v1")
    app.include_router(tracking.router)
    app.include_router(dashboard.router)
    # Liveness, and the workers' sender faults: no login, no personal data, no secrets.
    app.include_router(health.router)


def openapi(app: FastAPI) -> dict[str, Any]:
    """The generated schema, with the real schemas of the bodies validated by hand."""
    if app.openapi_schema is None:
        schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
        # The event body is validated by hand (for precise errors); publish its real schema.
        event_schema = ev.event_adapter.json_schema(ref_template="#/components/schemas/{model}")
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        components.update(event_schema.pop("$defs", {}))
        components["StoreEvent"] = event_schema
        components.update(segments.schemas())
        for model in BODY_MODELS:
            body = model.model_json_schema(ref_template="#/components/schemas/{model}")
            components.update(body.pop("$defs", {}))
            components[model.__name__] = body
        app.openapi_schema = schema
    return app.openapi_schema


def __getattr__(name: str) -> Any:
    # `uvicorn api.app:app` builds the app on first access, not at import (tests import freely).
    if name == "app":
        try:
            return create_app()
        except UnsafeSecrets as err:
            # Said plainly, without a traceback: it is the operator's setting, not a bug.
            raise SystemExit(str(err)) from None
    raise AttributeError(name)
