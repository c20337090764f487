"""The one base of riskd's own exceptions, and the gRPC status each maps to.

Pure (no grpc import) so the core's :class:`~riskd.core.errors.Rejected` can
inherit it: the API layer turns ``err.grpc_status`` into
``grpc.StatusCode[err.grpc_status]``.  Subclasses keep their own names and
modules; an exception that carries its code per instance (``Rejected``,
``SequenceError``: a ``code`` attribute with a ``.value`` naming the status)
reports that one instead of the class's.

Which class maps to which status:

========================================  ======================
``riskd.core.Rejected``                   its ``code`` (INVALID_ARGUMENT, FAILED_PRECONDITION,
                                          NOT_FOUND, PERMISSION_DENIED, RESOURCE_EXHAUSTED)
``riskd.actors.sequencer.SequenceError``  its ``code`` (FAILED_PRECONDITION)
``riskd.core.tiers.SpecError``            INVALID_ARGUMENT
``riskd.core.ledger.NotInMemory``         OUT_OF_RANGE
``riskd.core.liquidation_machine.IllegalTransition``  INTERNAL (a bug: never input's fault)
``riskd.storage.faults.StorageFault``     UNAVAILABLE (the daemon stops acknowledging, exit 4)
``riskd.storage.journal.JournalCorrupt``  DATA_LOSS (refused at start, exit 3)
``riskd.storage.journal.StaleWriter``     UNAVAILABLE
``riskd.config.ConfigError``              INVALID_ARGUMENT (at start: exit 2)
``riskd.actors.sequencer.SettingsConflict``  INVALID_ARGUMENT (at start: exit 2)
``riskd.daemon.StartupError``             FAILED_PRECONDITION (at start: exit 2)
``riskd.actors.actor.ActorStopped``       UNAVAILABLE
``riskd.api.bridge.Unavailable``          UNAVAILABLE
``riskd.api.auth.Denied``                 PERMISSION_DENIED
``riskd.api.ingest.Throttled``            RESOURCE_EXHAUSTED
``riskd.api.events.FellBehind``           OUT_OF_RANGE
========================================  ======================
"""

from __future__ import annotations

from typing import ClassVar

__all__ = ["RiskdError"]


class RiskdError(Exception):
    """Base of every exception riskd raises on purpose."""

    #: The ``grpc.StatusCode`` name a client sees for this class.
    STATUS: ClassVar[str] = "INTERNAL"

    @property
    def grpc_status(self) -> str:
        """The gRPC status name for this error (an instance ``code`` wins over the class's)."""
        code = getattr(self, "code", None)
        value = getattr(code, "value", None)
        return value if isinstance(value, str) else self.STATUS
