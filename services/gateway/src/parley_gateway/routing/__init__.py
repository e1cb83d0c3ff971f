"""Where model-service calls go: discovery over NATS, calls with deadlines and fail-over, the retry policy."""
