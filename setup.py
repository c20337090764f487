"""Compiles riskd/core with mypyc (issue 17); everything else is in pyproject.toml.

The core's modules go into one shared library, riskd/core/_native__mypyc*.so,
plus one small extension per module; the .py sources ship beside them
(``RISKD_PURE=1`` runs those, see riskd/__init__.py).  ``riskd/core/__init__.py``
stays Python: a compiled package __init__ would import its own shared library
before the package exists.  ``RISKD_PURE_BUILD=1`` builds without compiling.
``RISKD_MYPYC_OPT`` sets the C optimisation level (default 3).
"""

from __future__ import annotations

import os
from glob import glob

from setuptools import Extension, setup


def core_extensions() -> list[Extension]:
    if os.environ.get("RISKD_PURE_BUILD") == "1":
        return []
    from mypyc.build import mypycify

    modules = sorted(p for p in glob("riskd/core/*.py") if not p.endswith("__init__.py"))
    return mypycify(
        # The project's mypy settings (pyproject.toml), less the warning about
        # sections for modules the core never imports: mypyc fails on it.
        ["--no-warn-unused-configs", *modules],
        opt_level=os.environ.get("RISKD_MYPYC_OPT", "3"),
        group_name="riskd.core._native",
    )


setup(ext_modules=core_extensions())
