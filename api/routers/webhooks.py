"""Provider webhooks: bounces and complaints from Amazon SES (through SNS), SendGrid and
Postmark. No API key: each call is authenticated the provider's way (nudge/mail/feedback.py), and
one that is not is refused with 401 before anything changes.

A report is logged against its message (`message_events`) and updates the suppression list; a
complaint also unsubscribes the contact through event ingestion (a `customer_unsubscribed`), so
their running journeys exit at once, as a one-click unsubscribe does.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from fastapi import APIRouter, Request

from api.deps import RoutingDep, SessionsDep, SettingsDep
from api.errors import Invalid, Refused
from nudge.contacts import suppression
from nudge.contacts.suppression import Feedback
from nudge.events import log as event_log
from nudge.events import schemas as ev
from nudge.mail import feedback
from nudge.storage.models import Contact, utcnow

router = APIRouter(prefix="/webhooks", tags=["webhooks"])


@contextmanager
def _authenticated() -> Iterator[None]:
    """A call the provider's check finds forged is refused (401) before anything changes."""
    try:
        yield
    except feedback.Forged as err:
        raise Refused(f"webhook refused: {err}") from None


async def _apply(
    reports: Iterable[Feedback],
    sessions: SessionsDep,
    settings: SettingsDep,
    routing: RoutingDep,
) -> dict[str, int | str]:
    outcomes = []
    async with sessions.begin() as session:
        for item in reports:
            outcomes.append(await suppression.record_feedback(session, item))
    for outcome in outcomes:
        if not outcome.complained or outcome.contact_id is None:
            continue
        async with sessions() as session:
            contact = await session.get(Contact, outcome.contact_id)
        assert contact is not None
        event = ev.CustomerUnsubscribed(
            # Every complaint unsubscribes, also one after the store re-subscribed the contact.
            id=event_log.unique_event_id("complaint", str(contact.id)),
            type="customer_unsubscribed",
            occurred_at=utcnow(),
            contact=ev.ContactIn.model_construct(email=contact.email),
        )
        await routing.ingest_one(event, event.model_dump(mode="json", exclude_unset=True))
    # The same answer whether or not an address is a contact: a caller learns nothing about who
    # the store's customers are.
    return {"status": "received", "received": len(outcomes)}


@router.post("/ses", summary="Amazon SES bounces and complaints, through SNS")
async def ses(
    request: Request,
    sessions: SessionsDep,
    settings: SettingsDep,
    routing: RoutingDep,
) -> dict[str, int | str]:
    message = feedback.loads(await request.body())
    fetch = getattr(request.app.state, "fetch", None) or feedback.http_get
    with _authenticated():
        if not isinstance(message, dict):
            raise feedback.Forged("not an SNS message")
        await feedback.verify_sns(message, settings, fetch)
        if message["Type"] == "SubscriptionConfirmation":
            await fetch(feedback.subscribe_url(message))
            return {"status": "subscribed"}
    if message["Type"] != "Notification":
        return {"status": "ignored"}
    notification = feedback.loads(str(message.get("Message", "")).encode())
    if not isinstance(notification, dict):
        raise Invalid(
            "invalid input: Message: not an SES notification (JSON)",
            fields=[{"field": "Message", "message": "not an SES notification (JSON)"}],
        )
    report_id = str(message.get("MessageId") or "") or None
    reports = feedback.ses_feedback(notification, report_id)
    return await _apply(reports, sessions, settings, routing)


@router.post("/sendgrid", summary="SendGrid signed event webhook")
async def sendgrid(
    request: Request,
    sessions: SessionsDep,
    settings: SettingsDep,
    routing: RoutingDep,
) -> dict[str, int | str]:
    body = await request.body()
    with _authenticated():
        feedback.verify_sendgrid(
            settings,
            body,
            request.headers.get(feedback.SENDGRID_SIGNATURE),
            request.headers.get(feedback.SENDGRID_TIMESTAMP),
        )
    events = feedback.loads(body)
    return await _apply(feedback.sendgrid_feedback(events), sessions, settings, routing)


@router.post("/postmark", summary="Postmark bounce, spam complaint and delivery webhooks")
async def postmark(
    request: Request,
    sessions: SessionsDep,
    settings: SettingsDep,
    routing: RoutingDep,
) -> dict[str, int | str]:
    with _authenticated():
        feedback.verify_postmark(settings, request.headers.get("Authorization"))
    record = feedback.loads(await request.body())
    return await _apply(feedback.postmark_feedback(record), sessions, settings, routing)
