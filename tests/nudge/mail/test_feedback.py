"""Provider webhook authentication (nudge/mail/feedback.py) against real keys: SNS signatures
(versions 1 and 2) checked with a certificate fetched from a local HTTP server, SendGrid's
ECDSA signature, Postmark's basic credentials. Parsing into feedback."""

from __future__ import annotations

import base64
import json
import re
import time
from collections.abc import Iterator

import pytest

from nudge.mail import feedback
from nudge.settings import Settings
from webhook_support import (
    TOPIC,
    SendGridKey,
    SnsServer,
    ses_bounce,
    ses_complaint,
    sns_now,
    sns_server,
)


@pytest.fixture(scope="module")
def sns() -> Iterator[SnsServer]:
    with sns_server() as server:
        yield server


def settings(**kw: object) -> Settings:
    return Settings(**kw)  # type: ignore[arg-type]


def trusting(sns: SnsServer, **kw: object) -> Settings:
    """Settings that trust the local certificate server and list the test topic."""
    return settings(sns_cert_url_pattern=sns.pattern, ses_topic_arns=[TOPIC], **kw)


@pytest.mark.parametrize("version", ["1", "2"])
async def test_a_signed_sns_message_verifies(sns: SnsServer, version: str) -> None:
    message = sns.notification(ses_bounce("ana@example.com", "m1@shop.example"), version)
    await feedback.verify_sns(message, trusting(sns), feedback.http_get)


@pytest.mark.parametrize(
    "tamper",
    [
        lambda m: m | {"Message": m["Message"].replace("ana@", "eve@")},
        lambda m: m | {"TopicArn": "arn:aws:sns:x:1:other"},
        lambda m: m | {"Signature": base64.b64encode(b"\0" * 256).decode()},
        lambda m: m | {"SignatureVersion": "3"},
        lambda m: {k: v for k, v in m.items() if k != "Signature"},
        lambda m: m | {"Type": "Surprise"},
    ],
    ids=["body", "topic", "signature", "version", "unsigned", "type"],
)
async def test_an_altered_sns_message_is_refused(sns: SnsServer, tamper: object) -> None:
    message = sns.notification(ses_bounce("ana@example.com", "m1@shop.example"))
    with pytest.raises(feedback.Forged):
        await feedback.verify_sns(
            tamper(message),  # type: ignore[operator]
            trusting(sns),
            feedback.http_get,
        )


async def test_a_certificate_off_the_amazon_hosts_is_never_fetched(sns: SnsServer) -> None:
    message = sns.notification(ses_bounce("ana@example.com", None))
    before = len(sns.gets)
    with pytest.raises(feedback.Forged, match="untrusted SNS certificate URL"):
        # the real pattern
        await feedback.verify_sns(message, settings(ses_topic_arns=[TOPIC]), feedback.http_get)
    assert len(sns.gets) == before
    default = settings().sns_cert_url_pattern

    good = "https://sns.eu-west-1.amazonaws.com/SimpleNotificationService-abc.pem"
    for bad in (
        "http://sns.eu-west-1.amazonaws.com/SimpleNotificationService-abc.pem",
        "https://sns.eu-west-1.amazonaws.com.evil.example/x.pem",
        "https://evil.example/sns.eu-west-1.amazonaws.com/x.pem",
        "https://sns.eu-west-1.amazonaws.com@evil.example/x.pem",
    ):
        assert not re.match(default, bad), bad
    assert re.match(default, good)


async def test_the_subscribe_url_must_be_on_the_certificate_host(sns: SnsServer) -> None:
    message = sns.sign(
        {
            "Type": "SubscriptionConfirmation",
            "MessageId": "m",
            "Token": "t",
            "TopicArn": "arn:aws:sns:x:1:ses",
            "Message": "confirm",
            "SubscribeURL": "https://evil.example/confirm",
            "Timestamp": sns_now(),
        }
    )
    await feedback.verify_sns(message, trusting(sns), feedback.http_get)
    with pytest.raises(feedback.Forged):
        feedback.subscribe_url(message)


