"""riskd: risk engine daemon for crypto derivatives exchanges.

``riskd.core`` is compiled with mypyc at install (setup.py); ``RISKD_PURE=1``
in the environment runs the same core from its .py sources instead, for
debugging, profiling line by line, or checking that both behave alike.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Sequence
from importlib.machinery import ModuleSpec
from pathlib import Path
from types import ModuleType

__version__ = "0.1.0"

_CORE = "riskd.core."


class _PureCore:
    """Finds ``riskd.core.*`` as .py sources even where compiled modules sit beside them.

    Python's own finder prefers an extension module to a .py file of the
    same name, so this one goes first on ``sys.meta_path``.
    """

    @classmethod
    def find_spec(
        cls, fullname: str, path: Sequence[str] | None = None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        if not fullname.startswith(_CORE) or path is None:
            return None
        leaf = fullname.rsplit(".", 1)[1]
        for entry in path:
            source = Path(entry) / f"{leaf}.py"
            if source.is_file():
                return importlib.util.spec_from_file_location(fullname, source)
        return None


if os.environ.get("RISKD_PURE") == "1" and _PureCore not in sys.meta_path:
    sys.meta_path.insert(0, _PureCore)


def core_build() -> str:
    """Which core this process runs: ``"compiled"`` (mypyc) or ``"pure"`` (.py sources)."""
    from riskd.core import engine

    return "pure" if (engine.__file__ or "").endswith(".py") else "compiled"
