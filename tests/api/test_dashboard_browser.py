"""The dashboard in headless Chromium (Debian's `chromium`, driven by Playwright) on a seeded store
served by the real API over HTTP: sign in with the API key, the store page, a flow page (figures,
funnel, chart, per-email and per-variant table with the A/B verdict, Temporal UI link) and the
preview of the flow's emails. Its screenshots (store.png, flow.png, preview.png) are kept in
build/screenshots/dashboard/ (or $NUDGE_SCREENSHOTS/dashboard/), a path it prints: the last
line of pytest's summary names it.

Debian's chromium is one of the system packages `make system-deps` installs; without it the
test skips on a developer's machine and fails in CI (tests/ci_strict.py)."""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import uvicorn
from playwright.async_api import Page, async_playwright
from sqlalchemy import func, insert, select
from temporalio.client import Client

from api.app import create_app
from conftest import make_settings
from nudge.contacts import directory
from nudge.dev.mailcatcher import MailCatcher
from nudge.events import schemas as ev
from nudge.intake import projection
from nudge.settings import Settings
from nudge.storage.db import create_engine, migrate_async, session_maker
from nudge.storage.models import AbDecision, Contact, Coupon, Message, MessageEvent, Order
from support import cart_event

CHROMIUM = "/usr/bin/chromium"
FLOW = "cart_abandonment"
PREVIEW_EMAIL = "preview.reader@example.com"
ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = Path(os.environ.get("NUDGE_SCREENSHOTS") or ROOT / "build" / "screenshots")

pytestmark = pytest.mark.skipif(
    shutil.which(CHROMIUM) is None,
    reason=f"needs Debian's chromium at {CHROMIUM} (make system-deps installs it)",
)


@dataclass
class Served:
    url: str
    settings: Settings


async def seed(settings: Settings) -> None:
    """A store whose figures are counted by hand below.

    cart_1, variant a: 10 sent, 4 opened, 1 clicked; variant b: 10 sent, 6 opened, 3 clicked,
    one of which ordered 100.00 an hour later; the A/B verdict for b is recorded.
    cart_2: 5 sent, 1 bounced, 2 opened, 1 clicked and ordered 50.00.
    Total: 25 sent, 24 delivered, 12 opens (50.0%), 5 clicks (20.8%), 2 orders, 150.00, RPR 6.25.
    """
    engine = create_engine(settings.database_url)
    sessions = session_maker(engine)
    sent_at = datetime.now(UTC) - timedelta(days=2)
    plan: list[tuple[str, str | None, str, int, int, int, Decimal | None]] = [
        # step, variant, template, sent, opened, clicked, order of the first clicker
        ("cart_1", "a", "cart_1", 10, 4, 1, None),
        ("cart_1", "b", "cart_3", 10, 6, 3, Decimal("100.00")),
        ("cart_2", None, "cart_2", 5, 2, 1, Decimal("50.00")),
    ]
    async with sessions.begin() as session:
        event = ev.event_adapter.validate_python(cart_event(PREVIEW_EMAIL, "cart_preview"))
        contact_id = await directory.upsert_contact(session, event.contact)
        await projection.apply_event(session, event, contact_id)
        n = 0
        messages, events, orders = [], [], []
        for step, variant, template, sent, opened, clicked, order in plan:
            for i in range(sent):
                n += 1
                contact = Contact(email=f"reader{n}@example.com", first_name="Reader")
                session.add(contact)
                await session.flush()
                mid = f"seed{n}@shop.example"
                messages.append(
                    {
                        "message_id": mid,
                        "workflow_id": f"{FLOW}-{contact.id}-seed",
                        "trigger_event_id": "seed",
                        "step": step,
                        "flow": FLOW,
                        "contact_id": contact.id,
                        "template": template,
                        "status": "sent",
                        "variant": variant,
                        "sent_at": sent_at,
                        "created_at": sent_at + timedelta(seconds=n),
                    }
                )
                kinds = ["open"] * (i < opened) + ["click"] * (i < clicked)
                if step == "cart_2" and i == sent - 1:
                    kinds = ["bounce"]
                at = sent_at + timedelta(hours=1)
                events += [
                    {"message_id": mid, "contact_id": contact.id, "kind": k, "at": at}
                    for k in kinds
                ]
                if order is not None and i == 0:
                    orders.append(
                        {
                            "id": f"order-{n}",
                            "contact_id": contact.id,
                            "currency": "EUR",
                            "total": order,
                            "placed_at": at + timedelta(hours=1),
                        }
                    )
        await session.execute(insert(Message), messages)
        await session.execute(insert(MessageEvent), events)
        await session.execute(insert(Order), orders)
        session.add(
            AbDecision(
                flow=FLOW,
                step="cart_1",
                metric="click",
                winner="b",
                probability=0.93,
                numbers={"a": {"recipients": 10}, "b": {"recipients": 10}},
            )
        )
    await engine.dispose()


