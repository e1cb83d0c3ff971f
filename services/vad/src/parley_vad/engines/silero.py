"""Silero VAD v6 (the ONNX file faster-whisper ships), fed frame by frame.

This export takes 576 samples per frame: the last 64 samples of the previous
frame followed by 512 new ones, plus the LSTM state (h, c) of the stream.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime

from parley.pcm import Float32Array

CONTEXT_SAMPLES = 64


def embedded_model_path() -> Path:
    import faster_whisper

    return Path(faster_whisper.__file__).parent / "assets" / "silero_vad_v6.onnx"


class _SileroStream:
    def __init__(self, session: onnxruntime.InferenceSession, frame_samples: int) -> None:
        self._session = session
        self._context = np.zeros(CONTEXT_SAMPLES, dtype=np.float32)
        self._h = np.zeros((1, 1, 128), dtype=np.float32)
        self._c = np.zeros((1, 1, 128), dtype=np.float32)
        self._frame_samples = frame_samples

    def __call__(self, frame: Float32Array) -> float:
        if frame.shape != (self._frame_samples,):
            raise ValueError(f"Silero frames are {self._frame_samples} samples, got {frame.shape}")
        window = np.concatenate([self._context, frame])[np.newaxis, :]
        probability, self._h, self._c = self._session.run(None, {"input": window, "h": self._h, "c": self._c})
        self._context = frame[-CONTEXT_SAMPLES:]
        return float(probability[0])


class SileroDetector:
    sample_rate = 16000
    frame_samples = 512

    def __init__(self, model_path: Path | None = None, threads: int = 1) -> None:
        path = model_path or embedded_model_path()
        if not path.is_file():
            raise FileNotFoundError(f"Silero VAD model not found at {path}")
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        # One session serves every stream: onnxruntime's run() is thread-safe
        # and each stream keeps its own state.
        self._session = onnxruntime.InferenceSession(
            str(path), providers=["CPUExecutionProvider"], sess_options=options
        )

    def new_stream(self) -> _SileroStream:
        return _SileroStream(self._session, self.frame_samples)
