"""What sending through a provider adds to SMTP: TLS, the sender's faults, a send rate.

A provider (Amazon SES, SendGrid, Postmark, Mailgun) takes mail only with AUTH over TLS: STARTTLS
on port 587 or implicit TLS on 465. When that fails, the fault is the sender's (a wrong password,
a certificate that is not the host's, a TLS mode the port does not speak), not the message's:
`SenderFault` says so, and nudge/mail/smtp.py holds every send back (no message is marked failed)
until a connection logs in again.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiosmtplib

# Replies that mean "who you are" or "how you connect" is wrong, whichever command drew them:
# 530 authentication (or STARTTLS) required, 534 mechanism too weak, 535 credentials invalid,
# 538 encryption required for the mechanism.
SENDER_CODES = frozenset({530, 534, 535, 538})


class SenderFault(Exception):
    """The SMTP server refuses the sender (login, TLS, certificate): every message would fail
    the same way until the configuration is fixed, so none is blamed for it.

    Its text (for the worker log) names the server, the username and the server's reply;
    `summary` only what went wrong and the settings to check, short enough for `/healthz`,
    which anyone may read: no host, no username, nothing the server said but its code."""

    def __init__(self, message: str, summary: str | None = None) -> None:
        super().__init__(message)
        self.summary = summary or message


#: Told the sender's state when it changes (a fault appears, changes, clears; at the first
#: connection, whichever it is) and when a retry finds the fault again: None is "logs in".
StatusReport = Callable[[SenderFault | None], Awaitable[None]]


def tls_context(ca_file: Path | None = None) -> ssl.SSLContext:
    """Certificates verified against the system's CAs (or `ca_file`), host name checked, TLS 1.2+."""
    context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def _causes(err: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    current: BaseException | None = err
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


def sender_fault(err: BaseException, where: str, username: str | None) -> SenderFault | None:
    """The sender's fault behind `err` (raised while connecting to `where`), or None when the
    trouble is the server's or the network's (refused, timed out, 4xx): those pass with time."""
    for cause in _causes(err):
        if isinstance(cause, ssl.SSLCertVerificationError):
            return SenderFault(
                f"TLS certificate of {where} refused: {cause.verify_message}; check "
                "NUDGE_SMTP_HOST (it must be the name on the certificate) and NUDGE_SMTP_CA_FILE",
                "TLS certificate of the SMTP server refused: check NUDGE_SMTP_HOST and "
                "NUDGE_SMTP_CA_FILE",
            )
        if isinstance(cause, ssl.SSLError):
            return SenderFault(
                f"TLS handshake with {where} failed ({cause.reason or cause}); check "
                "NUDGE_SMTP_SECURITY: starttls for port 587, tls for port 465",
                "TLS handshake with the SMTP server failed: check NUDGE_SMTP_SECURITY",
            )
    if isinstance(err, aiosmtplib.SMTPResponseException) and err.code in SENDER_CODES:
        return SenderFault(
            f"{where} refused the login of {username or '(no username)'}: "
            f"{err.code} {err.message}; check NUDGE_SMTP_USERNAME and NUDGE_SMTP_PASSWORD",
            f"{err.code} authentication failed: check NUDGE_SMTP_USERNAME / NUDGE_SMTP_PASSWORD",
        )
    text = str(err).lower()
    if isinstance(err, aiosmtplib.SMTPException) and "starttls" in text:
        return SenderFault(
            f"{where} does not offer STARTTLS: {err}; check NUDGE_SMTP_SECURITY",
            "the SMTP server does not offer STARTTLS: check NUDGE_SMTP_SECURITY",
        )
    if isinstance(err, aiosmtplib.SMTPException) and "auth" in text:
        return SenderFault(
            f"{where} offers no way to log in ({err}); providers offer AUTH only over TLS: "
            "check NUDGE_SMTP_SECURITY",
            "the SMTP server offers no way to log in: check NUDGE_SMTP_SECURITY",
        )
    return None


class RateLimiter:
    """At most `rate` sends per second, evenly spaced (SES's "maximum send rate" counts per
    second). Waiters go in arrival order; one that is cancelled while waiting uses no slot."""

    def __init__(self, rate: float) -> None:
        self.interval = 1.0 / rate
        self._next = 0.0
        self._lock = asyncio.Lock()

    async def wait(self) -> None:
        async with self._lock:
            loop = asyncio.get_running_loop()
            delay = self._next - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            self._next = max(self._next, loop.time()) + self.interval
