from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from parley.settings import ServiceSettings


class AsrSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="PARLEY_ASR_", extra="ignore", populate_by_name=True)

    port: int = 50051
    metrics_port: int = 9151
    model_path: Path | None = Field(
        default=None,
        description="CTranslate2 Whisper model directory; empty means the embedded tiny.en "
        "(e.g. /workspace/models/whisper-large-v3-turbo on a GPU pod).",
    )
    max_streams: int = Field(
        default=32,
        ge=1,
        description="Utterance streams held at once (they mostly buffer audio; decodes share the model copies).",
    )
    instances: int = Field(
        default=2,
        ge=1,
        description="Model copies; each runs one decode at a time, final decodes wait in order. Partials never "
        "take the last free copy, so with 2+ a final never waits behind a partial (1 for a large model on a GPU).",
    )
    device: str = Field(default="cpu", pattern="^(cpu|cuda|auto)$", description="Where CTranslate2 runs the model.")
    compute_type: str = Field(default="int8", description="CTranslate2 compute type: int8, float16, ...")
    threads: int = Field(default=0, ge=0, description="CPU threads for decoding; 0 means one per CPU core.")
    beam_size: int = Field(default=1, ge=1, le=10, description="Beam width; 1 (greedy) is fastest.")
    encoder_window_s: float = Field(
        default=10.0,
        ge=8.0,
        le=30.0,
        description="Encoder window for short utterances (Whisper's stock window is 30 s; "
        "10 s is ~3.5x faster on CPU at equal accuracy, see docs/benchmarks.md).",
    )
    default_language: str = Field(default="", description="ISO 639-1 code; empty means detect.")
    max_utterance_s: float = Field(default=60.0, gt=0, description="Longest utterance accepted in one stream.")
    max_chunk_ms: int = Field(default=1000, ge=10, description="Largest audio chunk accepted.")
    partial_interval_s: float = Field(
        default=0.5, gt=0, description="New audio between two partial decodes, when partials are asked for."
    )
