"""SpamAssassin scores of every shipped template, rendered for a sample contact and in the
sparsest realistic context (no first name, one cart line, no recommendations, no history).

    python -m nudge.dev.spamcheck        (or `make spamcheck`)

prints one line per template with its score and the rules that fired, and exits 1 if any
scores above `LIMIT`. SpamAssassin (Debian package `spamassassin`) runs with local rules only
(`-L`: no DNS blocklists, no Razor/Pyzor, no network) and without Bayes, so the score depends
on the message alone. A template is every `templates/<name>.subject` not starting with `_`; a
new template that needs more context than `sample_context` gives must add it there.
"""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from nudge.mail.render import TEMPLATES, RenderedEmail, Renderer
from nudge.mail.smtp import OutgoingMessage, build_message
from nudge.settings import Settings

LIMIT = 2.0
# The templates sent without List-Unsubscribe and unsubscribe link (transactional, or the
# double opt-in confirmation that a not-yet-subscriber receives).
NOT_MARKETING = frozenset({"confirm_subscription", "pp_confirmation", "pp_shipped"})
SA_ARGS = (
    "-L",  # local tests only: no network
    "-x",  # no per-user preferences
    "--cf=use_bayes 0",
    "--cf=bayes_auto_learn 0",
    "--cf=use_auto_whitelist 0",
    "--cf=use_razor2 0",
    "--cf=use_pyzor 0",
    "--cf=use_dcc 0",
)


def shipped_templates(directory: Path = TEMPLATES) -> list[str]:
    return sorted(p.stem for p in directory.glob("*.subject") if not p.stem.startswith("_"))


# The sample contact (with their loyalty standing), as of a fixed moment.
SAMPLE_NOW = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)
SAMPLE_CONTACT: dict[str, Any] = {
    "first_name": "Ana",
    "last_name": "Silva",
    "email": "ana.silva@example.com",
    "timezone": "Europe/Lisbon",
    "locale": "en",
    "properties": {"birthday": "1990-04-02"},
}
SAMPLE_LOYALTY: dict[str, Any] = {
    "tier": "silver",
    "points": 640,
    "lifetime_spend": Decimal(640),
    "next_tier": "gold",
    "spend_to_next_tier": Decimal(860),
}


def sample_context(settings: Settings, name: str) -> dict[str, Any]:
    """Everything a shipped template may use, for a plausible contact, cart, order and product.
    Each call builds it afresh: a caller may change what it gets."""
    base = settings.public_url.rstrip("/")
    marketing = name not in NOT_MARKETING
    recommendations = _sample_recommendations(base)
    return {
        "contact": copy.deepcopy(SAMPLE_CONTACT),
        "store": {
            "name": settings.store_name,
            "address": settings.store_address,
            "url": settings.public_url,
            "logo_url": settings.store_logo_url,
        },
        "segments": frozenset({"customers"}),
        "is_vip": False,
        "loyalty": dict(SAMPLE_LOYALTY),
        "message_id": f"sample.{name}@{settings.from_domain}",
        "now": SAMPLE_NOW,
        "unsubscribe_url": f"{base}/u/sample-token" if marketing else None,
        "confirm_url": f"{base}/c/sample-token",
        "product": _sample_product(base, name),
        "recommendations": recommendations,
        "alternatives": recommendations,
        **_sample_orders(base),
    }


def sparse_context(settings: Settings, name: str) -> dict[str, Any]:
    """The sparsest realistic context: a contact with no first name (the fallback greeting), a
    one-line cart (as a store without a catalogue sends it), no recommendations, no order
    history. Images then weigh more against the text: a template must score well here too."""
    context = sample_context(settings, name)
    base = settings.public_url.rstrip("/")
    context["contact"] |= {"first_name": "there", "last_name": None, "properties": {}}
    line = _sample_lines(base)[0] | {"url": None}
    context["cart"] |= {"lines": [line], "total": line["price"]}
    context["order"] |= {"lines": [line], "total": line["price"]}
    context["last_order"] = None
    context["recommendations"] = context["alternatives"] = []
    context["segments"] = frozenset()
    return context


def _sample_product(base: str, name: str) -> dict[str, Any]:
    """The product of a product flow (browse abandonment, back in stock, price drop)."""
    return {
        "id": "p4",
        "title": "Merino wool sweater",
        "url": f"{base}/p/p4",
        "image_url": f"{base}/img/p4.jpg",
        "price": Decimal("69.00"),
        "currency": "EUR",
        "in_stock": True,
        "category": "knitwear",
        "old_price": Decimal("89.00") if name.startswith("price_drop") else None,
    }


def _sample_recommendations(base: str) -> list[dict[str, Any]]:
    return [
        {
            "product_id": "p3",
            "title": "Cotton scarf",
            "url": f"{base}/p/p3",
            "image_url": f"{base}/img/p3.jpg",
            "price": Decimal("29.00"),
            "currency": "EUR",
            "category": "accessories",
            "strategy": "bought_together",
        }
    ]


