from __future__ import annotations

from pydantic import Field, field_validator
from pydantic_settings import SettingsConfigDict

from parley.settings import CommonSettings


class GatewaySettings(CommonSettings):
    model_config = SettingsConfigDict(env_prefix="PARLEY_GATEWAY_", extra="ignore", populate_by_name=True)

    host: str = Field(default="127.0.0.1", description="Address the HTTP server binds (0.0.0.0 in a container).")
    port: int = Field(default=7860, ge=1, le=65535, description="HTTP/WebSocket port (RunPod exposes 7860).")
    access_log: bool = Field(default=False, description="Log every HTTP request (health probes included).")
    # Audio
    output_sample_rate: int = Field(
        default=24000, ge=8000, le=48000, description="Rate of reply audio sent to clients."
    )
    max_frame_ms: int = Field(default=1000, ge=10, le=5000, description="Longest binary audio frame accepted.")
    max_message_bytes: int = Field(
        default=16 * 1024 * 1024,
        ge=65536,
        description="Largest WebSocket message read at all; bigger ones close the socket with 1009. Frames under "
        "it that break the audio or event limits get an error event and the session goes on.",
    )
    max_event_bytes: int = Field(default=65536, ge=1024, description="Largest JSON event accepted.")
    max_event_depth: int = Field(default=16, ge=2, le=64, description="Deepest nesting accepted in a JSON event.")
    audio_buffer_s: float = Field(
        default=60.0, gt=0, description="Input audio kept per session, to (re)feed ASR from the start of an utterance."
    )
    # Sessions
    max_sessions: int = Field(default=32, ge=1, description="Concurrent conversation sessions.")
    max_text_chars: int = Field(default=2000, ge=1, description="Longest text.input accepted.")
    history_turns: int = Field(default=20, ge=0, description="Past user/assistant turns sent to the LLM.")
    drain_s: float = Field(
        default=30.0,
        ge=0,
        description="On SIGTERM the gateway takes no new session and gives live ones this long to finish "
        "their turn (each is closed with 1012 once idle); then it exits.",
    )
    ping_interval_s: float = Field(
        default=20.0, gt=0, description="Keep-alive event interval (RunPod's proxy drops sockets idle ~100 s)."
    )
    first_clause_min_chars: int = Field(
        default=20, ge=1, description="The first TTS request leaves at the first clause boundary past this length."
    )
    voice: str = Field(default="", description="Default TTS voice; empty means the TTS service's default.")
    echo_guard_ms: int = Field(
        default=300,
        ge=0,
        description="Speech starting this soon after a reply's playback starts may be its echo: it is transcribed, "
        "and interrupts the reply only if its words are not the reply's own.",
    )
    playback_margin_ms: int = Field(
        default=250, ge=0, description="Slack added to the estimate of when the client finishes playing a reply."
    )
    llm_max_tokens: int = Field(default=0, ge=0, description="Reply length limit; 0 means the LLM service's default.")
    # Service discovery over NATS
    discovery_interval_s: float = Field(default=1.0, gt=0, description="How often instances are polled.")
    discovery_window_s: float = Field(default=0.25, gt=0, description="How long replies to one poll are collected.")
    instance_ttl_s: float = Field(default=3.5, gt=0, description="An instance silent this long is forgotten.")
    first_answer_timeout_s: float = Field(
        default=45.0,
        gt=0,
        description="Longest wait for a model service's first answer once it is owed (a complete LLM or TTS "
        "request, an ASR stream's end); covers a busy instance's queue, so keep it above the services' "
        "PARLEY_*_QUEUE_TIMEOUT_S.",
    )
    idle_timeout_s: float = Field(
        default=15.0, gt=0, description="Longest wait for each next message of a model service's answer."
    )
    service_health_window_s: float = Field(
        default=300.0, gt=0, description="How long a service's crash or failed start counts against it in /readyz."
    )
    # HTTP API (/v1/audio/*, /v1/voices)
    api_max_speech_chars: int = Field(default=4096, ge=1, description="Longest `input` of POST /v1/audio/speech.")
    api_max_upload_bytes: int = Field(
        default=25_000_000, ge=1000, description="Largest audio upload (transcriptions, voices)."
    )
    api_max_transcription_s: float = Field(default=600.0, gt=0, description="Longest audio a transcription accepts.")
    api_transcription_segment_s: float = Field(
        default=28.0,
        gt=1,
        le=55,
        description="Speech found by the VAD is cut into pieces of at most this long for the ASR service.",
    )
    api_parallel_segments: int = Field(default=2, ge=1, description="ASR streams one transcription uses at once.")
    api_voices_timeout_s: float = Field(
        default=120.0, gt=0, description="Longest wait for the TTS service to make, read or delete a voice."
    )
    api_max_dialogues: int = Field(default=8, ge=1, description="Dialogue jobs kept at once (running or finished).")
    api_dialogue_keep_s: float = Field(
        default=3600.0, gt=0, description="How long a finished dialogue's audio is kept."
    )
    # Access control (a public pod is reachable by anyone with its URL)
    api_keys: str = Field(
        default="",
        description="Comma-separated API keys; when set, every route but /healthz and the page shell needs one "
        "(Authorization: Bearer, X-API-Key, or a token from POST /v1/auth/token). Empty: open.",
    )
    allowed_origins: str = Field(
        default="",
        description="Comma-separated extra origins (https://host:port) whose pages may open the WebSocket; "
        "the gateway's own origin is always allowed.",
    )
    token_ttl_s: float = Field(default=3600.0, gt=0, description="How long a browser token lasts.")

    @field_validator("api_keys")
    @classmethod
    def _strong_keys(cls, value: str) -> str:
        if any(0 < len(key.strip()) < 16 for key in value.split(",")):
            raise ValueError("every API key must be at least 16 characters")
        return value

    def key_list(self) -> list[str]:
        return [key.strip() for key in self.api_keys.split(",") if key.strip()]

    def origin_list(self) -> list[str]:
        return [origin.strip() for origin in self.allowed_origins.split(",") if origin.strip()]
