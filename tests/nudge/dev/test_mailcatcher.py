from __future__ import annotations

import html
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path

import aiosmtplib
import httpx
import pytest

from nudge.dev.mailcatcher import MailCatcher, create_web_app

SUBJECT = "Olá Zoë, o seu carrinho 🛒 espera"


def make_message(
    subject: str = SUBJECT,
    message_id: str = "<cart-1.step-1@nudge.test>",
    html_body: str = "<p>Finish your order at <b>Nudge Store</b></p>",
    text: str = "Finish your order at Nudge Store",
    to: str = "zoe@example.com",
) -> EmailMessage:
    message = EmailMessage()
    message["From"] = "Nudge Store <store@nudge.localhost>"
    message["To"] = to
    message["Subject"] = subject
    message["Message-ID"] = message_id
    message.set_content(text, charset="utf-8")
    message.add_alternative(html_body, subtype="html", charset="utf-8")
    return message


async def send(catcher: MailCatcher, message: EmailMessage | None = None) -> None:
    await aiosmtplib.send(
        message or make_message(), hostname=catcher.host, port=catcher.port, timeout=5
    )


@pytest.fixture
def catcher() -> Iterator[MailCatcher]:
    with MailCatcher(port=0) as running:
        yield running


async def test_catches_a_multipart_message(catcher: MailCatcher) -> None:
    assert catcher.port != 0
    before = datetime.now(UTC)

    await send(catcher)

    [caught] = await catcher.wait_for(1)
    assert caught.id == 1
    assert caught.message_id == "cart-1.step-1@nudge.test"
    assert caught.mail_from == "store@nudge.localhost"
    assert caught.rcpt_tos == ["zoe@example.com"]
    assert caught.subject == SUBJECT
    assert caught.received_at.tzinfo is not None
    assert before - timedelta(seconds=1) <= caught.received_at <= datetime.now(UTC)
    assert caught.html is not None and "<b>Nudge Store</b>" in caught.html
    assert caught.text is not None and caught.text.strip() == "Finish your order at Nudge Store"
    assert caught.message["To"] == "zoe@example.com"
    assert b"cart-1.step-1@nudge.test" in caught.raw
    assert catcher.count == 1


async def test_single_part_message_has_no_html(catcher: MailCatcher) -> None:
    message = EmailMessage()
    message["From"] = "a@example.com"
    message["To"] = "b@example.com"
    message["Subject"] = "plain"
    message.set_content("just text")

    await send(catcher, message)

    [caught] = await catcher.wait_for(1)
    assert caught.html is None
    assert caught.text == "just text\n"
    assert caught.message_id is None


async def test_ids_keep_counting_and_messages_is_a_copy(catcher: MailCatcher) -> None:
    await send(catcher)
    await send(catcher, make_message(message_id="<second@nudge.test>"))

    caught = await catcher.wait_for(2)
    assert [m.id for m in caught] == [1, 2]
    caught.clear()
    assert catcher.count == 2

    assert catcher.clear() == 2
    assert catcher.messages == []
    await send(catcher)
    [after_clear] = await catcher.wait_for(1)
    assert after_clear.id == 3


async def test_wait_for_times_out_with_a_clear_message(catcher: MailCatcher) -> None:
    with pytest.raises(TimeoutError, match=r"0 message\(s\) after 0.1s, expected at least 1"):
        await catcher.wait_for(1, timeout=0.1)


@pytest.mark.parametrize(("code", "text"), [(451, "Try again later"), (550, "Mailbox unavailable")])
async def test_fail_next_rejects_data_once(catcher: MailCatcher, code: int, text: str) -> None:
    catcher.fail_next(1, code, text)

    with pytest.raises(aiosmtplib.SMTPResponseException) as raised:
        await send(catcher)
    assert raised.value.code == code
    assert text in raised.value.message
    assert catcher.count == 0

    await send(catcher)
    [caught] = await catcher.wait_for(1)
    assert caught.id == 1
    assert catcher.count == 1


async def test_fail_next_counts_down(catcher: MailCatcher) -> None:
    catcher.fail_next(2)
    for _ in range(2):
        with pytest.raises(aiosmtplib.SMTPResponseException):
            await send(catcher)
    await send(catcher)
    assert catcher.count == 1


def test_fail_next_refuses_success_codes() -> None:
    with pytest.raises(ValueError, match="4xx or 5xx"):
        MailCatcher(port=0).fail_next(code=250)


