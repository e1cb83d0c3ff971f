"""Audio for HTTP responses, encoded while it streams: wav, pcm, mp3, opus, aac, flac.

Chunks of PCM16 go in as the TTS service sends them and the bytes of the chosen
format come out at once, so a client hears (or saves) audio before synthesis ends.
mp3, opus (in Ogg), aac (ADTS) and flac come from FFmpeg's encoders inside PyAV; wav is
a header whose sizes say "unknown length" (as OpenAI's streamed wav does) followed by
the samples; pcm is the raw 16-bit little-endian samples.
"""

from __future__ import annotations

import io
import struct
from typing import Literal, Protocol

import av
import numpy as np

AudioFormat = Literal["mp3", "opus", "aac", "flac", "wav", "pcm"]
MEDIA_TYPES: dict[str, str] = {
    "mp3": "audio/mpeg",
    "opus": "audio/ogg",
    "aac": "audio/aac",
    "flac": "audio/flac",
    "wav": "audio/wav",
    "pcm": "audio/pcm",
}
# container format and codec per response format
_FFMPEG = {"mp3": ("mp3", "libmp3lame"), "opus": ("ogg", "libopus"), "aac": ("adts", "aac"), "flac": ("flac", "flac")}
_UNKNOWN_SIZE = 0xFFFFFFFF


class AudioEncoder(Protocol):
    def push(self, pcm: bytes) -> bytes:
        """Encoded bytes ready after these PCM16 samples (maybe none yet)."""
        ...

    def finish(self) -> bytes:
        """The rest, once no more audio comes."""
        ...


class PcmEncoder:
    def push(self, pcm: bytes) -> bytes:
        return pcm

    def finish(self) -> bytes:
        return b""


class StreamingWavEncoder:
    def __init__(self, sample_rate: int) -> None:
        self.sample_rate = sample_rate
        self._started = False

    def header(self) -> bytes:
        rate = self.sample_rate
        fmt = struct.pack("<HHIIHH", 1, 1, rate, rate * 2, 2, 16)
        return (
            b"RIFF"
            + struct.pack("<I", _UNKNOWN_SIZE)
            + b"WAVEfmt "
            + struct.pack("<I", 16)
            + fmt
            + b"data"
            + (struct.pack("<I", _UNKNOWN_SIZE))
        )

    def push(self, pcm: bytes) -> bytes:
        if self._started:
            return pcm
        self._started = True
        return self.header() + pcm

    def finish(self) -> bytes:
        return b"" if self._started else self.header()


class FfmpegEncoder:
    def __init__(self, fmt: str, sample_rate: int) -> None:
        container_format, codec = _FFMPEG[fmt]
        self._buffer = io.BytesIO()
        self._sent = 0
        # Ogg holds packets back until a page is full (a second of audio or more): short pages stream.
        options = {"page_duration": "100000"} if container_format == "ogg" else {}
        self._container = av.open(self._buffer, mode="w", format=container_format, options=options)
        stream = self._container.add_stream(codec, rate=sample_rate, layout="mono")  # type: ignore[call-overload]
        assert isinstance(stream, av.audio.stream.AudioStream)
        self._stream = stream
        self._rate = sample_rate
        self._pts = 0

    def _take(self) -> bytes:
        data = self._buffer.getvalue()[self._sent :]
        self._sent += len(data)
        return data

    def push(self, pcm: bytes) -> bytes:
        samples = np.frombuffer(pcm, dtype="<i2").reshape(1, -1)
        if not samples.size:
            return b""
        frame = av.AudioFrame.from_ndarray(samples, format="s16", layout="mono")
        frame.sample_rate = self._rate
        frame.pts = self._pts
        self._pts += samples.shape[1]
        for packet in self._stream.encode(frame):
            self._container.mux(packet)
        return self._take()

    def finish(self) -> bytes:
        for packet in self._stream.encode(None):
            self._container.mux(packet)
        self._container.close()
        return self._take()


def encoder_for(fmt: AudioFormat, sample_rate: int) -> AudioEncoder:
    if fmt == "pcm":
        return PcmEncoder()
    if fmt == "wav":
        return StreamingWavEncoder(sample_rate)
    return FfmpegEncoder(fmt, sample_rate)
