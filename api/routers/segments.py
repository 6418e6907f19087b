"""`/v1/segments`: segment definitions as data, their members, and a contact's segments.

Bodies are validated by hand, like events, so that an error names the condition as the client
wrote it (`definition.all.1.count`) rather than pydantic's path through the union's tags.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Query, Request, Response
from pydantic import BaseModel, Field, ValidationError
from sqlalchemy.exc import IntegrityError

from api.deps import SessionDep, SessionsDep
from api.errors import Conflict, Invalid, NotFound, invalid_json
from nudge.contacts import directory
from nudge.events import jsonbody
from nudge.segments import catalogue
from nudge.segments.definition import SEGMENT_ID, BoundedCondition, validation_errors
from nudge.storage.models import utcnow

router = APIRouter(tags=["segments"])

SAMPLE_SIZE = 10
SegmentId = Annotated[str, Field(pattern=SEGMENT_ID, description="e.g. vip_lisbon")]


class SegmentIn(BaseModel):
    id: SegmentId
    name: Annotated[str, Field(min_length=1, max_length=200)]
    definition: BoundedCondition


class PreviewIn(BaseModel):
    definition: BoundedCondition


class SegmentOut(BaseModel):
    id: str
    name: str
    definition: dict[str, Any]
    builtin: bool
    time_based: bool = Field(description="Also refreshed hourly: membership moves with the clock")
    members: int
    created_at: datetime
    updated_at: datetime


class SegmentsOut(BaseModel):
    segments: list[SegmentOut]


class ContactOut(BaseModel):
    id: int
    email: str
    first_name: str | None


class PreviewOut(BaseModel):
    count: int
    sample: list[ContactOut] = Field(description=f"Up to {SAMPLE_SIZE} members, by contact id")


class MemberOut(ContactOut):
    entered_at: datetime


class MembersOut(BaseModel):
    segment_id: str
    members: list[MemberOut]
    next: int | None = Field(description="Pass as `after` for the next page; null on the last")


class ContactSegmentOut(BaseModel):
    id: str
    name: str
    entered_at: datetime


class ContactSegmentsOut(BaseModel):
    contact_id: int
    segments: list[ContactSegmentOut]


Model = TypeVar("Model", bound=BaseModel)


async def _body(request: Request, model: type[Model]) -> Model:
    try:
        body = jsonbody.loads(await request.body())
    except ValueError as err:
        raise invalid_json(err) from None
    try:
        return model.model_validate(body)
    except ValidationError as err:
        fields = validation_errors(err)
        summary = "; ".join(f"{f['field']}: {f['message']}" for f in fields[:5])
        raise Invalid(f"invalid segment: {summary}", fields=fields) from None


def schemas() -> dict[str, Any]:
    """The request bodies' JSON schemas, for the app's OpenAPI components."""
    out: dict[str, Any] = {}
    for model in (SegmentIn, PreviewIn):
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        out.update(schema.pop("$defs", {}))
        out[model.__name__] = schema
    return out


def _request_body(model: type[BaseModel]) -> dict[str, Any]:
    schema = {"$ref": f"#/components/schemas/{model.__name__}"}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


def _out(segment: catalogue.SegmentRow, members: int) -> SegmentOut:
    return SegmentOut(
        id=segment.id,
        name=segment.name,
        definition=segment.definition,
        builtin=segment.builtin,
        time_based=segment.time_based,
        members=members,
        created_at=segment.created_at,
        updated_at=segment.updated_at,
    )


@router.post(
    "/segments",
    status_code=201,
    summary="Create a segment",
    description=(
        "Stores the definition and computes its members at once. Its first members start no "
        "flow; later entries do, for flows that list the segment in `segment_triggers`."
    ),
    openapi_extra=_request_body(SegmentIn),
    responses={409: {"description": "A segment with this id exists"}},
)
async def create_segment(request: Request, sessions: SessionsDep) -> SegmentOut:
    given = await _body(request, SegmentIn)
    try:
        async with sessions.begin() as session:
            if await catalogue.get_segment(session, given.id) is not None:
                raise Conflict(f"segment {given.id!r} exists")
            segment = await catalogue.create_segment(
                session, given.id, given.name, given.definition, utcnow()
            )
            members = await catalogue.member_count(session, given.id)
    except IntegrityError:  # created concurrently by another request
        raise Conflict(f"segment {given.id!r} exists") from None
    return _out(segment, members)


@router.get("/segments", summary="List segments with their member counts")
async def list_segments(session: SessionDep) -> SegmentsOut:
    counts = await catalogue.member_counts(session)
    return SegmentsOut(
        segments=[_out(s, counts.get(s.id, 0)) for s in await catalogue.list_segments(session)]
    )


@router.post(
    "/segments/preview",
    summary="Preview a definition: how many contacts, and a few of them",
    openapi_extra=_request_body(PreviewIn),
)
async def preview_segment(request: Request, session: SessionDep) -> PreviewOut:
    given = await _body(request, PreviewIn)
    count, sample = await catalogue.preview(session, given.definition, utcnow(), SAMPLE_SIZE)
    return PreviewOut(
        count=count,
        sample=[ContactOut(id=c.id, email=c.email, first_name=c.first_name) for c in sample],
    )


@router.get("/segments/{segment_id}", summary="A segment")
async def get_segment(segment_id: str, session: SessionDep) -> SegmentOut:
    segment = await catalogue.get_segment(session, segment_id)
    if segment is None:
        raise NotFound(f"no segment {segment_id!r}")
    return _out(segment, await catalogue.member_count(session, segment_id))


@router.delete(
    "/segments/{segment_id}",
    status_code=204,
    summary="Delete a segment (not a built-in one)",
    responses={409: {"description": "Built-in segments cannot be deleted"}},
)
async def delete_segment(segment_id: str, sessions: SessionsDep) -> Response:
    async with sessions.begin() as session:
        segment = await catalogue.get_segment(session, segment_id)
        if segment is None:
            raise NotFound(f"no segment {segment_id!r}")
        if segment.builtin:
            raise Conflict(f"{segment_id!r} is a built-in segment and cannot be deleted")
        await catalogue.delete_segment(session, segment_id)
    return Response(status_code=204)


@router.get("/segments/{segment_id}/members", summary="A segment's members, by contact id")
async def segment_members(
    segment_id: str,
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    after: Annotated[
        int | None, Query(ge=0, le=2**63 - 1, description="The `next` of the previous page")
    ] = None,
) -> MembersOut:
    if await catalogue.get_segment(session, segment_id) is None:
        raise NotFound(f"no segment {segment_id!r}")
    rows = await catalogue.members_page(session, segment_id, after=after, limit=limit + 1)
    page = rows[:limit]
    return MembersOut(
        segment_id=segment_id,
        members=[
            MemberOut(id=r.id, email=r.email, first_name=r.first_name, entered_at=r.entered_at)
            for r in page
        ],
        next=page[-1].id if len(rows) > limit else None,
    )


@router.get(
    "/contacts/{email}/segments", summary="A contact's segments", tags=["contacts", "segments"]
)
async def contact_segments(email: str, session: SessionDep) -> ContactSegmentsOut:
    contact = await directory.contact_by_email(session, email)
    if contact is None:
        raise NotFound(f"no contact with email {email!r}")
    return ContactSegmentsOut(
        contact_id=contact.id,
        segments=[
            ContactSegmentOut(id=sid, name=name, entered_at=entered_at)
            for sid, name, entered_at in await catalogue.segments_of(session, contact.id)
        ],
    )
