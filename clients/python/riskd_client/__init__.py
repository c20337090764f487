"""Python client for the riskd gRPC API."""
