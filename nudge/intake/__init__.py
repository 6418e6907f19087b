"""Intake: what happens to a store event once it arrives. It is stored once (`event_log`, the
idempotency key and the outbox of what is left to route) and folded into contacts, carts, orders,
consent, coupons and loyalty (`projection`)."""
