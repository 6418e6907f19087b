"""Building MIME messages and handing them to an SMTP server, exactly once.

The delivery protocol closes all but a sliver of the window SMTP leaves open. An SMTP server
accepts a message at the final `.` of DATA, and discards a message whose connection drops before
it. So the sender streams the whole message, then lets the caller commit "sent", and only then
writes the `.`:
  - a crash before the commit: the server never saw the `.` and dropped the message, and the
    caller's record does not say "sent": resending it is safe;
  - a crash after the commit: the `.` is one socket write away, and the record says "sent":
    it is never sent again.
What remains is the time of that one write, and a server that fails after receiving the `.`
without replying (then the message may or may not have been accepted; the record says sent).
"""

from __future__ import annotations

import asyncio
import binascii
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from email.header import Header
from email.message import EmailMessage
from email.parser import BytesParser
from email.policy import SMTP as SMTP_POLICY
from email.policy import default as default_policy
from email.utils import formataddr, formatdate, getaddresses
from functools import lru_cache
from pathlib import Path
from typing import Any

import aiosmtplib
import dkim
from aiosmtplib.email import extract_recipients, extract_sender
from aiosmtplib.protocol import PERIOD_REGEX, normalize_message_line_endings

from nudge.mail.render import RenderedEmail
from nudge.mail.transport import (
    RateLimiter,
    SenderFault,
    StatusReport,
    sender_fault,
    tls_context,
)
from nudge.settings import Settings

log = logging.getLogger(__name__)
Commit = Callable[[], Awaitable[None]]


def _clean(value: str) -> str:
    # No contact field may smuggle a CR/LF into a header.
    return " ".join(value.split())


@dataclass(frozen=True, slots=True)
class OutgoingMessage:
    """A finished message: the exact bytes SMTP DATA carries, and its envelope."""

    sender: str
    recipients: tuple[str, ...]
    message_id: str
    raw: bytes

    def as_bytes(self) -> bytes:
        return self.raw

    def parsed(self) -> EmailMessage:
        """The message as the standard library reads it (for tests and tools, not the hot path)."""
        parsed = BytesParser(policy=default_policy).parsebytes(self.raw)
        assert isinstance(parsed, EmailMessage)
        return parsed

    def __getitem__(self, name: str) -> Any:
        return self.parsed()[name]


_LINE = 78


def _fold(name: str, value: str) -> bytes:
    """One header, folded at spaces to lines of at most 78 characters where it can be (RFC 5322
    allows up to 998; a token longer than a line, like a URL, stays whole)."""
    if len(name) + len(value) < _LINE - 1:
        return f"{name}: {value}\r\n".encode("ascii")
    line, lines = f"{name}:", []
    for word in value.split(" "):
        if len(line) + 1 + len(word) > _LINE and line.strip() and not line.endswith(":"):
            lines.append(line)
            line = ""
        line += " " + word
    lines.append(line)
    return "\r\n".join(lines).encode("ascii") + b"\r\n"


def _header(name: str, value: str) -> bytes:
    value = _clean(value)
    if value.isascii():
        return _fold(name, value)
    # RFC 2047 encoded words, folded by the standard library's (slower) encoder: rare path.
    encoded = Header(value, "utf-8", header_name=name).encode(linesep="\r\n", maxlinelen=_LINE)
    return f"{name}: {encoded}\r\n".encode("ascii")


@lru_cache(maxsize=64)
def _sender(from_email: str) -> tuple[str, str]:
    # The sender is a setting: parse it once, not per message.
    [(name, addr)] = getaddresses([from_email])
    return _address(name, addr), addr


def _address(name: str | None, addr: str) -> str:
    # formataddr quotes specials and RFC 2047-encodes a non-ASCII display name.
    return formataddr((_clean(name or ""), addr), charset="utf-8")


