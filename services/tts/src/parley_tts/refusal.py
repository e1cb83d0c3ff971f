"""A request the TTS service refuses, and the checks every speech method makes alike."""

from __future__ import annotations

import grpc

from parley.text import normalize_for_speech


class Refused(Exception):
    """A request refused with a gRPC status code and a message for the client; `reason` names the
    refusals a caller handles apart (parley.refusals), sent as a trailer."""

    def __init__(self, code: grpc.StatusCode, message: str, reason: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.reason = reason


def checked_text(text: str, max_chars: int) -> str:
    """Text within the limit, normalised for speech (NFKC, no control characters)."""
    if len(text) > max_chars:
        raise Refused(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"text is {len(text)} characters; the limit is {max_chars} (PARLEY_TTS_MAX_TEXT_CHARS)",
        )
    # NFKC and no control characters: "𝕳𝖊𝖑𝖑𝖔" is read as "Hello", not spelled out.
    return normalize_for_speech(text)


def checked_rate_and_speed(sample_rate: int, speed: float) -> float:
    """The speed to speak at (0 means normal); refuses an output rate or a speed out of range."""
    if sample_rate and not 8000 <= sample_rate <= 48000:
        raise Refused(grpc.StatusCode.INVALID_ARGUMENT, "sample_rate must be 0 (native) or 8000..48000")
    speed = speed or 1.0
    if not 0.5 <= speed <= 2.0:
        raise Refused(grpc.StatusCode.INVALID_ARGUMENT, "speed must be 0 (normal) or 0.5..2.0")
    return speed
