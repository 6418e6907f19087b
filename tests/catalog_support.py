"""Builders for the product-driven flows' tests: product events, catalogue posts, and the
recording of their histories for the replay tests."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from support import Stack, new_id


def product(product_id: str, **fields: Any) -> dict[str, Any]:
    # No category by default: "similar" recommendations in other tests' emails stay theirs.
    return {
        "id": product_id,
        "title": "Linen shirt",
        "url": f"https://shop.example/p/{product_id}",
        "image_url": f"https://shop.example/img/{product_id}.jpg",
        "price": "49.00",
        "currency": "EUR",
    } | fields


def ago(**delta: float) -> str:
    """An `occurred_at` that long before now (the catalogue's interest window is in real time)."""
    return (datetime.now(UTC) - timedelta(**delta)).isoformat()


def product_event(
    email: str,
    item: dict[str, Any],
    *,
    type: str = "product_viewed",
    occurred_at: str | None = None,
    event_id: str | None = None,
) -> dict[str, Any]:
    return {
        "id": event_id or new_id("evt"),
        "type": type,
        "occurred_at": occurred_at or ago(minutes=5),
        "contact": {"email": email, "first_name": "Ana", "timezone": "Europe/Lisbon"},
        "product": item,
    }


async def post_products(stack: Stack, *items: dict[str, Any]) -> httpx.Response:
    return await stack.http.post(
        "/v1/products",
        json={"products": list(items)},
        headers={"Authorization": f"Bearer {stack.settings.api_key}"},
    )
