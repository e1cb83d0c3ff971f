"""The audio a load test speaks: spoken questions, made once and cached on disk.

espeak-ng (and sox) make them, as for the benchmarks (tests/speech.py): silence trimmed, so
the end of a clip is the end of speech. A load generator without them asks the gateway's own
`POST /v1/audio/speech` instead (Piper's voice, 24 kHz, resampled here), so it needs nothing
but a stack to run against.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from loadtests.endpoints import auth_headers  # noqa: E402
from tests.speech import speak, wav_bytes  # noqa: E402

SAMPLE_RATE = 16000
CACHE = Path(__file__).resolve().parent / ".cache"


def _trim(pcm: bytes, threshold: float = 0.005) -> bytes:
    """Drop leading and trailing near-silence (sox's `silence` filter does this for espeak-ng clips)."""
    samples = np.frombuffer(pcm, dtype="<i2")
    loud = np.flatnonzero(np.abs(samples.astype(np.float64)) / 32768.0 > threshold)
    return samples[loud[0] : loud[-1] + 1].tobytes() if loud.size else b""


def _from_gateway(text: str, host: str, api_key: str) -> bytes:
    body = json.dumps({"model": "tts-1", "input": text, "response_format": "pcm"})
    request = urllib.request.Request(
        host.rstrip("/") + "/v1/audio/speech",
        data=body.encode(),
        headers={"content-type": "application/json", **auth_headers(api_key)},
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        pcm24 = np.frombuffer(response.read(), dtype="<i2").astype(np.float64)
    # 24 kHz → 16 kHz by linear interpolation: plenty for a speech recogniser, and no extra dependency.
    positions = np.arange(0, pcm24.size - 1, 24000 / SAMPLE_RATE)
    pcm16 = np.interp(positions, np.arange(pcm24.size), pcm24)
    return _trim(np.clip(pcm16, -32768, 32767).astype("<i2").tobytes())


def clip(text: str, host: str = "", api_key: str = "") -> bytes:
    """PCM16 mono 16 kHz of `text`, speech from the first sample to the last; cached under loadtests/.cache."""
    local = shutil.which("espeak-ng") is not None and shutil.which("sox") is not None
    source = "espeak-ng" if local else "gateway"
    path = CACHE / f"{hashlib.sha1(f'{source}|{text}'.encode()).hexdigest()[:16]}.pcm"
    if path.exists():
        return path.read_bytes()
    if not local and not host:
        raise RuntimeError("neither espeak-ng and sox nor a gateway to make spoken questions with")
    pcm = speak(text) if local else _from_gateway(text, host, api_key)
    if len(pcm) < SAMPLE_RATE:  # under 0.5 s: the engine failed quietly; do not cache it
        raise RuntimeError(f"could not make a spoken clip of {text!r} with {source}")
    CACHE.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".tmp")
    partial.write_bytes(pcm)
    partial.replace(path)  # whole or absent: several load-generator processes may make the same clip
    return pcm


def wav(pcm: bytes) -> bytes:
    """A 16-bit mono WAV file of `pcm`, as a user uploads one to `/v1/audio/transcriptions`."""
    return wav_bytes(pcm, SAMPLE_RATE)
