"""The contact directory: contacts by email, their profile fields, properties and tags."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import (
    JSON,
    String,
    cast,
    func,
    literal,
    select,
    update,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncSession

from nudge.events import schemas as ev
from nudge.storage.db import insert_for
from nudge.storage.models import (
    Consent,
    Contact,
    ContactTag,
    utcnow,
)


async def upsert_contact(session: AsyncSession, contact: ev.ContactIn) -> int:
    stmt = insert_for(session, Contact).values(
        email=contact.email.lower(),
        first_name=contact.first_name,
        last_name=contact.last_name,
        timezone=contact.timezone,
        locale=contact.locale,
        properties=contact.properties or {},
        consent=Consent.IMPLIED,
        created_at=utcnow(),
        updated_at=utcnow(),
    )
    # Only fields the event actually carries (and not as null) overwrite what we know.
    fields = contact.model_dump(
        exclude_unset=True, exclude_none=True, exclude={"email", "properties", "tags"}
    )
    changes = {name: stmt.excluded[name] for name in fields} | {
        "updated_at": stmt.excluded.updated_at
    }
    if contact.properties:
        # Merged key by key: a property the event does not mention keeps its value.
        changes["properties"] = _json_merge(session, Contact.properties, stmt.excluded.properties)
    stmt = stmt.on_conflict_do_update(index_elements=["email"], set_=changes).returning(Contact.id)
    contact_id = int((await session.execute(stmt)).scalar_one())
    if contact.tags:
        await session.execute(
            insert_for(session, ContactTag)
            .values(
                [
                    {"contact_id": contact_id, "tag": tag, "created_at": utcnow()}
                    for tag in dict.fromkeys(contact.tags)
                ]
            )
            .on_conflict_do_nothing()
        )
    return contact_id


def _json_merge(session: AsyncSession, old: Any, new: Any) -> Any:
    """`old` with the top-level keys of `new` set: SQLite's json_patch, PostgreSQL's jsonb ||."""
    if session.get_bind().dialect.name == "sqlite":
        return func.json_patch(old, new)
    merged = cast(old, postgresql.JSONB).op("||")(cast(new, postgresql.JSONB))
    return cast(merged, JSON)


async def merge_properties(
    session: AsyncSession, contact_id: int, properties: dict[str, Any]
) -> None:
    """Set the contact's properties named in `properties`, keeping the others; a None value
    removes that property (JSON merge patch, RFC 7396). One UPDATE, so a concurrent event
    that changes another property is not overwritten."""
    if not properties:
        return
    current = func.coalesce(Contact.properties, literal({}, JSON))
    if session.get_bind().dialect.name == "sqlite":
        merged: Any = func.json_patch(current, literal(properties, JSON))
    else:
        kept = {name: value for name, value in properties.items() if value is not None}
        removed = [name for name, value in properties.items() if value is None]
        patched = cast(current, postgresql.JSONB).op("||")(
            cast(literal(kept, JSON), postgresql.JSONB)
        )
        if removed:
            patched = patched.op("-")(literal(removed, postgresql.ARRAY(String)))
        merged = cast(patched, JSON)
    await session.execute(
        update(Contact)
        .where(Contact.id == contact_id)
        .values(properties=merged, updated_at=utcnow())
    )


async def add_tags(session: AsyncSession, contact_id: int, tags: Sequence[str]) -> None:
    """Tag the contact; a tag it already has is left as it was."""
    if tags:
        await session.execute(
            insert_for(session, ContactTag)
            .values(
                [
                    {"contact_id": contact_id, "tag": tag, "created_at": utcnow()}
                    for tag in dict.fromkeys(tags)
                ]
            )
            .on_conflict_do_nothing()
        )


async def contact_by_email(session: AsyncSession, email: str) -> Contact | None:
    return await session.scalar(select(Contact).where(Contact.email == email.lower()))


async def contact_timezone(session: AsyncSession, contact_id: int) -> str | None:
    return await session.scalar(select(Contact.timezone).where(Contact.id == contact_id))