def _lines(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _qp(text: str | bytes) -> bytes:
    # b2a_qp ends its soft line breaks as the input's first line ends: give it LF, then CRLF all.
    data = _lines(text).encode("utf-8") if isinstance(text, str) else text
    return binascii.b2a_qp(data, istext=True).replace(b"\n", b"\r\n")


def _html_part(html: str) -> tuple[bytes, bytes]:
    """The HTML part and its transfer encoding. Non-ASCII characters become character
    references, so the part is plain 7bit and needs no encoding at all (quoted-printable
    cost half of building a message); only a line over SMTP's 998 limit needs QP."""
    data = _lines(html).encode("ascii", "xmlcharrefreplace")
    if max(map(len, data.split(b"\n"))) <= 998:
        return data.replace(b"\n", b"\r\n"), b"7bit"
    return _qp(data), b"quoted-printable"


def build_message(
    email: RenderedEmail,
    *,
    from_email: str,
    to_email: str,
    to_name: str | None,
    message_id: str,
    headers: dict[str, str] | None = None,
) -> OutgoingMessage:
    """A multipart/alternative message: the text part in quoted-printable UTF-8, then the HTML.

    Assembled as bytes directly: the standard library's `EmailMessage` header registry cost
    about 45 times as much as rendering the template did (README, "Benchmarks")."""
    from_header, from_addr = _sender(from_email)
    html, html_encoding = _html_part(email.html)
    # Quoted-printable never contains "=_"; the 7bit HTML is checked (a message's own id in it).
    boundary = f"=_{message_id.partition('@')[0][:40]}"
    while f"--{boundary}".encode() in html:
        boundary += "_"
    head = [
        _header("From", from_header),
        _header("To", _address(to_name, to_email)),
        _header("Subject", email.subject),
        b"Date: " + formatdate(usegmt=True).encode("ascii") + b"\r\n",
        _header("Message-ID", f"<{message_id}>"),
    ]
    head += [_header(name, value) for name, value in (headers or {}).items()]
    head.append(b"MIME-Version: 1.0\r\n")
    head.append(f'Content-Type: multipart/alternative; boundary="{boundary}"\r\n'.encode())
    part = b'Content-Type: text/%s; charset="utf-8"\r\nContent-Transfer-Encoding: %s\r\n\r\n'
    delimiter = f"--{boundary}\r\n".encode()
    body = b"".join(
        (
            b"\r\n",
            delimiter,
            part % (b"plain", b"quoted-printable"),
            _qp(email.text),
            b"\r\n",
            delimiter,
            part % (b"html", html_encoding),
            html,
            f"\r\n--{boundary}--\r\n".encode(),
        )
    )
    return OutgoingMessage(from_addr, (to_email,), message_id, b"".join(head) + body)


# Signed with the message: the headers a receiver must be able to trust were not altered.
DKIM_HEADERS = (
    b"From", b"To", b"Subject", b"Date", b"Message-ID", b"MIME-Version", b"Content-Type",
    b"List-Unsubscribe", b"List-Unsubscribe-Post",
)  # fmt: skip


class DkimSigner:
    """Signs the exact bytes that go on the wire (relaxed/relaxed, rsa-sha256)."""

    def __init__(self, selector: str, domain: str, private_key: bytes) -> None:
        self.selector, self.domain, self.private_key = (
            selector.encode(),
            domain.encode(),
            private_key,
        )

    def sign(self, raw: bytes) -> bytes:
        # Headers absent from this message are signed as absent ("oversigned"), so none of
        # them can be added in transit without breaking the signature.
        signature: bytes = dkim.sign(
            raw,
            self.selector,
            self.domain,
            self.private_key,
            canonicalize=(b"relaxed", b"relaxed"),
            include_headers=list(DKIM_HEADERS),
        )
        return signature + raw


class DotNotSent(aiosmtplib.SMTPServerDisconnected):
    """The connection was gone by the time the caller had committed: the final `.` was never
    written, so the server kept nothing and the commit must be undone (the message resent)."""


class _TwoPhaseSMTP(aiosmtplib.SMTP):
    """aiosmtplib's client with a DATA phase that runs `commit` just before the final `.`."""

    commit: Commit | None = None

    # aiosmtplib's own signature, timeout included.
    async def data(
        self,
        message: str | bytes,
        /,
        *,
        timeout: Any = None,  # noqa: ASYNC109
    ) -> aiosmtplib.SMTPResponse:
        commit, protocol = self.commit, self.protocol
        if commit is None or protocol is None:
            return await super().data(message, timeout=timeout)
        if isinstance(message, str):
            message = message.encode("ascii")
        body = PERIOD_REGEX.sub(b"..", normalize_message_line_endings(message))
        wait = self.timeout if timeout is None or not isinstance(timeout, float | int) else timeout
        # Mirrors SMTPProtocol.execute_data_command (aiosmtplib 5), split at the final dot.
        try:
            async with protocol._command_lock:  # type: ignore[union-attr]
                protocol._response_pending = True
                protocol.write(b"DATA\r\n")
                start = await protocol.read_response(timeout=wait)
                if start.code != 354:
                    raise aiosmtplib.SMTPDataError(start.code, start.message)
                protocol.write(body)
                await commit()
                if self.protocol is not protocol or not protocol.is_connected:
                    # Dropped (by the server, the network, TLS) while streaming or committing.
                    raise DotNotSent("connection lost before the final dot")
                protocol._response_pending = True
                protocol.write(b".\r\n")
                response = await protocol.read_response(timeout=wait)
        except (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPTimeoutError):
            self.close()
            raise
        if response.code != 250:
            raise aiosmtplib.SMTPDataError(response.code, response.message)
        return response


@dataclass(frozen=True, slots=True)
class Submission:
    """How to reach and log in to the SMTP server (README "Sending through a provider")."""

    security: str = "none"  # starttls | tls | none
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ca_file: Path | None = None


# Nothing told `on_status` yet: the first connection tells it, fault or not.
_UNREPORTED = "\0unreported"


class SmtpSender:
    """Sends over a bounded pool of kept-alive SMTP connections (no connect/EHLO/QUIT per email),
    at most `rate` messages a second (0: no limit).

    Failures surface as aiosmtplib exceptions (or OSError) for the caller to classify, except
    the sender's own (login, TLS, certificate): `SenderFault`. After one, sends fail fast with
    it, and one of them tries to connect again every `fault_backoff` seconds, so a wrong
    password costs one refused login per interval, not one per message. `on_status` (the
    worker's: nudge/mail/health.py) hears of each change of state and each failed retry.
    """

    def __init__(
        self,
        host: str,
        port: int,
        timeout: float = 30.0,
        pool_size: int = 8,
        signer: DkimSigner | None = None,
        *,
        submission: Submission | None = None,
        rate: float = 0,
        fault_backoff: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        on_status: StatusReport | None = None,
    ) -> None:
        self.host, self.port, self.timeout, self.signer = host, port, timeout, signer
        self.submission = submission or Submission()
        self.fault_backoff, self.clock = fault_backoff, clock
        self._idle: list[_TwoPhaseSMTP] = []
        self._slots = asyncio.Semaphore(pool_size)
        self._limiter = RateLimiter(rate) if rate > 0 else None
        self._tls = (
            tls_context(self.submission.ca_file) if self.submission.security != "none" else None
        )
        self.fault: SenderFault | None = None
        self._probe_at = 0.0
        self.on_status = on_status
        self._reported: str | None = _UNREPORTED
        self._reported_at = 0.0

    def held_back(self) -> SenderFault | None:
        """The standing sender fault while it holds sends back; None once it is time to try a
        connection again (or there is none)."""
        if self.fault is not None and self.clock() < self._probe_at:
            return SenderFault(str(self.fault), self.fault.summary)
        return None

    def _raise_if_faulted(self) -> None:
        if (fault := self.held_back()) is not None:
            raise fault
        if self.fault is not None:
            # This send is the one that tries again; the others keep failing fast meanwhile.
            self._probe_at = self.clock() + self.fault_backoff

    async def send(
        self, message: OutgoingMessage | EmailMessage, *, commit: Commit | None = None
    ) -> None:
        """Deliver `message`; `commit` (if given) runs once the server holds all of it but has
        not yet accepted it. A connection from the pool that turns out dead before anything
        was committed is replaced once, transparently."""
        sender: str | None
        if isinstance(message, OutgoingMessage):
            sender, recipients, raw = message.sender, list(message.recipients), message.raw
        else:
            sender, recipients = extract_sender(message), extract_recipients(message)
            raw = message.as_bytes(policy=SMTP_POLICY)
        if sender is None or not recipients:
            raise ValueError("a message needs a From and a To header")
        if self.signer is not None:
            raw = self.signer.sign(raw)
        self._raise_if_faulted()
        async with self._slots:
            client, reused = await self._connection()
            if self._limiter is not None:
                await self._limiter.wait()
            committed = False

            async def commit_once() -> None:
                nonlocal committed
                if commit is not None:
                    await commit()
                committed = True

            client.commit = commit_once
            try:
                await client.sendmail(sender, recipients, raw)
            except (aiosmtplib.SMTPServerDisconnected, ConnectionError) as err:
                client.close()
                if not reused or committed:
                    raise
                del err  # a kept-alive connection the server had closed: one fresh try
                client = await self._connect()
                client.commit = commit_once
                try:
                    await client.sendmail(sender, recipients, raw)
                except BaseException:
                    client.close()
                    raise
            except BaseException:
                client.close()
                raise
            client.commit = None
            self._idle.append(client)

    async def check(self) -> None:
        """Connect and log in once (the worker does at start), keeping the connection."""
        async with self._slots:
            client, _ = await self._connection()
            self._idle.append(client)

    async def close(self) -> None:
        while self._idle:
            client = self._idle.pop()
            try:
                await client.quit()
            except (aiosmtplib.SMTPException, OSError):
                client.close()

    async def _connection(self) -> tuple[_TwoPhaseSMTP, bool]:
        while self._idle:
            client = self._idle.pop()
            if client.is_connected:
                return client, True
        return await self._connect(), False

    async def _connect(self) -> _TwoPhaseSMTP:
        how = self.submission
        client = _TwoPhaseSMTP(
            hostname=self.host,
            port=self.port,
            timeout=self.timeout,
            username=how.username,
            password=how.password,
            use_tls=how.security == "tls",
            # Required, not opportunistic: a server that stops offering it is refused.
            start_tls=how.security == "starttls",
            tls_context=self._tls,
        )
        where = f"{self.host}:{self.port} ({how.security})"
        try:
            await client.connect()
        except Exception as err:
            fault = sender_fault(err, where, how.username)
            if fault is None:
                raise
            if self.fault is None or str(self.fault) != str(fault):
                log.error("SMTP sender fault, sends held back (none marked failed): %s", fault)
            self.fault, self._probe_at = fault, self.clock() + self.fault_backoff
            # A new fault, or a retry that found it again (not each of a burst of connections).
            if (
                self._reported != str(fault)
                or self.clock() >= self._reported_at + self.fault_backoff / 2
            ):
                await self._report(fault)
            raise fault from err
        if self.fault is not None:
            log.info("SMTP sender fault cleared: %s logs in again", where)
            self.fault = None
        if self._reported is not None:
            await self._report(None)
        return client

    async def _report(self, fault: SenderFault | None) -> None:
        """Tell `on_status`: once for a login that works (the first one, and the one that
        clears a fault), once per retry for a fault. Its failure (the database down) is
        logged, and told again at the next connection; it never fails the send."""
        self._reported = str(fault) if fault is not None else None
        self._reported_at = self.clock()
        if self.on_status is None:
            return
        try:
            await self.on_status(fault)
        except Exception as err:
            self._reported = _UNREPORTED
            log.warning("could not record the SMTP sender's state: %s", err)


def sender_from_settings(settings: Settings, on_status: StatusReport | None = None) -> SmtpSender:
    """The sender of every email Nudge sends (journeys, the confirmation): `NUDGE_SMTP_*`, and
    DKIM signing when both `NUDGE_DKIM_SELECTOR` and `NUDGE_DKIM_PRIVATE_KEY_FILE` are set.
    The worker's tells `on_status` its state (nudge/mail/health.py)."""
    signer = None
    if settings.dkim_selector and settings.dkim_private_key_file:
        signer = DkimSigner(
            settings.dkim_selector,
            settings.dkim_domain or settings.from_domain,
            settings.dkim_private_key_file.read_bytes(),
        )
    password = settings.smtp_password
    submission = Submission(
        security=settings.smtp_tls_mode,
        username=settings.smtp_username,
        password=password.get_secret_value() if password is not None else None,
        ca_file=settings.smtp_ca_file,
    )
    return SmtpSender(
        settings.smtp_host,
        settings.smtp_port,
        settings.smtp_timeout,
        pool_size=settings.smtp_max_connections,
        signer=signer,
        submission=submission,
        rate=settings.smtp_rate,
        on_status=on_status,
    )


def smtp_code(err: BaseException) -> int | None:
    """The SMTP reply code behind an aiosmtplib error, or None for connection-level trouble."""
    if isinstance(err, aiosmtplib.SMTPRecipientsRefused):
        return min(r.code for r in err.recipients) if err.recipients else None
    if isinstance(err, aiosmtplib.SMTPResponseException):
        return err.code
    return None
