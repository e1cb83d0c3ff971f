from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import SettingsConfigDict

from parley.settings import ServiceSettings, catalogue_choice
from parley_llm.catalogue import CATALOGUE, DEFAULT_MODEL

DEFAULT_SYSTEM_PROMPT = (
    "The following is a spoken conversation between a User and Parley, a friendly voice Assistant. "
    "The Assistant answers in one or two short, simple sentences."
)


class LlmSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="PARLEY_LLM_", extra="ignore", populate_by_name=True)

    port: int = 50052
    engine: str = Field(
        default="llama_cpp",
        pattern="^(llama_cpp|openai)$",
        description="llama_cpp: a local GGUF; openai: any OpenAI-compatible HTTP server (PARLEY_LLM_OPENAI_*).",
    )
    openai_base_url: str = Field(default="", description="e.g. http://127.0.0.1:8000/v1 (engine=openai).")
    openai_api_key: SecretStr = Field(default=SecretStr(""), description="Bearer token, if the server needs one.")
    openai_model: str = Field(default="", description="Model name sent to the server (engine=openai).")
    speech_shaping: bool = Field(
        default=True, description="Drop markdown, bullets and emoji from replies so they read and speak well."
    )
    metrics_port: int = 9152
    model: str = catalogue_choice(
        CATALOGUE,
        DEFAULT_MODEL,
        "The embedded model (engine=llama_cpp): ",
        ". Each but the default needs its packages installed (docs/models.md).",
    )
    model_path: Path | None = Field(
        default=None, description="Any GGUF file; overrides PARLEY_LLM_MODEL. Empty means the embedded model."
    )
    model_cache_dir: Path | None = Field(
        default=None,
        description="Where embedded models split into part packages are joined, once; empty means "
        "$XDG_CACHE_HOME/parley/llm (else ~/.cache/parley/llm).",
    )
    prompt_format: str = Field(
        default="auto",
        pattern="^(auto|chat|transcript)$",
        description="chat: the GGUF's own chat template; transcript: a 'User:/Assistant:' dialogue "
        "for base models; auto: the embedded model's own format, or for PARLEY_LLM_MODEL_PATH chat when "
        "the GGUF has a template.",
    )
    context_tokens: int = Field(default=2048, ge=256, description="llama.cpp context size (n_ctx).")
    threads: int = Field(
        default=0,
        ge=0,
        description="CPU threads per instance; 0 means one per CPU core, at most 4 (llama-cpp-python's own "
        "default, half the cores, made the first words ~100 ms slower on 2 cores: docs/benchmarks.md).",
    )
    gpu_layers: int = Field(default=0, ge=-1, description="Layers offloaded to the GPU (-1 = all).")
    instances: int = Field(
        default=1,
        ge=1,
        description="Model copies; each serves PARLEY_LLM_PARALLEL_SEQUENCES streams at once (engine=llama_cpp), "
        "or one (engine=openai).",
    )
    parallel_sequences: int = Field(
        default=4,
        ge=1,
        le=64,
        description="Replies one llama.cpp model copy generates at once, decoded together in one batch per "
        "token (engine=llama_cpp); each gets its own PARLEY_LLM_CONTEXT_TOKENS of context. 4 halves the "
        "voice-to-voice p50 of two to four conversations on a 2-core machine (docs/benchmarks.md, 'Capacity "
        "under load'); 1: the single-sequence engine, one reply per copy at a time.",
    )
    max_tokens: int = Field(default=80, ge=1, description="Default reply length limit in tokens.")
    temperature: float = Field(default=0.7, ge=0, le=2, description="Default sampling temperature.")
    request_timeout_s: float = Field(default=60.0, gt=0, description="HTTP timeout of the openai engine.")

    @model_validator(mode="after")
    def _openai_needs_a_server(self) -> LlmSettings:
        if self.engine == "openai" and not (self.openai_base_url and self.openai_model):
            raise ValueError("engine=openai needs PARLEY_LLM_OPENAI_BASE_URL and PARLEY_LLM_OPENAI_MODEL")
        return self

    @property
    def streams_per_copy(self) -> int:
        """Streams one model copy serves at once: its sequences, or one for the openai engine."""
        return self.parallel_sequences if self.engine == "llama_cpp" else 1

    @property
    def reads_prefills(self) -> bool:
        """Whether a prefill (GenerateRequest.prefill_only) is read: only the batched engine keeps prompts for
        the replies that follow; the others answer it at once, without waiting for a model copy."""
        return self.engine == "llama_cpp" and self.parallel_sequences > 1

    system_prompt: str = Field(default=DEFAULT_SYSTEM_PROMPT, description="Used when a request has none.")
    max_request_chars: int = Field(default=32_000, ge=1, description="Largest conversation accepted, in characters.")
