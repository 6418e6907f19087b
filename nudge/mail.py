"""Building MIME messages and handing them to an SMTP server."""

from __future__ import annotations

from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import formatdate, getaddresses

import aiosmtplib

from nudge.render import RenderedEmail


def _clean(value: str) -> str:
    # No contact field may smuggle a CR/LF into a header.
    return " ".join(value.split())


def build_message(
    email: RenderedEmail,
    *,
    from_email: str,
    to_email: str,
    to_name: str | None,
    message_id: str,
    headers: dict[str, str] | None = None,
) -> EmailMessage:
    message = EmailMessage()
    [(from_name, from_addr)] = getaddresses([from_email])
    message["From"] = Address(display_name=_clean(from_name), addr_spec=from_addr)
    message["To"] = Address(display_name=_clean(to_name or ""), addr_spec=to_email)
    message["Subject"] = _clean(email.subject)
    message["Date"] = formatdate(localtime=False, usegmt=True)
    message["Message-ID"] = f"<{message_id}>"
    for name, value in (headers or {}).items():
        message[name] = _clean(value)
    message.set_content(email.text, subtype="plain", charset="utf-8", cte="quoted-printable")
    message.add_alternative(email.html, subtype="html", charset="utf-8", cte="quoted-printable")
    return message


class SmtpSender:
    """Sends over SMTP; failures surface as aiosmtplib exceptions for the caller to classify."""

    def __init__(self, host: str, port: int, timeout: float = 30.0) -> None:
        self.host, self.port, self.timeout = host, port, timeout

    async def send(self, message: EmailMessage) -> None:
        await aiosmtplib.send(message, hostname=self.host, port=self.port, timeout=self.timeout)


def smtp_code(err: BaseException) -> int | None:
    """The SMTP reply code behind an aiosmtplib error, or None for connection-level trouble."""
    if isinstance(err, aiosmtplib.SMTPRecipientsRefused):
        return min(r.code for r in err.recipients) if err.recipients else None
    if isinstance(err, aiosmtplib.SMTPResponseException):
        return err.code
    return None
