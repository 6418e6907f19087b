"""`GET /healthz`: a liveness probe, without a login, that also says when the workers cannot send
(README "Sending through a provider"). It always answers 200: an orchestrator must not restart
the API because the mail provider refused a password (or the database is slow)."""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime
from typing import Literal

from fastapi import APIRouter
from pydantic import BaseModel, Field
from sqlalchemy.exc import SQLAlchemyError

from api.deps import SessionsDep, SettingsDep
from nudge.storage.models import utcnow
from nudge.storage.sender_status import STALE_AFTER, sender_health

log = logging.getLogger(__name__)
router = APIRouter(tags=["health"])

#: The probe answers within this, database or not.
DATABASE_WAIT = 2.0


class Health(BaseModel):
    status: Literal["ok", "degraded"] = Field(
        description="`degraded` while a worker reports a sender fault (or the database does "
        "not answer); the API itself is up either way"
    )
    smtp: str | None = Field(
        None,
        description="What the worker's SMTP server refuses and the settings to check, e.g. "
        "`535 authentication failed: check NUDGE_SMTP_USERNAME / NUDGE_SMTP_PASSWORD`",
    )
    since: datetime | None = Field(None, description="when a worker first found this fault")
    checked_at: datetime | None = Field(None, description="when a worker last found it again")
    stale: bool | None = Field(
        None,
        description=f"true when no worker found the fault again for "
        f"{int(STALE_AFTER.total_seconds() // 60)} minutes (no mail to send, or no worker)",
    )
    database: str | None = Field(None, description="`not answering` when the database did not")


@router.get(
    "/healthz",
    summary="Liveness, and whether the workers can send",
    response_model=Health,
    response_model_exclude_none=True,
    description=(
        "No authentication: anyone may call it. Always 200 while the API runs. The body names "
        "a sender fault a worker of this task queue found (a refused SMTP login, a failed TLS "
        "handshake, a certificate for another host) and the settings to check; it carries no "
        "personal data and no secrets: no address, no username, no password, no host, nothing "
        "the SMTP server replied but its code. The worker log has the details."
    ),
)
async def healthz(settings: SettingsDep, sessions: SessionsDep) -> Health:
    try:
        async with asyncio.timeout(DATABASE_WAIT), sessions() as session:
            fault = await sender_health(session, settings.task_queue)
    except (SQLAlchemyError, OSError, TimeoutError) as err:
        log.warning("/healthz: the database did not answer: %r", err)
        return Health(status="degraded", database="not answering")
    if fault is None:
        return Health(status="ok")
    return Health(
        status="degraded",
        smtp=fault.summary,
        since=fault.since,
        checked_at=fault.checked_at,
        stale=fault.stale(utcnow()),
    )
