"""Email build: whole MIME messages per second against bare Jinja2 rendering of the same template.

    python -m bench.email_build [--messages 200] [--rounds 5]

Baseline: the email's HTML template rendered by a plain `jinja2.Environment` (the same files,
filters and context; no CSS inlining, no text part, no MIME). Nudge: what the send activity does
for one email, `Renderer().render(name, context)` (subject, HTML with the CSS inlined, text part),
`nudge.mail.smtp.build_message(...)` and `message.as_bytes()` (the bytes the SMTP client sends). Also
measured in the same run: the same path with the CSS inlined into every rendered message (the
renderer's behaviour before it inlined at load), and each stage alone, so the costs are visible.

Every figure is the best of `--rounds` rounds of `--messages` messages in CPU time (so that
other processes on the machine disturb it little), the rounds of all variants interleaved;
only ratios of figures from this run are meaningful.
"""

from __future__ import annotations

import argparse
import platform
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from importlib.metadata import version
from typing import Any

from jinja2 import Environment, FileSystemLoader, Template

from nudge.mail.render import TEMPLATES, RenderedEmail, Renderer
from nudge.mail.smtp import OutgoingMessage, build_message

TEMPLATES_MEASURED = ("cart_1", "cart_3")
TARGET = 0.5
FROM_EMAIL = "Nudge Store <store@nudge.localhost>"
PARTS = ("html", "txt", "subject")


def context(step: str) -> dict[str, Any]:
    """A context shaped like `nudge.mail.context.email_context` builds: contact, store, loyalty, three
    cart lines with images, recommendations (also as `alternatives`), an offer."""
    now = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
    lines = [
        ("p1", "Linen shirt", "49.00", 1),
        ("p2", "Merino wool scarf", "35.50", 2),
        ("p3", "Leather card holder", "24.90", 1),
    ]
    recommendations = [
        {
            "product_id": pid,
            "title": title,
            "url": f"https://shop.example/p/{pid}",
            "image_url": f"https://cdn.shop.example/img/{pid}.jpg",
            "price": Decimal(price),
            "currency": "EUR",
            "category": "apparel",
            "strategy": "also_bought",
        }
        for pid, title, price in (
            ("p7", "Cotton overshirt", "59.00"),
            ("p8", "Linen trousers", "65.00"),
            ("p9", "Canvas tote", "19.90"),
        )
    ]
    return {
        "contact": {
            "first_name": "Ana",
            "last_name": "Silva",
            "email": "ana@example.com",
            "timezone": "Europe/Lisbon",
            "locale": "en",
            "properties": {},
        },
        "store": {
            "name": "Nudge Store",
            "address": "1 Market Street, Lisbon, Portugal",
            "url": "https://shop.example",
            "logo_url": "https://cdn.shop.example/logo.png",
        },
        "segments": frozenset({"engaged"}),
        "is_vip": False,
        "loyalty": {
            "tier": "silver",
            "points": 1240,
            "lifetime_spend": Decimal("612.40"),
            "next_tier": "gold",
            "spend_to_next_tier": Decimal("387.60"),
        },
        "message_id": f"5f1c0e2a9b7d4c3e8a6f0b1d2c3e4f5a.{step}@nudge.localhost",
        "now": now,
        "cart": {
            "token": "c1",
            "currency": "EUR",
            "checkout_url": "https://shop.example/checkout/c1?utm_source=nudge&utm_medium=email",
            "lines": [
                {
                    "product_id": pid,
                    "title": title,
                    "price": Decimal(price),
                    "quantity": quantity,
                    "image_url": f"https://cdn.shop.example/img/{pid}.jpg",
                    "url": f"https://shop.example/p/{pid}",
                }
                for pid, title, price, quantity in lines
            ],
            "total": sum((Decimal(price) * quantity for _, _, price, quantity in lines), start=0),
        },
        "recommendations": recommendations,
        "alternatives": recommendations,
        "offer": {
            "code": "NUDGE-7KQ2-XM4P",
            "kind": "percent",
            "percent": 10,
            "value": Decimal("10"),
            "expires_at": now + timedelta(hours=24),
        },
    }


def bare_environment(renderer: Renderer) -> Environment:
    """A plain Jinja2 environment over the same files, with the filters they use (the
    renderer's): what rendering alone costs."""
    env = Environment(
        loader=FileSystemLoader(TEMPLATES), autoescape=True, trim_blocks=True, lstrip_blocks=True
    )
    env.filters.update(renderer.env.filters)
    return env


def message_bytes(renderer: Renderer, name: str, ctx: dict[str, Any]) -> bytes:
    """One email exactly as the send activity builds it, as the bytes SMTP DATA carries."""
    email = renderer.render(name, ctx)
    return build(email, name).as_bytes()


