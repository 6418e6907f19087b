"""A/B winners: the Beta-Binomial P(best), and a simulated step whose clearly better variant is
recorded as the winner and from then on is the one the real send activity sends (real database,
real SMTP server); two equal variants reach no verdict."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
import pytest_asyncio
from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio.testing import ActivityEnvironment

from activities.email import EmailActivities
from conftest import make_settings
from nudge.analytics import abtest
from nudge.contacts import directory
from nudge.dev.mailcatcher import MailCatcher
from nudge.events import schemas as ev
from nudge.intake import projection
from nudge.journeys.contracts import SendEmailInput
from nudge.mail.render import Renderer
from nudge.mail.smtp import SmtpSender
from nudge.settings import Settings
from nudge.storage.db import create_engine, session_maker
from nudge.storage.models import AbDecision, Message, MessageEvent
from support import cart_event, new_email, new_id

Sessions = async_sessionmaker[AsyncSession]


@pytest_asyncio.fixture(loop_scope="session")
async def ab_sessions(db_url: str) -> AsyncIterator[Sessions]:
    engine = create_engine(db_url)
    yield session_maker(engine)
    await engine.dispose()


@pytest.fixture
def settings(db_url: str, mailcatcher: MailCatcher) -> Settings:
    # Every send re-checks the step (no throttle), as a long-running worker eventually does.
    return make_settings(db_url, mailcatcher, ab_check_seconds=0)


def test_probability_best_follows_the_evidence() -> None:
    clear = abtest.probability_best(
        [abtest.Arm("a", 600, 60), abtest.Arm("b", 600, 120)], draws=5000
    )
    assert clear["b"] > 0.999 and clear["a"] < 0.001
    even = abtest.probability_best([abtest.Arm("a", 600, 60), abtest.Arm("b", 600, 61)])
    assert 0.4 < even["a"] < 0.6 and abs(even["a"] + even["b"] - 1) < 1e-9
    # Seeded: the same numbers give the same answer.
    assert even == abtest.probability_best([abtest.Arm("a", 600, 60), abtest.Arm("b", 600, 61)])
    # Little data is never certain, whatever the rates.
    few = abtest.probability_best([abtest.Arm("a", 5, 1), abtest.Arm("b", 5, 3)])
    assert few["b"] < 0.95


async def simulate_step(
    sessions: Sessions, flow: str, step: str, contact_id: int, results: dict[str, tuple[int, int]]
) -> None:
    """`results`: variant -> (recipients, clickers), as a step's message log would hold them."""
    sent_at = datetime.now(UTC) - timedelta(days=1)
    messages, events = [], []
    for variant, (recipients, clickers) in results.items():
        for i in range(recipients):
            mid = f"{uuid.uuid4().hex}@sim"
            messages.append(
                {
                    "message_id": mid,
                    "workflow_id": f"{flow}-{variant}-{i}",
                    "trigger_event_id": "sim",
                    "step": step,
                    "flow": flow,
                    "contact_id": contact_id,
                    "template": "cart_1",
                    "status": "sent",
                    "variant": variant,
                    "sent_at": sent_at,
                    "created_at": sent_at,
                }
            )
            if i < clickers:
                at = sent_at + timedelta(hours=1)
                events += [
                    {"message_id": mid, "contact_id": contact_id, "kind": k, "at": at}
                    for k in ("open", "click")
                ]
    async with sessions.begin() as session:
        await session.execute(insert(Message), messages)
        await session.execute(insert(MessageEvent), events)


async def seed_contact(sessions: Sessions) -> tuple[int, str]:
    token = new_id("cart")
    event = ev.event_adapter.validate_python(cart_event(new_email(), token))
    async with sessions.begin() as session:
        contact_id = await directory.upsert_contact(session, event.contact)
        await projection.apply_event(session, event, contact_id)
    return contact_id, token


async def send(
    sessions: Sessions, settings: Settings, flow: str, step: str, contact_id: int, token: str
) -> Message:
    activities = EmailActivities(
        sessions, SmtpSender(settings.smtp_host, settings.smtp_port), settings, Renderer()
    )
    job = SendEmailInput(
        workflow_id=f"{flow}-{contact_id}-{token}",
        trigger_event_id="evt_start",
        flow=flow,
        step=step,
        template="cart_1",
        contact_id=contact_id,
        key=token,
        journey_started_at=datetime.now(UTC),
        variant="a",
        variants={"a": "cart_1", "b": "cart_2"},
    )
    result = await ActivityEnvironment().run(activities.send_email, job)
    assert result.status == "sent", result
    async with sessions() as session:
        row = await session.get(Message, result.message_id)
    assert row is not None
    return row


async def test_a_clearly_better_variant_wins_and_is_sent_from_then_on(
    ab_sessions: Sessions, settings: Settings, mailcatcher: MailCatcher
) -> None:
    flow, step = f"test_ab_{uuid.uuid4().hex[:8]}", "email_1"
    contact_id, token = await seed_contact(ab_sessions)
    await simulate_step(ab_sessions, flow, step, contact_id, {"a": (600, 60), "b": (600, 120)})

    row = await send(ab_sessions, settings, flow, step, contact_id, token)

    assert (row.variant, row.template) == ("b", "cart_2")
    [caught] = [m for m in mailcatcher.messages if m.message_id == row.message_id]
    # cart_2 (variant b) is the one sent: its subject, not cart_1's.
    assert caught.subject == row.subject == "Still thinking about the Linen shirt?"
    async with ab_sessions() as session:
        decision = await session.get(AbDecision, (flow, step))
    assert decision is not None
    assert (decision.winner, decision.metric) == ("b", "click")
    assert decision.probability >= 0.999
    assert decision.numbers["a"]["recipients"] == 600 and decision.numbers["a"]["successes"] == 60
    assert decision.numbers["b"]["successes"] == 120
    # A later send of the step (another journey) gets the winner too, from the record.
    contact_2, token_2 = await seed_contact(ab_sessions)
    again = await send(ab_sessions, settings, flow, step, contact_2, token_2)
    assert (again.variant, again.template) == ("b", "cart_2")


async def test_equal_variants_reach_no_verdict(ab_sessions: Sessions, settings: Settings) -> None:
    flow, step = f"test_ab_{uuid.uuid4().hex[:8]}", "email_1"
    contact_id, token = await seed_contact(ab_sessions)
    await simulate_step(ab_sessions, flow, step, contact_id, {"a": (600, 60), "b": (600, 62)})

    row = await send(ab_sessions, settings, flow, step, contact_id, token)

    assert (row.variant, row.template) == ("a", "cart_1")
    async with ab_sessions() as session:
        assert await session.get(AbDecision, (flow, step)) is None
        verdict = await abtest.evaluate(session, settings, flow, step, record=False)
    assert verdict is not None and not verdict.ready
    assert max(verdict.probabilities.values()) < settings.ab_threshold


async def test_too_few_recipients_decide_nothing_however_clear(
    ab_sessions: Sessions, settings: Settings
) -> None:
    flow, step = f"test_ab_{uuid.uuid4().hex[:8]}", "email_1"
    contact_id, _ = await seed_contact(ab_sessions)
    await simulate_step(ab_sessions, flow, step, contact_id, {"a": (400, 10), "b": (400, 200)})
    async with ab_sessions.begin() as session:
        verdict = await abtest.evaluate(session, settings, flow, step)
    assert verdict is not None and verdict.leader == "b" and not verdict.ready
    assert verdict.probabilities["b"] > 0.99
    async with ab_sessions() as session:
        assert await session.get(AbDecision, (flow, step)) is None
