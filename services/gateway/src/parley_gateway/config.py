"""The gateway's settings: flat environment variables (PARLEY_GATEWAY_*), handed out in sections.

Operators and docs/configuration.md know the variables by their flat names, so the settings
class stays flat; each part of the gateway receives only its own section (a small frozen
view built here), never the whole object: `conversation()`, `model_services()`,
`discovery()`, `connection()`, `client_limits()`, `access()`, `api()`.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Self

from pydantic import Field, field_validator, model_validator
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
    first_piece_max_words: int = Field(
        default=4,
        ge=0,
        description="The first TTS request leaves after this many words when no clause or sentence has ended by "
        "then (earlier audio, for a break in the sentence's melody); after a shorter first sentence ('Sure!') the "
        "next piece leaves the same way, until the pieces sent hold this many words; until they hold four times as "
        "many, clause marks end pieces too. 0: the first piece waits for a clause or sentence end, and later pieces "
        "are whole sentences (docs/benchmarks.md, 'The first words of a reply').",
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
    llm_prefill: bool = Field(
        default=True,
        description="While the user speaks, each partial transcript is read into the LLM's cache (a prefill), so "
        "that the reply reads only the last words once they stop (docs/benchmarks.md, 'The prompt read while the "
        "user speaks'). Costs LLM work on words that may still change, which the LLM service does only while it "
        "decodes no other reply.",
    )
    # Semantic end of turn: the VAD's verdict on each pause (PARLEY_VAD_TURN_MODEL)
    end_of_turn_threshold: float = Field(
        default=0.7,
        ge=0,
        le=1,
        description="A pause whose end-of-turn verdict (P(turn complete) from the VAD's turn model) reaches this "
        "ends the turn at once, unless its transcript leaves the sentence unfinished (no closing full stop, a "
        "trailing ellipsis, or ending on `in`, `the`, `and`, `to call`, ...). Pauses without a verdict end on the "
        "VAD's silence rule.",
    )
    end_of_turn_incomplete_threshold: float = Field(
        default=0.5,
        ge=0,
        le=1,
        description="A pause whose end-of-turn verdict is under this (or whose transcript leaves the sentence "
        "unfinished) makes the turn wait for more silence (PARLEY_GATEWAY_INCOMPLETE_TURN_MAX_SILENCE_MS); "
        "between this and END_OF_TURN_THRESHOLD the silence rule decides. Lower it to answer sooner after "
        "questions the model is unsure of, at the price of more cut-offs (docs/benchmarks.md).",
    )
    incomplete_turn_max_silence_ms: int = Field(
        default=1200,
        ge=0,
        le=10_000,
        description="Silence (from the end of speech) after which a turn judged incomplete at its pause ends "
        "anyway; renewed speech before it continues the turn. At or under the VAD's min_silence_ms it changes "
        "nothing.",
    )
    doubtful_turn_max_silence_ms: int = Field(
        default=1200,
        ge=0,
        le=10_000,
        description="The same wait for a turn whose sound and words disagree: it sounds incomplete at its pause "
        "but its transcript reads as a finished sentence (a closing full stop or question mark, no dangling word), "
        'or it sounds complete but its words end on `to` and a verb ("a good book to read?"). By default the '
        "same as INCOMPLETE_TURN_MAX_SILENCE_MS: such turns are counted apart (turn_end `doubtful`) but wait as "
        "long. Lower, those questions are answered sooner and more people who pause to think are cut off (1000 "
        "cut off a first half after a 713 ms pause, docs/benchmarks.md).",
    )
    min_word_confidence: float = Field(
        default=0.0,
        ge=0,
        le=1,
        description="A transcript the ASR was less sure of than this (its confidence: the geometric mean of its "
        "tokens' probabilities, 0..1) is not taken for a finished sentence at a pause, however it reads: a turn "
        "judged complete then waits DOUBTFUL_TURN_MAX_SILENCE_MS. 0 (the default) turns the check off: on the "
        "benchmark's synthetic voices the first halves misheard into questions scored 0.65 and 0.78, while most "
        "transcripts under 0.6 were whole questions misheard, which waiting does not mend (docs/benchmarks.md).",
    )
    # Languages (a session started without `language` follows the one it hears)
    language_switch_probability: float = Field(
        default=0.8,
        ge=0,
        le=1,
        description="A session without a `language` keeps the first language it hears; it moves to another only "
        "when an utterance is detected in it with at least this probability (and is long enough: "
        "LANGUAGE_SWITCH_MIN_AUDIO_S).",
    )
    language_switch_min_audio_s: float = Field(
        default=1.5,
        ge=0,
        le=30,
        description="The shortest utterance whose detected language may move a session to another language "
        "(the language of a shorter one is guessed too badly to follow).",
    )
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
    reply_stall_timeout_s: float = Field(
        default=60.0,
        gt=0,
        description="A reply that makes no progress this long (no text, no audio, whatever it waits for) fails "
        "with `service_timeout`; a backstop above the per-call deadlines, so keep it over "
        "PARLEY_GATEWAY_FIRST_ANSWER_TIMEOUT_S.",
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

    @model_validator(mode="after")
    def _stall_over_first_answer(self) -> Self:
        if self.reply_stall_timeout_s <= self.first_answer_timeout_s:
            raise ValueError(
                "reply_stall_timeout_s must be over first_answer_timeout_s (a queued first answer is not a stall)"
            )
        return self

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

    # ---- the sections each part receives ----------------------------------------

    def conversation(self) -> ConversationSettings:
        return ConversationSettings(
            input=InputLimits(
                max_frame_ms=self.max_frame_ms,
                max_text_chars=self.max_text_chars,
                text_inputs_per_minute=self.text_inputs_per_minute,
                text_inputs_burst=self.text_inputs_burst,
                push_to_talk_max_s=self.push_to_talk_max_s,
            ),
            reply=ReplySettings(
                output_sample_rate=self.output_sample_rate,
                voice=self.voice,
                first_clause_min_chars=self.first_clause_min_chars,
                first_piece_max_words=self.first_piece_max_words,
                llm_max_tokens=self.llm_max_tokens,
                history_turns=self.history_turns,
                stall_timeout_s=self.reply_stall_timeout_s,
            ),
            history=HistorySettings(max_turns=self.history_max_turns, max_tokens=self.history_max_tokens),
            audio_buffer_s=self.audio_buffer_s,
            echo_guard_s=self.echo_guard_ms / 1000,
            playback_margin_s=self.playback_margin_ms / 1000,
            end_of_turn_threshold=self.end_of_turn_threshold,
            incomplete_threshold=self.end_of_turn_incomplete_threshold,
            incomplete_turn_max_silence_s=self.incomplete_turn_max_silence_ms / 1000,
            doubtful_turn_max_silence_s=self.doubtful_turn_max_silence_ms / 1000,
            min_word_confidence=self.min_word_confidence,
            llm_prefill=self.llm_prefill,
            language_switch_probability=self.language_switch_probability,
            language_switch_min_audio_s=self.language_switch_min_audio_s,
        )

    def model_services(self) -> ModelServiceSettings:
        return ModelServiceSettings(self.first_answer_timeout_s, self.idle_timeout_s)

    def discovery(self) -> DiscoverySettings:
        return DiscoverySettings(
            self.discovery_interval_s, self.discovery_window_s, self.instance_ttl_s, self.service_health_window_s
        )

    def connection(self) -> ConnectionSettings:
        return ConnectionSettings(
            start_timeout_s=self.session_start_timeout_s,
            idle_s=self.session_idle_s,
            max_errors_per_second=self.max_errors_per_second,
            audio_rate_factor=self.audio_rate_factor,
            audio_rate_burst_s=self.audio_rate_burst_s,
            max_outbound_bytes=self.max_outbound_bytes,
            max_event_bytes=self.max_event_bytes,
            max_event_depth=self.max_event_depth,
            ping_interval_s=self.ping_interval_s,
            input=self.conversation().input,
        )

    def client_limits(self) -> ClientLimits:
        return ClientLimits(
            max_sessions=self.max_sessions,
            max_sessions_per_client=self.max_sessions_per_client,
            api_requests_per_minute=self.api_requests_per_minute,
            api_uploads_per_minute=self.api_uploads_per_minute,
            trusted_proxies=tuple(self.proxy_list()),
        )

    def access(self) -> AccessSettings:
        return AccessSettings(
            keys=tuple(self.key_list()),
            origins=tuple(self.origin_list()),
            hosts=tuple(self.host_list()),
            token_ttl_s=self.token_ttl_s,
        )

    def api(self) -> ApiSettings:
        return ApiSettings(
            max_speech_chars=self.api_max_speech_chars,
            max_upload_bytes=self.api_max_upload_bytes,
            max_transcription_s=self.api_max_transcription_s,
            transcription_segment_s=self.api_transcription_segment_s,
            parallel_segments=self.api_parallel_segments,
            voices_timeout_s=self.api_voices_timeout_s,
            max_dialogues=self.api_max_dialogues,
            dialogue_keep_s=self.api_dialogue_keep_s,
            voice=self.voice,
        )


@dataclass(frozen=True)
class InputLimits:
    """What a client may send within a session (the connection guard holds the audio speed)."""

    max_frame_ms: int
    max_text_chars: int
    text_inputs_per_minute: int
    text_inputs_burst: int
    push_to_talk_max_s: float


@dataclass(frozen=True)
class ReplySettings:
    output_sample_rate: int  # the gateway's; a session may ask for another
    voice: str
    first_clause_min_chars: int
    first_piece_max_words: int  # 0: the first piece waits for a clause or sentence end
    llm_max_tokens: int
    history_turns: int  # past turns the LLM sees
    stall_timeout_s: float


@dataclass(frozen=True)
class HistorySettings:
    max_turns: int
    max_tokens: int


@dataclass(frozen=True)
class ConversationSettings:
    """What one conversation session needs."""

    input: InputLimits
    reply: ReplySettings
    history: HistorySettings
    audio_buffer_s: float
    echo_guard_s: float
    playback_margin_s: float
    end_of_turn_threshold: float
    incomplete_threshold: float
    incomplete_turn_max_silence_s: float
    doubtful_turn_max_silence_s: float
    min_word_confidence: float
    language_switch_probability: float = 0.8
    language_switch_min_audio_s: float = 1.5
    llm_prefill: bool = True  # read partial transcripts into the LLM's cache while the user speaks


@dataclass(frozen=True)
class ModelServiceSettings:
    first_answer_timeout_s: float
    idle_timeout_s: float


@dataclass(frozen=True)
class DiscoverySettings:
    interval_s: float
    window_s: float
    instance_ttl_s: float
    health_window_s: float


@dataclass(frozen=True)
class ConnectionSettings:
    """One conversation socket's limits."""

    start_timeout_s: float
    idle_s: float
    max_errors_per_second: int
    audio_rate_factor: float
    audio_rate_burst_s: float
    max_outbound_bytes: int
    max_event_bytes: int
    max_event_depth: int
    ping_interval_s: float
    input: InputLimits


@dataclass(frozen=True)
class ClientLimits:
    """Per client and per gateway."""

    max_sessions: int
    max_sessions_per_client: int
    api_requests_per_minute: int
    api_uploads_per_minute: int
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]


@dataclass(frozen=True)
class AccessSettings:
    keys: tuple[str, ...]
    origins: tuple[str, ...]
    hosts: tuple[str, ...]
    token_ttl_s: float


@dataclass(frozen=True)
class ApiSettings:
    """The HTTP API's limits (/v1/audio/*, /v1/voices, /v1/dialogues)."""

    max_speech_chars: int
    max_upload_bytes: int
    max_transcription_s: float
    transcription_segment_s: float
    parallel_segments: int
    voices_timeout_s: float
    max_dialogues: int
    dialogue_keep_s: float
    voice: str
