"""Segments: definitions as data, one SQL query per segment, membership that moves.

- `definition`: the condition tree a segment is defined by (the public JSON contract): parse,
  dump, bounds, and validation errors named as the user wrote the definition.
- `compiler`: a definition compiled to one SQLAlchemy Core `SELECT contacts.id`, the same on
  SQLite and PostgreSQL, for everyone or for one contact.
- `rfm`: the orders segments count (refunded ones excluded) and the RFM scores ranked over them.
- `membership`: stored membership moved per event (`refresh_contact`) and on a schedule
  (`refresh_time_based`), every entry and exit recorded, and the outbox of entries that start
  journeys (`pending_entries`, `mark_routed`).
- `catalogue`: the built-in segments, and segments and their members as the API reads and
  writes them.

Each module imports only those listed before it.
"""
