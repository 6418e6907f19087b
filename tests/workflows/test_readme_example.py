"""The README's "Write your own flow" example, as a newcomer would write it: the code block is
taken from README.md as it stands, saved as a module of its own and run on the real stack with
time skipping - nothing else is touched. A README that drifts from the toolkit fails here."""

from __future__ import annotations

import importlib
import re
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from types import ModuleType

import pytest
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from conftest import open_stack
from http_support import receiver
from nudge.dev.mailcatcher import MailCatcher
from nudge.journeys.contracts import JourneyStatus
from support import cart_event, new_email, new_id, order_event

README = Path(__file__).resolve().parents[2] / "README.md"
MARKER = "<!-- example: workflows/checkout_sms.py -->"


def example_source() -> str:
    text = README.read_text()
    assert MARKER in text, "README lost its flow example"
    block = re.search(r"```python\n(.*?)```", text[text.index(MARKER) :], re.S)
    assert block is not None
    return block.group(1)


@pytest.fixture
def example(tmp_path: Path) -> Iterator[ModuleType]:
    (tmp_path / "checkout_sms.py").write_text(example_source())
    sys.path.insert(0, str(tmp_path))
    try:
        yield importlib.import_module("checkout_sms")
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("checkout_sms", None)


async def test_the_readme_flow_texts_a_stalled_checkout_and_stops_on_order(
    example: ModuleType,
    time_env: WorkflowEnvironment,
    temporal: Client,
    sqlite_url: str,
    mailcatcher: MailCatcher,
) -> None:
    with receiver() as hook:
        async with open_stack(
            time_env,
            temporal,
            sqlite_url,
            mailcatcher,
            flows=(example.CheckoutSms,),
            settings_overrides={"webhooks": {"sms": hook.url}, "webhook_secret": "whsec-example"},
        ) as stack:
            email, token = new_email(), new_id("cart")
            response = await stack.post(cart_event(email, token, type="checkout_started"))
            [wid] = response.json()["results"][0]["journeys"]
            state = await stack.finish(wid)

            assert state.status == JourneyStatus.COMPLETED
            [sms] = hook.requests
            assert sms.json["flow"] == "checkout_sms"
            assert sms.json["payload"] == {"template": "checkout_rescue", "cart": token}

            # Another contact orders within the half hour: no text.
            email, token = new_email(), new_id("cart")
            response = await stack.post(cart_event(email, token, type="checkout_started"))
            [wid] = response.json()["results"][0]["journeys"]
            await stack.env.sleep(timedelta(minutes=10))
            await stack.post(order_event(email, new_id("order"), cart_token=token))
            state = await stack.finish(wid)

    assert state.status == JourneyStatus.CONVERTED
    assert len(hook.requests) == 1
