"""Every riskd exception has one base, and each maps to the gRPC status the API returns."""

from __future__ import annotations

import grpc
import pytest

from riskd.actors.sequencer import SequenceError
from riskd.config import ConfigError
from riskd.core import Code, NotInMemory, Rejected, SpecError
from riskd.errors import RiskdError
from riskd.storage.codec import BadRecord, UnknownFormat
from riskd.storage.faults import StorageFault
from riskd.storage.journal import JournalCorrupt, StaleWriter


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (Rejected.invalid("amount", "x"), "INVALID_ARGUMENT"),
        (Rejected.precondition("amount", "x"), "FAILED_PRECONDITION"),
        (Rejected.not_found("market", "x"), "NOT_FOUND"),
        (Rejected(Code.PERMISSION_DENIED, "market", "x"), "PERMISSION_DENIED"),
        (SequenceError(Code.FAILED_PRECONDITION, "sequence", "x", 3), "FAILED_PRECONDITION"),
        (SpecError("tick_size", "x"), "INVALID_ARGUMENT"),
        (ConfigError("server.port", "x"), "INVALID_ARGUMENT"),
        (NotInMemory("x"), "OUT_OF_RANGE"),
        (StorageFault("journal", "/nowhere", "disk full"), "UNAVAILABLE"),
        (StaleWriter("x"), "UNAVAILABLE"),
        (JournalCorrupt("x"), "DATA_LOSS"),
        (BadRecord("x"), "DATA_LOSS"),
        (UnknownFormat(9), "DATA_LOSS"),
    ],
)
def test_each_maps_to_a_grpc_status(error: RiskdError, status: str) -> None:
    assert isinstance(error, RiskdError)
    assert error.grpc_status == status
    assert grpc.StatusCode[error.grpc_status] is not None  # a real status name


def test_old_bases_still_catch() -> None:
    # Code written against the old bases keeps working.
    assert isinstance(SpecError("f", "r"), ValueError)
    assert isinstance(ConfigError("k", "r"), ValueError)
    assert isinstance(NotInMemory("x"), IndexError)
