from __future__ import annotations

from typing import Protocol

from parley.pcm import Float32Array


class FrameScorer(Protocol):
    """Scores consecutive frames of one stream; keeps that stream's state."""

    def __call__(self, frame: Float32Array) -> float:
        """Speech probability (0..1) of one frame of `frame_samples` samples."""
        ...


class SpeechDetector(Protocol):
    """A VAD model: fixed-size frames at a fixed rate in, probabilities out."""

    sample_rate: int
    frame_samples: int

    def new_stream(self) -> FrameScorer: ...


class TurnDetector(Protocol):
    """An end-of-turn model: judges from the sound of an utterance whether its speaker has finished.

    One object is used by one thread at a time (the servicer keeps copies in a ModelPool).
    """

    sample_rate: int
    window_samples: int  # the most recent audio the model hears; earlier audio is ignored

    def completion(self, audio: Float32Array) -> float:
        """P(turn complete), 0..1, for an utterance (mono, `sample_rate`) ending at its last sample."""
        ...
