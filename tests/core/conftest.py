"""Fixtures for the core suite; helpers live in ``_kit.py`` (importable: see below)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

# Test modules import their helpers with ``from _kit import ...``; pytest runs in
# importlib mode, which does not put test directories on sys.path.
sys.path.insert(0, str(Path(__file__).parent))

from _kit import btc_usd_spec, btc_usdt_spec

from riskd.core import MarketSpec


@pytest.fixture
def btc_usdt() -> MarketSpec:
    return btc_usdt_spec()


@pytest.fixture
def btc_usd() -> MarketSpec:
    return btc_usd_spec()
