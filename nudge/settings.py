"""Configuration, read from `NUDGE_*` environment variables (and a `.env` file if present)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = ROOT / "data"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="NUDGE_", env_file=".env", extra="ignore")

    database_url: str = Field(
        default=f"sqlite+aiosqlite:///{DATA_DIR / 'nudge.db'}",
        description="Async SQLAlchemy URL: sqlite+aiosqlite:///... or postgresql+asyncpg://...",
    )
    temporal_address: str = "localhost:7233"
    temporal_namespace: str = "default"
    task_queue: str = "nudge"
    smtp_host: str = "127.0.0.1"
    smtp_port: int = 1025
    smtp_timeout: float = 10.0
    api_key: str = "dev-key"
    public_url: str = "http://localhost:8000"
    from_email: str = "Nudge Store <store@nudge.localhost>"
    store_name: str = "Nudge Store"
    store_address: str = "1 Market Street, Lisbon, Portugal"
    cart_discount_code: str = "COMEBACK10"
    cart_discount_percent: int = 10
    time_scale: float = Field(
        default=1.0,
        description="Every flow delay is divided by this; read once when a journey starts.",
    )

    @field_validator("time_scale")
    @classmethod
    def _positive_scale(cls, value: float) -> float:
        if value <= 0:
            raise ValueError("NUDGE_TIME_SCALE must be greater than 0")
        return value

    @field_validator("database_url")
    @classmethod
    def _async_driver(cls, value: str) -> str:
        if not value.startswith(("sqlite+aiosqlite://", "postgresql+asyncpg://")):
            raise ValueError(
                "NUDGE_DATABASE_URL must use an async driver: "
                "sqlite+aiosqlite:///path or postgresql+asyncpg://user@host/db"
            )
        return value

    @property
    def from_domain(self) -> str:
        address = self.from_email.rsplit("<", 1)[-1].rstrip(">").strip()
        return address.rsplit("@", 1)[-1]


@lru_cache
def get_settings() -> Settings:
    return Settings()
