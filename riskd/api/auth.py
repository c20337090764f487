"""Who is calling, and may they: mutual TLS identities and per-RPC roles.

Transport: with ``[server.tls]`` the server requires a client certificate
signed by ``client_ca``; a client without one, with one from another CA or
with an expired one never completes the TLS handshake, so no RPC code runs
for it.  Plaintext is for local development on loopback only (enforced by
:meth:`riskd.config.ServerConfig.check_transport`); every caller then gets
:data:`riskd.access.DEVELOPMENT`.

Identity: the names gRPC reports for the verified peer certificate (its
subject alternative names, or its common name when it has none), matched
against the ``[access]`` policy; exactly one must have an entry.  Identity
never comes from request metadata: over TLS, an ``x-riskd-gateway`` header
naming anybody else is refused rather than believed.

Authorization: :class:`AuthInterceptor` looks up the role each service needs
(:data:`SERVICE_ROLES`, deny by default), refuses with PERMISSION_DENIED
before the handler runs, and writes every AdminService call to the admin
audit log.  Finer checks (which markets a gateway may send for) happen where
the request is understood, in the ingest and withdrawal handlers.

The interceptor also guards unary request decoding: bytes that are not the
request message get INVALID_ARGUMENT rather than grpcio's UNKNOWN.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import structlog
from google.protobuf import json_format
from google.protobuf.message import Message

from riskd.access import DEVELOPMENT, Grant, Policy, Role
from riskd.api.status import abort
from riskd.config import TlsConfig
from riskd.metrics import Metrics
from riskd.storage.admin_log import AdminLog

__all__ = [
    "GATEWAY_KEY",
    "SERVICE_ROLES",
    "AuthInterceptor",
    "Authenticator",
    "Denied",
    "server_credentials",
]

GATEWAY_KEY = "x-riskd-gateway"
ADMIN_SERVICE = "riskd.v1.AdminService"

#: The role each service needs; None: any caller that passed the TLS
#: handshake (health checks, reflection).  A service missing here is refused.
SERVICE_ROLES: dict[str, Role | None] = {
    "riskd.v1.IngestService": Role.GATEWAY,
    "riskd.v1.WithdrawalService": Role.GATEWAY,
    "riskd.v1.QueryService": Role.READER,
    "riskd.v1.EventService": Role.READER,
    ADMIN_SERVICE: Role.ADMIN,
    "grpc.health.v1.Health": None,
    "grpc.reflection.v1alpha.ServerReflection": None,
    "grpc.reflection.v1.ServerReflection": None,
}

log = structlog.get_logger("riskd.auth")
Ctx = grpc.aio.ServicerContext[Any, Any]


def server_credentials(tls: TlsConfig) -> grpc.ServerCredentials:
    """TLS credentials that require and verify a client certificate."""
    return grpc.ssl_server_credentials(
        [(Path(tls.key).read_bytes(), Path(tls.cert).read_bytes())],
        root_certificates=Path(tls.client_ca).read_bytes(),
        require_client_auth=True,
    )


class Denied(Exception):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


class Authenticator:
    """Maps a call's TLS peer to its :class:`Grant`; ``policy`` None: plaintext."""

    def __init__(self, policy: Policy | None) -> None:
        self.policy = policy

    @property
    def tls(self) -> bool:
        return self.policy is not None

    def identify(self, context: Ctx) -> Grant:
        if self.policy is None:
            return DEVELOPMENT
        names = [n.decode(errors="replace") for n in context.peer_identities() or ()]
        grants = {g.identity: g for n in names if (g := self.policy.grant(n)) is not None}
        if not grants:
            raise Denied("", f"certificate names {names} have no [access] entry")
        if len(grants) > 1:
            raise Denied("", f"certificate names {sorted(grants)} match several [access] entries")
        (grant,) = grants.values()
        claimed = _metadata(context).get(GATEWAY_KEY)
        if claimed is not None and claimed != grant.identity:
            raise Denied(
                GATEWAY_KEY,
                f"names {claimed!r} but the certificate is {grant.identity!r};"
                " identity comes from the certificate only",
            )
        return grant

    def gateway(self, grant: Grant, context: Ctx) -> str:
        """The name a gateway's sequence numbers are kept under."""
        if self.tls:
            return grant.identity
        return str(_metadata(context).get(GATEWAY_KEY, "default"))

    def check(self, context: Ctx, role: Role) -> Grant:
        grant = self.identify(context)
        if role not in grant.roles:
            raise Denied("", f"{grant.identity!r} does not have the {role.value} role")
        return grant


