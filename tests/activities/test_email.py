"""The send activity alone (Temporal's ActivityEnvironment), on a real database and SMTP server:
the idempotency protocol of the message log, row by row, and the personal content of emails
(unique coupons, segments, loyalty, locale)."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from email.message import EmailMessage
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import pytest_asyncio
from babel.dates import format_date
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.email import EmailActivities, Superseded
from conftest import make_settings
from nudge.contacts import directory
from nudge.dev.mailcatcher import MailCatcher
from nudge.events import schemas as ev
from nudge.intake import projection
from nudge.journeys.contracts import SendEmailInput, message_id
from nudge.mail.render import TEMPLATES, RenderedEmail, Renderer
from nudge.mail.smtp import Commit, OutgoingMessage, SmtpSender, build_message
from nudge.segments.catalogue import ensure_builtin_segments
from nudge.settings import Settings
from nudge.storage.db import create_engine, session_maker
from nudge.storage.models import Contact, Coupon, Message, Segment, SegmentMember, utcnow
from support import Crash, CrashAtCommit, cart_event, new_email, new_id, untracked

Sessions = async_sessionmaker[AsyncSession]


@pytest_asyncio.fixture(loop_scope="session")
async def sessions(db_url: str) -> AsyncIterator[Sessions]:
    engine = create_engine(db_url)
    yield session_maker(engine)
    await engine.dispose()


@pytest.fixture
def settings(db_url: str, mailcatcher: MailCatcher) -> Settings:
    return make_settings(db_url, mailcatcher)


def activities(sessions: Sessions, settings: Settings, **kw: object) -> EmailActivities:
    sender = SmtpSender(settings.smtp_host, settings.smtp_port)
    return EmailActivities(sessions, sender, settings, **kw)  # type: ignore[arg-type]


async def seed_cart(sessions: Sessions, email: str, token: str) -> int:
    event = ev.event_adapter.validate_python(cart_event(email, token))
    async with sessions.begin() as session:
        contact_id = await directory.upsert_contact(session, event.contact)
        await projection.apply_event(session, event, contact_id)
    return contact_id


def job(contact_id: int, token: str, step: str = "cart_1", **kw: object) -> SendEmailInput:
    values: dict[str, object] = {
        "workflow_id": f"cart_abandonment-{contact_id}-{token}",
        "trigger_event_id": "evt_start",
        "flow": "cart_abandonment",
        "step": step,
        "template": step,
        "contact_id": contact_id,
        "key": token,
        "journey_started_at": datetime(2026, 11, 23, 10, tzinfo=UTC),
    }
    return SendEmailInput.model_validate(values | kw)


async def rows(sessions: Sessions, workflow_id: str) -> list[Message]:
    async with sessions() as session:
        return list(
            await session.scalars(select(Message).where(Message.workflow_id == workflow_id))
        )


async def test_a_step_is_sent_once_however_often_it_runs(
    sessions: Sessions, settings: Settings, mailcatcher: MailCatcher
) -> None:
    email, token = new_email(), new_id("cart")
    contact_id = await seed_cart(sessions, email, token)
    send = activities(sessions, settings).send_email
    first = await ActivityEnvironment().run(send, job(contact_id, token))
    again = await ActivityEnvironment().run(send, job(contact_id, token))

    assert first == again
    assert (first.status, first.message_id) == (
        "sent",
        message_id(job(contact_id, token).workflow_id, "evt_start", "cart_1", "shop.example"),
    )
    [caught] = [m for m in mailcatcher.messages if email in m.rcpt_tos]
    assert caught.message_id == first.message_id
    [row] = await rows(sessions, job(contact_id, token).workflow_id)
    assert (row.status, row.attempts, row.to_email) == ("sent", 1, email)


async def test_a_crash_before_the_final_dot_loses_nothing_and_duplicates_nothing(
    sessions: Sessions, settings: Settings, mailcatcher: MailCatcher
) -> None:
    email, token = new_email(), new_id("cart")
    contact_id = await seed_cart(sessions, email, token)
    crashing = EmailActivities(
        sessions, CrashAtCommit(settings.smtp_host, settings.smtp_port), settings
    )
    with pytest.raises(Crash):
        await ActivityEnvironment().run(crashing.send_email, job(contact_id, token))
    wid = job(contact_id, token).workflow_id
    [row] = await rows(sessions, wid)
    assert (row.status, row.attempts) == ("sending", 1)
    # The server had the whole message but never its final dot: it kept nothing.
    await asyncio.sleep(0.2)
    assert [m for m in mailcatcher.messages if email in m.rcpt_tos] == []

    result = await ActivityEnvironment().run(
        activities(sessions, settings).send_email, job(contact_id, token)
    )
    caught = [m for m in mailcatcher.messages if email in m.rcpt_tos]
    assert [m.message_id for m in caught] == [row.message_id]
    [row] = await rows(sessions, wid)
    assert (result.status, row.status, row.attempts) == ("sent", "sent", 2)


class Overtaken(SmtpSender):
    """While this attempt streams its message, a newer attempt of the same step (started after
    Temporal timed this one out) claims the row and delivers."""

    def __init__(self, settings: Settings, newer: Callable[[], Awaitable[object]]) -> None:
        super().__init__(settings.smtp_host, settings.smtp_port)
        self.newer = newer

    async def send(
        self, message: OutgoingMessage | EmailMessage, *, commit: Commit | None = None
    ) -> None:
        async def late_commit() -> None:
            await self.newer()
            assert commit is not None
            await commit()

        await super().send(message, commit=late_commit)


async def test_an_overtaken_attempt_does_not_deliver(
    sessions: Sessions, settings: Settings, mailcatcher: MailCatcher
) -> None:
    email, token = new_email(), new_id("cart")
    contact_id = await seed_cart(sessions, email, token)

    def newer() -> Awaitable[object]:
        return ActivityEnvironment().run(
            activities(sessions, settings).send_email, job(contact_id, token)
        )

    slow = EmailActivities(sessions, Overtaken(settings, newer), settings)
    with pytest.raises(Superseded):
        await ActivityEnvironment().run(slow.send_email, job(contact_id, token))

    await asyncio.sleep(0.2)
    [caught] = [m for m in mailcatcher.messages if email in m.rcpt_tos]
    [row] = await rows(sessions, job(contact_id, token).workflow_id)
    assert (caught.message_id, row.status, row.attempts) == (row.message_id, "sent", 2)


async def test_kept_alive_connections_deliver_many_and_survive_a_server_restart(
    settings: Settings, mailcatcher: MailCatcher
) -> None:
    sender = SmtpSender(settings.smtp_host, settings.smtp_port, pool_size=2)
    rendered = RenderedEmail(subject="Hello", html="<p>Hi</p>", text="Hi\n")
    ids = [f"{new_id('m')}@shop.example" for _ in range(6)]
    to = new_email()

    def message(mid: str) -> OutgoingMessage:
        return build_message(
            rendered, from_email=settings.from_email, to_email=to, to_name="Ana", message_id=mid
        )

    await asyncio.gather(*(sender.send(message(mid)) for mid in ids[:4]))
    mailcatcher.stop()
    mailcatcher.start()  # the pooled connections are now dead; the next sends reconnect
    for mid in ids[4:]:
        await sender.send(message(mid))
    await sender.close()
    assert sorted(m.message_id or "" for m in mailcatcher.messages if to in m.rcpt_tos) == sorted(
        ids
    )


async def test_the_message_id_survives_a_change_of_sender_domain(
    sessions: Sessions, settings: Settings, mailcatcher: MailCatcher
) -> None:
    email, token = new_email(), new_id("cart")
    contact_id = await seed_cart(sessions, email, token)
    mailcatcher.fail_next(1, code=451)
    with pytest.raises(Exception, match="451"):
        await ActivityEnvironment().run(
            activities(sessions, settings).send_email, job(contact_id, token)
        )
    [queued] = await rows(sessions, job(contact_id, token).workflow_id)
    assert (queued.status, queued.attempts) == ("queued", 1)

    moved = settings.model_copy(update={"from_email": "Store <hello@new-domain.example>"})
    result = await ActivityEnvironment().run(
        activities(sessions, moved).send_email, job(contact_id, token)
    )
    assert result.message_id == queued.message_id and queued.message_id.endswith("@shop.example")
    [caught] = [m for m in mailcatcher.messages if email in m.rcpt_tos]
    assert caught.message_id == queued.message_id


async def test_unsubscribed_contact_is_skipped_with_the_reason(
    sessions: Sessions, settings: Settings, mailcatcher: MailCatcher
) -> None:
    email, token = new_email(), new_id("cart")
    contact_id = await seed_cart(sessions, email, token)
    unsubscribe = ev.event_adapter.validate_python(
        {
            "id": new_id("evt"),
            "type": "customer_unsubscribed",
            "occurred_at": "2026-11-23T10:30:00Z",
            "contact": {"email": email},
        }
    )
    async with sessions.begin() as session:
        await projection.apply_event(session, unsubscribe, contact_id)

    result = await ActivityEnvironment().run(
        activities(sessions, settings).send_email, job(contact_id, token)
    )
    assert (result.status, result.reason) == ("skipped", "unsubscribed")
    assert [m for m in mailcatcher.messages if email in m.rcpt_tos] == []
    # Transactional email is exempt from marketing consent.
    receipt = await ActivityEnvironment().run(
        activities(sessions, settings).send_email,
        job(contact_id, token, step="cart_2", transactional=True),
    )
    assert receipt.status == "sent"


async def test_template_error_fails_loudly_and_is_logged(
    sessions: Sessions, settings: Settings, mailcatcher: MailCatcher, tmp_path: Path
) -> None:
    for part in ("subject", "html", "txt"):
        source = (TEMPLATES / f"cart_1.{part}").read_text()
        (tmp_path / f"broken.{part}").write_text(source + "{{ contact.nickname }}")
    for shared in TEMPLATES.glob("_*"):
        (tmp_path / shared.name).write_text(shared.read_text())
    email, token = new_email(), new_id("cart")
    contact_id = await seed_cart(sessions, email, token)
    send = activities(sessions, settings, renderer=Renderer(tmp_path)).send_email

    with pytest.raises(ApplicationError) as raised:
        await ActivityEnvironment().run(send, job(contact_id, token, template="broken"))
    assert raised.value.type == "TemplateError" and raised.value.non_retryable
    assert "nickname" in str(raised.value)
    [row] = await rows(sessions, job(contact_id, token).workflow_id)
    assert (row.status, row.reason) == ("failed", "template_error")
    assert [m for m in mailcatcher.messages if email in m.rcpt_tos] == []


# ---- personal content ----------------------------------------------------------------------

CODE = re.compile(r"NUDGE-[23456789ABCDEFGHJKMNPQRSTUVWXYZ]{8}")


class Captured(SmtpSender):
    """Streams the message, then dies at the commit point (as the worker does when SIGKILLed
    mid-send), keeping what it was asked to send."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings.smtp_host, settings.smtp_port)
        self.sent: list[OutgoingMessage | EmailMessage] = []

    async def send(
        self, message: OutgoingMessage | EmailMessage, *, commit: Commit | None = None
    ) -> None:
        self.sent.append(message)

        async def crash() -> None:
            raise Crash()

        await super().send(message, commit=crash)


