"""The `/v1/conversation` WebSocket protocol (see docs/protocol.md).

Client events are parsed into typed pydantic models; server events are built
by `event()` so every one carries its `type`.
"""

from __future__ import annotations

import json
import re
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

# A voice id as the TTS service names voices (built-in or stored); nothing that could be a path.
VOICE_ID = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,99}$"


class ErrorCode(StrEnum):
    INVALID_JSON = "invalid_json"
    EVENT_TOO_LARGE = "event_too_large"
    UNKNOWN_EVENT = "unknown_event"
    INVALID_EVENT = "invalid_event"
    SESSION_NOT_STARTED = "session_not_started"
    SESSION_ALREADY_STARTED = "session_already_started"
    BAD_AUDIO = "bad_audio"
    FRAME_TOO_LARGE = "frame_too_large"
    TEXT_TOO_LONG = "text_too_long"
    TOO_MANY_SESSIONS = "too_many_sessions"
    SERVICE_UNAVAILABLE = "service_unavailable"
    SERVICE_CRASHED = "service_crashed"
    SERVICE_TIMEOUT = "service_timeout"
    SERVICE_ERROR = "service_error"
    INTERNAL_ERROR = "internal_error"
    UNKNOWN_VOICE = "unknown_voice"
    VOICE_UNAVAILABLE = "voice_unavailable"
    UNSUPPORTED_LANGUAGE = "unsupported_language"
    EMPTY_TURN = "empty_turn"
    GATEWAY_DRAINING = "gateway_draining"
    # Limits per client and per gateway (limits.py)
    TOO_MANY_CLIENT_SESSIONS = "too_many_client_sessions"
    SESSION_START_TIMEOUT = "session_start_timeout"
    AUDIO_TOO_FAST = "audio_too_fast"
    RATE_LIMITED = "rate_limited"
    ERRORS_SUPPRESSED = "errors_suppressed"
    TURN_TOO_LONG = "turn_too_long"
    SESSION_NOT_FOUND = "session_not_found"


class ProtocolError(Exception):
    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class _Event(BaseModel):
    model_config = ConfigDict(extra="forbid")


class VadOptions(_Event):
    """Turn detection tuning; unset values take the VAD service's defaults."""

    threshold: float | None = Field(default=None, gt=0, lt=1)
    min_silence_ms: int | None = Field(default=None, ge=100, le=5000)
    min_speech_ms: int | None = Field(default=None, ge=0, le=2000)
    pause_ms: int | None = Field(default=None, ge=0, le=5000)


class SessionStart(_Event):
    type: Literal["session.start"]
    input_sample_rate: int = Field(default=16000, ge=8000, le=48000)
    # The rate the client wants reply audio at (the TTS service resamples to it); None: the
    # gateway's PARLEY_GATEWAY_OUTPUT_SAMPLE_RATE, fixed at session start and kept on resume.
    output_sample_rate: int | None = Field(default=None, ge=8000, le=48000)
    # A voice id as the TTS service lists it (checked against it at session start).
    voice: str | None = Field(default=None, pattern=VOICE_ID)
    system_prompt: str | None = Field(default=None, max_length=4000)
    language: str | None = Field(default=None, pattern="^[a-z]{2,3}$")
    # "vad": the server ends turns on silence; "push_to_talk": the client ends
    # each turn with input.commit.
    turn_detection: Literal["vad", "push_to_talk"] = "vad"
    vad: VadOptions = Field(default_factory=VadOptions)
    # Start the reply at a pause in speech, before the end of turn is certain.
    preemptive: bool = True
    # Resume an earlier session (after a reconnect, on any gateway): its id and the
    # resume_token its session.started gave. Fields given here override the stored ones.
    session_id: str | None = Field(default=None, pattern=r"^sess_[0-9a-f]{16}$")
    resume_token: str | None = Field(default=None, min_length=16, max_length=128)

    def conversation_options(self) -> dict[str, Any]:
        """What a stored session keeps of its start (not the resume credentials)."""
        return self.model_dump(exclude={"session_id", "resume_token"})

    def over(self, stored: dict[str, Any]) -> SessionStart:
        """These options over a stored session's: what this start sets explicitly wins."""
        given = self.model_dump(exclude_unset=True, exclude={"session_id", "resume_token"})
        return SessionStart.model_validate({**stored, **given, "type": "session.start"})


class TextInput(_Event):
    type: Literal["text.input"]
    text: str = Field(min_length=1)


class InputCommit(_Event):
    """End the user's turn now (push-to-talk release; also valid in vad mode)."""

    type: Literal["input.commit"]


class ResponseCancel(_Event):
    type: Literal["response.cancel"]


class AudioPlaying(_Event):
    """The client started playing a reply's audio now: the echo guard is timed from here."""

    type: Literal["response.audio.playing"]
    response_id: str


