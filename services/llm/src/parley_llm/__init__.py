"""Parley LLM service: `Conversation/Generate` over gRPC."""
