"""What an unauthenticated caller can make the API do: bodies are bounded (413 before they are
read in full), deep nesting is a 422 (never a 500), and forged SNS messages cannot make Nudge
fetch certificates without bound."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from nudge.mail import feedback
from nudge.settings import Settings
from nudge.storage.models import Product
from support import Stack, new_id
from webhook_support import TOPIC, ses_bounce, sns_server

API = {"Authorization": "Bearer test-key"}
MIB = 1024 * 1024


async def test_a_huge_body_is_refused_before_it_is_read(stack: Stack) -> None:
    # Declared: refused from its Content-Length alone.
    declared = await stack.http.post(
        "/webhooks/ses", content=b"x" * (2 * MIB), headers={"Content-Type": "text/plain"}
    )
    assert declared.status_code == 413, declared.text
    assert declared.json()["error"]["code"] == "too_large"
    # Streamed (no Content-Length): refused once it goes over, the rest never read.
    sent = 0

    async def chunks() -> AsyncIterator[bytes]:
        nonlocal sent
        for _ in range(200):  # 200 MiB if read in full
            sent += 1
            yield b"[" * MIB

    streamed = await stack.http.post("/webhooks/ses", content=chunks())
    assert streamed.status_code == 413, streamed.text
    assert sent <= 3
    # A batch route takes more (NUDGE_MAX_BATCH_BODY_BYTES), and still refuses more than that.
    big = [{"id": f"e{i}", "pad": "x" * 1000} for i in range(1500)]  # about 1.5 MiB
    batch = await stack.http.post("/v1/events", json=big, headers=API)
    assert batch.status_code == 422, batch.text
    over = stack.settings.max_batch_body_bytes + 1
    refused = await stack.http.post(
        "/v1/events", content=b" " * over, headers=API | {"Content-Type": "application/json"}
    )
    assert refused.status_code == 413


async def test_deep_nesting_is_a_422_not_a_500(stack: Stack) -> None:
    brackets = b"[" * 100_000
    for path, headers in (
        ("/webhooks/ses", {}),
        ("/v1/events", API),
        ("/v1/segments/preview", API),
        ("/v1/segments", API),
        ("/v1/products", API),
        ("/webhooks/sendgrid", {}),
        ("/webhooks/postmark", {}),
    ):
        response = await stack.http.post(
            path, content=brackets, headers=headers | {"Content-Type": "application/json"}
        )
        assert response.status_code in (400, 401, 422), (path, response.status_code, response.text)
    # Valid JSON, 3,000 `not`s deep: a clear 422 naming the definition.
    text = '{"definition": ' + '{"not": ' * 3000 + '{"kind": "tag", "tag": "vip"}' + "}" * 3001
    response = await stack.http.post(
        "/v1/segments/preview", content=text, headers=API | {"Content-Type": "application/json"}
    )
    assert response.status_code == 422, response.text
    event = {"id": "e1", "type": "customer_subscribed", "contact": {"email": "a@b.c"}}
    nested: Any = "x"
    for _ in range(500):
        nested = {"a": nested}
    event["properties"] = nested
    response = await stack.http.post("/v1/events", content=json.dumps(event), headers=API)
    assert response.status_code == 422, response.text


async def test_the_nul_character_is_a_422_naming_the_field_never_a_500(stack: Stack) -> None:
    """PostgreSQL cannot store NUL in text: found by the fuzzer as a 500 on `/v1/products`."""
    product_id = new_id("p")
    products = {"products": [{"id": product_id, "title": "Linen\x00shirt"}]}
    response = await stack.http.post("/v1/products", json=products, headers=API)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["fields"] == [
        {"field": "products.0.title", "message": response.json()["error"]["fields"][0]["message"]}
    ]
    assert "NUL" in response.json()["error"]["message"]
    event = {"id": "e\x00", "type": "customer_subscribed", "contact": {"email": "a@b.c"}}
    response = await stack.http.post("/v1/events", json=event, headers=API)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["fields"][0]["field"] == "id"
    for path in ("/v1/contacts/a%00@b.c/journeys", "/v1/segments?after=%00", "/u/x%00y"):
        response = await stack.http.get(path, headers=API)
        assert response.status_code == 422, (path, response.text)
    # Authentication still comes first: without the key, a /v1 URL with NUL is a 401.
    response = await stack.http.get("/v1/reports/flows?segment=%00")
    assert response.status_code == 401, response.text
    assert response.headers["www-authenticate"] == "Bearer"
    async with stack.sessions() as session:  # nothing was stored
        assert await session.get(Product, product_id) is None


async def test_forged_sns_messages_cannot_make_nudge_fetch_without_bound(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A cache of its own: the process's counts fetches by earlier tests in the same minute.
    monkeypatch.setattr(feedback, "_cert_cache", feedback._CertificateCache())
    settings = Settings(ses_topic_arns=[TOPIC], sns_cert_fetches_per_minute=5)
    with sns_server() as sns:
        settings.sns_cert_url_pattern = sns.pattern
        fetched: list[str] = []

        async def fetch(url: str) -> bytes:
            fetched.append(url)
            return await feedback.http_get(sns.cert_url)

        message = sns.notification(ses_bounce("ana@example.com", None))
        refused = 0
        for n in range(40):
            forged = message | {"SigningCertURL": f"{sns.base}/cert-{n}.pem"}
            try:
                await feedback.verify_sns(forged, settings, fetch)
            except feedback.Forged as err:
                refused += "too many new SNS certificate URLs" in str(err)
        assert len(fetched) == 5 and refused == 35
        # The genuine URL, once fetched, stays cached through the stream of forged ones.
        cache = feedback._CertificateCache(size=3)
        key = object()
        cache.put("genuine", key)  # type: ignore[arg-type]
        for n in range(10):
            assert cache.get("genuine") is key
            cache.put(f"forged-{n}", key)  # type: ignore[arg-type]
        assert len(cache.keys) == 3 and "genuine" in cache.keys
