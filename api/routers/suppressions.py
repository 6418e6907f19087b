"""The suppression list through the API: `GET/POST/DELETE /v1/suppressions` and a contact's
entries at `GET /v1/contacts/{email}/suppressions` (README "Deliverability and consent")."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, EmailStr, Field

from api.deps import SessionsDep, body_schema, json_body
from api.errors import NotFound
from nudge.contacts import directory, suppression
from nudge.storage.models import Suppression

router = APIRouter(tags=["suppressions"])

Reason = Literal["hard_bounce", "soft_bounce", "complaint", "unsubscribe", "manual", "sunset"]


class SuppressionOut(BaseModel):
    id: int
    email: str
    reason: str
    source: str
    details: str | None
    at: datetime
    blocks: Literal["all", "marketing"]

    @classmethod
    def of(cls, row: Suppression) -> SuppressionOut:
        return cls(
            id=row.id,
            email=row.email,
            reason=row.reason,
            source=row.source,
            details=row.details,
            at=row.at,
            blocks="all" if row.reason in suppression.BLOCKS_ALL else "marketing",
        )


class SuppressionsOut(BaseModel):
    suppressions: list[SuppressionOut]
    next_after: int | None = Field(description="Pass as `after` for the next page")


class SuppressionIn(BaseModel):
    email: EmailStr
    reason: Reason = "manual"
    details: Annotated[str, Field(max_length=1000)] | None = None


@router.get("/suppressions", summary="The suppression list, oldest first")
async def list_suppressions(
    sessions: SessionsDep,
    reason: Reason | None = None,
    after: Annotated[int, Query(ge=0, le=2**63 - 1)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> SuppressionsOut:
    async with sessions() as session:
        rows = await suppression.listing(session, reason=reason, after=after, limit=limit)
    return SuppressionsOut(
        suppressions=[SuppressionOut.of(r) for r in rows],
        next_after=rows[-1].id if len(rows) == limit else None,
    )


@router.post(
    "/suppressions",
    status_code=201,
    summary="Suppress a known contact's address",
    openapi_extra=body_schema(SuppressionIn),
)
async def add_suppression(
    body: Annotated[SuppressionIn, Depends(json_body(SuppressionIn))], sessions: SessionsDep
) -> SuppressionOut:
    async with sessions.begin() as session:
        contact = await directory.contact_by_email(session, body.email.lower())
        if contact is None:
            raise NotFound(f"no contact with email {body.email!r}")
        await suppression.add(session, contact, body.reason, source="api", details=body.details)
        rows = await suppression.of_contact(session, contact.id)
    [row] = [r for r in rows if r.reason == body.reason]
    return SuppressionOut.of(row)


@router.delete("/suppressions/{email}", summary="Lift a contact's suppressions")
async def remove_suppression(
    email: str, sessions: SessionsDep, reason: Reason | None = None
) -> dict[str, int]:
    async with sessions.begin() as session:
        contact = await directory.contact_by_email(session, email.lower())
        if contact is None:
            raise NotFound(f"no contact with email {email!r}")
        removed = await suppression.remove(session, contact.id, reason)
    return {"removed": removed}


@router.get("/contacts/{email}/suppressions", summary="A contact's suppressions")
async def contact_suppressions(email: str, sessions: SessionsDep) -> SuppressionsOut:
    async with sessions() as session:
        contact = await directory.contact_by_email(session, email.lower())
        if contact is None:
            raise NotFound(f"no contact with email {email!r}")
        rows = await suppression.of_contact(session, contact.id)
    return SuppressionsOut(suppressions=[SuppressionOut.of(r) for r in rows], next_after=None)
