"""A small etcd v3 client over etcd's own HTTP/JSON gateway (``/v3/...``).

Why not a gRPC client: python-etcd3 (the usual one) does not import with
protobuf >= 4, and generating etcd's stubs would mean shipping or fetching
etcd's .proto files at build time.  The gateway is part of every etcd 3.4+
server, speaks the same API (the same requests, as JSON, int64 as strings,
bytes as base64), and needs nothing beyond the standard library.  riskd needs
only five calls (lease grant, keep-alive and revoke, a transaction, a read),
none of them on a hot path.

Every call tries the endpoints in turn (a member down is skipped) within a
deadline; :class:`EtcdUnavailable` when none answered.
"""

from __future__ import annotations

import base64
import json
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["Etcd", "EtcdUnavailable", "KeyValue"]


class EtcdUnavailable(Exception):
    """No etcd endpoint answered."""


@dataclass(frozen=True, slots=True)
class KeyValue:
    key: str
    value: str
    create_revision: int  # the owner's epoch (riskd.cluster.ownership)


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _text(b64: str) -> str:
    return base64.b64decode(b64).decode()


class Etcd:
    def __init__(self, endpoints: Sequence[str], timeout: float = 2.0) -> None:
        if not endpoints:
            raise ValueError("etcd: no endpoints")
        self.endpoints = [e.rstrip("/") for e in endpoints]
        self.timeout = timeout
        self._first = 0  # the endpoint that answered last is tried first

    def _call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        data = json.dumps(body).encode()
        errors = []
        n = len(self.endpoints)
        for i in range(n):
            k = (self._first + i) % n
            url = f"{self.endpoints[k]}/v3/{path}"
            request = urllib.request.Request(
                url, data, {"Content-Type": "application/json"}, method="POST"
            )
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    reply: dict[str, Any] = json.loads(response.read() or b"{}")
            except (OSError, ValueError) as e:  # URLError is an OSError
                errors.append(f"{self.endpoints[k]}: {e}")
                continue
            self._first = k
            if "error" in reply and "result" not in reply:
                errors.append(f"{self.endpoints[k]}: {reply.get('message') or reply['error']}")
                continue
            return reply
        raise EtcdUnavailable("; ".join(errors))

    def grant(self, ttl: int) -> int:
        """A new lease of ``ttl`` seconds; its id."""
        return int(self._call("lease/grant", {"TTL": ttl})["ID"])

    def keepalive(self, lease: int) -> int:
        """Renew ``lease``; the seconds it has left (0: it expired, it is gone)."""
        reply = self._call("lease/keepalive", {"ID": str(lease)})
        return int(reply.get("result", {}).get("TTL", 0))

    def revoke(self, lease: int) -> None:
        """End ``lease`` now: its keys go at once (a clean handover)."""
        self._call("lease/revoke", {"ID": str(lease)})

    def get(self, key: str) -> KeyValue | None:
        kvs = self._call("kv/range", {"key": _b64(key)}).get("kvs", [])
        return _kv(kvs[0]) if kvs else None

    def get_all(self, keys: Sequence[str]) -> dict[str, KeyValue]:
        """The ``keys`` that exist, read at one revision (one transaction)."""
        reply = self._call(
            "kv/txn", {"success": [{"request_range": {"key": _b64(k)}} for k in keys]}
        )
        return _ranges(reply)

    def create(self, key: str, value: str, lease: int) -> tuple[bool, KeyValue | None]:
        """Put ``key`` only if it does not exist, attached to ``lease``.

        ``(True, the new key)`` or ``(False, the key that exists)``, atomically.
        """
        won, kvs = self.create_all(key, {key: value}, lease)
        return won, kvs.get(key)

    def create_all(
        self, first: str, values: dict[str, str], lease: int, read: Sequence[str] = ()
    ) -> tuple[bool, dict[str, KeyValue]]:
        """Put every key of ``values`` (``first`` among them), attached to ``lease``,
        only if ``first`` does not exist; all at one revision.

        ``(True, the new keys)`` or ``(False, those of the keys of values and
        read that exist)``, atomically.
        """
        k = _b64(first)
        reply = self._call(
            "kv/txn",
            {
                "compare": [{"key": k, "target": "CREATE", "create_revision": "0"}],
                "success": [
                    {"request_put": {"key": _b64(key), "value": _b64(v), "lease": str(lease)}}
                    for key, v in values.items()
                ],
                "failure": [
                    {"request_range": {"key": _b64(key)}} for key in dict.fromkeys([*values, *read])
                ],
            },
        )
        if reply.get("succeeded"):
            revision = int(reply["header"]["revision"])
            return True, {key: KeyValue(key, v, revision) for key, v in values.items()}
        return False, _ranges(reply)


def _ranges(reply: dict[str, Any]) -> dict[str, KeyValue]:
    """The keys a transaction's range requests found."""
    found = {}
    for response in reply.get("responses", []):
        for raw in response.get("response_range", {}).get("kvs", []):
            kv = _kv(raw)
            found[kv.key] = kv
    return found


def _kv(raw: dict[str, Any]) -> KeyValue:
    return KeyValue(
        _text(raw["key"]), _text(raw.get("value", "")), int(raw.get("create_revision", 0))
    )
