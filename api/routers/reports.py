"""`GET /v1/reports/...`: the figures of the dashboard as JSON, so they can be scripted.

Authenticated like every `/v1` route (`Authorization: Bearer $NUDGE_API_KEY`) or by the
dashboard's session cookie (api/sessions.py: it expires and can be revoked).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from api.deps import FlowsDep, SessionDep, SessionsDep, SettingsDep, key_ok
from api.errors import Invalid, NotFound, Unauthorized
from api.sessions import COOKIE, session_ok
from nudge.analytics import metrics, reports
from nudge.contacts import directory
from nudge.storage.models import Contact, Segment

_bearer = HTTPBearer(auto_error=False, description="`Authorization: Bearer $NUDGE_API_KEY`")


async def require_report_access(
    request: Request,
    settings: SettingsDep,
    sessions: SessionsDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    if credentials is not None:
        allowed = key_ok(settings, credentials.credentials)
    else:
        allowed = await session_ok(sessions, settings, request.cookies.get(COOKIE))
    if not allowed:
        raise Unauthorized("missing or wrong API key: send `Authorization: Bearer <NUDGE_API_KEY>`")


router = APIRouter(tags=["reports"], dependencies=[Depends(require_report_access)])


def _utc(moment: datetime | None) -> datetime | None:
    if moment is None:
        return None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


async def _scope(
    session: SessionDep,
    start: Annotated[
        datetime | None, Query(description="Messages sent from (ISO 8601, UTC if no offset)")
    ] = None,
    end: Annotated[datetime | None, Query(description="Messages sent before")] = None,
    days: Annotated[
        int | None, Query(ge=1, le=3660, description="The last N days (instead of start)")
    ] = None,
    segment: Annotated[
        str | None, Query(description="Only contacts now in this segment (its id)")
    ] = None,
) -> tuple[metrics.Period, str | None]:
    begin, until = _utc(start), _utc(end)
    if days is not None:
        if start is not None:
            raise Invalid(
                "give either start or days",
                fields=[{"field": "days", "message": "conflicts with start"}],
            )
        begin = (until or datetime.now(UTC)) - timedelta(days=days)
    if begin is not None and until is not None and until <= begin:
        raise Invalid(
            "end must be after start", fields=[{"field": "end", "message": "not after start"}]
        )
    if segment is not None and await session.get(Segment, segment) is None:
        raise Invalid(
            f"no segment {segment!r}", fields=[{"field": "segment", "message": "unknown segment"}]
        )
    return metrics.Period(begin, until), segment


ScopeDep = Annotated[tuple[metrics.Period, str | None], Depends(_scope)]


def _known(flows: FlowsDep) -> list[str]:
    return [flow.flow for flow in flows]


@router.get("/reports/flows", response_model=reports.Overview, summary="Every flow's figures")
async def overview(
    session: SessionDep, settings: SettingsDep, flows: FlowsDep, scope: ScopeDep
) -> reports.Overview:
    period, segment = scope
    return await reports.overview(session, settings, _known(flows), period, segment)


async def _flow_name(session: SessionDep, flows: FlowsDep, flow: str) -> str:
    if flow not in _known(flows) and flow not in await metrics.flows_sent(session):
        raise NotFound(f"no flow {flow!r}")
    return flow


@router.get(
    "/reports/flows/{flow}",
    response_model=reports.FlowReport,
    summary="One flow: funnel, steps, A/B variants, daily rates",
)
async def flow_report(
    flow: str, session: SessionDep, settings: SettingsDep, flows: FlowsDep, scope: ScopeDep
) -> reports.FlowReport:
    period, segment = scope
    name = await _flow_name(session, flows, flow)
    report = await reports.flow_report(session, settings, name, period, segment)
    await session.commit()  # an A/B decision reached while reporting is recorded
    return report


@router.get(
    "/reports/flows/{flow}/preview",
    response_model=list[reports.EmailPreview],
    summary="Every email of a flow rendered for one contact (no tracking, nothing sent)",
)
async def preview(
    flow: str,
    session: SessionDep,
    sessions: SessionsDep,
    settings: SettingsDep,
    flows: FlowsDep,
    contact: Annotated[str, Query(description="The contact's email address or id")],
) -> list[reports.EmailPreview]:
    name = await _flow_name(session, flows, flow)
    # An id is ASCII digits that fit a BIGINT ("²" is a digit to `isdigit`, and not an int).
    as_id = contact.isascii() and contact.isdigit() and len(contact) <= 18
    found = (
        await session.get(Contact, int(contact))
        if as_id
        else await directory.contact_by_email(session, contact)
    )
    if found is None:
        raise NotFound(f"no contact {contact!r}")
    declared = next((tuple(getattr(f, "emails", ())) for f in flows if f.flow == name), ())
    return await reports.preview(sessions, settings, name, declared, found)
