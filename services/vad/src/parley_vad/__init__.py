"""Parley VAD service: `VoiceActivity/Detect` over gRPC."""
