from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from parley.settings import ServiceSettings
from parley_tts.voices import ReferenceLimits


class TtsSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="PARLEY_TTS_", extra="ignore", populate_by_name=True)

    port: int = 50053
    metrics_port: int = 9153
    engines: str = Field(
        default="piper",
        pattern=r"^(piper|fireredtts2)(,(piper|fireredtts2))*$",
        description="Engines this instance runs, comma-separated: piper (CPU), fireredtts2 (GPU; clones voices).",
    )
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
    max_text_chars: int = Field(
        default=2000, ge=1, description="Longest text accepted in one request or dialogue turn."
    )
    max_script_turns: int = Field(default=200, ge=1, description="Most turns in one dialogue script.")
    max_script_chars: int = Field(default=20_000, ge=1, description="Longest dialogue script, in characters.")
    max_conversations: int = Field(
        default=256,
        ge=1,
        description="Conversations whose context (earlier replies) an instance keeps, most recent first.",
    )
    chunk_ms: int = Field(default=200, ge=10, le=2000, description="Audio per streamed chunk.")
    # --- stored (cloned) voices ---
    voices_bucket: str = Field(
        default="parley_voices",
        pattern=r"^[a-zA-Z0-9_-]+$",
        description="JetStream KV bucket of voice profiles; blobs go to <bucket>_blobs.",
    )
    max_reference_bytes: int = Field(default=10_000_000, ge=1000, description="Largest reference upload.")
    min_reference_s: float = Field(default=3.0, gt=0, description="Shortest reference recording.")
    max_reference_s: float = Field(default=30.0, gt=0, description="Longest reference recording.")
    min_reference_sample_rate: int = Field(default=16000, ge=8000, description="Lowest reference sample rate.")
    min_reference_dbfs: float = Field(default=-45.0, description="Quietest reference (RMS level, dBFS).")
    max_reference_clipped: float = Field(
        default=0.001, ge=0, le=1, description="Share of samples at full scale above which a reference is clipped."
    )
    max_transcript_chars: int = Field(default=1000, ge=1, description="Longest reference transcript.")
    speaker_similarity: bool = Field(
        default=True, description="Score cloned speech against its reference with the speaker embedder."
    )

    # --- FireRedTTS2 ---
    fireredtts2_models_dir: Path = Field(
        default=Path("/workspace/models/FireRedTTS2"),
        description="Laid out like upstream's pretrained_models/FireRedTTS2 (config_llm.json, llm_posttrain.pt, "
        "config_codec.json, codec.pt, Qwen2.5-1.5B/).",
    )
    fireredtts2_checkpoint: str = Field(
        default="posttrain",
        pattern="^(posttrain|pretrain)$",
        description="posttrain speaks dialogues and clones; pretrain is upstream's monologue model.",
    )
    fireredtts2_device: str = Field(default="cuda", description="torch device for FireRedTTS2, e.g. cuda or cuda:1.")
    fireredtts2_allow_cpu: bool = Field(
        default=False, description="Run FireRedTTS2 on the CPU (tests with tiny weights; far too slow for speech)."
    )
    fireredtts2_copies: int = Field(
        default=1,
        ge=1,
        description="FireRedTTS2 model copies (each holds its own weights and KV caches).",
    )
    fireredtts2_streams_per_copy: int = Field(
        default=1,
        ge=1,
        le=256,
        description="Streams one FireRedTTS2 copy speaks at once, one batched step a frame for all of them (a KV "
        "cache slot each); 1 runs upstream's own one-stream loop. Capacity is copies x this.",
    )
    fireredtts2_cuda_graphs: bool = Field(
        default=False,
        description="Replay each frame step of a FireRedTTS2 copy as a CUDA graph (one per batch size up to "
        "STREAMS_PER_COPY, captured at start-up); CUDA only. Off until measured on a GPU (docs/benchmarks.md).",
    )
    fireredtts2_bf16: bool = Field(
        default=True, description="Run the FireRedTTS2 LLM in bfloat16 on GPUs that have it."
    )
    fireredtts2_max_frames: int = Field(
        default=375, ge=1, description="Most frames (80 ms each) one utterance may generate: 375 is 30 s."
    )
    fireredtts2_frame_limit: int = Field(
        default=3100,
        ge=16,
        description="Context + utterance frames; older turns of a conversation slide out of this window.",
    )
    fireredtts2_temperature: float = Field(default=0.9, gt=0, le=2, description="Sampling temperature.")
    fireredtts2_top_k: int = Field(default=20, ge=1, description="Sampling top-k.")
    fireredtts2_monologue_max_frames: int = Field(
        default=400,
        ge=1,
        description="Most frames one cloned monologue piece may generate (pretrain checkpoint; upstream's 400). "
        "PARLEY_TTS_FIREREDTTS2_MAX_FRAMES bounds a dialogue turn (upstream's 375).",
    )
    fireredtts2_monologue_temperature: float = Field(
        default=0.75,
        gt=0,
        le=2,
        description="Sampling temperature of monologues (pretrain checkpoint; upstream's 0.75). "
        "PARLEY_TTS_FIREREDTTS2_TEMPERATURE is that of dialogue turns (upstream's 0.9).",
    )
    fireredtts2_context_codes: bool = Field(
        default=False,
        description="Keep spoken turns in the context as the generated codes instead of re-encoding their audio "
        "as upstream does (saves one codec encode per turn; departs from upstream's recipe).",
    )
    fireredtts2_split_long_sentences: bool = Field(
        default=False,
        description="Also split a dialogue sentence over 80 words (150 CJK characters), which upstream leaves whole "
        "and the frame bound may cut short, at clause marks and between words (departs from upstream's recipe).",
    )

    def reference_limits(self) -> ReferenceLimits:
        return ReferenceLimits(
            max_bytes=self.max_reference_bytes,
            min_s=self.min_reference_s,
            max_s=self.max_reference_s,
            min_sample_rate=self.min_reference_sample_rate,
            min_rms_dbfs=self.min_reference_dbfs,
            max_clipped_share=self.max_reference_clipped,
            max_transcript_chars=self.max_transcript_chars,
        )

    @property
    def engine_names(self) -> list[str]:
        return list(dict.fromkeys(self.engines.split(",")))
