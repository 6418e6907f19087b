"""Flows: one module each, registered here for the worker and the API's event routing."""

from workflows.cart_abandonment import CartAbandonment
from workflows.journey import Journey

FLOWS: tuple[type[Journey], ...] = (CartAbandonment,)

__all__ = ["FLOWS", "CartAbandonment", "Journey"]