@pytest_asyncio.fixture(loop_scope="session")
async def served(
    tmp_path: Path, temporal: Client, mailcatcher: MailCatcher
) -> AsyncIterator[Served]:
    url = f"sqlite+aiosqlite:///{tmp_path / 'store.db'}"
    await migrate_async(url)
    settings = make_settings(url, mailcatcher)
    await seed(settings)
    app = create_app(settings, temporal)
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on")
    )
    task = asyncio.create_task(server.serve())
    for _ in range(200):
        if server.started:
            break
        await asyncio.sleep(0.05)
    assert server.started, "the API did not start"
    port = server.servers[0].sockets[0].getsockname()[1]
    yield Served(f"http://127.0.0.1:{port}", settings)
    server.should_exit = True
    await task


async def ready(page: Page) -> None:
    await page.wait_for_selector("#app[data-ready]", timeout=15_000)
    assert await page.get_attribute("#app", "data-ready") == "true", await page.content()


async def texts(page: Page, selector: str) -> list[str]:
    found: list[Any] = await page.locator(selector).all_inner_texts()
    return [str(t).strip() for t in found]


@pytest.fixture
def shots(record_property: Callable[[str, object], None]) -> Path:
    """The folder of this test's screenshots, emptied, printed and recorded for the summary."""
    folder = SCREENSHOTS / "dashboard"
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.png"):
        old.unlink()
    print(f"dashboard screenshots: {folder}")
    record_property("screenshots", str(folder))
    return folder


async def test_dashboard_shows_the_seeded_figures(served: Served, shots: Path) -> None:
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        try:
            page = await browser.new_page(viewport={"width": 1280, "height": 900})
            await page.goto(f"{served.url}/dashboard")
            # Not signed in: the key is asked for, and a wrong one is refused.
            await page.fill("input[name=key]", "wrong")
            await page.click("button[type=submit]")
            assert "not the API key" in await page.inner_text("main")
            await page.fill("input[name=key]", served.settings.api_key)
            await page.click("button[type=submit]")
            await ready(page)

            cards = page.locator(".cards")
            assert await cards.locator("[data-figure=sent]").inner_text() == "25"
            assert await cards.locator("[data-figure=delivered]").inner_text() == "24"
            assert await cards.locator("[data-figure=open_rate]").inner_text() == "50.0%"
            assert await cards.locator("[data-figure=click_rate]").inner_text() == "20.8%"
            assert await cards.locator("[data-figure=conversions]").inner_text() == "2"
            assert await cards.locator("[data-figure=revenue]").inner_text() == "150.00"
            assert await cards.locator("[data-figure=revenue_per_recipient]").inner_text() == "6.25"
            row = page.locator(f"#flows tr[data-flow={FLOW}]")
            assert await row.locator("[data-figure=sent]").inner_text() == "25"
            assert await row.locator("[data-figure=click_to_open_rate]").inner_text() == "41.7%"
            await page.screenshot(path=str(shots / "store.png"), full_page=True)

            await row.locator("a").click()
            await page.wait_for_url(f"**/dashboard/flows/{FLOW}**")
            await ready(page)
            funnel = await texts(page, "#funnel tr [data-figure=count]")
            assert funnel == ["25", "24", "12", "5", "2"]
            step_1 = page.locator("#steps tr[data-step=cart_1]:not(.variant)")
            assert await step_1.locator("[data-figure=sent]").inner_text() == "20"
            assert await step_1.locator("[data-figure=opens]").inner_text() == "10"
            assert "Winner: b" in await step_1.locator("[data-verdict=winner]").inner_text()
            variant_b = page.locator("#steps tr[data-variant=b]")
            assert await variant_b.locator("[data-figure=clicks]").inner_text() == "3"
            assert await variant_b.locator("[data-figure=revenue]").inner_text() == "100.00"
            assert await variant_b.locator("[data-figure=click_rate]").inner_text() == "30.0%"
            step_2 = page.locator("#steps tr[data-step=cart_2]")
            assert await step_2.locator("[data-figure=delivered]").inner_text() == "4"
            assert await step_2.locator("[data-figure=revenue_per_recipient]").inner_text() == (
                "12.50"
            )
            link = await page.get_attribute("#journeys", "href")
            assert link is not None and link.startswith(
                "http://localhost:8233/namespaces/default/workflows?query=NudgeFlow%3D%22"
            )
            assert await page.locator("#series polyline").count() == 3
            await page.screenshot(path=str(shots / "flow.png"), full_page=True)

            await page.fill("#preview-form input[name=contact]", PREVIEW_EMAIL)
            await page.click("#preview-form button")
            await ready(page)
            sections = await page.locator("section[data-preview]").all()
            assert [await s.get_attribute("data-preview") for s in sections] == [
                "cart_1",
                "cart_1",
                "cart_2",
            ]
            assert "your order didn't go through" in await sections[0].inner_text()
            for i in range(len(sections)):
                frame = page.frame_locator("section[data-preview] iframe").nth(i)
                assert "Linen shirt" in await frame.locator("body").inner_text()
            await page.screenshot(path=str(shots / "preview.png"), full_page=True)
        finally:
            await browser.close()
    for name in ("store", "flow", "preview"):
        assert (shots / f"{name}.png").stat().st_size > 10_000
    # Previewing cart_3 (which shows a unique code) kept no coupon.
    engine = create_engine(served.settings.database_url)
    async with session_maker(engine)() as session:
        assert await session.scalar(select(func.count()).select_from(Coupon)) == 0
    await engine.dispose()
