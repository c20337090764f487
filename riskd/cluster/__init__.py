"""Clustered riskd: shards owned through etcd leases, journals in PostgreSQL (docs/cluster.md)."""