def text_of(message: OutgoingMessage | EmailMessage) -> str:
    parsed = message.parsed() if isinstance(message, OutgoingMessage) else message
    part = parsed.get_body(("plain",))
    assert part is not None
    return str(part.get_content())


async def coupons_of(sessions: Sessions, contact_id: int) -> list[Coupon]:
    async with sessions() as session:
        return list(await session.scalars(select(Coupon).where(Coupon.contact_id == contact_id)))


async def make_vip(sessions: Sessions, contact_id: int) -> None:
    """Put the contact in the built-in `vip` segment (seeding the built-ins first, as the API
    and the worker do at start, if no one has yet)."""
    async with sessions.begin() as session:
        if await session.get(Segment, "vip") is None:
            await ensure_builtin_segments(session, utcnow())
        session.add(SegmentMember(segment_id="vip", contact_id=contact_id))


async def test_the_third_cart_email_carries_a_unique_coupon_per_contact(
    sessions: Sessions, settings: Settings, mailcatcher: MailCatcher
) -> None:
    sent: list[tuple[int, str, str, str]] = []
    for _ in range(2):
        email, token = new_email(), new_id("cart")
        contact_id = await seed_cart(sessions, email, token)
        third = job(contact_id, token, step="cart_3")
        before = utcnow()
        result = await ActivityEnvironment().run(activities(sessions, settings).send_email, third)
        assert result.status == "sent"
        [caught] = [m for m in mailcatcher.messages if email in m.rcpt_tos]
        assert caught.text is not None and caught.html is not None
        [code] = set(CODE.findall(caught.text))
        assert code in caught.html
        assert caught.subject.startswith("10% off your cart, until ")
        assert f"Here is 10% off the items in your cart with the code {code}," in caught.text
        [coupon] = await coupons_of(sessions, contact_id)
        assert (coupon.code, coupon.kind, coupon.value) == (code, "percent", Decimal(10))
        assert coupon.source == f"{third.workflow_id}:evt_start:cart_3"
        assert before + timedelta(hours=24) <= coupon.expires_at <= utcnow() + timedelta(hours=24)
        sent.append((contact_id, email, token, code))
    assert sent[0][3] != sent[1][3]

    # The first email carries no coupon, and issues none.
    contact_id, email, token, _ = sent[0]
    first = await ActivityEnvironment().run(
        activities(sessions, settings).send_email, job(contact_id, token)
    )
    assert first.status == "sent"
    [caught] = [m for m in mailcatcher.messages if m.message_id == first.message_id]
    assert caught.text is not None and "Complete your order" in caught.text
    assert not CODE.search(caught.text)
    assert len(await coupons_of(sessions, contact_id)) == 1


