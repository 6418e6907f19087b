"""Email rendering: Jinja2 templates (autoescaped HTML, StrictUndefined) into subject, HTML, text.

Each email `name` is three files in `templates/`: `name.subject`, `name.html` and `name.txt`.
The text part is a template of its own rather than HTML converted to text: it reads better and
costs a fraction of an HTML-to-text pass.

CSS is inlined once, when the renderer loads its templates, not once per message: the layout's
`<style>` rules are static, so they are written into the `style` attributes of the HTML templates'
*source* (see `preinline`), and each message is a plain Jinja render. That is only done where it
provably gives what inlining every rendered message would give; otherwise (and with
`Renderer(inline_css_at_load=False)`) every message is inlined after rendering, as before.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from functools import lru_cache
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import css_inline
from babel import Locale, UnknownLocaleError
from babel.dates import format_date, format_datetime, format_time, get_datetime_format
from babel.numbers import format_currency, format_decimal
from jinja2 import (
    BaseLoader,
    ChoiceLoader,
    DictLoader,
    Environment,
    FileSystemLoader,
    StrictUndefined,
    Template,
    meta,
    pass_context,
    select_autoescape,
)
from jinja2.runtime import Context

from nudge.settings import ROOT

log = logging.getLogger(__name__)

TEMPLATES = ROOT / "templates"

# Money, numbers and dates are written in the contact's locale (`contact.locale` in the
# context, e.g. "pt_PT" or "pt-PT"), or in this one when it is unknown or missing.
DEFAULT_LOCALE = "en"


class TemplateProblem(Exception):
    """A template is missing or cannot render with the given context: never send it."""


@dataclass(frozen=True, slots=True)
class RenderedEmail:
    subject: str
    html: str
    text: str


@lru_cache(maxsize=512)
def babel_locale(name: str | None) -> Locale:
    """The Babel locale for "pt_PT", "pt-PT" or "pt"; `DEFAULT_LOCALE` for None or nonsense."""
    if name:
        try:
            return Locale.parse(name.strip().replace("-", "_"))
        except (ValueError, TypeError, UnknownLocaleError):
            pass
    return Locale.parse(DEFAULT_LOCALE)


def _zone(timezone: str | None) -> ZoneInfo:
    try:
        return ZoneInfo(timezone or "UTC")
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo("UTC")


def money(amount: Decimal | str | int, currency: str, locale: str | None = None) -> str:
    """`49.00 EUR` as the contact's locale writes it: "€49.00" (en), "49,00 €" (pt_PT)."""
    return _money(Decimal(amount), currency, locale)


# A store has few distinct prices and Babel's formatting is the dearest part of a template:
# an email of three cart lines spent a third of its rendering time here before this cache.
@lru_cache(maxsize=8192)
def _money(amount: Decimal, currency: str, locale: str | None) -> str:
    return str(format_currency(amount, currency, locale=babel_locale(locale)))


@lru_cache(maxsize=8192)
def number(value: Decimal | int | float, locale: str | None = None) -> str:
    """A number with the locale's grouping and decimal marks: "1,234" (en), "1.234" (de)."""
    return str(format_decimal(value, locale=babel_locale(locale)))


def local_datetime(
    moment: datetime,
    timezone: str | None = None,
    fmt: str = "datetime",
    locale: str | None = None,
) -> str:
    """`moment` in the contact's timezone (UTC if unknown) and locale. `fmt` is "datetime"
    (the full date and the short time), "date", "time", "weekday_time", a Babel width ("short",
    "medium", "long", "full"), a CLDR pattern ("EEEE HH:mm") or a strftime format ("%A %H:%M",
    English names)."""
    local = moment.astimezone(_zone(timezone))
    if "%" in fmt:
        return local.strftime(fmt)
    where = babel_locale(locale)
    if fmt == "date":
        return str(format_date(local, "full", locale=where))
    if fmt == "time":
        return str(format_time(local, "short", tzinfo=local.tzinfo, locale=where))
    if fmt in ("datetime", "weekday_time"):
        day = format_date(local, "full" if fmt == "datetime" else "EEEE", locale=where)
        time = format_time(local, "short", tzinfo=local.tzinfo, locale=where)
        pattern = str(get_datetime_format("full" if fmt == "datetime" else "short", where))
        return pattern.replace("'", "").replace("{0}", str(time)).replace("{1}", str(day))
    return str(format_datetime(local, fmt, tzinfo=local.tzinfo, locale=where))


