"""The outbound webhook step against a real HTTP server on loopback: what is sent (body, headers,
a signature the receiver can verify), the delivery id a receiver de-duplicates on, and which
answers Temporal retries. Then the step inside a flow, on the real stack with time skipping."""

from __future__ import annotations

import dataclasses
import socket
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from temporalio import workflow
from temporalio.client import Client
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment, WorkflowEnvironment

from activities.outbound import WebhookActivities, delivery_id
from conftest import open_stack
from http_support import Answer, Receiver, receiver
from nudge import signing
from nudge.dev.mailcatcher import MailCatcher
from nudge.events.schemas import StoreEventIn, cart_of
from nudge.journeys.contracts import JourneyInput, JourneyState, JourneyStatus, WebhookInput
from nudge.settings import Settings
from support import Stack, cart_event, new_email, new_id
from workflows.journey import Journey

SECRET = "whsec-test-0123456789"


def settings_for(url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "webhooks": {"sms": url, "crm": "http://127.0.0.1:9/crm"},
        "webhook_secret": SECRET,
        "secret_key": "the-app-secret",
    }
    return Settings(**(values | overrides))


def job(**overrides: Any) -> WebhookInput:
    values: dict[str, Any] = {
        "workflow_id": "winback-42-lapsed_30",
        "step": "sms_1",
        "contact_id": 42,
        "flow": "winback",
        "endpoint": "sms",
        "payload": {"text": "Olá, we miss you", "offer": 15},
    }
    return WebhookInput(**(values | overrides))


def env(attempt: int = 1, run_id: str = "run-1") -> ActivityEnvironment:
    environment = ActivityEnvironment()
    environment.info = dataclasses.replace(
        environment.info, attempt=attempt, workflow_run_id=run_id
    )
    return environment


async def call(
    activities: WebhookActivities, work: WebhookInput, *, attempt: int = 1, run_id: str = "run-1"
) -> Any:
    return await env(attempt, run_id).run(activities.call_webhook, work)


async def rejected(activities: WebhookActivities, work: WebhookInput) -> ApplicationError:
    with pytest.raises(ApplicationError) as raised:
        await call(activities, work)
    return raised.value


# ---- what goes out ---------------------------------------------------------------------------


async def test_posts_signed_json_with_a_delivery_id() -> None:
    with receiver(Answer(202)) as hook:
        activities = WebhookActivities(settings_for(hook.url))
        before = int(time.time())
        result = await call(activities, job())
        await activities.aclose()

    assert result.status_code == 202
    [request] = hook.requests
    assert request.path == "/hooks/sms?token=abc"
    headers = request.headers
    assert headers["content-type"] == "application/json"
    assert headers["user-agent"].startswith("Nudge-Webhooks/")
    delivery = headers["x-nudge-delivery"]
    assert delivery == delivery_id("winback-42-lapsed_30", "run-1", "sms_1")
    body = request.json
    assert set(body) == {"id", "flow", "step", "contact_id", "payload", "sent_at"}
    assert body["id"] == delivery
    assert (body["flow"], body["step"], body["contact_id"]) == ("winback", "sms_1", 42)
    assert body["payload"] == {"text": "Olá, we miss you", "offer": 15}
    sent_at = datetime.fromisoformat(body["sent_at"].replace("Z", "+00:00"))
    assert abs(sent_at - datetime.now(UTC)) < timedelta(minutes=1)
    # No personal data beyond the payload: the contact is an id.
    assert b"@" not in request.body

    # The receiver's check: the signature covers the raw body, with the webhook secret.
    header = headers["x-nudge-signature"]
    assert signing.verify(SECRET, request.body, header)
    assert not signing.verify("the-app-secret", request.body, header)
    stamp = int(header.split(",")[0].removeprefix("t="))
    assert before <= stamp <= int(time.time())
    assert stamp == int(sent_at.timestamp())


