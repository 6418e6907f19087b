"""Storage: the engine and sessions (SQLite embedded, PostgreSQL in production), the typed
models, and the Alembic migrations. The bottom layer: it imports nothing else of Nudge but its
settings."""
