"""Builders for store events and a handle on the running stack, shared by the tests."""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import httpx
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from nudge import tracking
from nudge.journeys import JourneyState
from nudge.mailcatcher import CaughtMessage, MailCatcher
from nudge.models import Message
from nudge.settings import Settings


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


def new_email() -> str:
    return f"ana.{uuid.uuid4().hex[:10]}@example.com"


def untracked(text: str, secret: str) -> str:
    """`text` with each click-tracking link (nudge/tracking.py) replaced by the URL it leads to."""
    return re.sub(
        r"https?://[^\s\"'<>]+/t/c/([A-Za-z0-9_.-]+)",
        lambda match: tracking.verify_click(secret, match.group(1)).url,
        text,
    )


def quiet_window(now: datetime, timezone: str, *, starts_in: timedelta, lasts: timedelta) -> str:
    """A NUDGE_QUIET_HOURS value whose window opens `starts_in` after `now` (the test server's
    clock) in `timezone` and lasts `lasts`, so a test can put a send inside it. Whole minutes,
    rounded so that the window covers the moments asked for."""
    local = now.astimezone(ZoneInfo(timezone))
    start = (local + starts_in).replace(second=0, microsecond=0)
    end = (local + starts_in + lasts + timedelta(minutes=1)).replace(second=0, microsecond=0)
    return f"{start:%H:%M}-{end:%H:%M}"


def cart_event(
    email: str,
    token: str,
    *,
    event_id: str | None = None,
    lines: list[dict[str, Any]] | None = None,
    occurred_at: str = "2026-11-23T10:00:00Z",
    type: str = "cart_updated",
) -> dict[str, Any]:
    if lines is None:
        lines = [
            {
                "product_id": "p1",
                "title": "Linen shirt",
                "price": "49.00",
                "quantity": 1,
                "image_url": "https://shop.example/img/p1.jpg",
                "url": "https://shop.example/p/p1",
            }
        ]
    return {
        "id": event_id or new_id("evt"),
        "type": type,
        "occurred_at": occurred_at,
        "contact": {"email": email, "first_name": "Ana", "timezone": "Europe/Lisbon"},
        "cart": {
            "token": token,
            "currency": "EUR",
            "checkout_url": f"https://shop.example/checkout/{token}",
            "lines": lines,
        },
    }


def order_event(
    email: str,
    order_id: str,
    *,
    cart_token: str | None = None,
    event_id: str | None = None,
    occurred_at: str = "2026-11-23T11:00:00Z",
) -> dict[str, Any]:
    return {
        "id": event_id or new_id("evt"),
        "type": "order_placed",
        "occurred_at": occurred_at,
        "contact": {"email": email},
        "order": {
            "id": order_id,
            "cart_token": cart_token,
            "currency": "EUR",
            "total": "49.00",
            "lines": [
                {"product_id": "p1", "title": "Linen shirt", "price": "49.00", "quantity": 1}
            ],
        },
    }


@dataclass
class Stack:
    """The API (in process), a real worker, Temporal, the database and an SMTP server."""

    settings: Settings
    temporal: Client
    http: httpx.AsyncClient
    sessions: async_sessionmaker[AsyncSession]
    mail: MailCatcher
    env: WorkflowEnvironment

    async def finish(self, workflow_id: str) -> JourneyState:
        """The journey's final state, skipping time while it runs (the API started it, so its
        handle is not one of the test server's auto-skipping ones)."""
        handle = self.temporal.get_workflow_handle(workflow_id, result_type=JourneyState)
        async with self.env.time_skipping_unlocked():  # type: ignore[attr-defined]
            # One long poll ends after ~20 s of wall time with nothing; on a loaded machine a
            # journey can take longer than that, so poll again (bounded).
            for _ in range(5):
                try:
                    state: JourneyState = await handle.result()
                except RuntimeError as err:
                    if "No completion event found" not in str(err):
                        raise
                else:
                    return state
        raise TimeoutError(f"journey {workflow_id} did not finish in 5 long polls")

    async def post(self, body: Any, *, key: str | None = None) -> httpx.Response:
        headers = {"Authorization": f"Bearer {key if key is not None else self.settings.api_key}"}
        return await self.http.post("/v1/events", json=body, headers=headers)

    async def messages(self, workflow_id: str) -> list[Message]:
        async with self.sessions() as session:
            rows = await session.scalars(
                select(Message)
                .where(Message.workflow_id == workflow_id)
                .order_by(Message.created_at)
            )
            return list(rows)

    def mail_to(self, email: str) -> list[CaughtMessage]:
        return [m for m in self.mail.messages if email in m.rcpt_tos]
