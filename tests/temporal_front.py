"""A secured front for the Temporal dev server, as Temporal Cloud or a cluster with mTLS is
reached: TLS with a certificate made for the test (trustme), and every call refused unless it
carries `authorization: Bearer <key>` (Temporal Cloud's API keys) or, with `require_client_cert`,
unless the client shows a certificate of the test's CA (mTLS).

A real gRPC server (grpcio) that forwards each call, as bytes, to the dev server: Temporal's
services are unary only, long polls included.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import grpc
import trustme

#: Headers the front keeps to itself: the credential, and what gRPC sets on each hop.
HOP_HEADERS = ("authorization", "user-agent", "grpc-")


@dataclass
class Front:
    address: str
    ca: trustme.CA
    server_name: str
    calls: int = 0
    refused: int = 0

    @property
    def ca_pem(self) -> bytes:
        return self.ca.cert_pem.bytes()


class _Forward(grpc.GenericRpcHandler):
    def __init__(self, front: Front, upstream: grpc.aio.Channel, api_key: str | None) -> None:
        self.front, self.upstream, self.api_key = front, upstream, api_key

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler[bytes, bytes]:
        method = details.method

        async def forward(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
            self.front.calls += 1
            metadata = [(key, value) for key, value in context.invocation_metadata() or ()]
            if self.api_key is not None and (
                dict(metadata).get("authorization") != f"Bearer {self.api_key}"
            ):
                self.front.refused += 1
                await context.abort(grpc.StatusCode.UNAUTHENTICATED, "invalid API key")
            kept = [(k, v) for k, v in metadata if not k.startswith(HOP_HEADERS)]
            call: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = self.upstream.unary_unary(method)
            try:
                response: bytes = await call(
                    request, metadata=kept, timeout=context.time_remaining()
                )
            except grpc.aio.AioRpcError as err:
                await context.abort(err.code(), err.details() or "")
            return response

        return grpc.unary_unary_rpc_method_handler(forward)


@asynccontextmanager
async def temporal_front(
    upstream: str, *, api_key: str | None = None, require_client_cert: bool = False
) -> AsyncIterator[Front]:
    """A TLS front on 127.0.0.1 (a free port) before the Temporal at `upstream`."""
    ca = trustme.CA()
    cert = ca.issue_cert("temporal.nudge.test", "127.0.0.1")
    chain = b"".join(blob.bytes() for blob in cert.cert_chain_pems)
    credentials = grpc.ssl_server_credentials(
        [(cert.private_key_pem.bytes(), chain)],
        root_certificates=ca.cert_pem.bytes() if require_client_cert else None,
        require_client_auth=require_client_cert,
    )
    channel = grpc.aio.insecure_channel(upstream)
    server = grpc.aio.server()
    port = server.add_secure_port("127.0.0.1:0", credentials)
    front = Front(f"127.0.0.1:{port}", ca, "temporal.nudge.test")
    server.add_generic_rpc_handlers([_Forward(front, channel, api_key)])
    await server.start()
    try:
        yield front
    finally:
        await server.stop(grace=None)
        await channel.close()