async def test_the_main_secret_never_signs_a_webhook() -> None:
    """Receivers hold the key they verify with: were it NUDGE_SECRET_KEY, they could forge every
    customer's links. Without NUDGE_WEBHOOK_SECRET (development only: elsewhere the worker does
    not start, tests/nudge/test_settings.py) nothing goes out and the step fails at once."""
    with receiver() as hook:
        activities = WebhookActivities(
            settings_for(hook.url, webhook_secret=None, env="development")
        )
        error = await rejected(activities, job())
        await activities.aclose()
    assert hook.requests == []
    assert error.type == "WebhookSecretMissing" and error.non_retryable
    assert "NUDGE_WEBHOOK_SECRET" in str(error) and "secrets.token_urlsafe(32)" in str(error)

    # Nor may the webhook secret be the main one: the settings refuse it, in every environment.
    for env in ("development", "production"):
        same = settings_for(hook.url, webhook_secret="the-app-secret", env=env)
        assert any("NUDGE_WEBHOOK_SECRET is NUDGE_SECRET_KEY" in p for p in same.secret_problems())


async def test_a_retried_attempt_carries_the_same_delivery_id() -> None:
    with receiver(Answer(503), Answer(200)) as hook:
        activities = WebhookActivities(settings_for(hook.url))
        with pytest.raises(ApplicationError) as first:
            await call(activities, job(), attempt=1)
        second = await call(activities, job(), attempt=2)
        # Another step, or the same step of a later journey under the same workflow id (a
        # re-entry is a new run), is another delivery.
        await call(activities, job(step="sms_2"), attempt=1)
        await call(activities, job(), attempt=1, run_id="run-2")
        await activities.aclose()

    assert not first.value.non_retryable and first.value.type == "WebhookFailed"
    assert second.status_code == 200
    ids = [r.headers["x-nudge-delivery"] for r in hook.requests]
    assert ids[0] == ids[1]
    assert [r.json["id"] for r in hook.requests[:2]] == ids[:2]
    assert len({ids[0], ids[2], ids[3]}) == 3
    # Each attempt is signed afresh (its own timestamp), and each verifies.
    assert all(
        signing.verify(SECRET, r.body, r.headers["x-nudge-signature"]) for r in hook.requests
    )


# ---- which answers are retried ---------------------------------------------------------------


@pytest.mark.parametrize("status", [500, 502, 503, 504, 408, 429])
async def test_server_errors_timeouts_and_throttling_are_retried(status: int) -> None:
    with receiver(Answer(status, b"busy")) as hook:
        activities = WebhookActivities(settings_for(hook.url))
        error = await rejected(activities, job())
        await activities.aclose()
    assert error.type == "WebhookFailed"
    assert not error.non_retryable
    assert error.details == (status,)
    assert str(status) in str(error) and "'sms'" in str(error)
    assert error.next_retry_delay is None


@pytest.mark.parametrize(
    ("retry_after", "expected"),
    [
        ("7", timedelta(seconds=7)),
        ("86400", timedelta(hours=1)),  # capped
        ("soon", None),
        ("0", None),
    ],
)
async def test_retry_after_is_honoured(retry_after: str, expected: timedelta | None) -> None:
    with receiver(Answer(429, headers={"Retry-After": retry_after})) as hook:
        activities = WebhookActivities(settings_for(hook.url))
        error = await rejected(activities, job())
        await activities.aclose()
    assert not error.non_retryable
    assert error.next_retry_delay == expected


async def test_retry_after_as_an_http_date() -> None:
    later = datetime.now(UTC) + timedelta(seconds=120)
    date = later.strftime("%a, %d %b %Y %H:%M:%S GMT")
    with receiver(Answer(503, headers={"Retry-After": date})) as hook:
        activities = WebhookActivities(settings_for(hook.url))
        error = await rejected(activities, job())
        await activities.aclose()
    assert error.next_retry_delay is not None
    assert timedelta(seconds=100) < error.next_retry_delay <= timedelta(seconds=120)


