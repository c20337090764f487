"""Durable storage: write-ahead log and snapshots."""
