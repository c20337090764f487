"""riskd benchmarks; run with ``python -m benchmarks``."""