class AudioPlayed(_Event):
    type: Literal["response.audio.played"]
    response_id: str
    played_ms: int = Field(ge=0)


class SessionEnd(_Event):
    type: Literal["session.end"]


ClientEvent = Annotated[
    SessionStart | TextInput | InputCommit | ResponseCancel | AudioPlaying | AudioPlayed | SessionEnd,
    Field(discriminator="type"),
]
_client_event: TypeAdapter[ClientEvent] = TypeAdapter(ClientEvent)
CLIENT_EVENT_TYPES = {
    "session.start",
    "text.input",
    "input.commit",
    "response.cancel",
    "response.audio.playing",
    "response.audio.played",
    "session.end",
}


# JSON strings, so that brackets inside them are not counted as nesting.
_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_BRACKETS = re.compile(r"[\[\]{}]")


def nests_deeper(raw: str, limit: int) -> bool:
    """Whether `raw` nests arrays and objects more than `limit` deep, seen without parsing it."""
    depth = 0
    for bracket in _BRACKETS.finditer(_JSON_STRING.sub("", raw)):
        depth += 1 if bracket.group() in "[{" else -1
        if depth > limit:
            return True
    return False


def parse_client_event(raw: str, max_bytes: int = 65536, max_depth: int = 16) -> ClientEvent:
    """A client event, validated; size and nesting are checked before anything parses it."""
    if len(raw) > max_bytes:  # characters: at most as many as bytes
        raise ProtocolError(
            ErrorCode.EVENT_TOO_LARGE, f"an event may be at most {max_bytes} bytes; this one is {len(raw)} characters"
        )
    if nests_deeper(raw, max_depth):
        raise ProtocolError(ErrorCode.INVALID_JSON, f"events may nest at most {max_depth} levels deep")
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise ProtocolError(ErrorCode.INVALID_JSON, f"text frames must be JSON: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("type"), str):
        raise ProtocolError(ErrorCode.INVALID_EVENT, "an event is a JSON object with a string 'type'")
    if data["type"] not in CLIENT_EVENT_TYPES:
        raise ProtocolError(
            ErrorCode.UNKNOWN_EVENT,
            f"unknown event type {clip(data['type'])!r}; known: {', '.join(sorted(CLIENT_EVENT_TYPES))}",
        )
    try:
        return _client_event.validate_python(data)
    except ValidationError as exc:
        raise ProtocolError(ErrorCode.INVALID_EVENT, f"bad {data['type']}: {describe(exc)}") from None


ECHO_CHARS = 40  # the most of a client's own text an error message repeats


def clip(text: str, limit: int = ECHO_CHARS) -> str:
    """`text` cut to `limit` characters (marked with …): what an error may repeat of client input."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


# Short reasons for pydantic's error types: the limit, never the value that broke it.
_REASONS = {
    "missing": "is required",
    "extra_forbidden": "is not a field of this event",
    "greater_than_equal": "must be ≥ {ge}",
    "greater_than": "must be > {gt}",
    "less_than_equal": "must be ≤ {le}",
    "less_than": "must be < {lt}",
    "string_too_short": "must have at least {min_length} character(s)",
    "string_too_long": "must have at most {max_length} characters",
    "string_pattern_mismatch": "must match {pattern}",
    "literal_error": "must be {expected}",
    "string_type": "must be a string",
    "int_type": "must be an integer",
    "int_parsing": "must be an integer",
    "int_from_float": "must be a whole number",
    "float_type": "must be a number",
    "float_parsing": "must be a number",
    "bool_type": "must be true or false",
    "bool_parsing": "must be true or false",
    "model_type": "must be an object",
    "dict_type": "must be an object",
}


def describe(exc: ValidationError, most: int = 3) -> str:
    """`field.path: short reason; ...` for a validation error, without pydantic's URL or the input."""
    parts = []
    for error in exc.errors()[:most]:
        # The first part of the location is the union's tag (the event type): the message names it already.
        where = ".".join(clip(str(part), ECHO_CHARS) for part in error["loc"][1:]) or "event"
        template = _REASONS.get(error["type"])
        if error["type"] == "string_too_short" and error.get("ctx", {}).get("min_length") == 1:
            template = "must not be empty"
        try:
            reason = template.format(**error.get("ctx", {})) if template else error["msg"]
        except (KeyError, IndexError):
            reason = error["msg"]
        parts.append(f"{where}: {reason}")
    more = len(exc.errors()) - most
    return "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")


def event(type_: str, **fields: Any) -> dict[str, Any]:
    return {"type": type_, **fields}


def error_event(code: ErrorCode, message: str) -> dict[str, Any]:
    return event("error", code=code.value, message=message)
