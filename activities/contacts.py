"""Contact steps of a flow: read what a split branches on, and change the contact.

`profile` is what `Journey.profile()` / `in_segment()` read: the contact's segments, properties,
tags, orders (refunded ones excluded, as segments count them) and last engagement (the newest
open or click by a person: privacy-proxy opens and link-scanner clicks are `machine` events and
prove nothing, see nudge/mail/tracking.py). `update_contact` is `Journey.update_contact()`: properties
merged, tags added, and with `suppress` a marketing suppression (nudge/contacts/suppression.py). Every
write is idempotent, so a retried attempt changes nothing more.

A contact that no longer exists (erased on request) has an empty profile and nothing to update:
the journey's next send skips it (`contact_missing`) anyway.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio import activity
from temporalio.exceptions import ApplicationError

from nudge.contacts import directory, suppression
from nudge.journeys.contracts import ContactProfile, ContactProfileInput, ContactUpdateInput
from nudge.mail.tracking import CLICK, OPEN
from nudge.segments.rfm import REFUNDED
from nudge.settings import Settings
from nudge.storage.models import Contact, ContactTag, MessageEvent, Order, SegmentMember

log = logging.getLogger(__name__)

# The names a store event may use (nudge/events/schemas.py), so a flow writes nothing an event could not.
PROPERTY_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
TAG_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
# The `source` of a suppression a flow step adds (the journey and step go in its details).
SOURCE = "flow"


class ContactActivities:
    def __init__(self, sessions: async_sessionmaker[AsyncSession], settings: Settings) -> None:
        self.sessions = sessions
        self.settings = settings

    @activity.defn(name="contact_profile")
    async def profile(self, job: ContactProfileInput) -> ContactProfile:
        async with self.sessions() as session:
            contact = await session.get(Contact, job.contact_id)
            if contact is None:
                log.warning("profile of contact %s: no such contact", job.contact_id)
                return ContactProfile()
            cid = contact.id
            segments = await session.scalars(
                select(SegmentMember.segment_id)
                .where(SegmentMember.contact_id == cid)
                .order_by(SegmentMember.segment_id)
            )
            tags = await session.scalars(
                select(ContactTag.tag).where(ContactTag.contact_id == cid).order_by(ContactTag.tag)
            )
            orders = await session.scalar(
                select(func.count())
                .select_from(Order)
                .where(Order.contact_id == cid, Order.status != REFUNDED)
            )
            engaged = await session.scalar(
                select(func.max(func.coalesce(MessageEvent.last_at, MessageEvent.at))).where(
                    MessageEvent.contact_id == cid,
                    MessageEvent.kind.in_((OPEN, CLICK)),
                    MessageEvent.machine.is_(False),
                )
            )
            return ContactProfile(
                segments=list(segments),
                properties=_only(contact.properties or {}, job.properties),
                tags=list(tags),
                orders=int(orders or 0),
                last_engaged_at=engaged,
            )

    @activity.defn(name="update_contact")
    async def update_contact(self, job: ContactUpdateInput) -> None:
        _check(job)
        async with self.sessions.begin() as session:
            contact = await session.get(Contact, job.contact_id)
            if contact is None:
                log.warning("update of contact %s (%s): no such contact", job.contact_id, job.step)
                return
            await directory.merge_properties(session, contact.id, dict(job.properties))
            await directory.add_tags(session, contact.id, job.tags)
            if job.suppress is not None:
                added = await suppression.add(
                    session,
                    contact,
                    job.suppress,
                    source=SOURCE,
                    details=f"{job.workflow_id} step {job.step}",
                )
                if added:
                    log.info("contact %s suppressed (%s) by %s", contact.id, job.suppress, job.step)


def _check(job: ContactUpdateInput) -> None:
    """Refuse a step that could never succeed, naming the field (not retried)."""
    problem = None
    if bad := [name for name in job.properties if not PROPERTY_NAME.match(name)]:
        problem = f"properties: {bad[0]!r} is not a property name (a-z, 0-9, _; 64 at most)"
    elif bad := [tag for tag in job.tags if not TAG_NAME.match(tag)]:
        problem = f"tags: {bad[0]!r} is not a tag (a-z, 0-9, _, -; 64 at most)"
    elif job.suppress is not None and job.suppress not in suppression.REASONS:
        problem = (
            f"suppress: {job.suppress!r} is not a suppression reason "
            f"(one of {', '.join(suppression.REASONS)})"
        )
    if problem:
        raise ApplicationError(problem, type="InvalidContactUpdate", non_retryable=True)


def _only(properties: dict[str, Any], names: list[str] | None) -> dict[str, Any]:
    """The properties a flow asked for by name (None: all, as before names could be given):
    a profile lands in the workflow's history, and a store's properties may be personal."""
    if names is None:
        return dict(properties)
    return {name: properties[name] for name in names if name in properties}
