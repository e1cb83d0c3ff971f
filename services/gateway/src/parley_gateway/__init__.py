"""Parley gateway: the browser-facing edge of the conversation pipeline."""
