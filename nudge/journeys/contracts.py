"""Typed inputs and outputs passed between the API, the journey workflows and the activities.

Imported by workflow code through `imports_passed_through()`, so this module must stay free of
I/O and side effects. Models only ever gain optional fields: histories recorded with an older
shape must keep deserialising.
"""

from __future__ import annotations

import enum
import hashlib
from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field


class JourneyStatus(enum.StrEnum):
    RUNNING = "running"
    COMPLETED = "completed"
    CONVERTED = "converted"
    EXITED = "exited"
    FAILED = "failed"


class JourneyInput(BaseModel):
    flow: str
    contact_id: int
    key: str = Field(description="What the journey is about, e.g. the cart token")
    trigger_event_id: str
    time_scale: float = Field(default=1.0, gt=0)
    # The contact's IANA timezone when the journey started (the store's when unknown): the zone
    # of `wait_until` and of quiet hours.
    timezone: str | None = None
    # The store's quiet hours, "21:00-08:00" (NUDGE_QUIET_HOURS); "" for none.
    quiet_hours: str | None = None


class JourneyEvent(BaseModel):
    """A store event as a running journey sees it (no personal data)."""

    id: str
    type: str
    occurred_at: datetime
    cart_token: str | None = None
    order_id: str | None = None
    line_count: int | None = None
    # Set on `segment_entered`, the event a journey started by a segment entry begins with.
    segment_id: str | None = None
    product_id: str | None = None


class SentEmail(BaseModel):
    step: str
    message_id: str
    status: str
    reason: str | None = None
    at: datetime
    # The A/B variant this contact got, for a step with variants.
    variant: str | None = None


class JourneyState(BaseModel):
    flow: str
    contact_id: int
    key: str
    status: JourneyStatus = JourneyStatus.RUNNING
    step: str = "started"
    exit_reason: str | None = None
    started_at: datetime | None = None
    emails: list[SentEmail] = []


class SendEmailInput(BaseModel):
    workflow_id: str
    trigger_event_id: str
    flow: str
    step: str
    template: str
    contact_id: int
    key: str
    journey_started_at: datetime
    transactional: bool = False
    # The preference-page topic a marketing email belongs to (README "Deliverability").
    topic: str = "promotions"
    # A/B: the variant the workflow picked (deterministic per contact) and every variant of the
    # step by name -> template, so the activity can send a recorded winner instead.
    variant: str | None = None
    variants: dict[str, str] | None = None
    # Flow filters (activities/filters.py) re-checked from the database before this message.
    filters: list[str] | None = None
    # Smart sending: skip this step if the contact got a marketing email in the last
    # NUDGE_SMART_SENDING_HOURS (divided by `time_scale`), measured in workflow time (`now`).
    smart_sending: bool = False
    time_scale: float = 1.0
    now: datetime | None = None
    # A step's own incentive (a win-back ladder grows it); None: what the contact's segments get.
    offer_percent: int | None = None


class SendEmailResult(BaseModel):
    message_id: str
    status: str = Field(description="sent, skipped or failed")
    reason: str | None = None
    error: str | None = None


def workflow_id(flow: str, contact_id: int, key: str, installation: str | None = None) -> str:
    """A journey's id: `{installation}-{flow}-{contact id}-{key}`. Contact ids restart at 1 in a
    fresh database, so the installation's id (nudge.storage.installation) keeps two Nudge
    databases on one namespace apart. Without it, the format of journeys started before it
    (still running under that id, which routing finds through the journeys table)."""
    legacy = f"{flow}-{contact_id}-{key}"
    return f"{installation}-{legacy}" if installation else legacy


def message_id(workflow_id: str, trigger_event_id: str, step: str, domain: str) -> str:
    """The RFC 5322 Message-ID of one journey step: the same on every retry and replay."""
    digest = hashlib.sha256(f"{workflow_id}\x1f{trigger_event_id}\x1f{step}".encode()).hexdigest()
    return f"{digest[:32]}@{domain}"


class ContactProfileInput(BaseModel):
    contact_id: int
    # The properties the flow branches on, by name: only these reach the workflow's history.
    # None (histories recorded before there was a choice) means every property.
    properties: list[str] | None = None


class ContactProfile(BaseModel):
    """What a conditional split may branch on, read from the database at that step."""

    segments: list[str] = []
    properties: dict[str, Any] = {}
    tags: list[str] = []
    orders: int = 0
    # The last open or click (machine opens excluded), if any.
    last_engaged_at: datetime | None = None


class ContactUpdateInput(BaseModel):
    """A flow step that changes the contact: properties merged, tags added, or (with
    `suppress`) the contact suppressed from marketing with that reason, e.g. "sunset"."""

    workflow_id: str
    step: str
    contact_id: int
    properties: dict[str, str | int | float | bool | None] = {}
    tags: list[str] = []
    suppress: str | None = None


class WebhookInput(BaseModel):
    """A signed outbound webhook to a named endpoint (NUDGE_WEBHOOKS), for other channels."""

    workflow_id: str
    step: str
    contact_id: int
    flow: str
    endpoint: str
    payload: dict[str, Any] = {}


class WebhookResult(BaseModel):
    status_code: int


class SegmentRefreshInput(BaseModel):
    """The scheduled refresh of time-based segments; `now` defaults to the workflow's time."""

    now: datetime | None = None


class SegmentCounts(BaseModel):
    entered: int = 0
    exited: int = 0


class SegmentRefreshResult(BaseModel):
    now: datetime
    segments: dict[str, SegmentCounts] = {}
    journeys_started: int = 0


__all__ = [
    "ContactProfile",
    "ContactProfileInput",
    "ContactUpdateInput",
    "JourneyEvent",
    "JourneyInput",
    "JourneyState",
    "JourneyStatus",
    "SegmentCounts",
    "SegmentRefreshInput",
    "SegmentRefreshResult",
    "SendEmailInput",
    "SendEmailResult",
    "SentEmail",
    "WebhookInput",
    "WebhookResult",
    "message_id",
    "workflow_id",
]
