"""Bounce and complaint webhooks on the real stack: SES through SNS (signed with a local
certificate server standing in for Amazon), SendGrid (ECDSA), Postmark (basic credentials).
A verified report updates the message log and the suppression list; anything else is a 401
that changes nothing."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import func, select

from nudge.journeys.contracts import JourneyStatus
from nudge.storage.models import Contact, MessageEvent, Suppression, utcnow
from support import Stack, cart_event, iso, new_email, new_id
from webhook_support import (
    TOPIC,
    SendGridKey,
    SnsServer,
    ses_bounce,
    ses_complaint,
    sns_now,
    sns_server,
)

API = {"Authorization": "Bearer test-key"}


@pytest.fixture(scope="module")
def sns() -> Iterator[SnsServer]:
    with sns_server() as server:
        yield server


@pytest.fixture
def configured(stack: Stack, sns: SnsServer) -> Iterator[SendGridKey]:
    """The stack's settings pointed at the local certificate server, with webhook secrets."""
    key = SendGridKey()
    overrides: dict[str, Any] = {
        "sns_cert_url_pattern": sns.pattern,
        "ses_topic_arns": [TOPIC],
        "sendgrid_webhook_public_key": key.public,
        "postmark_webhook_user": "postmark",
        "postmark_webhook_password": "s3cret-pm",
    }
    saved = {name: getattr(stack.settings, name) for name in overrides}
    for name, value in overrides.items():
        setattr(stack.settings, name, value)
    yield key
    for name, value in saved.items():
        setattr(stack.settings, name, value)


async def started(stack: Stack, email: str) -> tuple[str, str]:
    """A cart journey whose first email went out: (workflow id, its Message-ID)."""
    response = await stack.post(cart_event(email, new_id("cart")))
    [wid] = response.json()["results"][0]["journeys"]
    await stack.env.sleep(timedelta(hours=3))
    [caught] = stack.mail_to(email)
    assert caught.message_id is not None
    return wid, caught.message_id


async def ses(stack: Stack, message: dict[str, Any]) -> Any:
    return await stack.http.post(
        "/webhooks/ses", content=json.dumps(message), headers={"Content-Type": "text/plain"}
    )


async def state_of(stack: Stack, email: str) -> tuple[str, list[str], int]:
    async with stack.sessions() as session:
        contact = await session.scalar(select(Contact).where(Contact.email == email))
        assert contact is not None
        reasons = list(
            await session.scalars(
                select(Suppression.reason).where(Suppression.contact_id == contact.id)
            )
        )
        events = await session.scalar(
            select(func.count()).where(MessageEvent.contact_id == contact.id)
        )
    return str(contact.consent), sorted(reasons), int(events or 0)


async def test_a_complained_contact_mid_journey_gets_nothing_more(
    stack: Stack, sns: SnsServer, configured: SendGridKey
) -> None:
    email = new_email()
    wid, mid = await started(stack, email)
    response = await ses(stack, sns.notification(ses_complaint(email, mid)))
    assert response.status_code == 200, response.text
    assert response.json() == {"status": "received", "received": 1}
    state = await stack.finish(wid)
    assert (state.status, state.exit_reason) == (JourneyStatus.EXITED, "customer_unsubscribed")
    assert len(stack.mail_to(email)) == 1
    assert await state_of(stack, email) == ("unsubscribed", ["complaint", "unsubscribe"], 1)
    async with stack.sessions() as session:
        row = await session.scalar(select(MessageEvent).where(MessageEvent.message_id == mid))
    assert row is not None and row.kind == "complaint"
    # Visible through the API, per contact.
    listed = await stack.http.get(f"/v1/contacts/{email}/suppressions", headers=API)
    assert [s["reason"] for s in listed.json()["suppressions"]] == ["complaint", "unsubscribe"]
    assert listed.json()["suppressions"][0]["blocks"] == "all"


async def test_an_ses_bounce_with_a_bad_signature_changes_nothing(
    stack: Stack, sns: SnsServer, configured: SendGridKey
) -> None:
    email = new_email()
    wid, mid = await started(stack, email)
    before = await state_of(stack, email)
    good = sns.notification(ses_bounce(email, mid))
    forged = [
        good | {"Message": json.dumps(ses_bounce(email, mid, permanent=True)) + " "},
        good | {"Signature": base64.b64encode(b"x" * 256).decode()},
        {k: v for k, v in good.items() if k != "Signature"},
        good | {"SigningCertURL": "https://evil.example/cert.pem"},
    ]
    for message in forged:
        response = await ses(stack, message)
        assert response.status_code == 401, response.text
        assert response.json()["error"]["code"] == "unauthorized"
    assert (await ses(stack, {"not": "sns"})).status_code == 401
    assert await state_of(stack, email) == before == ("implied", [], 0)
    # The journey carries on: its next email goes out.
    state = await stack.finish(wid)
    assert len(stack.mail_to(email)) == len([e for e in state.emails if e.status == "sent"]) > 1


async def test_an_ses_hard_bounce_suppresses_and_the_journey_stops(
    stack: Stack, sns: SnsServer, configured: SendGridKey
) -> None:
    email = new_email()
    wid, mid = await started(stack, email)
    notification = sns.notification(ses_bounce(email, mid), version="1")
    response = await ses(stack, notification)
    assert response.status_code == 200, response.text
    # SNS delivers at least once: the same notification again changes nothing more.
    assert (await ses(stack, notification)).status_code == 200
    state = await stack.finish(wid)
    assert (state.status, state.exit_reason) == (JourneyStatus.EXITED, "suppressed")
    assert [e.reason for e in state.emails] == [None, "suppressed"]
    assert len(stack.mail_to(email)) == 1
    assert await state_of(stack, email) == ("implied", ["hard_bounce"], 1)


