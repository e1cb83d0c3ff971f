"""Uploaded audio files (wav, mp3, ogg/opus, webm, flac, m4a, ...) decoded with FFmpeg through PyAV.

The container is found by probing the bytes, never from a file name, and nothing the
container declares is trusted: the duration is the count of decoded samples, and decoding
stops once it passes `max_duration_s`, so a small file that inflates to hours of audio
cannot take the memory. Decoding is blocking CPU work: call it in a worker thread.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import av
import numpy as np

from parley.pcm import Float32Array


class AudioFileError(ValueError):
    """An uploaded file that cannot be used as audio; the message is meant for the user."""


class EmptyAudioFile(AudioFileError):
    pass


class AudioFileTooLarge(AudioFileError):
    pass


class UndecodableAudio(AudioFileError):
    pass


class NoAudioStream(AudioFileError):
    pass


class AudioTooLong(AudioFileError):
    pass


@dataclass(frozen=True)
class DecodedAudio:
    samples: Float32Array  # mono, float32, nominally in [-1, 1]
    sample_rate: int  # the file's own rate: resampling is the caller's choice

    @property
    def duration_s(self) -> float:
        return self.samples.size / self.sample_rate


def decode_audio(data: bytes, *, max_bytes: int, max_duration_s: float = 600.0) -> DecodedAudio:
    """Decode the first audio stream of `data` to mono float32 at its own sample rate."""
    if not data:
        raise EmptyAudioFile("the audio file is empty")
    if len(data) > max_bytes:
        raise AudioFileTooLarge(f"the audio file is {_size(len(data))}; at most {_size(max_bytes)} is accepted")
    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            if not container.streams.audio:
                raise NoAudioStream("the file has no audio in it")
            return _decode_stream(container, container.streams.audio[0], max_duration_s)
    except av.error.FFmpegError as error:
        raise UndecodableAudio(
            "the file could not be read as audio (supported: wav, mp3, ogg/opus, webm, flac, m4a)"
        ) from error


def _decode_stream(
    container: av.container.InputContainer, stream: av.audio.stream.AudioStream, max_s: float
) -> DecodedAudio:
    # Everything is converted to planar float at the first frame's rate and layout, so a
    # stream whose format changes half-way still comes out as one consistent signal.
    resampler: av.audio.resampler.AudioResampler | None = None
    rate = 0
    pieces: list[Float32Array] = []
    decoded = 0
    for frame in container.decode(stream):
        if resampler is None:
            rate = frame.sample_rate
            resampler = av.AudioResampler(format="fltp", layout=frame.layout, rate=rate)
        for converted in resampler.resample(frame):
            decoded += _append_mono(pieces, converted)
        if decoded > max_s * rate:
            raise AudioTooLong(f"the audio is longer than {max_s:g} s")
    if resampler is not None:
        for converted in resampler.resample(None):  # what the resampler still holds
            decoded += _append_mono(pieces, converted)
    if not decoded:
        raise UndecodableAudio("the file contains no audio samples")
    return DecodedAudio(np.concatenate(pieces).astype(np.float32, copy=False), rate)


def _append_mono(pieces: list[Float32Array], frame: av.audio.frame.AudioFrame) -> int:
    planes = frame.to_ndarray()  # (channels, samples)
    # The plain average of the channels, not FFmpeg's downmix, which scales each side of a
    # stereo pair by 0.707 and so pushes correlated loud channels past full scale.
    mono = planes[0] if planes.shape[0] == 1 else planes.mean(axis=0, dtype=np.float32)
    pieces.append(np.asarray(mono, dtype=np.float32))
    return int(mono.size)


def _size(n: int) -> str:
    return f"{n / 1_000_000:.1f} MB" if n >= 100_000 else f"{n:,} bytes"
