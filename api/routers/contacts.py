"""`GET /v1/contacts/{email}/journeys`: what a contact is going through, and where."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter
from pydantic import BaseModel
from temporalio.client import WorkflowExecutionStatus
from temporalio.service import RPCError

from api.deps import SessionDep, TemporalClientDep
from api.errors import NotFound
from nudge.contacts import directory
from nudge.journeys import records
from nudge.journeys.contracts import JourneyStatus
from nudge.journeys.search_attributes import STATUS, STEP

router = APIRouter(tags=["contacts"])


class JourneyOut(BaseModel):
    workflow_id: str
    run_id: str
    flow: str
    status: str
    step: str | None
    started_at: datetime
    closed_at: datetime | None = None


class JourneysOut(BaseModel):
    contact_id: int
    journeys: list[JourneyOut]


@router.get("/contacts/{email}/journeys", summary="A contact's journeys")
async def contact_journeys(
    email: str, session: SessionDep, client: TemporalClientDep
) -> JourneysOut:
    contact = await directory.contact_by_email(session, email)
    if contact is None:
        raise NotFound(f"no contact with email {email!r}")
    out = []
    for journey in await records.journeys_of(session, contact.id):
        status, step, closed_at = "unknown", None, journey.closed_at
        try:
            desc = await client.get_workflow_handle(
                journey.workflow_id, run_id=journey.run_id
            ).describe()
        except RPCError:
            pass  # retention may have removed it; the row still says it existed
        else:
            step = desc.typed_search_attributes.get(STEP)
            status = desc.typed_search_attributes.get(STATUS) or JourneyStatus.RUNNING.value
            if desc.status not in (
                None,
                WorkflowExecutionStatus.RUNNING,
                WorkflowExecutionStatus.COMPLETED,
            ):
                status = desc.status.name.lower()
            closed_at = desc.close_time
        out.append(
            JourneyOut(
                workflow_id=journey.workflow_id,
                run_id=journey.run_id,
                flow=journey.flow,
                status=status,
                step=step,
                started_at=journey.started_at,
                closed_at=closed_at,
            )
        )
    return JourneysOut(contact_id=contact.id, journeys=out)
