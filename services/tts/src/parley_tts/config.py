from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from parley.settings import ServiceSettings


class TtsSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="PARLEY_TTS_", extra="ignore", populate_by_name=True)

    port: int = 50053
    metrics_port: int = 9153
    engine: str = Field(default="piper", pattern="^piper$", description="Synthesis engine.")
    piper_voices_dir: Path | None = Field(
        default=None, description="Extra Piper voices (<name>.onnx + <name>.onnx.json) besides the embedded one."
    )
    default_voice: str = Field(default="joe", description="Voice used when a request names none.")
    threads: int = Field(
        default=2,
        ge=1,
        description="onnxruntime threads per model copy (they never spin-wait, so idle copies leave the cores alone).",
    )
    instances: int = Field(
        default=2, ge=1, description="Model copies; each speaks one request at a time, more requests wait in order."
    )
    max_text_chars: int = Field(default=2000, ge=1, description="Longest text accepted in one request.")
    chunk_ms: int = Field(default=200, ge=10, le=2000, description="Audio per streamed chunk.")
