from parley.audio.v1 import audio_pb2 as _audio_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class Transcript(_message.Message):
    __slots__ = ("text", "is_final", "language", "audio_duration_s", "processing_s", "stable_text", "language_probability", "confidence")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    IS_FINAL_FIELD_NUMBER: _ClassVar[int]
    LANGUAGE_FIELD_NUMBER: _ClassVar[int]
    AUDIO_DURATION_S_FIELD_NUMBER: _ClassVar[int]
    PROCESSING_S_FIELD_NUMBER: _ClassVar[int]
    STABLE_TEXT_FIELD_NUMBER: _ClassVar[int]
    LANGUAGE_PROBABILITY_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    text: str
    is_final: bool
    language: str
    audio_duration_s: float
    processing_s: float
    stable_text: str
    language_probability: float
    confidence: float
    def __init__(self, text: _Optional[str] = ..., is_final: _Optional[bool] = ..., language: _Optional[str] = ..., audio_duration_s: _Optional[float] = ..., processing_s: _Optional[float] = ..., stable_text: _Optional[str] = ..., language_probability: _Optional[float] = ..., confidence: _Optional[float] = ...) -> None: ...
