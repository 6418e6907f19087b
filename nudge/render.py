"""Email rendering: Jinja2 templates (autoescaped HTML, StrictUndefined) into subject, HTML, text.

Each email `name` is three files in `templates/`: `name.subject`, `name.html` and `name.txt`.
The text part is a template of its own rather than HTML converted to text: it reads better and
costs a fraction of an HTML-to-text pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import css_inline
from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"

CURRENCY_SYMBOLS = {"EUR": "€", "USD": "$", "GBP": "£", "JPY": "¥", "BRL": "R$", "CAD": "CA$"}


class TemplateProblem(Exception):
    """A template is missing or cannot render with the given context: never send it."""


@dataclass(frozen=True, slots=True)
class RenderedEmail:
    subject: str
    html: str
    text: str


def money(amount: Decimal | str | int, currency: str) -> str:
    value = Decimal(amount).quantize(Decimal("0.01"))
    symbol = CURRENCY_SYMBOLS.get(currency)
    return f"{symbol}{value:,}" if symbol else f"{value:,} {currency}"


def local_datetime(moment: datetime, timezone: str | None, fmt: str = "%A %d %B, %H:%M") -> str:
    zone = ZoneInfo(timezone) if timezone else ZoneInfo("UTC")
    return moment.astimezone(zone).strftime(fmt)


class Renderer:
    def __init__(self, templates_dir: Path = TEMPLATES) -> None:
        self.env = Environment(
            loader=FileSystemLoader(templates_dir),
            autoescape=select_autoescape(enabled_extensions=("html",), default=False),
            undefined=StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
            auto_reload=False,
        )
        self.env.filters["money"] = money
        self.env.filters["local_datetime"] = local_datetime
        self._inliner = css_inline.CSSInliner(keep_style_tags=False, load_remote_stylesheets=False)

    def render(self, name: str, context: dict[str, Any]) -> RenderedEmail:
        try:
            subject = self.env.get_template(f"{name}.subject").render(context)
            html = self.env.get_template(f"{name}.html").render(context)
            text = self.env.get_template(f"{name}.txt").render(context)
        except Exception as err:  # any Jinja error means a broken email: refuse loudly
            raise TemplateProblem(f"template {name!r}: {type(err).__name__}: {err}") from err
        subject = " ".join(subject.split())
        if not subject:
            raise TemplateProblem(f"template {name!r} rendered an empty subject")
        return RenderedEmail(
            subject=subject, html=self._inliner.inline(html), text=text.strip() + "\n"
        )
