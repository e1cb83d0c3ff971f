"""One conversation: the turn machine, transcription, replies that run themselves, input limits.

Imports only routing and the shared modules (config, protocol, metrics, rate_limits).
"""
