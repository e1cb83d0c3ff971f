from __future__ import annotations

from pathlib import Path
from typing import Literal

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
        default=100,
        ge=0,
        description="Silence reported as a pause: the gateway's early work (the pause's transcript, a held reply) "
        "starts; 0 turns pauses off, and with them the turn model's verdicts.",
    )
    turn_silence_ms: int = Field(
        default=200,
        ge=0,
        description="Silence after which the turn model judges a pause: its scores depend on the silence it hears "
        "(docs/benchmarks.md measures them at 200 ms). At or under PAUSE_MS a pause is judged as it is reported; "
        "over it, the early work a pause starts does not wait for the judgement.",
    )
    resume_window_ms: int = Field(
        default=1500,
        ge=0,
        description="After a stop, speech beginning within this long of the end of speech starts after "
        "RESUME_MIN_SPEECH_MS instead of MIN_SPEECH_MS, so the gateway, which keeps a turn judged incomplete open "
        "past the stop (PARLEY_GATEWAY_INCOMPLETE_TURN_MAX_SILENCE_MS: keep this at least as long), learns sooner "
        "that the speaker went on.",
    )
    resume_min_speech_ms: int = Field(
        default=96,
        ge=0,
        description="Speech that starts again soon after a stop (RESUME_WINDOW_MS); at or over MIN_SPEECH_MS "
        "it changes nothing.",
    )
    # Semantic end of turn: a verdict on every SPEECH_PAUSED (see parley.vad.v1 proto).
    turn_model: Literal["smart-turn-v3.2", "none"] = Field(
        default="smart-turn-v3.2",
        description="End-of-turn model judging each pause: `smart-turn-v3.2` (inside the pipecat-ai package) or "
        "`none` (pauses carry no verdict).",
    )
    turn_model_path: Path | None = Field(
        default=None,
        description="Smart Turn v3.2 ONNX file (e.g. in a models directory); empty means the one inside pipecat-ai. "
        "Either way its sha256 must be the pinned one.",
    )
    turn_threads: int = Field(default=1, ge=1, description="onnxruntime intra-op threads per turn model copy.")
    turn_copies: int = Field(
        default=1, ge=1, description="Turn model copies; each judges one pause at a time (~70 ms on one CPU core)."
    )
    turn_queue_timeout_ms: int = Field(
        default=300,
        ge=0,
        description="Longest a pause waits for a free turn model copy; past that it is reported without a verdict "
        "(a late verdict is worth less than the silence rule it would overtake).",
    )
