"""gRPC statuses for refused requests, with the offending field as rich details.

Clients get a plain status code and message (``field: why``) and, for those
that read ``grpc-status-details-bin``, a ``google.rpc.BadRequest`` naming the
field (grpcio-status).
"""

from __future__ import annotations

from typing import Any, NoReturn

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2  # type: ignore[import-untyped]
from grpc_status import rpc_status

from riskd.core import Rejected
from riskd.core.errors import Code

__all__ = ["GRPC_CODES", "abort", "abort_rejected", "status_for"]

GRPC_CODES = {
    Code.INVALID_ARGUMENT: grpc.StatusCode.INVALID_ARGUMENT,
    Code.FAILED_PRECONDITION: grpc.StatusCode.FAILED_PRECONDITION,
    Code.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    Code.PERMISSION_DENIED: grpc.StatusCode.PERMISSION_DENIED,
    Code.RESOURCE_EXHAUSTED: grpc.StatusCode.RESOURCE_EXHAUSTED,
}


def status_for(
    code: grpc.StatusCode, field: str, message: str, retry_after: float | None = None
) -> grpc.Status:
    """A status with a BadRequest naming ``field`` and, if given, a RetryInfo."""
    bad_request = any_pb2.Any()
    bad_request.Pack(
        error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(field=field, description=message)
            ]
        )
    )
    details = [bad_request]
    if retry_after is not None:
        retry = error_details_pb2.RetryInfo()
        retry.retry_delay.FromNanoseconds(max(int(retry_after * 1e9), 1_000_000))
        details.append(any_pb2.Any())
        details[-1].Pack(retry)
    text = f"{field}: {message}" if field else message
    number: int = code.value[0]
    assert code_pb2.Code.Name(number)  # a real google.rpc code
    status: grpc.Status = rpc_status.to_status(
        status_pb2.Status(code=number, message=text, details=details)
    )
    return status


async def abort(
    context: grpc.aio.ServicerContext[Any, Any],
    code: grpc.StatusCode,
    field: str,
    message: str,
    retry_after: float | None = None,
) -> NoReturn:
    await context.abort_with_status(status_for(code, field, message, retry_after))
    raise AssertionError("abort_with_status returned")  # pragma: no cover


async def abort_rejected(
    context: grpc.aio.ServicerContext[Any, Any], r: Rejected, prefix: str = ""
) -> NoReturn:
    field = f"{prefix}{r.field}" if prefix else r.field
    await abort(context, GRPC_CODES[r.code], field, r.message)
