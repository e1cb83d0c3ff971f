from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from parley.settings import ServiceSettings, catalogue_choice
from parley_asr.catalogue import CATALOGUE, DEFAULT_MODEL


class AsrSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="PARLEY_ASR_", extra="ignore", populate_by_name=True)

    port: int = 50051
    metrics_port: int = 9151
    model: str = catalogue_choice(CATALOGUE, DEFAULT_MODEL, "The embedded Whisper model: ", " (docs/models.md).")
    model_path: Path | None = Field(
        default=None,
        description="CTranslate2 Whisper model directory; overrides PARLEY_ASR_MODEL. Empty means the embedded "
        "model (e.g. /workspace/models/whisper-large-v3-turbo on a GPU pod).",
    )
    model_cache_dir: Path | None = Field(
        default=None,
        description="Where embedded models split into part packages are assembled, once; empty means "
        "$XDG_CACHE_HOME/parley/asr (else ~/.cache/parley/asr).",
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
    beam_size: int = Field(
        default=3,
        ge=1,
        le=10,
        description="Beam width of final transcripts. On tiny.en, 3 has a word error rate ~1 point below "
        "Whisper's stock decode for ~7 % more time than 1 (greedy), which is 1.0-1.6 points above it; 2 is "
        "within the stock decode's too but misses more of the hard renditions (docs/benchmarks.md).",
    )
    partial_beam_size: int = Field(
        default=1,
        ge=1,
        le=10,
        description="Beam width of partial transcripts: they only feed early work and are redone at the end, "
        "so greedy (1), the cheapest.",
    )
    encoder_window_s: float = Field(
        default=10.0,
        ge=8.0,
        le=30.0,
        description="Encoder window for short utterances (Whisper's stock window is 30 s; "
        "10 s is ~3.5x faster on CPU at equal accuracy, see docs/benchmarks.md).",
    )
    default_language: str = Field(
        default="",
        description="ISO 639-1 code for streams that ask for none; empty means detect (a multilingual model; "
        "tiny.en is English only). One the model cannot transcribe stops the service at start.",
    )
    detect_languages: str = Field(
        default="",
        pattern=r"^([a-z]{2,3}(,[a-z]{2,3})*)?$",
        description="Comma-separated ISO 639-1 codes the detection chooses among (e.g. en,fr,de,es), when "
        "the languages spoken are known; empty means every language the model knows. On short questions "
        'it is right far more often (docs/benchmarks.md, "ASR: languages").',
    )
    max_utterance_s: float = Field(default=60.0, gt=0, description="Longest utterance accepted in one stream.")
    max_chunk_ms: int = Field(default=1000, ge=10, description="Largest audio chunk accepted.")
    partial_interval_s: float = Field(
        default=0.5, gt=0, description="New audio between two partial decodes, when partials are asked for."
    )

    @property
    def detection_candidates(self) -> frozenset[str]:
        return frozenset(self.detect_languages.split(",")) if self.detect_languages else frozenset()