async def test_restart_on_the_same_port_simulates_an_outage(catcher: MailCatcher) -> None:
    port = catcher.port
    catcher.stop()
    assert not catcher.running

    with pytest.raises(aiosmtplib.SMTPConnectError):
        await send(catcher)

    catcher.start()
    assert catcher.port == port
    await send(catcher)
    assert catcher.count == 1


def test_busy_port_fails_fast() -> None:
    with MailCatcher(port=0) as first, pytest.raises(OSError, match="cannot listen"):
        MailCatcher(port=first.port).start()


async def test_store_dir_survives_a_new_catcher(tmp_path: Path) -> None:
    store = tmp_path / "mail"
    with MailCatcher(port=0, store_dir=store) as first:
        await send(first)
        await send(first, make_message(to="ana@example.com"))
        original = await first.wait_for(2)
    assert sorted(p.name for p in store.iterdir()) == ["1.eml", "1.json", "2.eml", "2.json"]

    second = MailCatcher(port=0, store_dir=store)
    with second:
        loaded = second.messages
        assert [m.id for m in loaded] == [1, 2]
        assert loaded == original
        await send(second)
        assert [m.id for m in await second.wait_for(3)] == [1, 2, 3]

        # Restarting the same catcher must not list stored messages twice.
        second.stop()
        second.start()
        assert second.count == 3

        second.clear()
    assert list(store.iterdir()) == []


async def test_eml_without_envelope_is_loaded_from_headers(tmp_path: Path) -> None:
    (tmp_path / "7.eml").write_bytes(bytes(make_message()))

    with MailCatcher(port=0, store_dir=tmp_path) as catcher:
        [loaded] = catcher.messages
        assert loaded.id == 7
        assert loaded.mail_from == "store@nudge.localhost"
        assert loaded.rcpt_tos == ["zoe@example.com"]
        assert loaded.subject == SUBJECT
        await send(catcher)
        assert [m.id for m in await catcher.wait_for(2)] == [7, 8]


async def test_web_app_lists_shows_and_escapes(catcher: MailCatcher) -> None:
    await send(catcher)
    await send(
        catcher,
        make_message(
            subject="<script>alert(1)</script> & more",
            message_id="<evil@nudge.test>",
            html_body='<p onclick="x()">Hi &amp; "bye"</p><script>alert(2)</script>',
            text="<not a tag>",
        ),
    )
    await catcher.wait_for(2)
    app = create_web_app(catcher)

    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://catcher"
    ) as client:
        index = await client.get("/")
        assert index.status_code == 200
        assert "text/html" in index.headers["content-type"]
        assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; more" in index.text
        assert "<script>alert(1)" not in index.text
        assert html.escape(SUBJECT) in index.text
        # Newest first.
        assert index.text.index('href="/messages/2"') < index.text.index('href="/messages/1"')

        page = await client.get("/messages/2")
        assert page.status_code == 200
        assert "<script>alert" not in page.text
        assert (
            '<iframe sandbox srcdoc="&lt;p onclick=&quot;x()&quot;&gt;Hi &amp;amp; '
            "&quot;bye&quot;&lt;/p&gt;&lt;script&gt;alert(2)&lt;/script&gt;" in page.text
        )
        assert "<pre>&lt;not a tag&gt;" in page.text
        assert "evil@nudge.test" in page.text

        eml = await client.get("/messages/1.eml")
        assert eml.status_code == 200
        assert eml.headers["content-type"] == "message/rfc822"
        assert eml.content == catcher.messages[0].raw

        listing = (await client.get("/api/messages")).json()
        assert [(m["id"], m["message_id"], m["to"]) for m in listing] == [
            (1, "cart-1.step-1@nudge.test", ["zoe@example.com"]),
            (2, "evil@nudge.test", ["zoe@example.com"]),
        ]
        assert listing[0]["from"] == "store@nudge.localhost"
        assert listing[0]["subject"] == SUBJECT
        assert datetime.fromisoformat(listing[0]["received_at"]).tzinfo is not None

        for missing in ("/messages/99", "/messages/99.eml", "/messages/nope"):
            assert (await client.get(missing)).status_code == 404, missing

        deleted = await client.delete("/api/messages")
        assert deleted.json() == {"deleted": 2}
        assert (await client.get("/api/messages")).json() == []
        assert catcher.count == 0
