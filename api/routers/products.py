"""`POST /v1/products`: the store's catalogue, and the restocks and price drops it reveals.

Each post upserts the products, and stores the `back_in_stock` / `price_dropped` events their
changes raise (nudge/commerce/catalog.py) in the same transaction, unrouted. They are then routed like
store events (`EventRouter.route_catalog_changes`: trigger events start journeys, goal events signal them) and marked
routed only once Temporal has them; a retried post, which finds nothing changed any more, routes
whatever a crash left unrouted for its products.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field

from api.deps import RoutingDep, SessionsDep, body_schema, json_body
from nudge.commerce import catalog
from nudge.events import schemas as ev

router = APIRouter(tags=["products"])

MAX_PRODUCTS = 500


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
    openapi_extra=body_schema(CatalogIn),
)
async def post_products(
    body: Annotated[CatalogIn, Depends(json_body(CatalogIn))],
    sessions: SessionsDep,
    routing: RoutingDep,
) -> CatalogResult:
    async with sessions.begin() as session:
        await catalog.apply(session, body.products)
    product_ids = list(dict.fromkeys(p.id for p in body.products))
    routed = await routing.route_catalog_changes(product_ids)
    return CatalogResult(
        products=len(product_ids),
        back_in_stock=routed.counts["back_in_stock"],
        price_dropped=routed.counts["price_dropped"],
        journeys=routed.journeys,
    )
