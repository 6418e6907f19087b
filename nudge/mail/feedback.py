"""Bounce and complaint reports from email providers: authenticity first, then parsing into
provider-neutral `suppression.Feedback`.

- **Amazon SES through SNS**: the SNS message signature (SignatureVersion 1, SHA1withRSA, or 2,
  SHA256withRSA) is verified against the certificate at `SigningCertURL`, which must match
  `NUDGE_SNS_CERT_URL_PATTERN` (https on an `sns.<region>.amazonaws.com` host). Only topics listed
  in `NUDGE_SES_TOPIC_ARNS` are accepted (none until it is set: anyone can subscribe the endpoint
  to a topic of their own, and AWS signs what they publish); a `Timestamp` more than
  `NUDGE_SNS_MAX_AGE` seconds away is refused. Certificates are fetched once per URL and cached (the 64 most recently used), and at most
  `NUDGE_SNS_CERT_FETCHES_PER_MINUTE` new URLs are fetched a minute. A `SubscriptionConfirmation` is confirmed by GETting its
  `SubscribeURL`, which must be on the same host as the (trusted) certificate.
- **SendGrid** signed event webhook: ECDSA (P-256, SHA-256) over timestamp + raw body, with the
  verification key `NUDGE_SENDGRID_WEBHOOK_PUBLIC_KEY`; older than
  `NUDGE_SENDGRID_WEBHOOK_MAX_AGE` seconds is refused (replay).
- **Postmark** signs nothing: its webhook URL carries HTTP basic credentials
  (`https://user:password@.../webhooks/postmark`), checked against `NUDGE_POSTMARK_WEBHOOK_USER`
  and `_PASSWORD`; unset means every call is refused.
Anything that fails these checks raises `Forged`: the caller answers 401 and changes nothing.
"""

from __future__ import annotations

import base64
import binascii
import re
import secrets
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import httpx
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from nudge.contacts.suppression import Feedback
from nudge.events import jsonbody
from nudge.settings import Settings

Fetch = Callable[[str], Awaitable[bytes]]


class Forged(Exception):
    """Unsigned, badly signed, stale or from an untrusted source: refuse, change nothing."""


async def http_get(url: str) -> bytes:
    """The default fetcher (SNS certificates and subscription confirmations)."""
    async with httpx.AsyncClient(timeout=10, follow_redirects=False) as client:
        response = await client.get(url)
        response.raise_for_status()
        return response.content


# ---- Amazon SES through SNS ---------------------------------------------------------------------

_SIGNED_KEYS = {
    "Notification": ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"),
    "SubscriptionConfirmation": (
        "Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type",
    ),
    "UnsubscribeConfirmation": (
        "Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type",
    ),
}  # fmt: skip
_HASHES: dict[str, Callable[[], hashes.HashAlgorithm]] = {"1": hashes.SHA1, "2": hashes.SHA256}


def sns_string_to_sign(message: dict[str, Any]) -> bytes:
    keys = _SIGNED_KEYS.get(str(message.get("Type")))
    if keys is None:
        raise Forged(f"unknown SNS message type {message.get('Type')!r}")
    # "Subject" is signed only when present; every other key must be there.
    return "".join(
        f"{key}\n{message[key]}\n" for key in keys if key != "Subject" or key in message
    ).encode()


async def verify_sns(message: dict[str, Any], settings: Settings, fetch: Fetch) -> None:
    version = str(message.get("SignatureVersion"))
    if version not in _HASHES:
        raise Forged(f"SNS SignatureVersion {version!r} is not 1 or 2")
    cert_url = str(message.get("SigningCertURL", ""))
    if not re.match(settings.sns_cert_url_pattern, cert_url):
        raise Forged(f"untrusted SNS certificate URL {cert_url!r}")
    if not settings.ses_topic_arns:
        raise Forged(
            "NUDGE_SES_TOPIC_ARNS is not set: no SNS topic is accepted until you list yours"
        )
    if message.get("TopicArn") not in settings.ses_topic_arns:
        raise Forged(f"SNS topic {message.get('TopicArn')!r} is not in NUDGE_SES_TOPIC_ARNS")
    _check_sns_age(message.get("Timestamp"), settings.sns_max_age)
    try:
        signature = base64.b64decode(str(message["Signature"]), validate=True)
        signed = sns_string_to_sign(message)
    except (KeyError, binascii.Error) as err:
        raise Forged(f"incomplete SNS message: {err}") from None
    key = await _sns_key(cert_url, fetch, settings.sns_cert_fetches_per_minute)
    try:
        key.verify(signature, signed, padding.PKCS1v15(), _HASHES[version]())
    except InvalidSignature:
        raise Forged("bad SNS signature") from None


