"""What a client may send within a session, checked in one place.

Audio frames (whole PCM16 samples, at most `max_frame_ms`), typed text (length and rate),
and a push-to-talk turn's length. The connection guard asks `frame_problem` too before it
counts a frame against the audio speed limit, so a frame is judged by one rule everywhere.
"""

from __future__ import annotations

from collections.abc import Callable

from parley.pcm import BYTES_PER_SAMPLE
from parley_gateway.config import InputLimits
from parley_gateway.metrics import LIMITED_TOTAL
from parley_gateway.protocol import ErrorCode, ProtocolError
from parley_gateway.rate_limits import TokenBucket


def frame_problem(limits: InputLimits, frame: bytes, rate: int) -> ProtocolError | None:
    """What is wrong with an audio frame at `rate` Hz, or None."""
    if len(frame) % BYTES_PER_SAMPLE:
        return ProtocolError(
            ErrorCode.BAD_AUDIO, f"audio frames are PCM16: {len(frame)} bytes is not a whole sample count"
        )
    max_bytes = rate * BYTES_PER_SAMPLE * limits.max_frame_ms // 1000
    if len(frame) > max_bytes:
        return ProtocolError(
            ErrorCode.FRAME_TOO_LARGE,
            f"audio frame of {len(frame)} bytes is over {limits.max_frame_ms} ms ({max_bytes} bytes at {rate} Hz)",
        )
    return None


class SessionInputLimits:
    """One session's input limits: raises `ProtocolError` for what breaks them."""

    def __init__(self, limits: InputLimits, input_rate: int, clock: Callable[[], float]) -> None:
        self.limits = limits
        self.input_rate = input_rate
        self._text_inputs = TokenBucket(limits.text_inputs_burst, limits.text_inputs_per_minute / 60, clock)

    def check_frame(self, frame: bytes) -> None:
        problem = frame_problem(self.limits, frame, self.input_rate)
        if problem is not None:
            raise problem

    def check_text(self, text: str) -> None:
        """A text.input (already stripped): its length, then the rate (a refused one is not counted)."""
        limits = self.limits
        if len(text) > limits.max_text_chars:
            raise ProtocolError(ErrorCode.TEXT_TOO_LONG, f"text.input is limited to {limits.max_text_chars} characters")
        if not self._text_inputs.take():
            LIMITED_TOTAL.labels(ErrorCode.RATE_LIMITED.value).inc()
            raise ProtocolError(
                ErrorCode.RATE_LIMITED,
                f"text.input: at most {limits.text_inputs_per_minute} a minute ({limits.text_inputs_burst} at once); "
                f"this one was dropped, the next is accepted in {self._text_inputs.wait_s():.1f} s",
            )

    def turn_too_long(self, samples: int, rate: int) -> bool:
        """Whether a push-to-talk turn of `samples` at `rate` passes `push_to_talk_max_s`."""
        return samples > int(self.limits.push_to_talk_max_s * rate)

    def turn_too_long_error(self) -> ProtocolError:
        limit = self.limits.push_to_talk_max_s
        LIMITED_TOTAL.labels(ErrorCode.TURN_TOO_LONG.value).inc()
        return ProtocolError(
            ErrorCode.TURN_TOO_LONG,
            f"a push-to-talk turn is at most {limit:g} s: the first {limit:g} s were committed and are answered; "
            "audio until the next input.commit is ignored",
        )
