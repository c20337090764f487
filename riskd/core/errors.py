"""The one exception the core raises for bad input, naming the offending field."""

from __future__ import annotations

import enum

from mypy_extensions import mypyc_attr

from riskd.errors import RiskdError

__all__ = ["Code", "Rejected"]


class Code(enum.Enum):
    """Why an input was refused; mirrors the gRPC status the API layer returns."""

    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    FAILED_PRECONDITION = "FAILED_PRECONDITION"
    NOT_FOUND = "NOT_FOUND"
    PERMISSION_DENIED = "PERMISSION_DENIED"
    RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"


# Not compiled: a native class cannot extend a Python one (RiskdError) safely;
# mypyc would lay its fields over the exception's own (a crash in the GC).
@mypyc_attr(native_class=False)
class Rejected(RiskdError):
    """An input the engine refuses.

    Raised before any state is touched: every operation in the core validates
    first and mutates after, so a rejection always leaves the state unchanged.
    """

    def __init__(self, code: Code, field: str, message: str) -> None:
        super().__init__(f"{code.value}: {field}: {message}")
        self.code = code
        self.field = field
        self.message = message

    @classmethod
    def invalid(cls, field: str, message: str) -> Rejected:
        return cls(Code.INVALID_ARGUMENT, field, message)

    @classmethod
    def precondition(cls, field: str, message: str) -> Rejected:
        return cls(Code.FAILED_PRECONDITION, field, message)

    @classmethod
    def not_found(cls, field: str, message: str) -> Rejected:
        return cls(Code.NOT_FOUND, field, message)