async def test_a_retried_third_email_shows_the_code_of_the_first_attempt(
    sessions: Sessions, settings: Settings, mailcatcher: MailCatcher
) -> None:
    email, token = new_email(), new_id("cart")
    contact_id = await seed_cart(sessions, email, token)
    captured = Captured(settings)
    with pytest.raises(Crash):
        await ActivityEnvironment().run(
            EmailActivities(sessions, captured, settings).send_email,
            job(contact_id, token, step="cart_3"),
        )
    [first_attempt] = captured.sent
    [shown] = set(CODE.findall(text_of(first_attempt)))

    result = await ActivityEnvironment().run(
        activities(sessions, settings).send_email, job(contact_id, token, step="cart_3")
    )
    assert result.status == "sent"
    [caught] = [m for m in mailcatcher.messages if email in m.rcpt_tos]
    assert set(CODE.findall(caught.text or "")) == {shown}
    assert [c.code for c in await coupons_of(sessions, contact_id)] == [shown]


async def test_a_vip_gets_the_higher_percent(
    sessions: Sessions, settings: Settings, mailcatcher: MailCatcher
) -> None:
    email, token = new_email(), new_id("cart")
    contact_id = await seed_cart(sessions, email, token)
    await make_vip(sessions, contact_id)
    result = await ActivityEnvironment().run(
        activities(sessions, settings).send_email, job(contact_id, token, step="cart_3")
    )
    assert result.status == "sent"
    [caught] = [m for m in mailcatcher.messages if email in m.rcpt_tos]
    [code] = set(CODE.findall(caught.text or ""))
    assert caught.subject.startswith("20% off your cart")
    assert f"Here is 20% off the items in your cart with the code {code}," in (caught.text or "")
    [coupon] = await coupons_of(sessions, contact_id)
    assert (coupon.code, coupon.value) == (code, Decimal(20))


