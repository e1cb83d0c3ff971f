from __future__ import annotations

import ipaddress

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
    history_max_turns: int = Field(
        default=200, ge=1, description="Turns a session keeps (in memory and in NATS); the oldest go first."
    )
    history_max_tokens: int = Field(
        default=16_000, ge=100, description="Size a session's history may reach (~4 characters a token)."
    )
    session_ttl_s: float = Field(
        default=1800.0,
        gt=0,
        description="How long a session can be resumed after its last change (JetStream KV `parley_sessions`).",
    )
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
        "the gateway's own origins (its allowed host names, or the IP address a page was loaded from) always may.",
    )
    allowed_hosts: str = Field(
        default="",
        description="Comma-separated names the gateway answers to besides IP addresses, localhost and *.localhost "
        "(`.example.com` takes its subdomains too, `*` any name); a request to any other `Host` is refused "
        "(400; WebSocket 403), against DNS rebinding. runpod/start.sh adds the pod's proxy name.",
    )
    token_ttl_s: float = Field(default=3600.0, gt=0, description="How long a browser token lasts.")
    # Limits per client (its API key when keys are on, else its IP address) and per gateway
    max_sessions_per_client: int = Field(
        default=4,
        ge=1,
        description="Open conversation sockets per client, counted from the moment they connect (before "
        "`session.start`); `PARLEY_GATEWAY_MAX_SESSIONS` caps them all together the same way.",
    )
    trusted_proxies: str = Field(
        default="",
        description="Comma-separated addresses or networks (10.0.0.0/8) of reverse proxies whose "
        "X-Forwarded-For names the real client; from any other peer that header is ignored.",
    )
    session_start_timeout_s: float = Field(
        default=10.0, gt=0, description="A socket that sends no successful `session.start` this long is closed."
    )
    session_idle_s: float = Field(
        default=300.0,
        gt=0,
        description="A session with no client activity (audio, events) and no reply in progress this long ends "
        "with `session.ended` (reason `idle`).",
    )
    audio_rate_factor: float = Field(
        default=1.5,
        ge=1.0,
        description="Audio may arrive at most this many times faster than real time, on average; "
        "frames past it are dropped (`audio_too_fast`).",
    )
    audio_rate_burst_s: float = Field(
        default=2.0, gt=0, description="Seconds of audio a client may send ahead of that rate at once."
    )
    max_outbound_bytes: int = Field(
        default=8 * 1024 * 1024,
        ge=16384,
        description="What may wait to be sent to one client (8 MiB ≈ 3 min of 24 kHz audio); a client that does "
        "not read so much is disconnected (1008 `not reading`).",
    )
    text_inputs_per_minute: int = Field(
        default=30, ge=1, description="`text.input` events a session may send per minute (`rate_limited`)."
    )
    text_inputs_burst: int = Field(default=5, ge=1, description="`text.input` events a session may send at once.")
    max_errors_per_second: int = Field(
        default=5,
        ge=1,
        description="Error events sent per second to one connection; past it they are counted, and one "
        "`errors_suppressed` a second says how many were dropped.",
    )
    push_to_talk_max_s: float = Field(
        default=60.0,
        gt=0,
        description="A push-to-talk turn is committed on its own at this length (`turn_too_long`); keep it within "
        "`PARLEY_ASR_MAX_UTTERANCE_S` and `PARLEY_GATEWAY_AUDIO_BUFFER_S`.",
    )
    api_requests_per_minute: int = Field(
        default=120,
        ge=1,
        description="HTTP API requests (/v1/...) per client per minute, in a moving window (429 past it).",
    )
    api_uploads_per_minute: int = Field(
        default=10,
        ge=1,
        description="Uploads (POST /v1/audio/transcriptions, POST /v1/voices) per client per minute (429 past it).",
    )
    # Audit log
    audit_log_path: str = Field(
        default="",
        description="File the audit log (logger `parley.audit`: one JSON line per connection, session, refusal "
        "and HTTP request) is appended to; empty: the normal log.",
    )
    audit_content: bool = Field(
        default=False,
        description="Also put what users said and typed, and the replies' text, in the audit log (never audio).",
    )

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

    def host_list(self) -> list[str]:
        return [host.strip() for host in self.allowed_hosts.split(",") if host.strip()]

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, value: str) -> str:
        for item in value.split(","):
            if item.strip():
                ipaddress.ip_network(item.strip(), strict=False)  # ValueError names the bad one
        return value

    def proxy_list(self) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        items = [item.strip() for item in self.trusted_proxies.split(",") if item.strip()]
        return [ipaddress.ip_network(item, strict=False) for item in items]
