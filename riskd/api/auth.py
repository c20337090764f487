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

What a refused or hostile caller can cost is bounded.  Denied calls are
recorded (an ``rpc_denied`` log line, and for AdminService a ``denied`` audit
line) within a :class:`~riskd.api.rate_limit.RecordBudget` per identity and in
all; beyond it they are only counted (``riskd_rpc_denied_unrecorded_total``)
and the next recorded line says how many were not.  An audit line never holds
a request whole: its size, SHA-256 and scalar fields (strings cut to
:data:`AUDIT_STRING_CHARS`; repeated fields as counts) — a 1.8 MB
``UpdateMarket`` costs a few hundred bytes.  AdminService request bytes are
decoded only once the caller is admitted, so a denied one is never parsed.
A failed audit write stops the daemon (exit 4): an admin action must not run
unrecorded.

The interceptor also guards unary request decoding: bytes that are not the
request message get INVALID_ARGUMENT rather than grpcio's UNKNOWN.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import structlog
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from google.protobuf import json_format
from google.protobuf.message import Message

from riskd.access import DEVELOPMENT, Grant, Policy, Role
from riskd.api.rate_limit import RecordBudget
from riskd.api.status import abort
from riskd.config import TlsConfig
from riskd.errors import RiskdError
from riskd.metrics import Metrics
from riskd.storage import StorageFault, fail_stop
from riskd.storage.admin_log import AdminLog, AdminLogFault

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
    # Where a shard is served: what a standby tells anyone who got through TLS.
    "riskd.v1.ClusterService": None,
    "grpc.health.v1.Health": None,
    "grpc.reflection.v1alpha.ServerReflection": None,
    "grpc.reflection.v1.ServerReflection": None,
}

#: Denied calls recorded one by one: per identity (a burst, then one per 10 s)
#: and in all (a burst, then one a second); beyond that only counted.
DENIED_RECORD_RATE, DENIED_RECORD_BURST = 0.1, 20.0
DENIED_RECORD_TOTAL_RATE, DENIED_RECORD_TOTAL_BURST = 1.0, 100.0
#: Longest string field (and certificate name) an audit line keeps.
AUDIT_STRING_CHARS = 128

log = structlog.get_logger("riskd.auth")
Ctx = grpc.aio.ServicerContext[Any, Any]


def server_credentials(tls: TlsConfig) -> grpc.ServerCredentials:
    """TLS credentials that require and verify a client certificate.

    The files are re-read when they change (:class:`CertificateFiles`), so
    certificates rotate without a restart.
    """
    files = CertificateFiles(tls)
    return grpc.dynamic_ssl_server_credentials(
        files.configuration(),
        files.fetch,  # type: ignore[arg-type]  # None means "no change" (grpc's docs)
        require_client_authentication=True,
    )


class CertificateFiles:
    """The server's TLS files, reloaded when replaced.

    gRPC calls :meth:`fetch` before every new connection's handshake (from
    its own threads): a ``stat`` of three files, and only when one changed, a
    read.  A half-written rotation (a key that does not match the new
    certificate, an unreadable file) keeps the current configuration and is
    retried at the next connection.  Connections already open keep the
    certificate they were made with.
    """

    def __init__(self, tls: TlsConfig) -> None:
        self.paths = (Path(tls.cert), Path(tls.key), Path(tls.client_ca))
        self._lock = threading.Lock()
        self._stamp = self._stat()

    def _stat(self) -> tuple[tuple[int, int, int], ...]:
        return tuple((s.st_ino, s.st_size, s.st_mtime_ns) for s in map(os.stat, self.paths))

    def configuration(self) -> grpc.ServerCertificateConfiguration:
        cert, key, ca = (p.read_bytes() for p in self.paths)
        _check_pair(cert, key)
        return grpc.ssl_server_certificate_configuration([(key, cert)], root_certificates=ca)

    def fetch(self) -> grpc.ServerCertificateConfiguration | None:
        with self._lock:
            try:
                stamp = self._stat()
                if stamp == self._stamp:
                    return None
                configuration = self.configuration()
            except (OSError, ValueError) as e:
                log.warning("tls_reload_failed", error=str(e))
                return None
            self._stamp = stamp
        log.info("tls_reloaded", cert=str(self.paths[0]))
        return configuration


