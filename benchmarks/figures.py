"""The one shape every benchmark reports a figure in (printed and written as JSON)."""

from __future__ import annotations

from typing import Any

__all__ = ["add"]


def add(
    figures: dict[str, dict[str, Any]],
    name: str,
    value: float,
    unit: str,
    command: str,
    target: str | None = None,
    ok: bool | None = None,
    note: str | None = None,
) -> None:
    """Record ``name``: its value, unit, the command that measures it, target and verdict."""
    fig: dict[str, Any] = {"value": value, "unit": unit, "command": command}
    if target is not None:
        fig["target"] = target
        fig["meets_target"] = ok
    if note:
        fig["note"] = note
    figures[name] = fig
