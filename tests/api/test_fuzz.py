"""The API fuzzed from its own OpenAPI spec: Schemathesis generates requests for every route
(valid and invalid bodies, parameters and headers, with and without the API key) and the app
answers them in-process (ASGI) on the real stack. Whatever comes, no route answers a 5xx or
takes more than 2 s, and every protected route without the key answers 401.

A short run is part of `make test`; `make fuzz` runs the long one (`NUDGE_FUZZ_EXAMPLES`,
10,000 by default there) and prints the figures.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import hypothesis
import schemathesis
from hypothesis import HealthCheck, given
from hypothesis import strategies as st
from schemathesis import GenerationMode

from support import Stack

EXAMPLES = int(os.environ.get("NUDGE_FUZZ_EXAMPLES", "300"))
SLOWEST = 2.0
# Routes that need the API key (the dashboard's session cookie, for the reports): every other
# route authenticates its own way (a signed token, a provider signature) or is public.
PROTECTED = "/v1/"


@dataclass
class Figures:
    requests: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    slowest: float = 0.0
    slowest_request: str = ""
    unauthenticated: int = 0

    def report(self) -> str:
        codes = ", ".join(f"{code}: {n}" for code, n in sorted(self.statuses.items()))
        errors = sum(n for code, n in self.statuses.items() if code >= 500)
        return (
            f"{self.requests} requests ({self.unauthenticated} without the key to /v1/), "
            f"{errors} server errors; statuses {codes}; slowest {self.slowest:.3f} s "
            f"({self.slowest_request})"
        )


def _request(kwargs: dict[str, Any], with_key: bool, key: str) -> dict[str, Any]:
    headers = {
        name: value
        for name, value in (kwargs.get("headers") or {}).items()
        if name.lower() not in ("authorization", "cookie", "connection", "accept-encoding")
    }
    if with_key:
        headers["Authorization"] = f"Bearer {key}"
    request: dict[str, Any] = {
        "method": kwargs["method"],
        "url": kwargs["url"],
        "headers": headers,
        "params": kwargs.get("params") or None,
    }
    if "json" in kwargs:
        request["json"] = kwargs["json"]
    elif "data" in kwargs:
        data = kwargs["data"]
        request["content" if isinstance(data, bytes | str) else "data"] = data
    return request


async def test_no_route_fails_or_lets_anyone_in(stack: Stack) -> None:
    spec = (await stack.http.get("/openapi.json")).json()
    schema = schemathesis.openapi.from_dict(spec)
    operations = [result.ok() for result in schema.get_all_operations()]  # type: ignore[union-attr]
    assert len(operations) >= 25
    cases = st.sampled_from(operations).flatmap(
        lambda op: st.one_of(
            op.as_strategy(GenerationMode.POSITIVE), op.as_strategy(GenerationMode.NEGATIVE)
        )
    )
    loop = asyncio.get_running_loop()
    figures = Figures()
    key = stack.settings.api_key

    async def send(request: dict[str, Any]) -> tuple[int, float]:
        started = time.perf_counter()
        response = await stack.http.request(**request)
        return response.status_code, time.perf_counter() - started

    @hypothesis.settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
        phases=[hypothesis.Phase.generate],
    )
    @given(case=cases, with_key=st.booleans())
    def fuzz(case: Any, with_key: bool) -> None:
        request = _request(case.as_transport_kwargs(base_url="http://nudge"), with_key, key)
        label = f"{request['method']} {case.operation.path}"
        future = asyncio.run_coroutine_threadsafe(send(request), loop)
        status, took = future.result(timeout=60)
        figures.requests += 1
        figures.statuses[status] += 1
        if took > figures.slowest:
            figures.slowest, figures.slowest_request = took, label
        assert status < 500, f"{label} answered {status}: {request}"
        assert took <= SLOWEST, f"{label} took {took:.2f} s"
        if not with_key and case.operation.path.startswith(PROTECTED):
            figures.unauthenticated += 1
            assert status == 401, f"{label} without the key answered {status}"

    await asyncio.to_thread(fuzz)
    print(f"\nfuzz: {figures.report()}")
    assert figures.requests >= EXAMPLES