@pytest.mark.parametrize("status", [400, 401, 403, 404, 410, 422, 302])
async def test_other_answers_fail_the_step_without_retry(status: int) -> None:
    # A redirect too: the signed request is not replayed to wherever it points.
    answer = Answer(status, b'{"error": "bad phone number"}', {"Location": "http://example.com/"})
    with receiver(answer) as hook:
        activities = WebhookActivities(settings_for(hook.url))
        error = await rejected(activities, job())
        await activities.aclose()
    assert len(hook.requests) == 1
    assert error.type == "WebhookRejected"
    assert error.non_retryable
    assert error.details == (status,)
    assert str(status) in str(error) and "bad phone number" in str(error)


async def test_an_unreachable_receiver_is_retried() -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    activities = WebhookActivities(settings_for(f"http://127.0.0.1:{port}/hook"))
    error = await rejected(activities, job())
    await activities.aclose()
    assert error.type == "WebhookUnreachable"
    assert not error.non_retryable
    assert "'sms'" in str(error)


async def test_a_slow_receiver_times_out_and_is_retried() -> None:
    with receiver(Answer(200, delay=1.0)) as hook:
        activities = WebhookActivities(settings_for(hook.url, webhook_timeout=0.2))
        started = time.monotonic()
        error = await rejected(activities, job())
        elapsed = time.monotonic() - started
        await activities.aclose()
    assert error.type == "WebhookUnreachable" and "Timeout" in str(error)
    assert not error.non_retryable
    assert elapsed < 0.9


async def test_an_unknown_endpoint_fails_at_once_naming_the_configured_ones() -> None:
    with receiver() as hook:
        activities = WebhookActivities(settings_for(hook.url))
        error = await rejected(activities, job(endpoint="push"))
    assert hook.requests == []
    assert error.type == "UnknownWebhook"
    assert error.non_retryable
    assert "'push'" in str(error) and "crm, sms" in str(error)

    nothing = WebhookActivities(Settings(webhooks={}))
    error = await rejected(nothing, job())
    assert "configured: none" in str(error)


async def test_a_given_client_is_used_and_left_open() -> None:
    with receiver() as hook:
        async with httpx.AsyncClient(headers={"X-Test": "mine"}) as client:
            activities = WebhookActivities(settings_for(hook.url), client)
            await call(activities, job())
            await activities.aclose()
            assert not client.is_closed
    assert hook.requests[0].headers["x-test"] == "mine"


# ---- verify(), as a receiver uses it -----------------------------------------------------------


def test_verify_accepts_its_own_signature_and_nothing_else() -> None:
    body = b'{"id":"abc","payload":{"text":"hi"}}'
    now = 1_764_012_345
    header = signing.sign(SECRET, body, now)
    assert header.startswith(f"t={now},v1=")
    assert signing.verify(SECRET, body, header, now=now)
    assert signing.verify(SECRET, body, header, now=now + 300)
    assert signing.verify(SECRET, body, header.replace(",", ", "), now=now)

    assert not signing.verify(SECRET, body + b" ", header, now=now)  # body changed
    assert not signing.verify(SECRET + "x", body, header, now=now)  # another secret
    assert not signing.verify(SECRET, body, header, now=now + 301)  # replayed later
    assert not signing.verify(SECRET, body, header, now=now - 301)  # from the future
    assert signing.verify(SECRET, body, header, now=now + 3600, tolerance=3600)
    moved = header.replace(f"t={now}", f"t={now + 10}")  # the timestamp is signed
    assert not signing.verify(SECRET, body, moved, now=now)


