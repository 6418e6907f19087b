"""Flows: one module each in this package, found here for the worker and the API's routing.

A flow is a `Journey` subclass decorated with `@workflow.defn(name=<its flow>)` in a module of
this package; dropping the file in is all it takes to register it (worker.py runs `FLOWS`).
"""

from __future__ import annotations

import importlib
import pkgutil

from temporalio import workflow

from workflows.journey import Journey


def discover() -> tuple[type[Journey], ...]:
    """Every flow defined in this package's modules, in module order."""
    found: list[type[Journey]] = []
    for module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
        loaded = importlib.import_module(f"{__name__}.{module}")
        for value in vars(loaded).values():
            if (
                isinstance(value, type)
                and issubclass(value, Journey)
                and value.__module__ == loaded.__name__
                and hasattr(value, "__temporal_workflow_definition")
            ):
                found.append(value)
    names = [flow.flow for flow in found]
    if len(set(names)) != len(names):
        raise RuntimeError(f"two flows share a name: {sorted(names)}")
    return tuple(found)


# The workflow sandbox re-imports this package for every flow it loads: there, it needs none.
FLOWS: tuple[type[Journey], ...] = () if workflow.unsafe.in_sandbox() else discover()

__all__ = ["FLOWS", "Journey", "discover"]
