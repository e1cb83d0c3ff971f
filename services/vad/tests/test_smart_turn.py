"""The Smart Turn v3.2 engine: its features, its verdicts on real speech, and how it refuses a bad model file."""

from __future__ import annotations

import hashlib
import importlib.util
import re
import sys
from pathlib import Path

import numpy as np
import pytest

from parley.pcm import Float32Array, pcm16_to_float
from parley_vad.engines.silero import embedded_model_path
from parley_vad.engines.smart_turn import (
    MODEL_SHA256,
    SmartTurnDetector,
    TurnModelError,
    packaged_model_path,
    read_verified_model,
)
from tests.speech import speak

COMPLETE = "I would like to book a table for two people tonight."
CUT_OFF = "Can you tell me what the weather is like in"


@pytest.fixture(scope="module")
def detector() -> SmartTurnDetector:
    return SmartTurnDetector.from_file()


def utterance(text: str) -> Float32Array:
    """Speech as the VAD hands it over at a pause: 0.3 s of padding before, 0.2 s of silence after."""
    return np.concatenate(
        [np.zeros(4800, dtype=np.float32), pcm16_to_float(speak(text)), np.zeros(3200, dtype=np.float32)]
    )


def whisper_reference(audio: Float32Array) -> Float32Array:
    """Hugging Face's Whisper extractor, as the model was trained with, on the last 8 s front-padded.

    transformers is in the development environment through the TTS service's fireredtts2 extra."""
    from transformers import WhisperFeatureExtractor

    window = 8 * 16000
    last = audio[-window:]
    padded = np.concatenate([np.zeros(window - last.size, dtype=np.float32), last])
    extractor = WhisperFeatureExtractor(chunk_length=8)  # 80 mels, 16 kHz, hop 160; builds its filters, no download
    features = extractor(
        padded,
        sampling_rate=16000,
        padding="max_length",
        max_length=window,
        truncation=True,
        do_normalize=True,
        return_tensors="np",
    ).input_features
    return np.asarray(features, dtype=np.float32)


def test_features_match_whispers_own_extractor(detector: SmartTurnDetector, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    speech = utterance(COMPLETE)
    long_speech = np.concatenate([speech] * 4)  # over 8 s: only the last 8 s count
    rng = np.random.default_rng(7)
    noise = (rng.standard_normal(20000) * 0.05).astype(np.float32)
    for audio in (speech, long_speech, noise):
        ours = detector.features(audio)
        assert ours.shape == (1, 80, 800) and ours.dtype == np.float32
        assert np.abs(ours - whisper_reference(audio)).max() < 1e-4


def test_a_finished_sentence_scores_high_and_a_cut_off_one_low(detector: SmartTurnDetector) -> None:
    complete = detector.completion(utterance(COMPLETE))
    cut_off = detector.completion(utterance(CUT_OFF))
    assert complete > 0.7, complete
    assert cut_off < 0.3, cut_off


def test_the_packaged_model_is_found_without_importing_pipecat() -> None:
    path = packaged_model_path()
    assert path.parts[-6:] == ("pipecat", "audio", "turn", "smart_turn", "data", "smart-turn-v3.2-cpu.onnx")
    assert hashlib.sha256(path.read_bytes()).hexdigest() == MODEL_SHA256
    # Importing pipecat would pull in libraries Parley does not install.
    assert "pipecat" not in sys.modules


def test_a_missing_package_is_refused_with_what_to_do(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *args: None)
    with pytest.raises(TurnModelError, match=r"pip install --no-deps pipecat-ai==1\.14\.0.*PARLEY_VAD_TURN_MODEL=none"):
        read_verified_model()


def test_a_missing_file_is_refused(tmp_path: Path) -> None:
    missing = tmp_path / "smart-turn-v3.2-cpu.onnx"
    with pytest.raises(
        TurnModelError, match=re.escape(f"cannot read the smart-turn-v3.2 end-of-turn model at {missing}")
    ):
        SmartTurnDetector.from_file(missing)


def test_a_damaged_or_different_model_file_is_refused(tmp_path: Path) -> None:
    damaged = tmp_path / "damaged.onnx"
    data = bytearray(packaged_model_path().read_bytes())
    data[len(data) // 2] ^= 0xFF
    damaged.write_bytes(bytes(data))
    for wrong in (damaged, embedded_model_path()):
        with pytest.raises(
            TurnModelError, match=re.escape(f"{wrong} is not the smart-turn-v3.2 end-of-turn model: its sha256")
        ):
            SmartTurnDetector.from_file(wrong)
