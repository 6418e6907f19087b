"""Rendering: styles inlined (once, at load, exactly as per message), StrictUndefined, autoescape
in HTML only, one-line subjects."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import css_inline
import pytest
from jinja2 import TemplateSyntaxError

from nudge.mail.render import TEMPLATES, Renderer, TemplateProblem

# The cart emails (the context below is a cart's); every shipped template is rendered for a
# sample contact by tests/nudge/dev/test_spamcheck.py.
EMAILS = sorted(
    p.stem
    for p in TEMPLATES.glob("*.html")
    if not p.name.startswith("_") and "_cart_items" in p.read_text()
)


def context(**changes: Any) -> dict[str, Any]:
    now = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
    lines = [
        {
            "product_id": "p1",
            "title": "Linen shirt",
            "price": Decimal("49.00"),
            "quantity": 1,
            "image_url": "https://shop.example/img/p1.jpg",
            "url": "https://shop.example/p/p1",
        },
        {
            "product_id": "p2",
            "title": "Wool scarf",
            "price": Decimal("35.50"),
            "quantity": 2,
            "image_url": None,
            "url": None,
        },
    ]
    ctx: dict[str, Any] = {
        "contact": {"first_name": "Ana", "email": "ana@example.com", "timezone": "Europe/Lisbon"},
        "store": {
            "name": "Nudge Store",
            "address": "1 Market St",
            "url": "https://shop.example",
            "logo_url": "https://shop.example/logo.png",
        },
        "loyalty": {"tier": "silver", "points": 1234},
        "message_id": "abc@shop.example",
        "now": now,
        "cart": {
            "token": "c1",
            "currency": "EUR",
            "checkout_url": "https://shop.example/checkout/c1?a=1&b=2",
            "lines": lines,
            "total": Decimal("120.00"),
        },
        "alternatives": [
            {
                "title": "Canvas tote",
                "url": None,
                "image_url": "https://shop.example/img/p9.jpg",
                "price": Decimal("19.90"),
            },
            {
                "title": "Gift card",
                "url": "https://shop.example/p/gc",
                "image_url": "https://shop.example/img/gc.jpg",
                "price": None,
            },
        ],
        "offer": {"code": "COMEBACK10", "percent": 10, "expires_at": now + timedelta(hours=24)},
    }
    for key, value in changes.items():
        ctx[key] = value
    return ctx


def tricky() -> dict[str, Any]:
    """Values an HTML serialiser writes differently from Jinja's escaping: quotes, ampersands,
    angle brackets, a no-break space."""
    ctx = context()
    ctx["contact"] = ctx["contact"] | {"first_name": 'Zoë "Z" O\'Hara & <co>\u00a0'}
    ctx["store"] = ctx["store"] | {
        "name": "Tom & Jerry's <Shop>",
        "url": 'https://x.example/?q="1"',
    }
    ctx["cart"]["lines"][0] = ctx["cart"]["lines"][0] | {"title": "<b>\"Bold\" & 'brash'</b>"}
    return ctx


def normalised(html: str) -> str:
    """An HTML document as the inliner's parser reads and writes it (there is no <style> left to
    inline): two documents the same to a browser normalise the same."""
    return str(css_inline.inline(html, load_remote_stylesheets=False))


@pytest.fixture(scope="module")
def renderer() -> Renderer:
    return Renderer()


def test_the_shipped_templates_are_inlined_at_load(renderer: Renderer) -> None:
    assert {"cart_1", "cart_2", "cart_3"} <= set(EMAILS)
    assert renderer.css_inlined_at_load


@pytest.mark.parametrize("name", EMAILS)
def test_styles_are_inlined_and_no_style_block_is_left(renderer: Renderer, name: str) -> None:
    html = renderer.render(name, context()).html
    assert "<style" not in html
    assert "{%" not in html and "{{" not in html
    button = re.search(r'<a class="button"[^>]*>', html)
    assert button is not None
    assert 'style="display: inline-block;background: #18181b;' in button.group()
    assert re.search(r'<body style="margin: 0;padding: 0;', html)
    assert re.search(r'<img src="https://shop.example/img/p1.jpg" [^>]*style="width: 120px;', html)
    assert re.search(r'<div class="footer" style="font-size: 12px;', html)


@pytest.mark.parametrize(
    ("ctx", "same_text"),
    [(context(), True), (context(alternatives=[]), True), (tricky(), False)],
    ids=["plain", "no-alternatives", "tricky-values"],
)
@pytest.mark.parametrize("name", EMAILS)
def test_inlining_at_load_renders_what_inlining_each_message_renders(
    renderer: Renderer, name: str, ctx: dict[str, Any], same_text: bool
) -> None:
    per_message = Renderer(inline_css_at_load=False)
    assert not per_message.css_inlined_at_load
    now, before = renderer.render(name, ctx), per_message.render(name, ctx)
    assert (now.subject, now.text) == (before.subject, before.text)
    # Jinja writes `'` as `&#39;` where the serialiser writes `'` (and so on): the same document.
    assert normalised(now.html) == normalised(before.html)
    if same_text:
        assert now.html == before.html


def test_strict_undefined_raises_on_a_missing_variable(renderer: Renderer) -> None:
    ctx = context()
    del ctx["cart"]
    with pytest.raises(TemplateProblem, match="'cart' is undefined"):
        renderer.render("cart_1", ctx)
    ctx = context()
    del ctx["offer"]
    with pytest.raises(TemplateProblem, match="offer"):
        renderer.render("cart_3", ctx)


def test_html_is_autoescaped_and_the_text_part_is_not(renderer: Renderer) -> None:
    ctx = context()
    ctx["cart"]["lines"][0]["title"] = "<script>alert(1)</script>"
    email = renderer.render("cart_2", ctx)
    assert "<script>" not in email.html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in email.html
    assert "- <script>alert(1)</script>: €49.00" in email.text
    assert "The <script>alert(1)</script> is still waiting for you." in email.text
    assert email.subject == "Still thinking about the <script>alert(1)</script>?"


def test_the_subject_is_one_line(renderer: Renderer) -> None:
    ctx = context()
    ctx["contact"]["first_name"] = "Ana\r\nBcc: everyone@example.com\n"
    subject = renderer.render("cart_1", ctx).subject
    assert subject == "Ana Bcc: everyone@example.com , your order didn't go through"
    assert "\n" not in subject and "\r" not in subject


def test_text_part_reads_as_text(renderer: Renderer) -> None:
    email = renderer.render("cart_1", context())
    assert email.text.startswith("Hi Ana,\n\n")
    assert "- Linen shirt: €49.00\n- Wool scarf: €35.50 x 2\n" in email.text
    assert email.text.endswith("https://shop.example\n")


def _templates(tmp_path: Path, files: dict[str, str]) -> Path:
    for path in TEMPLATES.iterdir():
        (tmp_path / path.name).write_text(path.read_text())
    for name, source in files.items():
        (tmp_path / name).write_text(source)
    return tmp_path


ROW_LOOP = (
    '{% extends "_layout.html" %}{% block body %}<table class="item">'
    "{% for line in cart.lines %}<tr><td>{{ line.title }}</td></tr>{% endfor %}"
    '</table><p><a class="button" href="{{ cart.checkout_url }}">Go</a></p>{% endblock %}'
)


@pytest.mark.parametrize(
    "source",
    [
        ROW_LOOP,  # an HTML parser would move the loop out of the table ("foster parenting")
        '{% extends "_layout.html" %}{% block body %}<p {{ "hidden" }}>x</p>{% endblock %}',
        '{% extends "_layout.html" %}{% block body %}<p style="color: {{ "red" }}">x</p>'
        "{% endblock %}",
        "<p>{{ contact.first_name }}</p>",  # an email without the layout
    ],
    ids=["loop-in-table", "tag-attribute", "style-attribute", "no-layout"],
)
def test_templates_the_parser_would_rearrange_are_inlined_per_message(
    tmp_path: Path, source: str
) -> None:
    templates = _templates(tmp_path, {"odd.html": source, "odd.subject": "Hi", "odd.txt": "Hi"})
    renderer = Renderer(templates)
    assert not renderer.css_inlined_at_load
    # Still the same emails as ever.
    assert renderer.render("cart_1", context()) == Renderer(inline_css_at_load=False).render(
        "cart_1", context()
    )
    if source == ROW_LOOP:
        html = renderer.render("odd", context()).html
        assert re.search(r"<tr><td>Linen shirt</td></tr><tr><td>Wool scarf</td></tr>", html)
        assert 'class="button" href="https://shop.example/checkout/c1?a=1&amp;b=2" style=' in html


def test_a_template_syntax_error_is_reported_on_its_own_lines(tmp_path: Path) -> None:
    source = '{% extends "_layout.html" %}\n\n\n{% block body %}{{ x }'
    templates = _templates(tmp_path, {"broken.html": source, "broken.subject": "Hi"})
    renderer = Renderer(templates)
    with pytest.raises(TemplateProblem, match="TemplateSyntaxError") as raised:
        renderer.render("broken", context())
    assert isinstance(raised.value.__cause__, TemplateSyntaxError)
    assert raised.value.__cause__.lineno == 4
