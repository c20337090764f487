"""Durable storage: write-ahead log, snapshots, and fail-stop when a write fails."""

from riskd.storage.faults import EXIT_STORAGE_FAULT, StorageFault, fail_stop

__all__ = ["EXIT_STORAGE_FAULT", "StorageFault", "fail_stop"]
