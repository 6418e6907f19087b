"""Typed inputs and outputs passed between the API, the journey workflows and the activities.

Imported by workflow code through `imports_passed_through()`, so this module must stay free of
I/O and side effects. Models only ever gain optional fields: histories recorded with an older
shape must keep deserialising.
"""

from __future__ import annotations

import enum
import hashlib
from datetime import datetime

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


class SentEmail(BaseModel):
    step: str
    message_id: str
    status: str
    reason: str | None = None
    at: datetime


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


class SendEmailResult(BaseModel):
    message_id: str
    status: str = Field(description="sent, skipped or failed")
    reason: str | None = None
    error: str | None = None


def workflow_id(flow: str, contact_id: int, key: str) -> str:
    return f"{flow}-{contact_id}-{key}"


def message_id(workflow_id: str, trigger_event_id: str, step: str, domain: str) -> str:
    """The RFC 5322 Message-ID of one journey step: the same on every retry and replay."""
    digest = hashlib.sha256(f"{workflow_id}\x1f{trigger_event_id}\x1f{step}".encode()).hexdigest()
    return f"{digest[:32]}@{domain}"


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