def _sample_lines(base: str) -> list[dict[str, Any]]:
    """The lines of the sample cart, which the sample orders share."""
    return [
        {
            "product_id": "p1",
            "title": "Linen shirt",
            "price": Decimal("49.00"),
            "quantity": 1,
            "image_url": f"{base}/img/p1.jpg",
            "url": f"{base}/p/p1",
        },
        {
            "product_id": "p2",
            "title": "Canvas tote bag",
            "price": Decimal("19.50"),
            "quantity": 2,
            "image_url": f"{base}/img/p2.jpg",
            "url": f"{base}/p/p2",
        },
    ]


def _sample_orders(base: str) -> dict[str, Any]:
    """The cart, the last and the current order, and the coupon offered."""
    now = SAMPLE_NOW
    lines = _sample_lines(base)
    return {
        "cart": {
            "token": "c1",
            "currency": "EUR",
            "checkout_url": f"{base}/checkout/c1",
            "lines": lines,
            "total": Decimal("88.00"),
        },
        "last_order": {
            "id": "o1",
            "currency": "EUR",
            "total": Decimal("88.00"),
            "placed_at": now - timedelta(days=30),
            "status": "shipped",
            "lines": lines,
        },
        "order": {
            "id": "1042",
            "currency": "EUR",
            "total": Decimal("88.00"),
            "placed_at": now - timedelta(days=3),
            "status": "shipped",
            "shipped_at": now - timedelta(days=1),
            "tracking_url": "https://tracking.example.com/parcel/1042",
            "lines": lines,
        },
        "offer": {
            "code": "NUDGE-7KQ2M9",
            "kind": "percent",
            "percent": 10,
            "value": Decimal(10),
            "expires_at": now + timedelta(hours=24),
        },
    }


def render_sample(renderer: Renderer, settings: Settings, name: str) -> RenderedEmail:
    return renderer.render(name, sample_context(settings, name))


def sample_message(
    renderer: Renderer, settings: Settings, name: str, *, sparse: bool = False
) -> OutgoingMessage:
    """The template as the send activity would build it, headers included; for the sample
    contact, or with `sparse` in the sparsest realistic context (`sparse_context`)."""
    context = (sparse_context if sparse else sample_context)(settings, name)
    headers = {"X-Nudge-Flow": "sample", "X-Nudge-Step": name}
    if context["unsubscribe_url"]:
        headers["List-Unsubscribe"] = (
            f"<{context['unsubscribe_url']}>, "
            f"<mailto:unsubscribe@{settings.from_domain}?subject=unsubscribe>"
        )
        headers["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    return build_message(
        renderer.render(name, context),
        from_email=settings.from_email,
        to_email=context["contact"]["email"],
        to_name="Ana Silva",
        message_id=context["message_id"],
        headers=headers,
    )


@dataclass(frozen=True, slots=True)
class Score:
    template: str
    score: float
    rules: str


_STATUS = re.compile(r"^X-Spam-Status:.*?score=(-?[\d.]+).*?tests=(.*?)\s+autolearn=", re.S | re.M)


def spamassassin() -> str:
    found = shutil.which("spamassassin")
    if found is None:
        raise RuntimeError(
            "spamassassin is not installed: `make system-deps` (Debian package spamassassin)"
        )
    return found


def score(raw: bytes, template: str = "") -> Score:
    result = subprocess.run(
        [spamassassin(), *SA_ARGS],
        input=raw,
        capture_output=True,
        timeout=120,
        check=True,
    )
    headers = result.stdout.split(b"\n\n", 1)[0].decode(errors="replace")
    match = _STATUS.search(headers)
    if match is None:
        raise RuntimeError(f"no X-Spam-Status from spamassassin for {template}:\n{headers}")
    rules = " ".join(match.group(2).replace("\n", " ").split())
    return Score(template, float(match.group(1)), rules)


# A store as deployed: an https public URL on the sending domain (the dev default,
# http://localhost:8000, would score as a "weird port" link).
SAMPLE_STORE = {
    "public_url": "https://shop.example.com",
    "from_email": "Nudge Store <store@shop.example.com>",
}


def score_all(settings: Settings | None = None, *, sparse: bool = False) -> list[Score]:
    """Every template's score, in the rich sample context or (`sparse`) the sparsest one."""
    settings = settings or Settings(**SAMPLE_STORE)  # type: ignore[arg-type]
    renderer = Renderer()
    messages = {
        name: sample_message(renderer, settings, name, sparse=sparse).as_bytes()
        for name in shipped_templates()
    }
    with ThreadPoolExecutor(max_workers=2) as pool:
        return list(pool.map(lambda item: score(item[1], item[0]), messages.items()))


def main() -> int:
    scores = []
    for sparse in (False, True):
        for s in score_all(sparse=sparse):
            flag = "FAIL" if s.score > LIMIT else "ok"
            label = f"{s.template} ({'sparse' if sparse else 'sample'})"
            print(f"{label:40} {s.score:5.1f}  {flag:4}  {s.rules}")
            scores.append(s)
    worst = max((s.score for s in scores), default=0.0)
    print(f"{len(scores)} templates, highest score {worst:.1f} (limit {LIMIT})")
    return 1 if worst > LIMIT else 0


if __name__ == "__main__":
    sys.exit(main())