def personal_cart(email: str, token: str, **contact: Any) -> dict[str, Any]:
    event = cart_event(email, token)
    event["contact"] = {"email": email, **contact}
    return event


async def test_emails_speak_the_contacts_locale_and_show_their_loyalty(
    sessions: Sessions, db_url: str, mailcatcher: MailCatcher
) -> None:
    settings = make_settings(db_url, mailcatcher, store_logo_url="https://shop.example/logo.png")
    email, token = new_email(), new_id("cart")
    cart = ev.event_adapter.validate_python(
        personal_cart(email, token, locale="pt-PT", timezone="Europe/Lisbon")
    )
    order = ev.event_adapter.validate_python(
        {
            "id": new_id("evt"),
            "type": "order_placed",
            "occurred_at": "2026-10-01T12:00:00Z",  # before the journey, another cart
            "contact": {"email": email},
            "order": {"id": new_id("o"), "currency": "EUR", "total": "1234.00"},
        }
    )
    async with sessions.begin() as session:
        contact_id = await directory.upsert_contact(session, cart.contact)
        await projection.apply_event(session, order, contact_id, settings=settings)
        await projection.apply_event(session, cart, contact_id, settings=settings)

    before = utcnow()
    for step in ("cart_1", "cart_3"):
        result = await ActivityEnvironment().run(
            activities(sessions, settings).send_email, job(contact_id, token, step=step)
        )
        assert result.status == "sent"
    first, third = [m for m in mailcatcher.messages if email in m.rcpt_tos]
    assert first.text is not None and first.html is not None and third.text is not None
    # No first name known: a friendly fallback, never "Hi ,".
    assert first.text.startswith("Hi there,\n")
    # Money and dates as Portuguese write them (a no-break space before the euro sign). The
    # expiry is the coupon's own (a day after sending: any weekday, month or year), in Lisbon's
    # time, written by Babel's pt-PT calendar: "sábado, 5 de dezembro de 2026, 10:00".
    assert "- Linen shirt: 49,00\xa0€" in first.text
    [coupon] = await coupons_of(sessions, contact_id)
    assert before + timedelta(hours=24) <= coupon.expires_at <= utcnow() + timedelta(hours=24)
    expires = coupon.expires_at.astimezone(ZoneInfo("Europe/Lisbon"))
    day = format_date(expires, "full", locale="pt_PT")
    assert f"valid until {day}, {expires:%H:%M}.\n" in third.text
    weekday = format_date(expires, "EEEE", locale="pt_PT")
    assert third.subject == f"10% off your cart, until {weekday}, {expires:%H:%M}"
    # Silver (1234 spent) with 1234 points, in the footer of both parts; the store's logo.
    assert "Silver member: 1\xa0234 points\n" in first.text
    assert "Silver member · 1\xa0234 points" in first.html
    assert '<img src="https://shop.example/logo.png" alt="Nudge Store"' in first.html
    text = untracked(first.text, settings)  # links go through click tracking
    assert f"{settings.public_url}\nUnsubscribe: {settings.public_url}/u/" in text


