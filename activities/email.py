"""The send activity: one call per email, idempotent across retries, crashes and replays.

The message log row, keyed by a deterministic Message-ID per (journey, step), is the lock:
  queued -> (filters pass, rendered) -> sending -> (server holds the whole message) -> sent
         -> (a filter says no)     -> skipped, with the reason
         -> (template error, SMTP 5xx) -> failed, not retried
         -> (the sender's fault: login, TLS, certificate) -> queued, retried (never failed)
`sent` is committed just before the final `.` of SMTP DATA (nudge/mail/smtp.py), so a retry that
finds `sending` knows the server dropped the message and resends it, and one that finds `sent`,
`skipped` or `failed` never sends again.
"""

from __future__ import annotations

import logging
import re
from datetime import timedelta
from typing import Any

import aiosmtplib
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities import filters
from nudge.analytics import abtest
from nudge.contacts import suppression
from nudge.journeys.contracts import SendEmailInput, SendEmailResult, message_id
from nudge.mail import links, messages, tracking
from nudge.mail.context import JourneyEmail, email_context
from nudge.mail.render import Renderer, TemplateProblem
from nudge.mail.smtp import DotNotSent, OutgoingMessage, SmtpSender, build_message, smtp_code
from nudge.mail.transport import SENDER_CODES, SenderFault
from nudge.settings import Settings
from nudge.storage.models import Contact, Message, MessageStatus

log = logging.getLogger(__name__)

FINAL = (MessageStatus.SENT, MessageStatus.SKIPPED, MessageStatus.FAILED)


def sender_fault(err: SenderFault) -> ApplicationError:
    """Retryable, with its own type: the configuration is wrong, not the message (README
    "Sending through a provider"). Retried with backoff until the send's deadline."""
    return ApplicationError(redact(str(err)), type="SmtpSenderFault", non_retryable=False)


_ADDRESS = re.compile(r"[^\s<>\"'(),;:]+@[^\s<>\"'(),;:]+")


def redact(text: str) -> str:
    """`text` without email addresses: a failure's message goes into the workflow's history,
    which holds no personal data (an SMTP server names the recipient it refused). The message
    log keeps the full error."""
    return _ADDRESS.sub("<address>", text)


class Superseded(Exception):
    """A newer attempt of the same step claimed the row; this one must not deliver."""