def build(email: RenderedEmail, name: str) -> OutgoingMessage:
    return build_message(
        email,
        from_email=FROM_EMAIL,
        to_email="ana@example.com",
        to_name="Ana",
        message_id=f"5f1c0e2a9b7d4c3e8a6f0b1d2c3e4f5a.{name}@nudge.localhost",
        headers={"X-Nudge-Flow": "cart_abandonment", "X-Nudge-Step": name},
    )


def best_seconds_per_message(
    runs: dict[str, Callable[[], object]], messages: int, rounds: int
) -> dict[str, float]:
    """Best (lowest) CPU time per call of each run; the rounds of the runs are interleaved.

    CPU time of this process, not wall time: the figures hold while other processes share the
    machine (it is all single-threaded CPU work)."""
    best = dict.fromkeys(runs, float("inf"))
    for run in runs.values():
        run()  # warm up: templates compiled and cached
    for _ in range(rounds):
        for label, run in runs.items():
            start = time.process_time()
            for _ in range(messages):
                run()
            best[label] = min(best[label], (time.process_time() - start) / messages)
    return best


def measure(name: str, messages: int, rounds: int) -> None:
    ctx = context(name)
    renderer = Renderer()
    bare: Template = bare_environment(renderer).get_template(f"{name}.html")
    per_message = Renderer(inline_css_at_load=False)
    html, text, subject = (renderer.env.get_template(f"{name}.{part}") for part in PARTS)
    html_raw = per_message.env.get_template(f"{name}.html").render(ctx)
    email = renderer.render(name, ctx)
    message = build(email, name)
    assert email == per_message.render(name, ctx), "pre-inlined HTML differs from per-message"

    runs: dict[str, Callable[[], object]] = {
        "bare": lambda: bare.render(ctx),
        "full": lambda: message_bytes(renderer, name, ctx),
        "full_per_message_css": lambda: message_bytes(per_message, name, ctx),
        "render_html": lambda: html.render(ctx),
        "css_inline": lambda: per_message.inline_css(html_raw),
        "text": lambda: text.render(ctx),
        "subject": lambda: subject.render(ctx),
        "render": lambda: renderer.render(name, ctx),
        "render_per_message_css": lambda: per_message.render(name, ctx),
        "mime_build": lambda: build(email, name),
        "serialise": lambda: message.as_bytes(),
    }
    t = best_seconds_per_message(runs, messages, rounds)
    size = len(message_bytes(renderer, name, ctx))

    def rate(label: str) -> str:
        return f"{1 / t[label]:>9,.0f}/s"

    print(f"\n{name}: HTML {len(email.html):,} chars, message {size:,} bytes")
    print(f"  bare Jinja2 render of {name}.html        {rate('bare')}  (baseline)")
    print(
        f"  full MIME message (render+build+bytes) {rate('full')}  "
        f"ratio {t['bare'] / t['full']:.3f}x  (target >= {TARGET}x)"
    )
    print(
        f"  same, CSS inlined per message (before) {rate('full_per_message_css')}  "
        f"ratio {t['bare'] / t['full_per_message_css']:.3f}x"
    )
    print(
        f"  Renderer.render alone (no MIME)        {rate('render')}  "
        f"ratio {t['bare'] / t['render']:.3f}x"
    )
    print(
        f"  same, CSS inlined per message (before) {rate('render_per_message_css')}  "
        f"ratio {t['bare'] / t['render_per_message_css']:.3f}x"
    )
    css_now = 0.0 if renderer.css_inlined_at_load else t["css_inline"]
    stages = [
        ("render html (Jinja)", t["render_html"]),
        ("css inline", css_now),
        ("text part (Jinja)", t["text"]),
        ("subject (Jinja)", t["subject"]),
        ("MIME build (build_message)", t["mime_build"]),
        ("serialisation (as_bytes)", t["serialise"]),
    ]
    total = sum(seconds for _, seconds in stages)
    print(f"  breakdown, µs per message (sum {total * 1e6:.1f}; full path {t['full'] * 1e6:.1f}):")
    for label, seconds in stages:
        print(f"    {label:<28} {seconds * 1e6:7.1f}  {seconds / total:6.1%}")
    if not css_now:
        print(
            f"    (css inline is done once at load; per message it cost "
            f"{t['css_inline'] * 1e6:.1f} µs)"
        )
    mime = t["mime_build"] + t["serialise"]
    print(
        f"  nudge/mail/smtp.py (build + as_bytes) is {mime / total:.0%} of the message; "
        f"rendering alone would allow {t['bare'] / (total - mime):.2f}x"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--messages", type=int, default=200, help="messages per round")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    print(
        f"email build: {args.messages} messages x {args.rounds} rounds per figure, best round "
        "in CPU time; "
        f"Python {platform.python_version()}, Jinja2 {version('jinja2')}, "
        f"css-inline {version('css-inline')}"
    )
    for name in TEMPLATES_MEASURED:
        measure(name, args.messages, args.rounds)


if __name__ == "__main__":
    main()