async def test_the_context_holds_segments_loyalty_last_order_and_recommendations(
    sessions: Sessions, settings: Settings
) -> None:
    email, token = new_email(), new_id("cart")
    contact_id = await seed_cart(sessions, email, token)
    order_id = new_id("o")
    order = ev.event_adapter.validate_python(
        {
            "id": new_id("evt"),
            "type": "order_placed",
            "occurred_at": "2026-10-01T12:00:00Z",
            "contact": {"email": email},
            "order": {
                "id": order_id,
                "currency": "EUR",
                "total": "80.00",
                "lines": [
                    {"product_id": "p1", "title": "Linen shirt", "price": "40.00", "quantity": 2}
                ],
            },
        }
    )
    async with sessions.begin() as session:
        await projection.apply_event(session, order, contact_id, settings=settings)
    await make_vip(sessions, contact_id)

    class Everything(Renderer):
        def variables(self, name: str) -> frozenset[str]:
            return super().variables(name) | {"recommendations", "last_order", "offer"}

    send = activities(sessions, settings, renderer=Everything())
    async with sessions.begin() as session:
        contact = await session.get(Contact, contact_id)
        assert contact is not None
        context = await send._context(session, job(contact_id, token), contact, "m@x")
    assert context["contact"] | {"properties": None} == {
        "first_name": "Ana",
        "last_name": None,
        "email": email,
        "timezone": "Europe/Lisbon",
        "locale": None,
        "properties": None,
    }
    assert "vip" in context["segments"] and context["is_vip"] is True
    assert context["loyalty"]["tier"] == "bronze" and context["loyalty"]["points"] == 80
    assert context["loyalty"]["next_tier"] == "silver"
    assert context["loyalty"]["spend_to_next_tier"] == Decimal("420.00")
    last = context["last_order"]
    assert (last["id"], last["total"], last["currency"]) == (order_id, Decimal("80.00"), "EUR")
    assert [(x["product_id"], x["quantity"]) for x in last["lines"]] == [("p1", 2)]
    assert context["cart"]["total"] == Decimal("49.00")
    recommended = [r["product_id"] for r in context["recommendations"]]
    assert "p1" not in recommended  # in the cart and bought
    assert context["alternatives"] == context["recommendations"]
    assert context["offer"]["percent"] == 20
