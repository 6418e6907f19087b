"""`POST /v1/products`: the store's catalogue, and the restocks and price drops it reveals.

Each post upserts the products, and stores the `back_in_stock` / `price_dropped` events their
changes raise (nudge/catalog.py) in the same transaction, unrouted. They are then routed like
store events (`Ingestor.route`: trigger events start journeys, goal events signal them) and marked
routed only once Temporal has them; a retried post, which finds nothing changed any more, routes
whatever a crash left unrouted for its products.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from api.deps import FlowsDep, SessionsDep, SettingsDep, TemporalClientDep
from api.ingest import Ingestor
from nudge.commerce import catalog
from nudge.events import schemas as ev
from nudge.intake import event_log
from nudge.journeys import records

router = APIRouter(tags=["products"])

MAX_PRODUCTS = 500
ROUTE_CHUNK = 100


class CatalogIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    products: Annotated[list[ev.ProductIn], Field(min_length=1, max_length=MAX_PRODUCTS)]


class CatalogResult(BaseModel):
    products: int = Field(description="Products upserted (one per id)")
    back_in_stock: int = Field(description="`back_in_stock` events routed by this call")
    price_dropped: int = Field(description="`price_dropped` events routed by this call")
    journeys: list[str] = Field(description="Journeys started or signalled")


@router.post(
    "/products",
    summary="Upsert catalogue products",
    description=(
        "Upserts up to 500 products (a field left out keeps its known value; `in_stock` defaults "
        "to true). A product back in stock raises `back_in_stock` for every contact who asked "
        "for it or viewed it in the last 30 days; a lower price raises `price_dropped` for every "
        "contact who viewed it then (neither for one who ordered it since). Retrying a post is "
        "safe: it routes what an interrupted one left unrouted and raises nothing twice."
    ),
)
async def post_products(
    body: CatalogIn,
    sessions: SessionsDep,
    client: TemporalClientDep,
    settings: SettingsDep,
    flows: FlowsDep,
) -> CatalogResult:
    async with sessions.begin() as session:
        await catalog.apply(session, body.products)
    product_ids = list(dict.fromkeys(p.id for p in body.products))
    ingestor = Ingestor(sessions, client, settings, flows)
    counts = dict.fromkeys(catalog.DERIVED_TYPES, 0)
    journeys: list[str] = []
    while True:
        async with sessions() as session:
            batch = await catalog.pending(session, product_ids, limit=ROUTE_CHUNK)
        if not batch:
            break
        started: list[dict[str, Any]] = []
        for contact_id, event in batch:
            journeys += await ingestor.route(event, contact_id, started)
            counts[event.type] += 1
        # Marked routed only once Temporal has every journey of the chunk: a crash before this
        # commit leaves them for the retry (starts and signals are idempotent).
        async with sessions.begin() as session:
            for values in started:
                await records.record_journey(session, **values)
            for _, event in batch:
                await event_log.mark_routed(session, event.id)
    return CatalogResult(
        products=len(product_ids),
        back_in_stock=counts["back_in_stock"],
        price_dropped=counts["price_dropped"],
        journeys=journeys,
    )
