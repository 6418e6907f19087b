"""`POST /v1/events`: one store event or a batch of them."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from pydantic import ValidationError

from api.deps import RoutingDep, SessionsDep, SettingsDep
from api.errors import Invalid, invalid_from, invalid_json
from nudge.events import jsonbody
from nudge.events import schemas as ev
from nudge.journeys.routing import IngestResult

router = APIRouter(tags=["events"])

BODY_SCHEMA = {
    "oneOf": [
        {"$ref": "#/components/schemas/StoreEvent"},
        {
            "type": "array",
            "items": {"$ref": "#/components/schemas/StoreEvent"},
            "maxItems": ev.MAX_BATCH,
        },
    ]
}


def parse_events(body: Any) -> list[tuple[ev.StoreEventIn, dict[str, Any]]]:
    """Validate one event or a batch, naming the offending field (`0.cart.token` in a batch)."""
    try:
        if isinstance(body, list):
            return list(zip(ev.batch_adapter.validate_python(body), body, strict=True))
        if isinstance(body, dict):
            return [(ev.event_adapter.validate_python(body), body)]
    except ValidationError as err:
        raise invalid_from(err, tagged=True) from None
    raise Invalid("the body must be a JSON event object or an array of them", fields=[])


@router.post(
    "/events",
    status_code=202,
    summary="Send store events",
    description=(
        "Accepts one store event or a batch (up to 500). Each event is stored once (its `id` is "
        "the idempotency key), folded into contacts, carts and orders, and routed to journeys: "
        "trigger events start or feed a journey, goal events end the contact's journeys."
    ),
    openapi_extra={
        "requestBody": {"required": True, "content": {"application/json": {"schema": BODY_SCHEMA}}}
    },
)
async def post_events(
    request: Request,
    sessions: SessionsDep,
    settings: SettingsDep,
    routing: RoutingDep,
) -> IngestResult:
    try:
        body = jsonbody.loads(await request.body())
    except ValueError as err:
        raise invalid_json(err) from None
    batch = parse_events(body)
    return await routing.ingest(batch)