class Undecodable:
    """Stands in for a request whose bytes did not parse."""

    def __init__(self, error: Exception) -> None:
        self.error = error


class AuthInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, auth: Authenticator, admin_log: AdminLog | None, metrics: Metrics) -> None:
        self.auth = auth
        self.admin_log = admin_log
        self.metrics = metrics
        self._calls = itertools.count(1)

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        # The stubs describe sync handlers; these are grpc.aio coroutines.
        handler: Any = await continuation(handler_call_details)
        if handler is None:
            return None  # not served: grpc answers UNIMPLEMENTED
        method: str = handler_call_details.method
        service = method.lstrip("/").split("/", 1)[0]
        known = service in SERVICE_ROLES
        role = SERVICE_ROLES.get(service)
        audited = service == ADMIN_SERVICE and self.admin_log is not None

        async def admit(request: Any, context: Ctx) -> Grant | None:
            grant = None
            try:
                if not known:
                    raise Denied("", f"no access rule for {service}")
                if role is not None:
                    grant = self.auth.check(context, role)
            except Denied as d:
                self.metrics.denied.inc()
                log.warning("rpc_denied", method=method, peer=context.peer(), reason=d.message)
                if audited:
                    await self._audit("denied", method, context, request, None, "PERMISSION_DENIED")
                await abort(context, grpc.StatusCode.PERMISSION_DENIED, d.field, d.message)
            if isinstance(request, Undecodable):
                await abort(
                    context,
                    grpc.StatusCode.INVALID_ARGUMENT,
                    "",
                    f"request bytes do not decode: {request.error}",
                )
            return grant

        if handler.unary_unary is not None:
            inner_uu = handler.unary_unary

            async def unary_unary(request: Any, context: Ctx) -> Any:
                grant = await admit(request, context)
                if not audited:
                    return await inner_uu(request, context)
                call = next(self._calls)
                await self._audit("requested", method, context, request, grant, None, call)
                code = "UNKNOWN"
                try:
                    response = await inner_uu(request, context)
                    code = "OK"
                    return response
                except BaseException:
                    status = context.code()
                    code = status.name if isinstance(status, grpc.StatusCode) else "UNKNOWN"
                    raise
                finally:
                    await self._audit("completed", method, context, None, grant, code, call)

            return grpc.unary_unary_rpc_method_handler(
                unary_unary, _safe(handler.request_deserializer), handler.response_serializer
            )
        if handler.unary_stream is not None:
            inner_us = handler.unary_stream

            async def unary_stream(request: Any, context: Ctx) -> AsyncIterator[Any]:
                await admit(request, context)
                async for response in inner_us(request, context):
                    yield response

            return grpc.unary_stream_rpc_method_handler(
                unary_stream, _safe(handler.request_deserializer), handler.response_serializer
            )
        if handler.stream_stream is not None:
            inner_ss = handler.stream_stream

            async def stream_stream(requests: Any, context: Ctx) -> AsyncIterator[Any]:
                await admit(None, context)
                async for response in inner_ss(requests, context):
                    yield response

            return grpc.stream_stream_rpc_method_handler(
                stream_stream, handler.request_deserializer, handler.response_serializer
            )
        raise AssertionError(f"{method}: riskd serves no client-streaming RPCs")

    async def _audit(
        self,
        what: str,
        method: str,
        context: Ctx,
        request: Any,
        grant: Grant | None,
        code: str | None,
        call: int = 0,
    ) -> None:
        assert self.admin_log is not None
        record: dict[str, Any] = {
            "step": what,
            "call": call,
            "method": method,
            "identity": grant.identity if grant is not None else _names(context),
            "peer": context.peer(),
        }
        if isinstance(request, Message):
            record["request"] = json_format.MessageToDict(request, preserving_proto_field_name=True)
        if code is not None:
            record["code"] = code
        digest = await asyncio.to_thread(self.admin_log.append, record)
        log.info("admin_audit", hash=digest, **{k: v for k, v in record.items() if k != "request"})


def _safe(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserializer is None:
        return None

    def decode(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception as e:
            return Undecodable(e)

    return decode


def _metadata(context: Ctx) -> dict[str, Any]:
    return dict(context.invocation_metadata() or ())


def _names(context: Ctx) -> list[str]:
    return [n.decode(errors="replace") for n in context.peer_identities() or ()]
