"""PCM16 helpers used on both sides of every audio stream."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import soxr

Float32Array = npt.NDArray[np.float32]

BYTES_PER_SAMPLE = 2  # PCM16 mono


class AudioFormatError(ValueError):
    """Audio bytes that cannot be PCM16LE mono."""


def pcm16_to_float(pcm: bytes) -> Float32Array:
    if len(pcm) % BYTES_PER_SAMPLE:
        raise AudioFormatError(f"PCM16 audio needs an even number of bytes, got {len(pcm)}")
    return np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0


def float_to_pcm16(samples: npt.NDArray[np.floating]) -> bytes:
    clipped = np.clip(samples, -1.0, 1.0)
    return bytes((clipped * 32767.0).astype("<i2").tobytes())


class StreamResampler:
    """Resamples a stream chunk by chunk without clicks at chunk edges."""

    def __init__(self, from_rate: int, to_rate: int) -> None:
        self.from_rate = from_rate
        self.to_rate = to_rate
        self._stream = None if from_rate == to_rate else soxr.ResampleStream(from_rate, to_rate, 1, dtype="float32")

    def push(self, samples: Float32Array, last: bool = False) -> Float32Array:
        if self._stream is None:
            return samples
        return np.asarray(self._stream.resample_chunk(samples, last=last), dtype=np.float32)


def duration_s(pcm: bytes, sample_rate: int) -> float:
    return len(pcm) / BYTES_PER_SAMPLE / sample_rate
