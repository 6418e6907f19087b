"""Every shipped template (any `templates/<name>.subject`, so templates added later are covered
too): an HTML part and a real text part, alt text on every image, the store's physical address
and (marketing) an unsubscribe link in the footer, and a SpamAssassin score of at most 2.0 with
local rules only."""

from __future__ import annotations

import re
from html.parser import HTMLParser

import pytest

from nudge.dev import spamcheck
from nudge.mail.render import Renderer
from nudge.settings import Settings

SETTINGS = Settings(**spamcheck.SAMPLE_STORE)  # type: ignore[arg-type]
TEMPLATES = spamcheck.shipped_templates()


@pytest.fixture(scope="module")
def renderer() -> Renderer:
    return Renderer()


class _Images(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.missing_alt: list[str] = []
        self.links: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag == "img" and not (found.get("alt") or "").strip():
            self.missing_alt.append(str(found.get("src")))
        if tag == "a" and found.get("href"):
            self.links.append(str(found["href"]))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def test_the_shipped_templates_are_found() -> None:
    assert {"cart_1", "cart_2", "cart_3", "confirm_subscription"} <= set(TEMPLATES)


@pytest.mark.parametrize("name", TEMPLATES)
def test_template_has_html_text_alt_address_and_unsubscribe(renderer: Renderer, name: str) -> None:
    message = spamcheck.sample_message(renderer, SETTINGS, name).parsed()
    html_part, text_part = message.get_body(("html",)), message.get_body(("plain",))
    assert html_part is not None and text_part is not None
    html, text = str(html_part.get_content()), str(text_part.get_content())
    parsed = _Images()
    parsed.feed(html)
    assert parsed.missing_alt == [], f"images without alt text in {name}"
    # A real text part: the words of the HTML, not a "view this in a browser" stub.
    html_words = set(re.findall(r"[a-z]{4,}", " ".join(parsed.text).lower()))
    text_words = set(re.findall(r"[a-z]{4,}", text.lower()))
    assert len(text_words) >= 30 and len(html_words & text_words) >= 0.6 * len(html_words)
    for part in (html, text):
        assert SETTINGS.store_address in part, f"{name} lacks the store's physical address"
    context = spamcheck.sample_context(SETTINGS, name)
    if name in spamcheck.NOT_MARKETING:
        assert message["List-Unsubscribe"] is None
    else:
        assert context["unsubscribe_url"] in parsed.links
        assert context["unsubscribe_url"] in text
        assert str(context["unsubscribe_url"]) in str(message["List-Unsubscribe"])


@pytest.mark.parametrize("sparse", [False, True], ids=["sample", "sparse"])
def test_spamassassin_scores_every_template_at_most_2(renderer: Renderer, sparse: bool) -> None:
    """For the rich sample contact and in the sparsest realistic context (one cart line, no
    recommendations, no first name, no history), where images weigh more against the text."""
    scores = spamcheck.score_all(SETTINGS, sparse=sparse)
    assert [s.template for s in scores] == TEMPLATES
    too_high = [s for s in scores if s.score > spamcheck.LIMIT]
    assert too_high == [], "\n".join(f"{s.template}: {s.score} {s.rules}" for s in too_high)


def test_spamassassin_does_score_spam() -> None:
    """The check above is not vacuous: SpamAssassin, run the same way, flags a spammy email."""
    raw = (
        b"From: WINNER <win@shop.example.com>\r\nTo: ana@example.com\r\n"
        b"Subject: =?utf-8?q?FREE_MONEY!!!_CLICK_NOW?=\r\nMessage-ID: <x@shop.example.com>\r\n"
        b"Content-Type: text/html\r\n\r\n<html><body><img src='https://x.example.com/a.jpg'>"
        b"<p>100% FREE! Act now! Viagra cheap, Guaranteed winner! "
        b"Click here to claim your cash prize!!!</p></body></html>\r\n"
    )
    assert spamcheck.score(raw, "spam").score > spamcheck.LIMIT
