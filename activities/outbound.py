"""The outbound webhook step: a signed JSON POST to a named endpoint, for other channels (SMS,
push, a CRM) that a flow hands a moment of its story to.

    status = await self.webhook("sms", {"text": "Your cart is waiting"})   # in a flow

The endpoint is a name in NUDGE_WEBHOOKS ({"sms": "https://..."}), never a URL in flow code, so
a store points flows at its own services without touching them. The request:

    POST <url>
    Content-Type: application/json
    X-Nudge-Delivery: 3f0c...            the body's "id": the same on every retry of this step
    X-Nudge-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of f"{t}.{raw body}">
                                         keyed with NUDGE_WEBHOOK_SECRET (never NUDGE_SECRET_KEY)

    {"id": "3f0c...", "flow": "winback", "step": "webhook_sms_1", "contact_id": 42,
     "payload": {"text": "..."}, "sent_at": "2026-11-24T19:30:00Z"}

No personal data goes out beyond what the flow put in `payload`. The receiver verifies the
signature (nudge/signing.py: `verify(secret, raw_body, header)`) and de-duplicates on the
delivery id: Temporal retries a step whose attempt failed or timed out, and an attempt may have
been received even though its answer was lost. The id is derived from the journey's workflow id,
its run and the step name, so a later journey of the same flow, contact and key (a re-entry) is
a new delivery; a flow that calls one endpoint twice gives each call its own step name (the
toolkit numbers them: webhook_sms_1, webhook_sms_2).

Answers: 2xx is done. 408, 429, 5xx and network errors are retried by Temporal (a Retry-After
is honoured). Any other status - a 4xx says the request itself is wrong - fails the step at once
(`WebhookRejected`), as does a name missing from NUDGE_WEBHOOKS (`UnknownWebhook`).
"""

from __future__ import annotations

import hashlib
import json
import logging
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime

import httpx
from temporalio import activity
from temporalio.exceptions import ApplicationError

from nudge import signing
from nudge.journeys.contracts import WebhookInput, WebhookResult
from nudge.settings import MAKE_A_KEY, Settings

log = logging.getLogger(__name__)

DELIVERY_HEADER = "X-Nudge-Delivery"
SIGNATURE_HEADER = "X-Nudge-Signature"
USER_AGENT = "Nudge-Webhooks/1"
# Statuses that mean "later, maybe": everything else outside 2xx will not get better by retrying.
RETRYABLE_4XX = frozenset({408, 429})
# A receiver's Retry-After is honoured up to this; beyond it the retry policy decides.
MAX_RETRY_AFTER = timedelta(hours=1)
# How much of a rejecting receiver's answer goes into the error, to say why.
ERROR_BODY_CHARS = 200


def delivery_id(workflow_id: str, run_id: str, step: str) -> str:
    """The id of one journey step's delivery: the same on every retry of that step, different
    for the same step of a later journey with the same workflow id (a re-entry is a new run)."""
    digest = hashlib.sha256(f"{workflow_id}\x1f{run_id}\x1f{step}".encode()).hexdigest()
    return digest[:32]


