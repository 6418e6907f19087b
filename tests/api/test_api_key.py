"""An empty NUDGE_API_KEY never turns authentication off (api/deps.py): a missing header is not
the empty key."""

from __future__ import annotations

import pytest

from api.deps import key_ok, require_api_key
from api.errors import Unauthorized
from nudge.settings import Settings
from support import Stack


async def test_an_empty_key_opens_nothing() -> None:
    empty = Settings(env="development", api_key="")
    for given in (None, ""):
        assert not key_ok(empty, given)
    assert not key_ok(Settings(api_key="k" * 32), "")
    assert key_ok(Settings(api_key="k" * 32), "k" * 32)
    with pytest.raises(Unauthorized):
        await require_api_key(empty, None)


async def test_a_missing_or_empty_bearer_is_refused(stack: Stack) -> None:
    assert (await stack.http.get("/v1/segments")).status_code == 401
    empty = {"Authorization": "Bearer "}
    assert (await stack.http.get("/v1/segments", headers=empty)).status_code == 401
    for header in ({}, empty):
        assert (await stack.http.get("/v1/reports/flows", headers=header)).status_code == 401
    ok = {"Authorization": f"Bearer {stack.settings.api_key}"}
    assert (await stack.http.get("/v1/segments", headers=ok)).status_code == 200