def _check_pair(cert_pem: bytes, key_pem: bytes) -> None:
    """Refuse a certificate and key that do not belong together (mid-rotation)."""
    public = x509.load_pem_x509_certificate(cert_pem).public_key()
    private = serialization.load_pem_private_key(key_pem, password=None)
    raw = serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    if public.public_bytes(*raw) != private.public_key().public_bytes(*raw):
        raise ValueError("the TLS key does not match the certificate")


class Denied(RiskdError):
    STATUS = "PERMISSION_DENIED"

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


class Authenticator:
    """Maps a call's TLS peer to its :class:`Grant`; ``policy`` None: plaintext."""

    def __init__(self, policy: Policy | None) -> None:
        self.policy = policy
        #: Bumped by :meth:`reload`: long-lived streams re-check their caller when it moves.
        self.generation = 0

    def reload(self, policy: Policy) -> None:
        self.policy = policy
        self.generation += 1

    @property
    def tls(self) -> bool:
        return self.policy is not None

    def identify(self, context: Ctx) -> Grant:
        if self.policy is None:
            return DEVELOPMENT
        names = _names(context)
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


class Received:
    """An audited request's bytes, decoded only when the caller is admitted."""

    __slots__ = ("data", "_decode", "_message")

    def __init__(self, data: bytes, decode: Callable[[bytes], Any]) -> None:
        self.data = data
        self._decode = decode
        self._message: Any = None

    def message(self) -> Any:
        """The request message (or :class:`Undecodable`), decoded once."""
        if self._message is None:
            self._message = self._decode(self.data)
        return self._message

    def digest(self) -> dict[str, Any]:
        """Size, SHA-256 and the scalar fields: bounded whatever the request's size."""
        out: dict[str, Any] = {
            "request_bytes": len(self.data),
            "request_sha256": hashlib.sha256(self.data).hexdigest(),
        }
        message = self.message()
        if isinstance(message, Message):
            repeated: dict[str, int] = {}
            out["request"] = json_format.MessageToDict(
                _trimmed(message, repeated), preserving_proto_field_name=True
            )
            if repeated:
                out["request_repeated"] = repeated
        else:
            out["request_undecodable"] = True
        return out


def _trimmed(message: Message, repeated: dict[str, int], prefix: str = "") -> Message:
    """A copy with strings cut short, repeated fields dropped (counted in ``repeated``)."""
    out = type(message)()
    for field, value in message.ListFields():
        name = prefix + field.name
        if field.is_repeated:
            repeated[name] = len(value)
        elif field.type == field.TYPE_MESSAGE:
            getattr(out, field.name).CopyFrom(_trimmed(value, repeated, name + "."))
        elif field.type == field.TYPE_STRING:
            setattr(out, field.name, _cut(value))
        elif field.type == field.TYPE_BYTES:
            repeated[name + ".bytes"] = len(value)
        else:
            setattr(out, field.name, value)
    return out


def _cut(text: str) -> str:
    if len(text) <= AUDIT_STRING_CHARS:
        return text
    return f"{text[:AUDIT_STRING_CHARS]}...({len(text)} chars)"


