from __future__ import annotations

import numpy as np
import pytest
import soxr

from parley.pcm import AudioFormatError, StreamResampler, duration_s, float_to_pcm16, pcm16_to_float


def test_pcm16_round_trip() -> None:
    samples = np.array([0.0, 0.5, -0.5, 0.999, -1.0], dtype=np.float32)
    back = pcm16_to_float(float_to_pcm16(samples))
    assert np.allclose(back, samples, atol=1 / 32767)


def test_odd_byte_count_is_refused() -> None:
    with pytest.raises(AudioFormatError, match="even number of bytes"):
        pcm16_to_float(b"\x00\x01\x02")


def test_clipping_instead_of_wrapping() -> None:
    loud = np.array([1.5, -1.5], dtype=np.float32)
    assert list(np.frombuffer(float_to_pcm16(loud), dtype="<i2")) == [32767, -32767]


def test_stream_resampler_matches_one_shot() -> None:
    rate_in, rate_out = 22050, 16000
    t = np.arange(rate_in) / rate_in
    tone = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    whole = soxr.resample(tone, rate_in, rate_out)
    stream = StreamResampler(rate_in, rate_out)
    pieces = [stream.push(tone[i : i + 1000]) for i in range(0, tone.size, 1000)]
    pieces.append(stream.push(tone[:0], last=True))
    chunked = np.concatenate(pieces)
    assert abs(chunked.size - whole.size) <= 2
    n = min(chunked.size, whole.size)
    assert np.max(np.abs(chunked[:n] - whole[:n])) < 1e-3


def test_duration() -> None:
    assert duration_s(bytes(32000), 16000) == pytest.approx(1.0)