class EmailActivities:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        sender: SmtpSender,
        settings: Settings,
        renderer: Renderer | None = None,
    ) -> None:
        self.sessions = sessions
        self.sender = sender
        self.settings = settings
        self.renderer = renderer or Renderer()

    @activity.defn(name="send_email")
    async def send_email(self, job: SendEmailInput) -> SendEmailResult:
        mid = message_id(job.workflow_id, job.trigger_event_id, job.step, self.settings.from_domain)
        if (fault := self.sender.held_back()) is not None:
            raise sender_fault(fault) from None  # the log is not touched while it is broken
        async with self.sessions.begin() as session:
            prepared = await self._prepare(session, job, mid)
        if isinstance(prepared, SendEmailResult):
            if prepared.reason == "template_error" and prepared.error:
                # Raised after the commit, so the log keeps the failure.
                raise ApplicationError(prepared.error, type="TemplateError", non_retryable=True)
            return prepared
        message, attempt = prepared
        mid = message.message_id  # the row's, which may predate `mid`
        committed = False

        async def mark_sent() -> None:
            # Runs while the server holds the whole message but has not yet accepted it (see
            # nudge/mail/smtp.py): before this commit a crash means a safe resend, after it, none.
            # Fenced by the attempt number: an attempt that outlived its timeout while a newer
            # one claimed the row must not commit, so its copy is dropped before the final dot.
            nonlocal committed
            async with self.sessions.begin() as session:
                if not await messages.mark_sent(session, mid, attempt):
                    raise Superseded(f"attempt {attempt} of {mid} was superseded")
            committed = True

        try:
            await self.sender.send(message, commit=mark_sent)
        except SenderFault as err:
            await self._requeue(mid, attempt, err, MessageStatus.SENDING)
            raise sender_fault(err) from None
        except DotNotSent as err:
            # Committed, but the final dot never left: the server kept nothing, so undo it.
            await self._requeue(mid, attempt, err, MessageStatus.SENT)
            raise
        except aiosmtplib.SMTPResponseException as err:
            if err.code not in SENDER_CODES or committed:
                return await self._smtp_error(job, mid, err, committed)
            # "Authenticate first" on a connection already open: the sender's, not the message's.
            await self._requeue(mid, attempt, err, MessageStatus.SENDING)
            raise sender_fault(SenderFault(f"{err.code} {err.message}")) from None
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as err:
            return await self._smtp_error(job, mid, err, committed)
        return SendEmailResult(message_id=mid, status=MessageStatus.SENT)

    async def _smtp_error(
        self, job: SendEmailInput, mid: str, err: BaseException, committed: bool
    ) -> SendEmailResult:
        if committed and smtp_code(err) is None:
            # The server got the final dot and then went silent: it most likely accepted
            # the message, and resending could duplicate it. The record stays `sent`.
            log.warning("no reply after the final dot of %s: kept as sent (%s)", mid, err)
            return SendEmailResult(message_id=mid, status=MessageStatus.SENT)
        await self._smtp_failed(job, mid, err)
        # Retried; its message (which may name the recipient) without the address, no cause.
        raise ApplicationError(
            redact(f"{type(err).__name__}: {err}"), type=type(err).__name__
        ) from None

    async def _prepare(
        self, session: AsyncSession, job: SendEmailInput, mid: str
    ) -> SendEmailResult | tuple[OutgoingMessage, int]:
        """Settle the step's log row (already done, skipped, broken template) or return the
        message to send, with the row claimed as `sending`.

        Everything that only reads (filters, the context, rendering) comes before the claim:
        SQLite has one writer, and a transaction holds it from its first write to its commit,
        so claiming first made every concurrent send and ingest wait on this one's rendering."""
        # A/B: once a step has a recorded winner, only the winner is sent (nudge/analytics/abtest.py).
        variants = job.variants or {}
        variant = await abtest.settled_variant(
            session, self.settings, flow=job.flow, step=job.step, variants=variants, message_id=mid
        )
        if variant is not None and (job.variant, job.template) != (variant, variants[variant]):
            job = job.model_copy(update={"variant": variant, "template": variants[variant]})
        existing = await messages.find_message(
            session, job.workflow_id, job.trigger_event_id, job.step
        )
        if existing is not None:
            if existing.status in FINAL:
                return self._result(existing)
            mid = existing.message_id  # a row keeps the id it was first sent with
        contact = await session.get(Contact, job.contact_id)
        if contact is None:
            return await self._settle(session, job, mid, MessageStatus.SKIPPED, "contact_missing")
        reason = await self._skip_reason(session, job, contact)
        if reason:
            return await self._settle(session, job, mid, MessageStatus.SKIPPED, reason)
        context = await self._context(session, job, contact, mid)
        try:
            rendered = self.renderer.render(job.template, context)
        except TemplateProblem as err:
            return await self._settle(
                session, job, mid, MessageStatus.FAILED, "template_error", str(err)
            )
        rendered = tracking.instrument(rendered, self.settings, contact.id, mid)
        message = build_message(
            rendered,
            from_email=self.settings.from_email,
            to_email=contact.email,
            to_name=contact.first_name,
            message_id=mid,
            headers=self._headers(job, contact, mid),
        )
        row = await self._claim(session, job, mid)
        if row.status in FINAL:
            return self._result(row)  # a concurrent attempt settled it meanwhile
        row.status, row.to_email, row.subject = (
            MessageStatus.SENDING,
            contact.email,
            rendered.subject,
        )
        row.attempts += 1
        return message, row.attempts

    async def _claim(self, session: AsyncSession, job: SendEmailInput, mid: str) -> Message:
        """The step's log row, created on first sight and locked (PostgreSQL) until commit."""
        row = await messages.claim_message(
            session,
            {
                "message_id": mid,
                "workflow_id": job.workflow_id,
                "trigger_event_id": job.trigger_event_id,
                "step": job.step,
                "flow": job.flow,
                "contact_id": job.contact_id,
                "template": job.template,
                "variant": job.variant,
                "transactional": job.transactional,
                "scheduled_at": activity.info().scheduled_time,
            },
        )
        if row.message_id != mid:
            # A concurrent first attempt created the row under another id (the sender's domain
            # changed in between): retry, and the next attempt builds under the row's id.
            raise RuntimeError(f"{job.step} of {job.workflow_id} is logged as {row.message_id}")
        return row

    def _headers(self, job: SendEmailInput, contact: Contact, mid: str) -> dict[str, str]:
        headers = {"X-Nudge-Flow": job.flow, "X-Nudge-Step": job.step}
        if not job.transactional:
            # RFC 8058 one-click unsubscribe, which Gmail and Yahoo require of bulk senders.
            headers["List-Unsubscribe"] = (
                f"<{links.unsubscribe_url(self.settings, contact.id, mid)}>, "
                f"<mailto:unsubscribe@{self.settings.from_domain}?subject=unsubscribe>"
            )
            headers["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
        return headers

    async def _requeue(
        self, mid: str, attempt: int, err: BaseException, status: MessageStatus
    ) -> None:
        """Back to `queued` for the retry, if this attempt still holds the row in `status`."""
        async with self.sessions.begin() as session:
            await messages.requeue(
                session, mid, attempt, status, error=f"{type(err).__name__}: {err}"[:2000]
            )

    async def _smtp_failed(self, job: SendEmailInput, mid: str, err: BaseException) -> None:
        """Log the failure; a 5xx is final (non-retryable), anything else goes back to queued."""
        code = smtp_code(err)
        permanent = code is not None and 500 <= code < 600
        async with self.sessions.begin() as session:
            await messages.set_message_status(
                session,
                mid,
                status=MessageStatus.FAILED if permanent else MessageStatus.QUEUED,
                reason=f"smtp_{code}" if permanent else None,
                error=f"{type(err).__name__}: {err}"[:2000],
            )
        if permanent:
            raise ApplicationError(
                f"SMTP rejected {job.step} permanently with {code}",
                type="SMTPPermanentError",
                non_retryable=True,
            ) from None  # the cause names the recipient: it stays in the message log

    async def _skip_reason(
        self, session: AsyncSession, job: SendEmailInput, contact: Contact
    ) -> str | None:
        """Flow filters, re-checked from the database before every message: a signal that never
        reached the journey must still stop it."""
        # Suppression list, consent, double opt-in and topics (nudge/contacts/suppression.py).
        blocked = await suppression.skip_reason(
            session, contact, transactional=job.transactional, topic=job.topic
        )
        if blocked:
            return blocked
        if job.transactional:
            return None
        names = job.filters if job.filters is not None else filters.LEGACY.get(job.flow, ())
        for name in names:
            check = filters.BUILT_IN.get(name)
            if check is None:
                raise ApplicationError(
                    f"{job.flow} uses the unknown filter {name!r}; known: "
                    + ", ".join(sorted(filters.BUILT_IN)),
                    type="UnknownFilter",
                    non_retryable=True,
                )
            if reason := await check(session, job, contact):
                return reason
        if job.smart_sending and self.settings.smart_sending_hours > 0:
            now = job.now or activity.info().scheduled_time
            window = timedelta(hours=self.settings.smart_sending_hours) / job.time_scale
            if await messages.marketing_sent_since(
                session, contact.id, now - window, exclude=(job.workflow_id, job.step)
            ):
                return "smart_sending"
        return None

    async def _context(
        self, session: AsyncSession, job: SendEmailInput, contact: Contact, mid: str
    ) -> dict[str, Any]:
        """The step's context (nudge/mail/context.py): the parts its template uses, its cart,
        product or order by the journey's key, and one coupon per journey step."""
        settings = self.settings
        journey = JourneyEmail(
            uses=self.renderer.variables(job.template),
            key=job.key,
            trigger_event_id=job.trigger_event_id,
            offer_source=f"{job.workflow_id}:{job.trigger_event_id}:{job.step}",
            offer_percent=job.offer_percent,
        )
        unsubscribe = (
            None if job.transactional else links.unsubscribe_url(settings, contact.id, mid)
        )
        return await email_context(
            session, settings, contact, mid, journey=journey, unsubscribe_url=unsubscribe
        )

    async def _settle(
        self,
        session: AsyncSession,
        job: SendEmailInput,
        mid: str,
        status: MessageStatus,
        reason: str,
        error: str | None = None,
    ) -> SendEmailResult:
        row = await self._claim(session, job, mid)
        if row.status in FINAL:
            return self._result(row)
        row.status, row.reason, row.error = status, reason, error
        return self._result(row, error)

    @staticmethod
    def _result(row: Message, error: str | None = None) -> SendEmailResult:
        return SendEmailResult(
            message_id=row.message_id, status=row.status, reason=row.reason, error=error
        )