def _contact_value(context: Context, key: str) -> Any:
    contact = context.get("contact")
    return contact.get(key) if isinstance(contact, Mapping) else None


# The filters templates use: the locale (and for dates the timezone) default to the contact's,
# so `{{ line.price | money(cart.currency) }}` is written the way the reader writes money.


@pass_context
def _money_filter(
    context: Context, amount: Decimal | str | int, currency: str, locale: str | None = None
) -> str:
    return money(amount, currency, locale or _contact_value(context, "locale"))


@pass_context
def _number_filter(context: Context, value: Decimal | int, locale: str | None = None) -> str:
    return number(value, locale or _contact_value(context, "locale"))


@pass_context
def _datetime_filter(
    context: Context,
    moment: datetime,
    timezone: str | None = None,
    fmt: str = "datetime",
    locale: str | None = None,
) -> str:
    return local_datetime(
        moment,
        timezone or _contact_value(context, "timezone"),
        fmt,
        locale or _contact_value(context, "locale"),
    )


class Renderer:
    def __init__(self, templates_dir: Path = TEMPLATES, *, inline_css_at_load: bool = True) -> None:
        self._inliner = css_inline.CSSInliner(keep_style_tags=False, load_remote_stylesheets=False)
        self.env = Environment(
            loader=FileSystemLoader(templates_dir),
            autoescape=select_autoescape(enabled_extensions=("html",), default=False),
            undefined=StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
            auto_reload=False,
        )
        self.env.filters["money"] = _money_filter
        self.env.filters["number"] = _number_filter
        self.env.filters["local_datetime"] = _datetime_filter
        #: Whether the HTML templates were loaded with their CSS already inlined.
        self.css_inlined_at_load = False
        if inline_css_at_load:
            sources = preinline(self.env, templates_dir, self._inliner)
            if sources is not None:
                loader: BaseLoader = ChoiceLoader(
                    [DictLoader(sources), FileSystemLoader(templates_dir)]
                )
                self.env.loader = loader
                self.css_inlined_at_load = True
        self._templates: dict[str, Template] = {}
        self._variables: dict[str, frozenset[str]] = {}

    def render(self, name: str, context: dict[str, Any]) -> RenderedEmail:
        try:
            subject = self._template(f"{name}.subject").render(context)
            html = self._template(f"{name}.html").render(context)
            text = self._template(f"{name}.txt").render(context)
        except Exception as err:  # any Jinja error means a broken email: refuse loudly
            raise TemplateProblem(f"template {name!r}: {type(err).__name__}: {err}") from err
        subject = " ".join(subject.split())
        if not subject:
            raise TemplateProblem(f"template {name!r} rendered an empty subject")
        if not self.css_inlined_at_load:
            html = self.inline_css(html)
        return RenderedEmail(subject=subject, html=html, text=text.strip() + "\n")

    def inline_css(self, html: str) -> str:
        """Inline a rendered document's `<style>` rules (all `render` needs when the templates
        were not pre-inlined)."""
        return str(self._inliner.inline(html))

    def variables(self, name: str) -> frozenset[str]:
        """The context variables email `name` reads (its three parts and every template they
        extend or include), so that costly parts of a context are built only when used."""
        found = self._variables.get(name)
        if found is None:
            names: set[str] = set()
            todo, seen = [f"{name}.{part}" for part in ("subject", "html", "txt")], set()
            while todo:
                template = todo.pop()
                if template in seen or self.env.loader is None:
                    continue
                seen.add(template)
                try:
                    source = self.env.loader.get_source(self.env, template)[0]
                    ast = self.env.parse(source)
                except Exception:  # rendering reports it properly
                    continue
                names |= meta.find_undeclared_variables(ast)
                todo += [t for t in meta.find_referenced_templates(ast) if t]
            found = self._variables[name] = frozenset(names)
        return found

    def _template(self, name: str) -> Template:
        template = self._templates.get(name)
        if template is None:
            template = self._templates[name] = self.env.get_template(name)
        return template


