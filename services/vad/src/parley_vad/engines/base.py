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
