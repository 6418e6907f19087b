"""Configuration, read from `NUDGE_*` environment variables (and a `.env` file if present)."""

from __future__ import annotations

import ipaddress
from decimal import Decimal
from functools import lru_cache
from pathlib import Path
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from nudge.localtime import parse_quiet_hours

ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = ROOT / "data"

DEVELOPMENT = "development"
# Secrets shorter than this, or published (the defaults, the tests' and the docs' examples), are
# refused outside development (`Settings.check_secrets`).
MIN_SECRET_LENGTH = 32
PUBLISHED_SECRETS = frozenset({"dev-key", "dev-secret-change-me", "test-key", "change-me"})
EMPTY_API_KEY = "NUDGE_API_KEY is empty: every /v1 route would be open"
MAKE_A_KEY = 'python -c "import secrets; print(secrets.token_urlsafe(32))"'


class UnsafeSecrets(ValueError):
    """The API or the worker was asked to start with a secret anyone could know or guess."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="NUDGE_", env_file=".env", extra="ignore")

    env: str = Field(
        default="production",
        pattern=r"^(production|development)$",
        description="development lets the API and worker start on the default secrets",
    )

    database_url: str = Field(
        default=f"sqlite+aiosqlite:///{DATA_DIR / 'nudge.storage.db'}",
        description="Async SQLAlchemy URL: sqlite+aiosqlite:///... or postgresql+asyncpg://...",
    )
    temporal_address: str = "localhost:7233"
    temporal_namespace: str = "default"
    task_queue: str = "nudge"
    smtp_host: str = "127.0.0.1"
    smtp_port: int = 1025
    smtp_timeout: float = 10.0
    # Submission to a provider (README "Sending through a provider"): AUTH over TLS.
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    smtp_security: Literal["starttls", "tls", "none"] | None = Field(
        default=None,
        description="starttls (port 587), tls (implicit, 465) or none; unset: none on loopback, "
        "else starttls",
    )
    smtp_ca_file: Path | None = Field(
        default=None, description="CA bundle that verifies the server (the system's if unset)"
    )
    smtp_max_connections: int = Field(default=8, ge=1, le=100)
    smtp_rate: float = Field(
        default=0, ge=0, description="Messages per second per worker; 0: no limit"
    )
    api_key: str = "dev-key"
    public_url: str = "http://localhost:8000"
    from_email: str = "Nudge Store <store@nudge.localhost>"
    store_name: str = "Nudge Store"
    store_address: str = "1 Market Street, Lisbon, Portugal"
    store_logo_url: str | None = Field(default=None, description="Logo atop every email")
    # Unique coupons (nudge/commerce/coupons.py): a contact gets the highest percent of their segments.
    coupon_prefix: str = Field(default="NUDGE", pattern=r"^[A-Z0-9]{1,16}$")
    coupon_percent: int = Field(default=10, ge=1, le=100)
    coupon_vip_percent: int = Field(default=20, ge=1, le=100)
    coupon_segment_percents: dict[str, int] = Field(
        default_factory=dict, description='Other segments\' percents, JSON: {"lapsed": 15}'
    )
    coupon_valid_hours: float = Field(default=24, gt=0)
    # Loyalty (nudge/commerce/loyalty.py): points per currency unit spent, times the tier's multiplier;
    # tiers by lifetime spend. The two maps are JSON in the environment and name the same tiers.
    loyalty_points_per_unit: Decimal = Field(default=Decimal(1), ge=0)
    loyalty_tiers: dict[str, Decimal] = Field(
        default_factory=lambda: {
            "bronze": Decimal(0),
            "silver": Decimal(500),
            "gold": Decimal(1500),
        }
    )
    loyalty_multipliers: dict[str, Decimal] = Field(
        default_factory=lambda: {
            "bronze": Decimal(1),
            "silver": Decimal("1.25"),
            "gold": Decimal("1.5"),
        }
    )
    time_scale: float = Field(
        default=1.0,
        description="Every flow delay is divided by this; read once when a journey starts.",
    )

    # The keys of the links that act without a login (unsubscribe, confirmation, tracking) and
    # of the dashboard's sessions are derived from it (nudge/keys.py): set your own. The previous
    # one still verifies links during a rotation; nothing new is signed with it.
    secret_key: str = "dev-secret-change-me"
    secret_key_previous: str | None = None
    dashboard_login_attempts_per_minute: int = Field(
        default=5, ge=1, description="Wrong keys per minute from one address before a 429"
    )
    dashboard_session_hours: float = Field(
        default=12, gt=0, description="A dashboard sign-in lasts this long"
    )
    # DKIM signing, on when a selector and a key file are set; the domain defaults to the
    # From address's.
    dkim_selector: str | None = None
    dkim_private_key_file: Path | None = None
    dkim_domain: str | None = None

    # Deliverability and consent (README "Deliverability and consent").
    double_opt_in: bool = Field(
        default=False, description="Subscribers must confirm by email before any marketing"
    )
    # Amazon SES through SNS: only certificates from this URL pattern are trusted (tests
    # point it at a local server); only the topics listed are accepted: none until you list
    # yours (anyone can subscribe the endpoint to a topic of their own, and AWS signs it).
    sns_cert_url_pattern: str = r"^https://sns\.[a-z0-9-]+\.amazonaws\.com(\.cn)?/[^?#]+\.pem$"
    ses_topic_arns: list[str] = Field(default_factory=list)
    sns_max_age: float = Field(
        default=3600, gt=0, description="Seconds: an SNS message dated earlier is refused (replay)"
    )
    # SendGrid signed event webhook: the verification key (base64 DER) from SendGrid's settings.
    sendgrid_webhook_public_key: str | None = None
    sendgrid_webhook_max_age: float = Field(default=600, gt=0, description="Seconds")
    # Postmark signs nothing: its webhook URL carries HTTP basic credentials, checked here.
    postmark_webhook_user: str | None = None
    postmark_webhook_password: str | None = None
    # Request bodies (README "Security"): larger is a 413 before the body is read; batch routes
    # (`POST /v1/events`, `/v1/products`, `/webhooks/sendgrid`) take the larger limit.
    max_body_bytes: int = Field(default=1_048_576, ge=1024, description="Bytes")
    max_batch_body_bytes: int = Field(default=16_777_216, ge=1024, description="Bytes")
    # New SNS certificate URLs fetched per minute at most (a forged message cannot make Nudge
    # fetch without bound); certificates are cached, the 64 most recent.
    sns_cert_fetches_per_minute: int = Field(default=10, ge=1)
    # Tracking, attribution and A/B winners (README "Tracking and reports").
    tracking: bool = Field(default=True, description="Open pixel and click redirects in emails")
    tracking_scanner_seconds: float = Field(
        default=10, ge=0, description="Clicks this soon after sending are link scanners"
    )
    attribution_click_days: float = Field(default=5, gt=0)
    attribution_open_days: float = Field(default=5, gt=0)
    ab_metric: str = Field(default="click", pattern=r"^(click|open|order)$")
    ab_threshold: float = Field(default=0.9, gt=0.5, lt=1)
    ab_min_recipients: int = Field(default=500, ge=1)
    ab_check_seconds: float = Field(
        default=300, ge=0, description="How often a send re-evaluates its step's A/B test"
    )
    temporal_ui_url: str = "http://localhost:8233"

    # Temporal beyond the dev server (nudge/journeys/connection.py, README "Production"): the
    # SDK's client configuration (temporal.toml, TEMPORAL_PROFILE, TEMPORAL_ADDRESS,
    # TEMPORAL_NAMESPACE, TEMPORAL_API_KEY, TEMPORAL_TLS*) is read first; NUDGE_TEMPORAL_ADDRESS,
    # NUDGE_TEMPORAL_NAMESPACE and these override it where set.
    temporal_profile: str | None = Field(default=None, description="A temporal.toml profile")
    temporal_api_key: SecretStr | None = Field(default=None, description="Turns TLS on")
    temporal_tls: bool | None = Field(default=None, description="Force TLS on or off")
    temporal_tls_client_cert: Path | None = Field(default=None, description="mTLS: PEM file")
    temporal_tls_client_key: Path | None = Field(default=None, description="mTLS: PEM file")
    temporal_tls_server_ca: Path | None = Field(
        default=None, description="PEM file: the CA of a cluster's own certificates"
    )
    temporal_tls_server_name: str | None = Field(default=None, description="TLS server name")
    # Worker Versioning (README "Rolling out flow changes"): a Worker Deployment name turns it on;
    # every worker of one release has the same build id.
    worker_deployment: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.\-]{1,200}$")
    worker_build_id: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.\-]{1,200}$")
    worker_versioning: str = Field(
        default="auto_upgrade",
        pattern=r"^(auto_upgrade|pinned)$",
        description="Journeys move to each new current version, or stay on the one they began on",
    )

    @model_validator(mode="after")
    def _deployment(self) -> Settings:
        if (self.worker_deployment is None) != (self.worker_build_id is None):
            raise ValueError(
                "NUDGE_WORKER_DEPLOYMENT and NUDGE_WORKER_BUILD_ID go together: "
                "set both (Worker Versioning) or neither"
            )
        return self

    # Flow toolkit (README "Flows"): the store's timezone for contacts without one, quiet hours
    # in the contact's timezone ("" for none), smart sending's window, outbound webhooks.
    store_timezone: str = "UTC"
    quiet_hours: str = Field(default="21:00-08:00", description='"HH:MM-HH:MM", or "" for none')
    smart_sending_hours: float = Field(default=16, ge=0)
    webhooks: dict[str, str] = Field(
        default_factory=dict,
        description='Named outbound webhooks for flow steps, JSON: {"sms": "https://..."}',
    )
    webhook_secret: str | None = Field(
        default=None,
        description="Signs outbound webhooks; their receivers hold it, so never NUDGE_SECRET_KEY",
    )
    webhook_timeout: float = Field(default=10, gt=0)

    @field_validator("store_timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"NUDGE_STORE_TIMEZONE: unknown IANA timezone {value!r} (e.g. 'Europe/Lisbon')"
            ) from None
        return value

    @field_validator("quiet_hours")
    @classmethod
    def _quiet(cls, value: str) -> str:
        try:
            parse_quiet_hours(value)
        except ValueError as err:
            raise ValueError(f"NUDGE_QUIET_HOURS: {err}") from None
        return value

    @field_validator("webhooks")
    @classmethod
    def _webhook_urls(cls, value: dict[str, str]) -> dict[str, str]:
        for name, url in value.items():
            if not url.startswith(("https://", "http://")):
                raise ValueError(f"NUDGE_WEBHOOKS[{name!r}]: {url!r} is not an http(s) URL")
        return value

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

    @field_validator("coupon_segment_percents")
    @classmethod
    def _percents(cls, value: dict[str, int]) -> dict[str, int]:
        if any(not 1 <= percent <= 100 for percent in value.values()):
            raise ValueError("NUDGE_COUPON_SEGMENT_PERCENTS: every percent is from 1 to 100")
        return value

    @field_validator("loyalty_tiers")
    @classmethod
    def _tiers(cls, value: dict[str, Decimal]) -> dict[str, Decimal]:
        if not value or min(value.values()) != 0:
            raise ValueError('NUDGE_LOYALTY_TIERS needs a tier from 0, e.g. {"bronze": 0}')
        if any(not 1 <= len(name) <= 32 for name in value):
            raise ValueError("NUDGE_LOYALTY_TIERS: tier names are 1 to 32 characters")
        if any(spend < 0 for spend in value.values()) or len(set(value.values())) < len(value):
            raise ValueError("NUDGE_LOYALTY_TIERS: thresholds are distinct and not negative")
        return dict(sorted(value.items(), key=lambda tier: tier[1]))

    @model_validator(mode="after")
    def _smtp_auth(self) -> Settings:
        if (self.smtp_username is None) != (self.smtp_password is None):
            raise ValueError("NUDGE_SMTP_USERNAME and NUDGE_SMTP_PASSWORD are set together")
        if self.smtp_password is not None and self.smtp_tls_mode == "none":
            if not is_loopback(self.smtp_host):
                raise ValueError(
                    f"NUDGE_SMTP_PASSWORD would cross the network in clear to {self.smtp_host}: "
                    "set NUDGE_SMTP_SECURITY=starttls (port 587) or tls (port 465)"
                )
        if self.smtp_ca_file is not None and not self.smtp_ca_file.is_file():
            raise ValueError(f"NUDGE_SMTP_CA_FILE: no such file {self.smtp_ca_file}")
        return self

    @model_validator(mode="after")
    def _multipliers(self) -> Settings:
        if set(self.loyalty_multipliers) != set(self.loyalty_tiers):
            raise ValueError(
                "NUDGE_LOYALTY_MULTIPLIERS must name exactly the tiers of NUDGE_LOYALTY_TIERS"
            )
        if any(m <= 0 for m in self.loyalty_multipliers.values()):
            raise ValueError("NUDGE_LOYALTY_MULTIPLIERS: every multiplier is greater than 0")
        return self

    def check_secrets(self) -> None:
        """Raise UnsafeSecrets, naming every setting at fault, unless the secrets are safe to
        run with: the API and the worker call it before anything else."""
        problems = self.secret_problems()
        if problems:
            lines = "\n".join(f"  - {problem}" for problem in problems)
            raise UnsafeSecrets(
                f"Nudge will not start with these secrets (NUDGE_ENV={self.env}):\n{lines}\n"
                f"Make a good key with: {MAKE_A_KEY}\n"
                f"(NUDGE_ENV={DEVELOPMENT} accepts the defaults, on a developer's machine only.)"
            )

    def secret_problems(self) -> list[str]:
        """What is wrong with the secrets, one line per setting (empty when nothing is)."""
        problems: list[str] = []
        if not self.api_key:
            problems.append(EMPTY_API_KEY)
        if self.webhook_secret and self.webhook_secret in (
            self.secret_key,
            self.secret_key_previous,
        ):
            problems.append(
                "NUDGE_WEBHOOK_SECRET is NUDGE_SECRET_KEY: webhook receivers hold it, and could "
                "forge every customer's links; give webhooks a secret of their own"
            )
        if self.env == DEVELOPMENT:
            return problems
        checked = {"NUDGE_API_KEY": self.api_key, "NUDGE_SECRET_KEY": self.secret_key}
        if self.webhook_secret:
            checked["NUDGE_WEBHOOK_SECRET"] = self.webhook_secret
        elif self.webhooks:
            problems.append(
                "NUDGE_WEBHOOK_SECRET is not set, and NUDGE_WEBHOOKS names endpoints: outbound "
                "webhooks are always signed, with a secret of their own"
            )
        for name, value in checked.items():
            if not value:
                if name != "NUDGE_API_KEY":  # said above
                    problems.append(f"{name} is empty")
            elif value in PUBLISHED_SECRETS:
                problems.append(f"{name} is a published default: anyone knows it")
            elif len(value) < MIN_SECRET_LENGTH:
                problems.append(
                    f"{name} is {len(value)} characters long; at least {MIN_SECRET_LENGTH}"
                )
        if self.secret_key_previous in PUBLISHED_SECRETS:
            problems.append(
                "NUDGE_SECRET_KEY_PREVIOUS is a published default: anyone could sign links "
                "that verify; leave it unset"
            )
        if self.api_key and self.api_key == self.secret_key:
            problems.append("NUDGE_API_KEY and NUDGE_SECRET_KEY are the same: make two keys")
        return problems

    @property
    def smtp_tls_mode(self) -> Literal["starttls", "tls", "none"]:
        """`NUDGE_SMTP_SECURITY`, or its default: none on loopback (the mail catcher), else
        starttls, so that a remote server is never spoken to in clear unless asked to."""
        if self.smtp_security is not None:
            return self.smtp_security
        return "none" if is_loopback(self.smtp_host) else "starttls"

    @property
    def from_domain(self) -> str:
        address = self.from_email.rsplit("<", 1)[-1].rstrip(">").strip()
        return address.rsplit("@", 1)[-1]


def is_loopback(host: str) -> bool:
    """`localhost` or a loopback address (127.0.0.0/8, ::1); no name is resolved."""
    if host.lower().rstrip(".") in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@lru_cache
def get_settings() -> Settings:
    return Settings()
