"""gRPC servicers translating between riskd.v1 messages and the actors."""
