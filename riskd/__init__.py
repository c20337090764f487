"""riskd: risk engine daemon for crypto derivatives exchanges."""

__version__ = "0.1.0"