# ---- inlining CSS into template source --------------------------------------------------------

# A Jinja construct, with the whitespace `lstrip_blocks` and `trim_blocks` may remove around
# statements and comments, so that Jinja sees exactly the original text around each of them.
_JINJA = re.compile(r"[ \t]*(?:\{%.*?%\}|\{#.*?#\})\n?|\{\{.*?\}\}", re.DOTALL)
_JINJA_CORE = re.compile(r"\{%.*?%\}|\{#.*?#\}|\{\{.*?\}\}", re.DOTALL)
_OPEN, _CLOSE = "\ue000", "\ue001"  # private-use characters: plain text to an HTML parser
_MARK = re.compile(f"{_OPEN}(\\d+){_CLOSE}")
_STYLE = re.compile(r"<style\b[^>]*>(.*?)</style\s*>", re.IGNORECASE | re.DOTALL)
_DOCUMENT = re.compile(r"<!doctype|<html\b", re.IGNORECASE)
_EXTENDS = re.compile(r"\{%-?\s*extends\b")


@lru_cache(maxsize=1)
def shared_renderer() -> Renderer:
    """One renderer of the shipped templates per process, for the emails sent or drawn outside
    the worker (the confirmation, the report's preview): it pre-inlines every template's CSS."""
    return Renderer()


def preinline(
    env: Environment, templates_dir: Path, inliner: css_inline.CSSInliner
) -> dict[str, str] | None:
    """The HTML templates of `templates_dir` with the layout's CSS inlined into their source,
    or None (with a log line saying why) where that would not be the same as inlining every
    rendered message.

    Each template's Jinja constructs are swapped for placeholders, the HTML is inlined (the
    layout as a document, every other template as a fragment with the layout's CSS) and the
    constructs are put back. That is equivalent when:
      - one template, the layout, is the only HTML document and holds every `<style>`; every
        email (`name.html`) extends it and partials (`_name.html`) are included in it;
      - no construct sits where an HTML parser would move or rewrite it: directly in a table
        or row (it would be "foster-parented" out of it), in `<head>` outside `<title>`, in a
        tag or attribute name, in a `style` attribute or in `<style>` (see `_Placement`);
      - the CSS does not select across template boundaries (a descendant selector whose two
        ends are in different files) or on render-time structure (`:first-child`, `+`, ...).
    The first two are checked here; tests/nudge/mail/test_render.py checks all of them for the
    shipped templates by comparing both ways of rendering.
    """
    files = sorted(templates_dir.glob("*.html")) if templates_dir.is_dir() else []
    originals = {path.name: path.read_text(encoding="utf-8") for path in files}
    layouts = [name for name, source in originals.items() if _DOCUMENT.search(source)]
    css = "\n".join(_STYLE.findall(originals[layouts[0]])) if layouts else ""
    try:
        _check_template_set(env, originals, layouts)
        return {
            name: _inline_source(name, source, inliner, None if name in layouts else css)
            for name, source in originals.items()
        }
    except _NotEquivalent as problem:
        log.warning("CSS is inlined per message, not at load: %s", problem)
        return None


class _NotEquivalent(Exception):
    """Inlining CSS into a template's source would not give what inlining each message gives."""