class WebhookActivities:
    def __init__(self, settings: Settings, client: httpx.AsyncClient | None = None) -> None:
        self.settings = settings
        self._client = client
        # A client made here is closed by `aclose()`; one passed in belongs to the caller.
        self._owns_client = client is None

    @property
    def secret(self) -> str:
        """NUDGE_WEBHOOK_SECRET, never NUDGE_SECRET_KEY: receivers hold the key they verify with,
        and must not be able to sign a customer's links. Unset (only possible in development:
        the worker refuses to start without it elsewhere), every webhook step fails at once."""
        if not self.settings.webhook_secret:
            raise ApplicationError(
                "NUDGE_WEBHOOK_SECRET is not set: outbound webhooks are signed with a secret of "
                f"their own, never NUDGE_SECRET_KEY; make one with {MAKE_A_KEY} and give it to "
                "the receivers",
                type="WebhookSecretMissing",
                non_retryable=True,
            )
        return self.settings.webhook_secret

    @property
    def client(self) -> httpx.AsyncClient:
        # Made on first use, so a worker whose flows never call a webhook opens nothing.
        if self._client is None:
            self._client = httpx.AsyncClient(
                timeout=self.settings.webhook_timeout,
                follow_redirects=False,
                headers={"User-Agent": USER_AGENT},
            )
        return self._client

    async def aclose(self) -> None:
        if self._owns_client and self._client is not None:
            await self._client.aclose()
            self._client = None

    @activity.defn(name="call_webhook")
    async def call_webhook(self, job: WebhookInput) -> WebhookResult:
        url = self.settings.webhooks.get(job.endpoint)
        if url is None:
            configured = ", ".join(sorted(self.settings.webhooks)) or "none"
            raise ApplicationError(
                f"webhook endpoint {job.endpoint!r} (step {job.step!r} of flow {job.flow!r}) "
                f"is not in NUDGE_WEBHOOKS; configured: {configured}",
                type="UnknownWebhook",
                non_retryable=True,
            )
        info = activity.info()
        # A standalone activity (started by no workflow) has no run: the id is then per step.
        delivery = delivery_id(job.workflow_id, info.workflow_run_id or "", job.step)
        now = datetime.now(UTC)
        body = self._body(job, delivery, now)
        headers = {
            "Content-Type": "application/json",
            DELIVERY_HEADER: delivery,
            SIGNATURE_HEADER: signing.sign(self.secret, body, int(now.timestamp())),
        }
        try:
            response = await self.client.post(
                url, content=body, headers=headers, timeout=self.settings.webhook_timeout
            )
        except httpx.TransportError as err:
            # Connection refused, timeout, reset: the receiver may come back; Temporal retries.
            raise ApplicationError(
                f"webhook {job.endpoint!r} unreachable: {type(err).__name__}: {err}",
                type="WebhookUnreachable",
            ) from err
        status = response.status_code
        log.info(
            "webhook %s delivery %s attempt %d: %d",
            job.endpoint,
            delivery,
            info.attempt,
            status,
        )
        if response.is_success:
            return WebhookResult(status_code=status)
        if status >= 500 or status in RETRYABLE_4XX:
            raise ApplicationError(
                f"webhook {job.endpoint!r} answered {status}, retrying",
                status,
                type="WebhookFailed",
                next_retry_delay=retry_after(response),
            )
        raise ApplicationError(
            f"webhook {job.endpoint!r} rejected delivery {delivery} with {status}: "
            f"{response.text[:ERROR_BODY_CHARS]}",
            status,
            type="WebhookRejected",
            non_retryable=True,
        )

    def _body(self, job: WebhookInput, delivery: str, now: datetime) -> bytes:
        document = {
            "id": delivery,
            "flow": job.flow,
            "step": job.step,
            "contact_id": job.contact_id,
            "payload": job.payload,
            "sent_at": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
        try:
            return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()
        except (TypeError, ValueError) as err:
            raise ApplicationError(
                f"payload of webhook step {job.step!r} is not JSON: {err}",
                type="BadWebhookPayload",
                non_retryable=True,
            ) from err


def retry_after(response: httpx.Response) -> timedelta | None:
    """The receiver's Retry-After (seconds or an HTTP date), capped; None if absent or unreadable."""
    value = response.headers.get("Retry-After", "").strip()
    if not value:
        return None
    delay: timedelta | None
    if value.isdigit():
        delay = timedelta(seconds=int(value))
    else:
        try:
            delay = parsedate_to_datetime(value) - datetime.now(UTC)
        except (TypeError, ValueError):
            return None
    # A date in the past or "0" says nothing a retry policy's backoff does not already cover.
    return min(delay, MAX_RETRY_AFTER) if delay > timedelta(0) else None
