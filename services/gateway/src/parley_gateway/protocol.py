"""The `/v1/conversation` WebSocket protocol (see docs/protocol.md).

Client events are parsed into typed pydantic models; server events are built
by `event()` so every one carries its `type`.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter


class ErrorCode(StrEnum):
    INVALID_JSON = "invalid_json"
    UNKNOWN_EVENT = "unknown_event"
    INVALID_EVENT = "invalid_event"
    SESSION_NOT_STARTED = "session_not_started"
    SESSION_ALREADY_STARTED = "session_already_started"
    BAD_AUDIO = "bad_audio"
    FRAME_TOO_LARGE = "frame_too_large"
    TEXT_TOO_LONG = "text_too_long"
    TOO_MANY_SESSIONS = "too_many_sessions"
    SERVICE_UNAVAILABLE = "service_unavailable"
    SERVICE_ERROR = "service_error"
    UNKNOWN_VOICE = "unknown_voice"
    EMPTY_TURN = "empty_turn"


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
    voice: str | None = Field(default=None, max_length=200)
    system_prompt: str | None = Field(default=None, max_length=4000)
    language: str | None = Field(default=None, pattern="^[a-z]{2,3}$")
    # "vad": the server ends turns on silence; "push_to_talk": the client ends
    # each turn with input.commit.
    turn_detection: Literal["vad", "push_to_talk"] = "vad"
    vad: VadOptions = Field(default_factory=VadOptions)
    # Start the reply at a pause in speech, before the end of turn is certain.
    preemptive: bool = True


class TextInput(_Event):
    type: Literal["text.input"]
    text: str = Field(min_length=1)


class InputCommit(_Event):
    """End the user's turn now (push-to-talk release; also valid in vad mode)."""

    type: Literal["input.commit"]


class ResponseCancel(_Event):
    type: Literal["response.cancel"]


class AudioPlayed(_Event):
    type: Literal["response.audio.played"]
    response_id: str
    played_ms: int = Field(ge=0)


class SessionEnd(_Event):
    type: Literal["session.end"]


ClientEvent = Annotated[
    SessionStart | TextInput | InputCommit | ResponseCancel | AudioPlayed | SessionEnd, Field(discriminator="type")
]
_client_event: TypeAdapter[ClientEvent] = TypeAdapter(ClientEvent)
CLIENT_EVENT_TYPES = {
    "session.start",
    "text.input",
    "input.commit",
    "response.cancel",
    "response.audio.played",
    "session.end",
}


def parse_client_event(raw: str) -> ClientEvent:
    import json

    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise ProtocolError(ErrorCode.INVALID_JSON, f"text frames must be JSON: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("type"), str):
        raise ProtocolError(ErrorCode.INVALID_EVENT, "an event is a JSON object with a string 'type'")
    if data["type"] not in CLIENT_EVENT_TYPES:
        raise ProtocolError(
            ErrorCode.UNKNOWN_EVENT,
            f"unknown event type {data['type']!r}; known: {', '.join(sorted(CLIENT_EVENT_TYPES))}",
        )
    try:
        return _client_event.validate_python(data)
    except ValueError as exc:
        raise ProtocolError(ErrorCode.INVALID_EVENT, f"bad {data['type']}: {exc}") from None


def event(type_: str, **fields: Any) -> dict[str, Any]:
    return {"type": type_, **fields}


def error_event(code: ErrorCode, message: str) -> dict[str, Any]:
    return event("error", code=code.value, message=message)
