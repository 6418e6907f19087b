"""The one way Nudge connects to Temporal: the API, the worker, the benchmarks and any command
line use it, so each speaks with the same namespace and the same (pydantic) data converter."""

from __future__ import annotations

from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter

from nudge.settings import Settings


async def connect(settings: Settings) -> Client:
    return await Client.connect(
        settings.temporal_address,
        namespace=settings.temporal_namespace,
        data_converter=pydantic_data_converter,
    )