class AuthInterceptor(grpc.aio.ServerInterceptor):
    def __init__(
        self,
        auth: Authenticator,
        admin_log: AdminLog | None,
        metrics: Metrics,
        on_storage_fault: Callable[[StorageFault], None] = fail_stop,
    ) -> None:
        self.auth = auth
        self.admin_log = admin_log
        self.metrics = metrics
        self.on_storage_fault = on_storage_fault
        self.denied_budget = RecordBudget(
            DENIED_RECORD_RATE,
            DENIED_RECORD_BURST,
            DENIED_RECORD_TOTAL_RATE,
            DENIED_RECORD_TOTAL_BURST,
            time.monotonic(),
        )

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
                await self._denied(d, method, context, request if audited else None)
                await abort(context, grpc.StatusCode.PERMISSION_DENIED, d.field, d.message)
            if isinstance(request, Received):
                request = request.message()
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
                try:
                    return await handle(request, context)
                except grpc.aio.AbortError as e:
                    del request  # this frame starts the traceback grpc keeps (see _release)
                    raise _release(e) from None

            async def handle(request: Any, context: Ctx) -> Any:
                grant = await admit(request, context)
                if not audited:
                    return await inner_uu(request, context)
                received: Received = request
                call = uuid.uuid4().hex  # pairs "requested" with "completed", across restarts
                await self._audit("requested", method, context, received, grant, None, call)
                code = "UNKNOWN"
                try:
                    response = await inner_uu(received.message(), context)
                    code = "OK"
                    return response
                except BaseException:
                    status = context.code()
                    code = status.name if isinstance(status, grpc.StatusCode) else "UNKNOWN"
                    raise
                finally:
                    await self._audit("completed", method, context, None, grant, code, call)

            decode = (_lazy if audited else _safe)(handler.request_deserializer)
            return grpc.unary_unary_rpc_method_handler(
                unary_unary, decode, handler.response_serializer
            )
        if handler.unary_stream is not None:
            inner_us = handler.unary_stream

            async def unary_stream(request: Any, context: Ctx) -> AsyncIterator[Any]:
                try:
                    await admit(request, context)
                    async for response in inner_us(request, context):
                        yield response
                except grpc.aio.AbortError as e:
                    del request  # this frame starts the traceback grpc keeps (see _release)
                    raise _release(e) from None

            return grpc.unary_stream_rpc_method_handler(
                unary_stream, _safe(handler.request_deserializer), handler.response_serializer
            )
        if handler.stream_stream is not None:
            inner_ss = handler.stream_stream

            async def stream_stream(requests: Any, context: Ctx) -> AsyncIterator[Any]:
                try:
                    await admit(None, context)
                    async for response in inner_ss(requests, context):
                        yield response
                except grpc.aio.AbortError as e:
                    del requests  # this frame starts the traceback grpc keeps (see _release)
                    raise _release(e) from None

            return grpc.stream_stream_rpc_method_handler(
                stream_stream, handler.request_deserializer, handler.response_serializer
            )
        raise AssertionError(f"{method}: riskd serves no client-streaming RPCs")

    async def _denied(self, d: Denied, method: str, context: Ctx, request: Any) -> None:
        """Count a denied call; record it (log line, audit line) within the record budget."""
        self.metrics.denied.inc()
        names = _bounded_names(context)
        unrecorded = self.denied_budget.admit("\n".join(names), time.monotonic())
        if unrecorded is None:
            self.metrics.denied_unrecorded.inc()
            return
        log.warning(
            "rpc_denied",
            method=method,
            peer=context.peer(),
            reason=_cut(d.message),
            unrecorded_before=unrecorded,
        )
        if isinstance(request, Received):
            await self._audit(
                "denied", method, context, request, None, "PERMISSION_DENIED", unrecorded=unrecorded
            )

    async def _audit(
        self,
        what: str,
        method: str,
        context: Ctx,
        request: Received | None,
        grant: Grant | None,
        code: str | None,
        call: str = "",
        unrecorded: int | None = None,
    ) -> None:
        assert self.admin_log is not None
        record: dict[str, Any] = {
            "step": what,
            "call": call,
            "method": method,
            "identity": grant.identity if grant is not None else _bounded_names(context),
            "peer": _cut(context.peer()),
        }
        if request is not None:
            record.update(request.digest())
        if code is not None:
            record["code"] = code
        if unrecorded:
            record["unrecorded_before"] = unrecorded
        try:
            digest = await asyncio.to_thread(self.admin_log.append, record)
        except AdminLogFault as e:
            self.on_storage_fault(e)
            await abort(context, grpc.StatusCode.UNAVAILABLE, "", "the admin audit log failed")
        log.info("admin_audit", hash=digest, **{k: v for k, v in record.items() if k != "request"})


def _release(abort: BaseException) -> BaseException:
    """``abort`` without the tracebacks that keep refused requests alive.

    grpc keeps an ``AbortError`` in a reference cycle (its traceback holds the
    frame that caught it, which holds it), as does ``except Rejected as r``
    in a handler; every frame in those tracebacks holds its locals, the
    request among them.  Only the cyclic GC frees that, and large requests
    outrun it: measured, RSS +19 MB for each refused 1.8 MB UpdateMarket (1 GB
    after 50).  So the abort leaves with no traceback below the caller's frame,
    and the exceptions it was raised while handling with none at all: a
    refusal's traceback says nothing its status does not.
    """
    abort.__traceback__ = None
    seen: set[int] = set()
    chained = [abort.__context__, abort.__cause__]
    while chained:
        e = chained.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        e.__traceback__ = None
        chained += [e.__context__, e.__cause__]
    return abort


def _lazy(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    """Keep the bytes; decode (safely) only when asked: denied callers are never parsed."""
    decode = _safe(deserializer)
    if decode is None:
        return None

    def keep(data: bytes) -> Received:
        return Received(data, decode)

    return keep


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


def _bounded_names(context: Ctx) -> list[str]:
    """A peer's certificate names for a log line: at most 8, each cut short."""
    return [_cut(n) for n in _names(context)[:8]]