async def test_sns_subscription_confirmation_is_confirmed(
    stack: Stack, sns: SnsServer, configured: SendGridKey
) -> None:
    token = new_id("tok")
    message = sns.sign(
        {
            "Type": "SubscriptionConfirmation",
            "MessageId": new_id("m"),
            "Token": token,
            "TopicArn": TOPIC,
            "Message": "You have chosen to subscribe",
            "SubscribeURL": f"{sns.base}/?Action=ConfirmSubscription&Token={token}",
            "Timestamp": sns_now(),
        }
    )
    response = await ses(stack, message)
    assert response.status_code == 200 and response.json()["status"] == "subscribed"
    assert f"/?Action=ConfirmSubscription&Token={token}" in sns.gets
    # A forged confirmation makes no request.
    forged = message | {"SubscribeURL": f"{sns.base}/?Action=ConfirmSubscription&Token=evil"}
    assert (await ses(stack, forged)).status_code == 401
    assert not any("Token=evil" in get for get in sns.gets)


async def test_sendgrid_signed_events(stack: Stack, configured: SendGridKey) -> None:
    email = new_email()
    await started(stack, email)
    body = json.dumps([{"email": email, "event": "bounce", "type": "bounce"}]).encode()
    unsigned = await stack.http.post("/webhooks/sendgrid", content=body)
    assert unsigned.status_code == 401
    other_key = SendGridKey().headers(body)
    assert (
        await stack.http.post("/webhooks/sendgrid", content=body, headers=other_key)
    ).status_code == 401
    assert await state_of(stack, email) == ("implied", [], 0)
    signed = await stack.http.post(
        "/webhooks/sendgrid", content=body, headers=configured.headers(body)
    )
    assert signed.status_code == 200, signed.text
    assert await state_of(stack, email) == ("implied", ["hard_bounce"], 1)


async def test_postmark_with_credentials(stack: Stack, configured: SendGridKey) -> None:
    email = new_email()
    await started(stack, email)
    body = json.dumps({"RecordType": "SpamComplaint", "Type": "SpamComplaint", "Email": email})
    wrong = "Basic " + base64.b64encode(b"postmark:guess").decode()
    for headers in ({}, {"Authorization": wrong}):
        response = await stack.http.post("/webhooks/postmark", content=body, headers=headers)
        assert response.status_code == 401
    assert await state_of(stack, email) == ("implied", [], 0)
    right = "Basic " + base64.b64encode(b"postmark:s3cret-pm").decode()
    response = await stack.http.post(
        "/webhooks/postmark", content=body, headers={"Authorization": right}
    )
    assert response.status_code == 200, response.text
    assert await state_of(stack, email) == ("unsubscribed", ["complaint", "unsubscribe"], 1)


async def test_a_complaint_after_a_resubscribe_unsubscribes_again(
    stack: Stack, sns: SnsServer, configured: SendGridKey
) -> None:
    email = new_email()
    _, mid = await started(stack, email)
    assert (await ses(stack, sns.notification(ses_complaint(email, mid)))).status_code == 200
    assert (await state_of(stack, email))[0] == "unsubscribed"
    resubscribe = {
        "id": new_id("evt"),
        "type": "customer_subscribed",
        "occurred_at": iso(utcnow()),
        "contact": {"email": email},
    }
    assert (await stack.post(resubscribe)).status_code == 202
    assert (await state_of(stack, email))[0] == "subscribed"
    # A new complaint (a new SNS message) unsubscribes again; its redelivery changes nothing.
    again = sns.notification(ses_complaint(email, mid))
    assert (await ses(stack, again)).status_code == 200
    assert (await state_of(stack, email))[0] == "unsubscribed"


async def test_ses_refuses_topics_not_listed_and_says_nothing_of_who_is_known(
    stack: Stack, sns: SnsServer, configured: SendGridKey
) -> None:
    email = new_email()
    _, mid = await started(stack, email)
    # Until NUDGE_SES_TOPIC_ARNS lists the store's topic, nothing is accepted, and a
    # subscription to an attacker's topic is never confirmed.
    stack.settings.ses_topic_arns = []
    token = new_id("tok")
    confirmation = sns.sign(
        {
            "Type": "SubscriptionConfirmation",
            "MessageId": new_id("m"),
            "Token": token,
            "TopicArn": "arn:aws:sns:x:666:attacker",
            "Message": "You have chosen to subscribe",
            "SubscribeURL": f"{sns.base}/?Action=ConfirmSubscription&Token={token}",
            "Timestamp": sns_now(),
        }
    )
    for message in (confirmation, sns.notification(ses_complaint(email, mid))):
        refused = await ses(stack, message)
        assert refused.status_code == 401
        assert "NUDGE_SES_TOPIC_ARNS" in refused.json()["error"]["message"]
    assert not any(token in get for get in sns.gets)
    stack.settings.ses_topic_arns = [TOPIC]
    assert await state_of(stack, email) == ("implied", [], 0)
    # An old message, genuinely signed, is a replay.
    stale = sns.notification(ses_complaint(email, mid))
    stale = sns.sign(
        {k: v for k, v in stale.items() if k != "Signature"}
        | {"Timestamp": "2001-09-09T01:46:40.000Z"}
    )
    assert (await ses(stack, stale)).status_code == 401
    assert await state_of(stack, email) == ("implied", [], 0)
    # Known or not, the answer is the same.
    known = await ses(stack, sns.notification(ses_bounce(email, mid, permanent=False)))
    unknown = await ses(stack, sns.notification(ses_bounce(new_email(), mid, permanent=False)))
    assert known.status_code == unknown.status_code == 200
    assert known.json() == unknown.json() == {"status": "received", "received": 1}
