"""The one way Nudge connects to Temporal: the API, the worker, the benchmarks and every command
use it, so each speaks with the same namespace, credentials and (pydantic) data converter.

Built on the SDK's own client configuration (`temporalio.envconfig`), the one the `temporal` CLI
reads too: the profile named by `TEMPORAL_PROFILE` (else `default`) of `temporal.toml`
(`TEMPORAL_CONFIG_FILE`, else `~/.config/temporalio/temporal.toml`), then the `TEMPORAL_ADDRESS`,
`TEMPORAL_NAMESPACE`, `TEMPORAL_API_KEY`, `TEMPORAL_TLS*` variables over it. Nudge's own
`NUDGE_TEMPORAL_*` settings, where set, override both. With nothing set: the dev server at
localhost:7233, namespace `default`, no TLS.

An API key turns TLS on (Temporal Cloud); a client certificate and key give mTLS; a server CA
and server name reach a cluster with its own certificate authority.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

from temporalio.api.workflowservice.v1 import DescribeNamespaceRequest
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.envconfig import ClientConfigProfile, ClientConfigTLS
from temporalio.service import RPCError

from nudge.settings import Settings

DEFAULT_ADDRESS = "localhost:7233"
DEFAULT_NAMESPACE = "default"
CHECK_TIMEOUT = timedelta(seconds=10)


class TemporalConnectionError(RuntimeError):
    """Nudge could not reach, or was refused by, the configured Temporal service."""


def load_profile(
    settings: Settings,
    *,
    env: Mapping[str, str] | None = None,
    config_file: Path | None = None,
) -> ClientConfigProfile:
    """The SDK's profile (file, then TEMPORAL_* variables of `env`, default the process's
    environment), with the `NUDGE_TEMPORAL_*` settings that are set over it."""
    try:
        profile = ClientConfigProfile.load(
            profile=settings.temporal_profile,
            config_source=config_file,
            override_env_vars=env,
        )
    except (RuntimeError, ValueError, OSError) as err:
        raise TemporalConnectionError(f"Temporal client configuration: {err}") from None
    given = settings.model_fields_set
    address = settings.temporal_address if "temporal_address" in given else None
    namespace = settings.temporal_namespace if "temporal_namespace" in given else None
    api_key = settings.temporal_api_key.get_secret_value() if settings.temporal_api_key else None
    return dataclasses.replace(
        profile,
        address=address or profile.address or DEFAULT_ADDRESS,
        namespace=namespace or profile.namespace or DEFAULT_NAMESPACE,
        api_key=api_key or profile.api_key,
        tls=_tls(settings, profile.tls),
    )


def _tls(settings: Settings, base: ClientConfigTLS | None) -> ClientConfigTLS | None:
    """The profile's TLS block with the `NUDGE_TEMPORAL_TLS*` settings that are set over it."""
    overrides: dict[str, Any] = {
        "server_name": settings.temporal_tls_server_name,
        "server_root_ca_cert": settings.temporal_tls_server_ca,
        "client_cert": settings.temporal_tls_client_cert,
        "client_private_key": settings.temporal_tls_client_key,
    }
    overrides = {name: value for name, value in overrides.items() if value is not None}
    if settings.temporal_tls is not None:
        overrides["disabled"] = not settings.temporal_tls
    elif overrides:
        overrides["disabled"] = False
    if not overrides:
        return base
    for name in ("server_root_ca_cert", "client_cert", "client_private_key"):
        path = overrides.get(name)
        if isinstance(path, Path) and not path.is_file():
            setting = {
                "server_root_ca_cert": "NUDGE_TEMPORAL_TLS_SERVER_CA",
                "client_cert": "NUDGE_TEMPORAL_TLS_CLIENT_CERT",
                "client_private_key": "NUDGE_TEMPORAL_TLS_CLIENT_KEY",
            }[name]
            raise TemporalConnectionError(f"{setting}: no such file {str(path)!r}")
    return dataclasses.replace(base or ClientConfigTLS(), **overrides)


