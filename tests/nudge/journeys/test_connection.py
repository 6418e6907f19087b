"""Temporal beyond the dev server: the SDK's client configuration with Nudge's settings over it,
and a journey that starts, runs and sends through a secured endpoint (TLS, API key, mTLS) in
front of the dev server on this machine."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest
from temporalio.service import TLSConfig
from temporalio.testing import WorkflowEnvironment

from activities.email import EmailActivities
from api.app import create_app
from conftest import make_settings
from nudge.dev.mailcatcher import MailCatcher
from nudge.journeys.connection import TemporalConnectionError, connect, connect_options
from nudge.mail.smtp import SmtpSender
from nudge.settings import Settings
from nudge.storage.db import create_engine, session_maker
from support import cart_event, new_email, new_id
from temporal_front import temporal_front
from worker import build_worker
from workflows.cart_abandonment import CartAbandonment

KEY = "nudge-test-api-key"


def test_nothing_set_is_the_dev_server(tmp_path: Path) -> None:
    options = connect_options(Settings(), env={}, config_file=_toml(tmp_path, ""))
    assert options == {"target_host": "localhost:7233", "namespace": "default"}


def test_the_temporal_cli_profile_and_variables_with_nudge_settings_over_them(
    tmp_path: Path,
) -> None:
    toml = _toml(
        tmp_path,
        """
        [profile.default]
        address = "file.example:7233"
        namespace = "from-file"

        [profile.cloud]
        address = "shop.a1b2c.tmprl.cloud:7233"
        namespace = "shop.a1b2c"
        api_key = "key-from-file"
        """,
    )
    # The profile TEMPORAL_PROFILE names: an API key turns TLS on, as with the temporal CLI.
    cloud = connect_options(Settings(), env={"TEMPORAL_PROFILE": "cloud"}, config_file=toml)
    assert cloud["target_host"] == "shop.a1b2c.tmprl.cloud:7233"
    assert (cloud["namespace"], cloud["api_key"]) == ("shop.a1b2c", "key-from-file")
    assert cloud["tls"] is not False
    # TEMPORAL_* variables over the file; NUDGE_TEMPORAL_* settings over both.
    env = {"TEMPORAL_ADDRESS": "env.example:7233", "TEMPORAL_NAMESPACE": "from-env"}
    from_env = connect_options(Settings(), env=env, config_file=toml)
    assert (from_env["target_host"], from_env["namespace"]) == ("env.example:7233", "from-env")
    nudge = Settings(temporal_namespace="from-nudge", temporal_api_key="nudge-key")
    over = connect_options(nudge, env=env, config_file=toml)
    assert (over["target_host"], over["namespace"]) == ("env.example:7233", "from-nudge")
    assert over["api_key"] == "nudge-key" and over["tls"] is not False


def test_mtls_files_and_a_half_configured_pair(tmp_path: Path) -> None:
    cert, key, ca = (tmp_path / name for name in ("client.pem", "client.key", "ca.pem"))
    for path, text in ((cert, "CERT"), (key, "KEY"), (ca, "CA")):
        path.write_text(text)
    settings = Settings(
        temporal_tls_client_cert=cert,
        temporal_tls_client_key=key,
        temporal_tls_server_ca=ca,
        temporal_tls_server_name="temporal.internal",
    )
    tls = connect_options(settings, env={}, config_file=_toml(tmp_path, ""))["tls"]
    assert isinstance(tls, TLSConfig)
    assert (tls.client_cert, tls.client_private_key, tls.server_root_ca_cert) == (
        b"CERT",
        b"KEY",
        b"CA",
    )
    assert tls.domain == "temporal.internal"
    with pytest.raises(TemporalConnectionError, match="NUDGE_TEMPORAL_TLS_CLIENT_KEY"):
        connect_options(
            Settings(temporal_tls_client_cert=cert), env={}, config_file=_toml(tmp_path, "")
        )
    with pytest.raises(TemporalConnectionError, match="NUDGE_TEMPORAL_TLS_SERVER_CA: no such"):
        connect_options(
            Settings(temporal_tls_server_ca=tmp_path / "missing.pem"),
            env={},
            config_file=_toml(tmp_path, ""),
        )


async def test_a_journey_starts_runs_and_sends_through_tls_and_an_api_key(
    dev_env: WorkflowEnvironment, sqlite_url: str, mailcatcher: MailCatcher, tmp_path: Path
) -> None:
    upstream = dev_env.client.service_client.config.target_host
    async with temporal_front(upstream, api_key=KEY) as front:
        ca = tmp_path / "ca.pem"
        ca.write_bytes(front.ca_pem)
        settings = make_settings(
            sqlite_url,
            mailcatcher,
            temporal_address=front.address,
            temporal_api_key=KEY,
            temporal_tls_server_ca=ca,
            temporal_tls_server_name=front.server_name,
            time_scale=3600.0,
        )
        # The API and the worker each connect on their own, as in production.
        client = await connect(settings, env={}, config_file=_toml(tmp_path, ""))
        engine = create_engine(settings.database_url)
        email = EmailActivities(
            session_maker(engine), SmtpSender(settings.smtp_host, settings.smtp_port), settings
        )
        app = create_app(settings, client, flows=(CartAbandonment,))
        address = new_email()
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://n") as api,
            build_worker(client, settings, email, flows=(CartAbandonment,)),
        ):
            response = await api.post(
                "/v1/events",
                json=cart_event(address, new_id("cart")),
                headers={"Authorization": f"Bearer {settings.api_key}"},
            )
            assert response.status_code == 202, response.text
            [workflow_id] = response.json()["results"][0]["journeys"]
            async with asyncio.timeout(30):
                while not [m for m in mailcatcher.messages if address in m.rcpt_tos]:
                    await asyncio.sleep(0.05)
            await client.get_workflow_handle(workflow_id).terminate(reason="test over")
        await engine.dispose()
        assert front.calls > 0 and front.refused == 0


async def test_a_wrong_api_key_fails_at_start_with_a_clear_message(
    dev_env: WorkflowEnvironment, sqlite_url: str, mailcatcher: MailCatcher, tmp_path: Path
) -> None:
    upstream = dev_env.client.service_client.config.target_host
    async with temporal_front(upstream, api_key=KEY) as front:
        ca = tmp_path / "ca.pem"
        ca.write_bytes(front.ca_pem)
        settings = make_settings(
            sqlite_url,
            mailcatcher,
            temporal_address=front.address,
            temporal_api_key="not-the-key",
            temporal_tls_server_ca=ca,
            temporal_tls_server_name=front.server_name,
        )
        with pytest.raises(TemporalConnectionError) as refused:
            await connect(settings, env={}, config_file=_toml(tmp_path, ""))
        message = str(refused.value)
        assert f"Temporal at {front.address}" in message and "UNAUTHENTICATED" in message
        assert "NUDGE_TEMPORAL_API_KEY" in message and "not-the-key" not in message
        assert front.refused >= 1
        # The API refuses to start the same way (its lifespan connects).
        app = create_app(settings)
        with pytest.raises(TemporalConnectionError, match="UNAUTHENTICATED"):
            async with app.router.lifespan_context(app):
                pass


async def test_mtls_needs_a_client_certificate_of_the_clusters_ca(
    dev_env: WorkflowEnvironment, sqlite_url: str, mailcatcher: MailCatcher, tmp_path: Path
) -> None:
    upstream = dev_env.client.service_client.config.target_host
    async with temporal_front(upstream, require_client_cert=True) as front:
        ca, cert, key = tmp_path / "ca.pem", tmp_path / "worker.pem", tmp_path / "worker.key"
        ca.write_bytes(front.ca_pem)
        issued = front.ca.issue_cert("nudge-worker")
        cert.write_bytes(b"".join(blob.bytes() for blob in issued.cert_chain_pems))
        key.write_bytes(issued.private_key_pem.bytes())
        tls = {
            "temporal_address": front.address,
            "temporal_tls_server_ca": ca,
            "temporal_tls_server_name": front.server_name,
        }
        settings = make_settings(
            sqlite_url,
            mailcatcher,
            temporal_tls_client_cert=cert,
            temporal_tls_client_key=key,
            **tls,
        )
        client = await connect(settings, env={}, config_file=_toml(tmp_path, ""))
        assert client.namespace == "default"
        assert await client.count_workflows() is not None
        with pytest.raises(TemporalConnectionError, match=f"Temporal at {front.address}"):
            await connect(
                make_settings(sqlite_url, mailcatcher, **tls),
                env={},
                config_file=_toml(tmp_path, ""),
            )


def _toml(directory: Path, text: str) -> Path:
    """A temporal.toml of the test's own, so the machine's (if any) plays no part."""
    path = directory / "temporal.toml"
    path.write_text("\n".join(line.strip() for line in text.splitlines()))
    return path