async def test_no_topic_is_accepted_until_the_operator_lists_theirs(sns: SnsServer) -> None:
    """Anyone can subscribe the endpoint to an SNS topic in their own AWS account, and AWS signs
    what they publish: a genuine signature proves nothing until the topic is one of ours."""
    theirs = sns.notification(ses_complaint("ana@example.com", None), topic="arn:aws:sns:x:666:t")
    before = len(sns.gets)
    with pytest.raises(feedback.Forged, match="NUDGE_SES_TOPIC_ARNS is not set"):
        await feedback.verify_sns(
            theirs, settings(sns_cert_url_pattern=sns.pattern), feedback.http_get
        )
    with pytest.raises(feedback.Forged, match="not in NUDGE_SES_TOPIC_ARNS"):
        await feedback.verify_sns(theirs, trusting(sns), feedback.http_get)
    assert len(sns.gets) == before  # refused before any certificate is fetched


@pytest.mark.parametrize("stamp", ["2001-09-09T01:46:40.000Z", "2099-01-01T00:00:00Z", "", "x"])
async def test_an_sns_message_out_of_its_time_is_refused(sns: SnsServer, stamp: str) -> None:
    message = sns.notification(ses_bounce("ana@example.com", None))
    old = sns.sign({k: v for k, v in message.items() if k != "Signature"} | {"Timestamp": stamp})
    with pytest.raises(feedback.Forged, match="SNS"):
        await feedback.verify_sns(old, trusting(sns), feedback.http_get)


def test_ses_notifications_become_feedback() -> None:
    [hard] = feedback.ses_feedback(ses_bounce("ana@example.com", "m1@shop.example"))
    assert (hard.kind, hard.email, hard.message_id) == (
        "hard_bounce",
        "ana@example.com",
        "<m1@shop.example>",
    )
    [soft] = feedback.ses_feedback(ses_bounce("ana@example.com", None, permanent=False))
    assert soft.kind == "soft_bounce"
    [complaint] = feedback.ses_feedback(ses_complaint("ana@example.com", "m2@shop.example"))
    assert (complaint.kind, complaint.message_id) == ("complaint", "<m2@shop.example>")


def test_sendgrid_signature() -> None:
    key = SendGridKey()
    config = settings(sendgrid_webhook_public_key=key.public)
    body = json.dumps([{"email": "ana@example.com", "event": "spamreport"}]).encode()
    headers = key.headers(body)
    signature = headers[feedback.SENDGRID_SIGNATURE]
    stamp = headers[feedback.SENDGRID_TIMESTAMP]
    feedback.verify_sendgrid(config, body, signature, stamp)
    for bad in (
        (body + b" ", signature, stamp),
        (body, signature, str(int(stamp) + 1)),
        (body, None, stamp),
        (body, "bm90IGEgc2lnbmF0dXJl", stamp),
    ):
        with pytest.raises(feedback.Forged):
            feedback.verify_sendgrid(config, *bad)
    old = key.headers(body, int(time.time()) - 3600)
    with pytest.raises(feedback.Forged, match="stale"):
        feedback.verify_sendgrid(
            config, body, old[feedback.SENDGRID_SIGNATURE], old[feedback.SENDGRID_TIMESTAMP]
        )
    with pytest.raises(feedback.Forged):  # no key configured: nothing is trusted
        feedback.verify_sendgrid(settings(), body, signature, stamp)
    kinds = [
        f.kind
        for f in feedback.sendgrid_feedback(
            [
                {"email": "a@example.com", "event": "bounce", "type": "bounce"},
                {"email": "a@example.com", "event": "bounce", "type": "blocked"},
                {"email": "a@example.com", "event": "spamreport"},
                {"email": "a@example.com", "event": "delivered"},
                {"email": "a@example.com", "event": "open"},
            ]
        )
    ]
    assert kinds == ["hard_bounce", "soft_bounce", "complaint", "delivery"]


def test_postmark_basic_credentials() -> None:
    config = settings(postmark_webhook_user="pm", postmark_webhook_password="s3cret")
    good = "Basic " + base64.b64encode(b"pm:s3cret").decode()
    feedback.verify_postmark(config, good)
    for bad in (None, "Basic " + base64.b64encode(b"pm:wrong").decode(), "Bearer s3cret", "Basic"):
        with pytest.raises(feedback.Forged):
            feedback.verify_postmark(config, bad)
    with pytest.raises(feedback.Forged):  # unset credentials refuse everything
        feedback.verify_postmark(settings(), good)
    [bounce] = feedback.postmark_feedback(
        {"RecordType": "Bounce", "Type": "HardBounce", "Email": "a@example.com"}
    )
    [spam] = feedback.postmark_feedback(
        {"RecordType": "SpamComplaint", "Type": "SpamComplaint", "Email": "a@example.com"}
    )
    assert (bounce.kind, spam.kind) == ("hard_bounce", "complaint")