def connect_options(
    settings: Settings,
    *,
    env: Mapping[str, str] | None = None,
    config_file: Path | None = None,
) -> dict[str, Any]:
    """The keyword arguments of `Client.connect` this configuration comes to."""
    profile = load_profile(settings, env=env, config_file=config_file)
    client_cert, client_key = (
        (profile.tls.client_cert, profile.tls.client_private_key) if (profile.tls) else (None, None)
    )
    if (client_cert is None) != (client_key is None):
        raise TemporalConnectionError(
            "mTLS needs both a client certificate and its key "
            "(NUDGE_TEMPORAL_TLS_CLIENT_CERT and NUDGE_TEMPORAL_TLS_CLIENT_KEY, or "
            "TEMPORAL_TLS_CLIENT_CERT_PATH and TEMPORAL_TLS_CLIENT_KEY_PATH)"
        )
    return dict(profile.to_client_connect_config())


def describe(options: Mapping[str, Any]) -> str:
    """Where a connection goes, for logs and errors: never the key itself."""
    auth = " with an API key" if options.get("api_key") else ""
    tls = options.get("tls")
    scheme = "TLS" if tls not in (None, False) else "plaintext"
    return f"{options['target_host']} (namespace {options['namespace']!r}, {scheme}{auth})"


async def connect(
    settings: Settings,
    *,
    env: Mapping[str, str] | None = None,
    config_file: Path | None = None,
) -> Client:
    """A client for the configured Temporal service, checked reachable and authorised: a wrong
    key, certificate or namespace fails here, at start, not on the first journey."""
    options = connect_options(settings, env=env, config_file=config_file)
    try:
        client = await Client.connect(**options, data_converter=pydantic_data_converter)
        # Client.connect asked for the server's capabilities; this asks for the namespace, which
        # checks the credentials against it (a key of another namespace fails here).
        await client.workflow_service.describe_namespace(
            DescribeNamespaceRequest(namespace=client.namespace), retry=True, timeout=CHECK_TIMEOUT
        )
    except RPCError as err:
        status = err.status.name if err.status is not None else "UNKNOWN"
        raise TemporalConnectionError(_explain(options, status, err.message)) from err
    except RuntimeError as err:  # the SDK's core reports a failed first call this way
        core = _CORE_STATUS.search(str(err))
        status = core["status"] if core else "UNAVAILABLE"
        message = core["message"] if core else str(err)
        raise TemporalConnectionError(
            _explain(options, _STATUS_NAMES.get(status, status), message)
        ) from err
    return client


#: How the SDK's core words a refused call: `Status { code: Unauthenticated, message: "..."`.
_CORE_STATUS = re.compile(r'code: (?P<status>\w+), message: "(?P<message>[^"]*)"')
_STATUS_NAMES = {
    "Unauthenticated": "UNAUTHENTICATED",
    "PermissionDenied": "PERMISSION_DENIED",
    "NotFound": "NOT_FOUND",
    "Unavailable": "UNAVAILABLE",
}


def _explain(options: Mapping[str, Any], status: str, message: str) -> str:
    hint = {
        "UNAUTHENTICATED": "the API key or client certificate was refused: check "
        "NUDGE_TEMPORAL_API_KEY / TEMPORAL_API_KEY (or the mTLS certificate and key)",
        "PERMISSION_DENIED": "these credentials may not use this namespace: check "
        "NUDGE_TEMPORAL_NAMESPACE / TEMPORAL_NAMESPACE and the key's permissions",
        "NOT_FOUND": "no such namespace: check NUDGE_TEMPORAL_NAMESPACE / TEMPORAL_NAMESPACE",
        "UNAVAILABLE": "not reachable: check the address, and TLS (on for Temporal Cloud)",
    }.get(status, "see the message")
    return f"Temporal at {describe(options)} refused Nudge ({status}: {message}): {hint}"
