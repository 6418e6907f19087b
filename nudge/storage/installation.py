"""This installation's id: made once (by the migration that added it, or on first use) and
stored in the database, so it goes with the data. See `models.Installation`."""

from __future__ import annotations

import secrets

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from nudge.storage.db import insert_for
from nudge.storage.models import Installation, utcnow

#: The one row's primary key.
ROW = 1


def new_installation_id() -> str:
    """10 lowercase hex digits (40 bits): two installations sharing one Temporal namespace
    draw the same id about once in a trillion."""
    return secrets.token_hex(5)


async def installation_id(session: AsyncSession) -> str:
    """The stored id, made and stored first if there is none (race-safe: the first one wins)."""
    found = await session.scalar(select(Installation.installation_id).where(Installation.id == ROW))
    if found is not None:
        return found
    await session.execute(
        insert_for(session, Installation)
        .values(id=ROW, installation_id=new_installation_id(), created_at=utcnow())
        .on_conflict_do_nothing(index_elements=["id"])
    )
    stored = await session.scalar(
        select(Installation.installation_id).where(Installation.id == ROW)
    )
    assert stored is not None
    return stored


async def load_installation_id(sessions: async_sessionmaker[AsyncSession]) -> str:
    async with sessions.begin() as session:
        return await installation_id(session)
