"""MIME building and DKIM, checked on what actually crossed a real SMTP server."""

from __future__ import annotations

import base64
import subprocess

import dkim
import pytest

from nudge.dev.mailcatcher import MailCatcher
from nudge.mail.render import RenderedEmail
from nudge.mail.smtp import DkimSigner, OutgoingMessage, SmtpSender, build_message
from support import new_email, new_id


@pytest.fixture(scope="module")
def dkim_key(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, bytes]:
    """An RSA key pair: the PEM private key and the DNS TXT record publishing its public half."""
    folder = tmp_path_factory.mktemp("dkim")
    private = folder / "private.pem"
    subprocess.run(
        ["openssl", "genrsa", "-out", str(private), "2048"], check=True, capture_output=True
    )
    public = subprocess.run(
        ["openssl", "rsa", "-in", str(private), "-pubout", "-outform", "DER"],
        check=True,
        capture_output=True,
    ).stdout
    return private.read_bytes(), b"v=DKIM1; k=rsa; p=" + base64.b64encode(public)


def message(to: str, *, name: str = "Ana") -> OutgoingMessage:
    rendered = RenderedEmail(subject="Your cart · 10% off", html="<p>Olá</p>", text="Olá\n")
    msg = build_message(
        rendered,
        from_email="Nudge Store <store@shop.example>",
        to_email=to,
        to_name=name,
        message_id=f"{new_id('m')}@shop.example",
        headers={
            "List-Unsubscribe": "<https://shop.example/u/t>, <mailto:u@shop.example>",
            "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
        },
    )
    return msg


async def test_a_dkim_signed_message_verifies_after_the_smtp_server(
    mailcatcher: MailCatcher, dkim_key: tuple[bytes, bytes]
) -> None:
    private, txt = dkim_key
    to = new_email()
    sender = SmtpSender(
        "127.0.0.1", mailcatcher.port, signer=DkimSigner("nudge", "shop.example", private)
    )
    await sender.send(message(to))
    await sender.close()
    [caught] = [m for m in mailcatcher.messages if to in m.rcpt_tos]

    def dns(name: bytes, timeout: int = 5) -> bytes:
        assert name == b"nudge._domainkey.shop.example."
        return txt

    assert dkim.verify(caught.raw, dnsfunc=dns)
    signature = str(caught.message["DKIM-Signature"])
    signed = {h.strip().lower() for h in signature.split("h=", 1)[1].split(";", 1)[0].split(":")}
    assert {"from", "subject", "list-unsubscribe", "list-unsubscribe-post"} <= signed
    tampered = caught.raw.replace(b"Subject: ", b"Subject: FREE ", 1)
    assert not dkim.verify(tampered, dnsfunc=dns)


async def test_no_signature_without_a_key(mailcatcher: MailCatcher) -> None:
    to = new_email()
    sender = SmtpSender("127.0.0.1", mailcatcher.port)
    await sender.send(message(to))
    await sender.close()
    [caught] = [m for m in mailcatcher.messages if to in m.rcpt_tos]
    assert caught.message["DKIM-Signature"] is None


def test_a_name_with_cr_lf_cannot_add_a_header() -> None:
    msg = message(new_email(), name="Ana\r\nBcc: victim@example.com")
    raw = msg.as_bytes()
    assert b"\nBcc:" not in raw and b"\rBcc:" not in raw
    assert msg["Bcc"] is None
    assert "Ana Bcc: victim@example.com" in str(msg["To"])


def test_non_ascii_subject_and_name_are_rfc2047_encoded() -> None:
    msg = message(new_email(), name="Zoë Ünal")
    head = (
        msg.as_bytes().split(b"\r\n\r\n", 1)[0]
        if b"\r\n\r\n" in msg.as_bytes()
        else msg.as_bytes().split(b"\n\n", 1)[0]
    )
    assert head.isascii()
    assert b"=?utf-8?" in head.lower()
    assert str(msg["Subject"]) == "Your cart · 10% off"


async def test_the_message_bytes_parse_back_to_what_was_rendered(mailcatcher: MailCatcher) -> None:
    """The MIME is assembled by hand for speed: the standard library must read back exactly the
    subject, names and both parts, through a real SMTP hop (dot-stuffing included)."""
    text = "Olá Ana,\n.a line that starts with a dot\nFrom here on\n" + "long " * 60 + "\n"
    html = "<p>Olá</p>\n<p>" + "x" * 300 + "</p>\n.\n<p>=_ not a boundary</p>"
    to = new_email()
    msg = build_message(
        RenderedEmail(subject="Ünïcode subject " * 8, html=html, text=text),
        from_email='"Store, Inc." <store@shop.example>',
        to_email=to,
        to_name='Zoë "Z" O\'Neil',
        message_id=f"{new_id('m')}@shop.example",
        headers={"X-Nudge-Step": "cart_1"},
    )
    assert all(len(line) <= 998 for line in msg.raw.split(b"\r\n"))
    sender = SmtpSender("127.0.0.1", mailcatcher.port)
    await sender.send(msg)
    await sender.close()
    [caught] = [m for m in mailcatcher.messages if to in m.rcpt_tos]
    parsed = caught.message
    assert not parsed.defects and not any(part.defects for part in parsed.walk())
    assert str(parsed["Subject"]) == ("Ünïcode subject " * 8).strip()
    assert parsed["To"].addresses[0].display_name == 'Zoë "Z" O\'Neil'
    assert parsed["From"].addresses[0].display_name == "Store, Inc."
    assert parsed["X-Nudge-Step"] == "cart_1"
    assert parsed.get_content_type() == "multipart/alternative"
    plain, rich = parsed.get_body(("plain",)), parsed.get_body(("html",))
    assert plain is not None and rich is not None
    # On the wire every line ends in CRLF, which the parser keeps.
    assert plain.get_content().replace("\r\n", "\n") == text
    # The HTML travels as 7bit, its non-ASCII characters as character references.
    assert rich["Content-Transfer-Encoding"] == "7bit"
    assert rich.get_content().replace("\r\n", "\n") == html.replace("á", "&#225;")


def test_an_html_line_over_998_characters_is_quoted_printable() -> None:
    html = "<p>" + "y" * 1200 + "</p>"
    msg = build_message(
        RenderedEmail(subject="Long", html=html, text="Long\n"),
        from_email="store@shop.example",
        to_email=new_email(),
        to_name=None,
        message_id=f"{new_id('m')}@shop.example",
    )
    assert all(len(line) <= 998 for line in msg.raw.split(b"\r\n"))
    rich = msg.parsed().get_body(("html",))
    assert rich is not None and rich["Content-Transfer-Encoding"] == "quoted-printable"
    assert rich.get_content().replace("\r\n", "\n") == html
