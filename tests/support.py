"""Builders for store events and a handle on the running stack, shared by the tests."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import ActivityEnvironment, WorkflowEnvironment
from temporalio.worker import Replayer

from activities.segments import SegmentActivities
from nudge.contacts import directory
from nudge.dev.mailcatcher import CaughtMessage, MailCatcher
from nudge.events import schemas as ev
from nudge.intake import projection
from nudge.journeys.contracts import (
    JourneyState,
    SegmentRefreshInput,
    SegmentRefreshResult,
    SendEmailInput,
    workflow_id,
)
from nudge.journeys.routing import EventRouter
from nudge.keys import keyring
from nudge.mail import tracking
from nudge.mail.smtp import Commit, OutgoingMessage, SmtpSender
from nudge.segments import membership
from nudge.settings import Settings
from nudge.storage.installation import load_installation_id
from nudge.storage.models import JourneyRecord, Message, MessageStatus, utcnow
from workflows import FLOWS
from workflows.journey import Journey


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


def new_email() -> str:
    return f"ana.{uuid.uuid4().hex[:10]}@example.com"


def untracked(text: str, settings: Settings) -> str:
    """`text` with each click-tracking link (nudge/mail/tracking.py) replaced by the URL it leads to."""
    ring = keyring(settings)
    return re.sub(
        r"https?://[^\s\"'<>]+/t/c/([A-Za-z0-9_.-]+)",
        lambda match: tracking.verify_click(ring, match.group(1)).url,
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


def quiet_window_end(
    now: datetime, timezone: str, *, starts_in: timedelta, lasts: timedelta
) -> datetime:
    """When the window of `quiet_window(now, timezone, ...)` ends, as a moment: a test checks a
    held send against it, not against its journey's start, which comes a little after `now`
    (at 18:30:59 a window "19:30-00:31" ends 5 h 59 min after a journey started at 18:31)."""
    local = now.astimezone(ZoneInfo(timezone))
    return (local + starts_in + lasts + timedelta(minutes=1)).replace(second=0, microsecond=0)


def forged(mac: str) -> str:
    """A signature that differs from `mac` in its last two characters (never `mac` itself)."""
    return mac[:-2] + ("AA" if mac[-2:] != "AA" else "BB")


def dst_shift(earlier: datetime, later: datetime, timezone: str = "Europe/Lisbon") -> timedelta:
    """How much later (UTC) the same local time of day is at `later` than at `earlier`: an hour
    across the autumn change, minus an hour across the spring one, else zero. The test server's
    clock is wherever earlier tests left it, so a flow test may well span a change."""
    zone = ZoneInfo(timezone)
    before, after = earlier.astimezone(zone).utcoffset(), later.astimezone(zone).utcoffset()
    assert before is not None and after is not None
    return before - after


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


def refund_event(email: str, order_id: str, *, occurred_at: str | None = None) -> dict[str, Any]:
    return {
        "id": new_id("evt"),
        "type": "order_refunded",
        "occurred_at": occurred_at or iso(utcnow()),
        "contact": {"email": email},
        "order": {"id": order_id},
    }


def unsubscribe_event(email: str) -> dict[str, Any]:
    return {
        "id": new_id("evt"),
        "type": "customer_unsubscribed",
        "occurred_at": iso(utcnow()),
        "contact": {"email": email},
    }


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def days_ago(days: float) -> str:
    """An `occurred_at` `days` before now (wall clock: the database's time)."""
    return iso(utcnow() - timedelta(days=days))


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

    async def sent(self, workflow_id: str, step: str, *, within: float = 60.0) -> None:
        """Wait (bounded) until the journey's `step` email is logged as sent: a test that changes
        the world after a step must not race the step's activity on a loaded machine."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while not any(
            m.step == step and m.status == MessageStatus.SENT
            for m in await self.messages(workflow_id)
        ):
            if loop.time() > deadline:
                raise TimeoutError(f"{step} of {workflow_id} not sent within {within} s")
            await asyncio.sleep(0.05)

    def mail_to(self, email: str) -> list[CaughtMessage]:
        return [m for m in self.mail.messages if email in m.rcpt_tos]


async def cart_1_job(sessions: async_sessionmaker[AsyncSession]) -> SendEmailInput:
    """A new contact with an open cart, and the send activity's input for its `cart_1`: for
    tests that call the activity without a journey."""
    email, token = new_email(), new_id("cart")
    event = ev.event_adapter.validate_python(cart_event(email, token))
    async with sessions.begin() as session:
        contact_id = await directory.upsert_contact(session, event.contact)
        await projection.apply_event(session, event, contact_id)
    return SendEmailInput.model_validate(
        {
            "workflow_id": f"cart_abandonment-{contact_id}-{token}",
            "trigger_event_id": "evt_start",
            "flow": "cart_abandonment",
            "step": "cart_1",
            "template": "cart_1",
            "contact_id": contact_id,
            "key": token,
            "journey_started_at": datetime(2026, 11, 23, 10, tzinfo=UTC),
        }
    )


class Crash(Exception):
    """Stands for the worker dying at the commit point (SIGKILL in the chaos run)."""


class CrashAtCommit(SmtpSender):
    """A sender whose worker dies between streaming a message and committing it `sent`."""

    async def send(
        self, message: OutgoingMessage | EmailMessage, *, commit: Commit | None = None
    ) -> None:
        async def crash() -> None:
            raise Crash()

        await super().send(message, commit=crash)


# ---- segments and journeys of the lifecycle flows (win-back, VIP, sunset) ----------------------


async def contact_id(stack: Stack, email: str) -> int:
    async with stack.sessions() as session:
        contact = await directory.contact_by_email(session, email)
    assert contact is not None, f"no contact {email}"
    return contact.id


async def refresh_segments(
    stack: Stack, flows: Sequence[type[Journey]], now: datetime
) -> SegmentRefreshResult:
    """The hourly refresh of time-based segments at `now` (the activity the `segment_refresh`
    workflow runs), starting the journeys of `flows` that its entries trigger."""
    refresh = SegmentActivities(EventRouter(stack.sessions, stack.temporal, stack.settings, flows))
    return await ActivityEnvironment().run(
        refresh.refresh_time_based_segments, SegmentRefreshInput(now=now)
    )


async def refresh_contact(
    stack: Stack, flows: Sequence[type[Journey]], contact: int, now: datetime
) -> list[str]:
    """What the next event about one contact does to its segments, at `now`: its memberships
    recomputed and the journeys of `flows` that its entries trigger started (workflow ids).
    For a clock months ahead without moving every other contact of the session's database."""
    router = EventRouter(stack.sessions, stack.temporal, stack.settings, flows)
    async with stack.sessions.begin() as session:
        await membership.refresh_contact(
            session, contact, now, triggers=router.segment_flows.keys()
        )
    return await router.route_segment_entries(contact)


async def journeys(stack: Stack, flow: str, contact: int) -> list[JourneyRecord]:
    """The journeys of `flow` started for the contact (one row per run), oldest first."""
    async with stack.sessions() as session:
        rows = await session.scalars(
            select(JourneyRecord)
            .where(JourneyRecord.flow == flow, JourneyRecord.contact_id == contact)
            .order_by(JourneyRecord.id)
        )
        return list(rows)


HISTORIES = Path(__file__).parent / "workflows" / "histories"


async def record_history(stack: Stack, name: str, workflow_id: str) -> None:
    """Replay a journey that just ran on the current flows (a fresh history must replay), and
    with NUDGE_RECORD_HISTORIES=1 keep it as `tests/workflows/histories/<name>.json`, which
    test_replay.py replays from then on: commit it when a flow changes on purpose."""
    history = await stack.temporal.get_workflow_handle(workflow_id).fetch_history()
    await Replayer(workflows=list(FLOWS), data_converter=pydantic_data_converter).replay_workflow(
        history
    )
    if os.environ.get("NUDGE_RECORD_HISTORIES"):
        HISTORIES.mkdir(exist_ok=True)
        (HISTORIES / f"{name}.json").write_text(history.to_json())


# ---- Nudge processes -------------------------------------------------------------------------

ROOT = Path(__file__).resolve().parent.parent
# Nothing listens on the discard port: a worker that got as far as Temporal would fail otherwise.
UNREACHABLE = {"NUDGE_TEMPORAL_ADDRESS": "127.0.0.1:9", "NUDGE_DATABASE_URL": "sqlite+aiosqlite://"}


def run_nudge(argv: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """Runs a Nudge process with only these NUDGE_* settings, from a directory without `.env`."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("NUDGE_")}
    return subprocess.run(
        argv, cwd=cwd, env=clean | UNREACHABLE | env, capture_output=True, text=True, timeout=120
    )


async def journey_id(stack: Stack, flow: str, contact: int, key: str) -> str:
    """The workflow id routing gives a new journey: with this database's installation id."""
    return workflow_id(flow, contact, key, await load_installation_id(stack.sessions))
