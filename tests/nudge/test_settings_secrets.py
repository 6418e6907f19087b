"""Settings: secrets that cannot be left at their defaults (`Settings.check_secrets`), outside
development."""

from __future__ import annotations

import pytest

from nudge.settings import MAKE_A_KEY, Settings, UnsafeSecrets

GOOD = "k" * 32
OTHER = "s" * 32
WEBHOOK = "w" * 32


def production(**overrides: object) -> Settings:
    values: dict[str, object] = {
        "env": "production",
        "api_key": GOOD,
        "secret_key": OTHER,
        "webhook_secret": None,
    }
    return Settings(**(values | overrides))  # type: ignore[arg-type]


def test_good_keys_start() -> None:
    production().check_secrets()
    production(webhooks={"sms": "https://sms.example/hook"}, webhook_secret=WEBHOOK).check_secrets()


@pytest.mark.parametrize(
    ("overrides", "setting", "why"),
    [
        ({"api_key": "dev-key"}, "NUDGE_API_KEY", "published default"),
        ({"api_key": ""}, "NUDGE_API_KEY", "empty"),
        ({"api_key": "short-but-mine"}, "NUDGE_API_KEY", "14 characters long"),
        ({"secret_key": "dev-secret-change-me"}, "NUDGE_SECRET_KEY", "published default"),
        ({"secret_key": ""}, "NUDGE_SECRET_KEY", "empty"),
        ({"secret_key": "x" * 31}, "NUDGE_SECRET_KEY", "31 characters long"),
        ({"secret_key": GOOD}, "NUDGE_API_KEY and NUDGE_SECRET_KEY", "the same"),
        ({"secret_key_previous": "dev-secret-change-me"}, "NUDGE_SECRET_KEY_PREVIOUS", "default"),
        ({"webhooks": {"sms": "https://sms.example/"}}, "NUDGE_WEBHOOK_SECRET", "not set"),
        ({"webhook_secret": "whsec"}, "NUDGE_WEBHOOK_SECRET", "5 characters long"),
        ({"webhook_secret": OTHER}, "NUDGE_WEBHOOK_SECRET is NUDGE_SECRET_KEY", "forge"),
    ],
)
def test_unsafe_secrets_are_refused_naming_the_setting_and_a_fix(
    overrides: dict[str, object], setting: str, why: str
) -> None:
    with pytest.raises(UnsafeSecrets) as refused:
        production(**overrides).check_secrets()
    message = str(refused.value)
    [line] = [line for line in message.splitlines() if line.startswith(f"  - {setting}")]
    assert why in line
    assert MAKE_A_KEY in message
    # The message never shows a secret's value.
    assert all(str(v) not in message for v in overrides.values() if isinstance(v, str) and v)


def test_the_defaults_are_refused_outside_development_only() -> None:
    defaults = Settings(env="production", _env_file=None)
    with pytest.raises(UnsafeSecrets) as refused:
        defaults.check_secrets()
    assert "NUDGE_API_KEY" in str(refused.value) and "NUDGE_SECRET_KEY" in str(refused.value)
    Settings(env="development", _env_file=None).check_secrets()
    # Production is what an unset NUDGE_ENV means.
    assert Settings(_env_file=None).env == "production"


def test_development_never_runs_with_an_empty_api_key_nor_webhooks_on_the_main_secret() -> None:
    with pytest.raises(UnsafeSecrets, match="NUDGE_API_KEY is empty"):
        Settings(env="development", api_key="").check_secrets()
    with pytest.raises(UnsafeSecrets, match="NUDGE_WEBHOOK_SECRET is NUDGE_SECRET_KEY"):
        Settings(env="development", webhook_secret="dev-secret-change-me").check_secrets()
    with pytest.raises(UnsafeSecrets, match="NUDGE_WEBHOOK_SECRET is NUDGE_SECRET_KEY"):
        production(secret_key_previous=WEBHOOK, webhook_secret=WEBHOOK).check_secrets()


def test_an_unknown_environment_is_refused() -> None:
    with pytest.raises(ValueError, match="env"):
        Settings(env="staging")