def _check_sns_age(stamp: Any, max_age: float) -> None:
    """Refuse a message dated more than `max_age` seconds from now (a replay of an old one)."""
    when = _when(stamp) if isinstance(stamp, str) else None
    if when is None:
        raise Forged("SNS Timestamp missing or unreadable")
    if abs(time.time() - when.timestamp()) > max_age:
        raise Forged(f"stale SNS message (Timestamp {stamp}; NUDGE_SNS_MAX_AGE is {max_age:g}s)")


class _CertificateCache:
    """The SNS certificates' keys by URL: the `size` most recently used (least recently used out,
    never the whole cache at once), and at most `per_minute` URLs not in it fetched per minute,
    so that a stream of forged messages each naming a new URL cannot make Nudge fetch without
    bound."""

    def __init__(self, size: int = 64) -> None:
        self.size = size
        self.keys: OrderedDict[str, rsa.RSAPublicKey] = OrderedDict()
        self.fetches: deque[float] = deque()

    def get(self, url: str) -> rsa.RSAPublicKey | None:
        key = self.keys.get(url)
        if key is not None:
            self.keys.move_to_end(url)
        return key

    def may_fetch(self, per_minute: int, now: float) -> bool:
        while self.fetches and now - self.fetches[0] >= 60:
            self.fetches.popleft()
        if len(self.fetches) >= per_minute:
            return False
        self.fetches.append(now)
        return True

    def put(self, url: str, key: rsa.RSAPublicKey) -> None:
        self.keys[url] = key
        self.keys.move_to_end(url)
        while len(self.keys) > self.size:
            self.keys.popitem(last=False)


_cert_cache = _CertificateCache()


async def _sns_key(url: str, fetch: Fetch, per_minute: int = 10) -> rsa.RSAPublicKey:
    key = _cert_cache.get(url)
    if key is None:
        if not _cert_cache.may_fetch(per_minute, time.monotonic()):
            raise Forged("too many new SNS certificate URLs: try again in a minute")
        try:
            public = x509.load_pem_x509_certificate(await fetch(url)).public_key()
        except (httpx.HTTPError, ValueError) as err:
            raise Forged(f"cannot use the SNS certificate at {url}: {err}") from None
        if not isinstance(public, rsa.RSAPublicKey):
            raise Forged("the SNS certificate's key is not RSA")
        _cert_cache.put(url, public)
        key = public
    return key


def subscribe_url(message: dict[str, Any]) -> str:
    """The URL that confirms a (verified) subscription: on the certificate's host only."""
    url = str(message.get("SubscribeURL", ""))
    cert, target = urlsplit(str(message["SigningCertURL"])), urlsplit(url)
    if (target.scheme, target.netloc) != (cert.scheme, cert.netloc):
        raise Forged(f"SubscribeURL {url!r} is not on the SNS host")
    return url


def ses_feedback(notification: dict[str, Any], report_id: str | None = None) -> Iterator[Feedback]:
    """An SES notification (the SNS `Message`, JSON) as feedback, one per recipient;
    `report_id` is the SNS MessageId, the same on every redelivery."""
    kind = notification.get("notificationType") or notification.get("eventType")
    mail = notification.get("mail") or {}
    mid = (mail.get("commonHeaders") or {}).get("messageId")
    if mid is None:
        for header in mail.get("headers") or []:
            if str(header.get("name", "")).lower() == "message-id":
                mid = header.get("value")
    if kind == "Bounce":
        bounce = notification.get("bounce") or {}
        hard = bounce.get("bounceType") == "Permanent"
        for recipient in bounce.get("bouncedRecipients") or []:
            yield Feedback(
                source="ses",
                kind="hard_bounce" if hard else "soft_bounce",
                email=str(recipient.get("emailAddress", "")),
                message_id=mid,
                details=_details(bounce.get("bounceSubType"), recipient.get("diagnosticCode")),
                at=_when(bounce.get("timestamp")),
                report_id=report_id,
            )
    elif kind == "Complaint":
        complaint = notification.get("complaint") or {}
        for recipient in complaint.get("complainedRecipients") or []:
            yield Feedback(
                source="ses",
                kind="complaint",
                email=str(recipient.get("emailAddress", "")),
                message_id=mid,
                details=complaint.get("complaintFeedbackType"),
                at=_when(complaint.get("timestamp")),
                report_id=report_id,
            )
    elif kind == "Delivery":
        delivery = notification.get("delivery") or {}
        for email in delivery.get("recipients") or []:
            yield Feedback(
                "ses",
                "delivery",
                str(email),
                mid,
                at=_when(delivery.get("timestamp")),
                report_id=report_id,
            )


# ---- SendGrid -----------------------------------------------------------------------------------

SENDGRID_SIGNATURE = "X-Twilio-Email-Event-Webhook-Signature"
SENDGRID_TIMESTAMP = "X-Twilio-Email-Event-Webhook-Timestamp"