def test_verify_takes_any_of_several_signatures() -> None:
    # Several v1 values (e.g. while a secret is rotated): one matching is enough.
    body, now = b"{}", 1_764_012_345
    good = signing.sign(SECRET, body, now).split(",")[1]
    other = signing.sign("old-secret", body, now).split(",")[1]
    assert signing.verify(SECRET, body, f"t={now},{other},{good}", now=now)
    assert not signing.verify(SECRET, body, f"t={now},{other}", now=now)


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "garbage",
        "t=,v1=",
        "t=notanumber,v1=00",
        "v1=" + "0" * 64,  # no timestamp
        "t=1764012345",  # no signature
        "t=1764012345,v0=" + "0" * 64,  # another scheme
    ],
)
def test_verify_refuses_malformed_headers(header: str | None) -> None:
    assert not signing.verify(SECRET, b"{}", header, now=1_764_012_345)


# ---- the step in a flow, on the stack ----------------------------------------------------------


@workflow.defn(name="test_webhook", sandboxed=False)
class WebhookFlow(Journey):
    """Test-only: an hour after a cart update, text the contact through the "sms" webhook."""

    flow = "test_webhook"
    triggers = ("cart_updated",)

    def __init__(self) -> None:
        super().__init__()
        self.status: int | None = None

    @workflow.run
    async def run(self, journey: JourneyInput) -> JourneyState:
        return await self.play(journey, self.story)

    async def story(self) -> None:
        await self.wait(hours=1)
        self.status = await self.webhook("sms", {"text": "hi"})

    @workflow.query
    def webhook_status(self) -> int | None:
        return self.status

    @classmethod
    def journey_key(cls, event: StoreEventIn) -> str | None:
        cart = cart_of(event)
        return cart.token if cart else None


@pytest.fixture
def hook() -> Iterator[Receiver]:
    with receiver() as opened:
        yield opened


@pytest.fixture
async def webhook_stack(
    time_env: WorkflowEnvironment,
    temporal: Client,
    db_url: str,
    mailcatcher: MailCatcher,
    hook: Receiver,
) -> AsyncIterator[Stack]:
    overrides: dict[str, object] = {"webhooks": {"sms": hook.url}, "webhook_secret": SECRET}
    async with open_stack(
        time_env, temporal, db_url, mailcatcher, flows=[WebhookFlow], settings_overrides=overrides
    ) as stack:
        yield stack


async def start(stack: Stack) -> str:
    response = await stack.post(cart_event(new_email(), new_id("cart")))
    assert response.status_code == 202, response.text
    [wid] = response.json()["results"][0]["journeys"]
    return str(wid)


async def test_a_flow_calls_the_webhook_and_gets_through_a_failed_attempt(
    webhook_stack: Stack, hook: Receiver
) -> None:
    stack = webhook_stack
    hook.answers[:] = [Answer(503), Answer(201)]  # down once, then accepted
    wid = await start(stack)

    state = await stack.finish(wid)

    assert state.status == JourneyStatus.COMPLETED
    handle = stack.temporal.get_workflow_handle(wid)
    assert await handle.query(WebhookFlow.webhook_status) == 201
    first, second = hook.requests
    assert first.headers["x-nudge-delivery"] == second.headers["x-nudge-delivery"]
    body = second.json
    assert (body["flow"], body["contact_id"], body["payload"]) == (
        "test_webhook",
        state.contact_id,
        {"text": "hi"},
    )
    assert body["id"] == first.headers["x-nudge-delivery"]
    assert body["step"] == "webhook_sms_1"
    assert b"@" not in second.body
    assert all(
        signing.verify(SECRET, r.body, r.headers["x-nudge-signature"]) for r in hook.requests
    )


async def test_a_rejected_webhook_is_not_retried_and_the_flow_goes_on(
    webhook_stack: Stack, hook: Receiver
) -> None:
    hook.answers[:] = [Answer(422, b"no phone number")]
    wid = await start(webhook_stack)

    state = await webhook_stack.finish(wid)

    assert state.status == JourneyStatus.COMPLETED
    handle = webhook_stack.temporal.get_workflow_handle(wid)
    assert await handle.query(WebhookFlow.webhook_status) == 0  # the toolkit's "failed for good"
    assert len(hook.requests) == 1
