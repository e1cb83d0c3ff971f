from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from parley.settings import ServiceSettings


class VadSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="PARLEY_VAD_", extra="ignore", populate_by_name=True)

    port: int = 50054
    metrics_port: int = 9154
    max_streams: int = Field(default=64, ge=1, description="VAD is cheap: one stream per live session.")
    model_path: Path | None = Field(
        default=None, description="Silero VAD ONNX file; empty means the v6 model inside faster-whisper."
    )
    threads: int = Field(default=1, ge=1, description="onnxruntime intra-op threads per session.")
    max_chunk_ms: int = Field(default=1000, ge=10, description="Largest audio chunk accepted.")
    # Defaults for the per-stream options (see parley.vad.v1 proto).
    threshold: float = Field(default=0.5, gt=0, lt=1, description="Speech probability that starts speech.")
    min_silence_ms: int = Field(default=500, ge=0, description="Silence that ends a turn.")
    min_speech_ms: int = Field(default=200, ge=0, description="Speech shorter than this is noise, not a turn.")
    speech_pad_ms: int = Field(default=300, ge=0, description="Audio kept before the detected speech start.")
    pause_ms: int = Field(
        default=200, ge=0, description="Silence reported as a pause (preemptive work starts); 0 turns it off."
    )
