"""The conversation WebSocket: its read loop, the session registry, the outbox, the session store."""