def verify_sendgrid(
    settings: Settings, body: bytes, signature: str | None, timestamp: str | None
) -> None:
    if not settings.sendgrid_webhook_public_key:
        raise Forged("NUDGE_SENDGRID_WEBHOOK_PUBLIC_KEY is not set")
    if not signature or not timestamp:
        raise Forged("unsigned SendGrid call")
    try:
        age = time.time() - int(timestamp)
        key = serialization.load_der_public_key(
            base64.b64decode(settings.sendgrid_webhook_public_key)
        )
        raw_signature = base64.b64decode(signature, validate=True)
    except (ValueError, binascii.Error) as err:
        raise Forged(f"unreadable SendGrid signature: {err}") from None
    if abs(age) > settings.sendgrid_webhook_max_age:
        raise Forged("stale SendGrid call")
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise Forged("NUDGE_SENDGRID_WEBHOOK_PUBLIC_KEY is not an ECDSA key")
    try:
        key.verify(raw_signature, timestamp.encode() + body, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise Forged("bad SendGrid signature") from None


def sendgrid_feedback(events: Any) -> Iterator[Feedback]:
    if not isinstance(events, list):
        return
    for event in events:
        if not isinstance(event, dict):
            continue
        kind = {"spamreport": "complaint", "delivered": "delivery"}.get(str(event.get("event")))
        if event.get("event") == "bounce":
            # SendGrid's "bounce" is permanent; "blocked" is a temporary refusal.
            kind = "soft_bounce" if event.get("type") == "blocked" else "hard_bounce"
        if kind is None:
            continue
        yield Feedback(
            source="sendgrid",
            kind=kind,
            email=str(event.get("email", "")),
            message_id=event.get("smtp-id"),
            details=_details(event.get("status"), event.get("reason")),
            at=_when(event.get("timestamp")),
            report_id=str(event["sg_event_id"]) if event.get("sg_event_id") else None,
        )


# ---- Postmark -----------------------------------------------------------------------------------

_POSTMARK_HARD = {"HardBounce", "BadEmailAddress", "ManuallyDeactivated"}
_POSTMARK_SOFT = {"SoftBounce", "Transient", "DnsError"}


def verify_postmark(settings: Settings, authorization: str | None) -> None:
    user, password = settings.postmark_webhook_user, settings.postmark_webhook_password
    if not user or not password:
        raise Forged("NUDGE_POSTMARK_WEBHOOK_USER and _PASSWORD are not set")
    scheme, _, encoded = (authorization or "").partition(" ")
    try:
        given = base64.b64decode(encoded, validate=True)
    except binascii.Error:
        given = b""
    if scheme.lower() != "basic" or not secrets.compare_digest(
        given, f"{user}:{password}".encode()
    ):
        raise Forged("wrong Postmark webhook credentials")


def postmark_feedback(record: Any) -> Iterator[Feedback]:
    if not isinstance(record, dict):
        return
    record_type, kind = record.get("RecordType"), None
    if record_type == "SpamComplaint" or record.get("Type") == "SpamComplaint":
        kind = "complaint"
    elif record_type == "Bounce" and record.get("Type") in _POSTMARK_HARD:
        kind = "hard_bounce"
    elif record_type == "Bounce" and record.get("Type") in _POSTMARK_SOFT:
        kind = "soft_bounce"
    elif record_type == "Delivery":
        kind = "delivery"
    if kind is None:
        return
    yield Feedback(
        source="postmark",
        kind=kind,
        email=str(record.get("Email") or record.get("Recipient") or ""),
        message_id=_postmark_message_id(record),
        details=_details(record.get("Type"), record.get("Description")),
        at=_when(record.get("BouncedAt") or record.get("DeliveredAt")),
        report_id=_postmark_id(record),
    )


def _postmark_id(record: dict[str, Any]) -> str | None:
    found = record.get("ID") or record.get("MessageID")
    return f"{record.get('RecordType')}:{found}" if found else None


def _postmark_message_id(record: dict[str, Any]) -> str | None:
    # Postmark's MessageID is its own; ours travels as metadata when the store set it up.
    metadata = record.get("Metadata") or {}
    value = metadata.get("message_id") if isinstance(metadata, dict) else None
    return str(value) if value else None


# ---- helpers ------------------------------------------------------------------------------------


def _details(*parts: Any) -> str | None:
    text = "; ".join(str(p) for p in parts if p)
    return text[:1000] or None


def _when(value: Any) -> datetime | None:
    try:
        if isinstance(value, int | float):
            return datetime.fromtimestamp(value, UTC)
        if isinstance(value, str):
            when = datetime.fromisoformat(value.replace("Z", "+00:00"))
            return when if when.tzinfo else when.replace(tzinfo=UTC)
    except (ValueError, OverflowError):
        return None
    return None


def loads(body: bytes) -> Any:
    """The JSON in `body`, or None if it is not JSON or nests too deep."""
    try:
        return jsonbody.loads(body)
    except ValueError:
        return None
