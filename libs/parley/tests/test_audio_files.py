"""Uploaded audio through the real FFmpeg decoders; every test file is made here, nothing is downloaded."""

from __future__ import annotations

import io
import struct

import av
import numpy as np
import pytest
import soundfile

from parley.audio_files import (
    AudioFileTooLarge,
    AudioTooLong,
    DecodedAudio,
    EmptyAudioFile,
    NoAudioStream,
    UndecodableAudio,
    decode_audio,
)
from parley.pcm import Float32Array

MB = 1_000_000


def tone(seconds: float, rate: int, hz: float = 440.0, level: float = 0.3) -> Float32Array:
    t = np.arange(int(seconds * rate)) / rate
    return (level * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def with_soundfile(samples: np.ndarray, rate: int, fmt: str, subtype: str) -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, rate, format=fmt, subtype=subtype)
    return buffer.getvalue()


def with_pyav(samples: Float32Array, rate: int, fmt: str, codec: str, codec_rate: int | None = None) -> bytes:
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format=fmt) as container:
        stream = container.add_stream(codec, rate=codec_rate or rate, layout="mono")
        frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="flt", layout="mono")
        frame.sample_rate = rate
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            container.mux(packet)
    return buffer.getvalue()


def decode(data: bytes) -> DecodedAudio:
    return decode_audio(data, max_bytes=10 * MB)


def test_wav_is_decoded_exactly() -> None:
    samples = tone(2.0, 16000)
    audio = decode(with_soundfile(samples, 16000, "WAV", "PCM_16"))
    assert audio.sample_rate == 16000 and audio.samples.dtype == np.float32 and audio.samples.ndim == 1
    assert audio.duration_s == 2.0
    assert np.max(np.abs(audio.samples - samples)) < 1 / 32768 + 1e-6


def test_stereo_is_averaged_to_mono_at_its_own_rate() -> None:
    # Full-scale correlated channels must not exceed full scale (FFmpeg's downmix gives 1.41).
    left, right = tone(1.0, 44100, level=1.0), tone(1.0, 44100, level=0.2)
    audio = decode(with_soundfile(np.stack([left, right], axis=1), 44100, "WAV", "FLOAT"))
    assert audio.sample_rate == 44100
    assert np.allclose(audio.samples, (left + right) / 2, atol=1e-6)


@pytest.mark.parametrize(
    ("name", "make"),
    [
        ("flac", lambda x: with_soundfile(x, 16000, "FLAC", "PCM_16")),
        ("ogg/vorbis", lambda x: with_soundfile(x, 16000, "OGG", "VORBIS")),
        ("mp3", lambda x: with_pyav(x, 16000, "mp3", "libmp3lame")),
        ("ogg/opus", lambda x: with_pyav(x, 16000, "ogg", "libopus", 48000)),
        ("webm/opus", lambda x: with_pyav(x, 16000, "webm", "libopus", 48000)),
        ("m4a/aac", lambda x: with_pyav(x, 16000, "ipod", "aac")),
    ],
)
def test_compressed_formats(name: str, make: object) -> None:
    data = make(tone(3.0, 16000))  # type: ignore[operator]
    audio = decode(data)
    # Lossy codecs add their encoder delay and padding; a few frames at most.
    assert abs(audio.duration_s - 3.0) < 0.1, (name, audio.duration_s)
    level = float(np.sqrt(np.mean(audio.samples**2)))
    assert abs(level - 0.3 / np.sqrt(2)) < 0.03, (name, level)


def test_the_declared_length_is_not_trusted() -> None:
    # A WAV header that claims an hour of audio over one second of data.
    data = bytearray(with_soundfile(tone(1.0, 16000), 16000, "WAV", "PCM_16"))
    data_chunk = data.index(b"data")
    data[data_chunk + 4 : data_chunk + 8] = struct.pack("<I", 3600 * 16000 * 2)
    assert decode(bytes(data)).duration_s == 1.0


def test_decoding_stops_at_the_length_limit() -> None:
    # 5 minutes of quiet MP3 are ~200 KB: a small upload that inflates when decoded.
    data = with_pyav(np.zeros(16000 * 300, np.float32), 16000, "mp3", "libmp3lame")
    assert len(data) < 1 * MB
    with pytest.raises(AudioTooLong, match="longer than 60 s"):
        decode_audio(data, max_bytes=10 * MB, max_duration_s=60)


def test_what_is_refused_and_why() -> None:
    with pytest.raises(EmptyAudioFile, match="empty"):
        decode(b"")
    wav = with_soundfile(tone(1.0, 16000), 16000, "WAV", "PCM_16")
    with pytest.raises(AudioFileTooLarge, match=r"32,044 bytes; at most 1,000 bytes"):
        decode_audio(wav, max_bytes=1000)
    with pytest.raises(UndecodableAudio, match="could not be read as audio"):
        decode(b"Dear diary, today I renamed this text file to voice.wav.\n" * 50)
    with pytest.raises(UndecodableAudio, match="no audio samples"):
        decode(wav[:44])  # a WAV header and nothing after it
    # A video file with no audio track.
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="matroska") as container:
        stream = container.add_stream("mjpeg", rate=1)
        stream.width, stream.height, stream.pix_fmt = 16, 16, "yuvj420p"
        frame = av.VideoFrame.from_ndarray(np.zeros((16, 16, 3), np.uint8), format="rgb24").reformat(format="yuvj420p")
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            container.mux(packet)
    with pytest.raises(NoAudioStream, match="no audio"):
        decode(buffer.getvalue())