def _inline_source(
    name: str, original: str, inliner: css_inline.CSSInliner, fragment_css: str | None
) -> str:
    """`original` with its CSS inlined: as a document (`fragment_css` None) or as a fragment."""
    # Jinja drops one trailing newline of a template; the HTML parser would keep it.
    source = original[:-1] if original.endswith("\n") else original
    constructs = _JINJA.findall(source)
    marks = iter(range(len(constructs)))
    protected = _JINJA.sub(lambda _: f"{_OPEN}{next(marks)}{_CLOSE}", source)
    placement = _Placement(document=fragment_css is None)
    placement.feed(protected)
    placement.close()
    if re.search(f"</?{_OPEN}", protected):
        placement.flag("has a Jinja tag in a tag name")
    if placement.problem:
        raise _NotEquivalent(f"{name} {placement.problem}")
    if fragment_css is None:
        inlined = str(inliner.inline(protected))
    else:
        inlined = str(inliner.inline_fragment(protected, fragment_css))
    if [int(i) for i in _MARK.findall(inlined)] != list(range(len(constructs))):
        raise _NotEquivalent(f"{name}: the HTML parser moves its Jinja tags")
    restored = _MARK.sub(lambda m: str(constructs[int(m.group(1))]), inlined)
    if _JINJA_CORE.findall(restored) != _JINJA_CORE.findall(source):
        raise _NotEquivalent(f"{name}: inlining changes its Jinja tags")
    return restored


def _check_template_set(env: Environment, originals: dict[str, str], layouts: list[str]) -> None:
    if len(layouts) > 1:
        raise _NotEquivalent(f"more than one HTML document ({', '.join(layouts)})")
    for name, source in originals.items():
        if _OPEN in source or _CLOSE in source:
            raise _NotEquivalent(f"{name} uses the placeholder characters")
        if re.search(r"<link\b", source, re.IGNORECASE):
            raise _NotEquivalent(f"{name} links a stylesheet")
        if name not in layouts and _STYLE.search(source):
            raise _NotEquivalent(f"{name} has a <style> outside the layout")
        if name not in layouts and not name.startswith("_") and not _EXTENDS.search(source):
            raise _NotEquivalent(f"{name} is an email that does not extend the layout")
        try:
            env.parse(source, name)  # a syntax error must be reported on the original lines
        except Exception as err:
            raise _NotEquivalent(f"{name} does not parse: {err}") from err


class _Placement(HTMLParser):
    """Checks that no Jinja placeholder sits where an HTML parser would move or rewrite it."""

    # Text directly inside these is moved (tables, `<head>`) or is not HTML (`<style>`).
    UNSAFE_PARENTS = frozenset(
        {"html", "head", "table", "thead", "tbody", "tfoot", "tr", "colgroup", "select"}
        | {"style", "script", "template"}
    )
    VOID = frozenset(
        {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta"}
        | {"source", "track", "wbr"}
    )

    def __init__(self, *, document: bool) -> None:
        super().__init__(convert_charrefs=False)
        self.document = document
        self.stack: list[str] = []
        self.problem: str | None = None

    def flag(self, problem: str) -> None:
        self.problem = self.problem or problem

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_startendtag(tag, attrs)
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if _OPEN in tag:
            self.flag("has a Jinja tag in a tag name")
        for name, value in attrs:
            if _OPEN in name:
                self.flag(f"has a Jinja tag in <{tag}> outside an attribute value")
            elif name == "style" and value and _OPEN in value:
                self.flag(f"has a Jinja tag in a style attribute of <{tag}>")

    def handle_endtag(self, tag: str) -> None:
        if tag in self.stack:
            while self.stack.pop() != tag:
                pass

    def handle_data(self, data: str) -> None:
        if _OPEN not in data:
            return
        parent = self.stack[-1] if self.stack else ("" if self.document else "body")
        if parent in self.UNSAFE_PARENTS or not parent:
            self.flag(f"has a Jinja tag directly in <{parent or 'the document'}>")
