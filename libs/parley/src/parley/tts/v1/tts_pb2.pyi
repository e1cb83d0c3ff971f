from parley.audio.v1 import audio_pb2 as _audio_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SynthesizeRequest(_message.Message):
    __slots__ = ("text", "voice", "sample_rate", "speed", "engine", "language")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    VOICE_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_RATE_FIELD_NUMBER: _ClassVar[int]
    SPEED_FIELD_NUMBER: _ClassVar[int]
    ENGINE_FIELD_NUMBER: _ClassVar[int]
    LANGUAGE_FIELD_NUMBER: _ClassVar[int]
    text: str
    voice: str
    sample_rate: int
    speed: float
    engine: str
    language: str
    def __init__(self, text: _Optional[str] = ..., voice: _Optional[str] = ..., sample_rate: _Optional[int] = ..., speed: _Optional[float] = ..., engine: _Optional[str] = ..., language: _Optional[str] = ...) -> None: ...

class SpeakStart(_message.Message):
    __slots__ = ("voice", "sample_rate", "speed", "engine", "conversation_id", "language")
    VOICE_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_RATE_FIELD_NUMBER: _ClassVar[int]
    SPEED_FIELD_NUMBER: _ClassVar[int]
    ENGINE_FIELD_NUMBER: _ClassVar[int]
    CONVERSATION_ID_FIELD_NUMBER: _ClassVar[int]
    LANGUAGE_FIELD_NUMBER: _ClassVar[int]
    voice: str
    sample_rate: int
    speed: float
    engine: str
    conversation_id: str
    language: str
    def __init__(self, voice: _Optional[str] = ..., sample_rate: _Optional[int] = ..., speed: _Optional[float] = ..., engine: _Optional[str] = ..., conversation_id: _Optional[str] = ..., language: _Optional[str] = ...) -> None: ...

class SpeakRequest(_message.Message):
    __slots__ = ("start", "text", "end_of_text")
    START_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    END_OF_TEXT_FIELD_NUMBER: _ClassVar[int]
    start: SpeakStart
    text: str
    end_of_text: bool
    def __init__(self, start: _Optional[_Union[SpeakStart, _Mapping]] = ..., text: _Optional[str] = ..., end_of_text: _Optional[bool] = ...) -> None: ...

class SpeakDone(_message.Message):
    __slots__ = ("audio_s", "speaker_similarity")
    AUDIO_S_FIELD_NUMBER: _ClassVar[int]
    SPEAKER_SIMILARITY_FIELD_NUMBER: _ClassVar[int]
    audio_s: float
    speaker_similarity: float
    def __init__(self, audio_s: _Optional[float] = ..., speaker_similarity: _Optional[float] = ...) -> None: ...

class SpeakResponse(_message.Message):
    __slots__ = ("audio", "piece", "done")
    AUDIO_FIELD_NUMBER: _ClassVar[int]
    PIECE_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    audio: _audio_pb2.AudioChunk
    piece: int
    done: SpeakDone
    def __init__(self, audio: _Optional[_Union[_audio_pb2.AudioChunk, _Mapping]] = ..., piece: _Optional[int] = ..., done: _Optional[_Union[SpeakDone, _Mapping]] = ...) -> None: ...

class DialogueTurn(_message.Message):
    __slots__ = ("speaker", "text")
    SPEAKER_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    speaker: int
    text: str
    def __init__(self, speaker: _Optional[int] = ..., text: _Optional[str] = ...) -> None: ...

class DialogueRequest(_message.Message):
    __slots__ = ("turns", "script", "voices", "sample_rate", "engine")
    class VoicesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: int
        value: str
        def __init__(self, key: _Optional[int] = ..., value: _Optional[str] = ...) -> None: ...
    TURNS_FIELD_NUMBER: _ClassVar[int]
    SCRIPT_FIELD_NUMBER: _ClassVar[int]
    VOICES_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_RATE_FIELD_NUMBER: _ClassVar[int]
    ENGINE_FIELD_NUMBER: _ClassVar[int]
    turns: _containers.RepeatedCompositeFieldContainer[DialogueTurn]
    script: str
    voices: _containers.ScalarMap[int, str]
    sample_rate: int
    engine: str
    def __init__(self, turns: _Optional[_Iterable[_Union[DialogueTurn, _Mapping]]] = ..., script: _Optional[str] = ..., voices: _Optional[_Mapping[int, str]] = ..., sample_rate: _Optional[int] = ..., engine: _Optional[str] = ...) -> None: ...

class TurnDone(_message.Message):
    __slots__ = ("turn", "turns_total", "audio_s", "speaker_similarity")
    TURN_FIELD_NUMBER: _ClassVar[int]
    TURNS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    AUDIO_S_FIELD_NUMBER: _ClassVar[int]
    SPEAKER_SIMILARITY_FIELD_NUMBER: _ClassVar[int]
    turn: int
    turns_total: int
    audio_s: float
    speaker_similarity: float
    def __init__(self, turn: _Optional[int] = ..., turns_total: _Optional[int] = ..., audio_s: _Optional[float] = ..., speaker_similarity: _Optional[float] = ...) -> None: ...

class DialogueStarted(_message.Message):
    __slots__ = ("turns_total", "speakers", "sample_rate")
    TURNS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    SPEAKERS_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_RATE_FIELD_NUMBER: _ClassVar[int]
    turns_total: int
    speakers: _containers.RepeatedScalarFieldContainer[int]
    sample_rate: int
    def __init__(self, turns_total: _Optional[int] = ..., speakers: _Optional[_Iterable[int]] = ..., sample_rate: _Optional[int] = ...) -> None: ...

class DialogueResponse(_message.Message):
    __slots__ = ("audio", "turn", "turn_done", "started")
    AUDIO_FIELD_NUMBER: _ClassVar[int]
    TURN_FIELD_NUMBER: _ClassVar[int]
    TURN_DONE_FIELD_NUMBER: _ClassVar[int]
    STARTED_FIELD_NUMBER: _ClassVar[int]
    audio: _audio_pb2.AudioChunk
    turn: int
    turn_done: TurnDone
    started: DialogueStarted
    def __init__(self, audio: _Optional[_Union[_audio_pb2.AudioChunk, _Mapping]] = ..., turn: _Optional[int] = ..., turn_done: _Optional[_Union[TurnDone, _Mapping]] = ..., started: _Optional[_Union[DialogueStarted, _Mapping]] = ...) -> None: ...

class Voice(_message.Message):
    __slots__ = ("id", "name", "language", "native_sample_rate", "engine", "engines", "cloned", "transcript", "reference_duration_s", "created_at_unix_ms")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    LANGUAGE_FIELD_NUMBER: _ClassVar[int]
    NATIVE_SAMPLE_RATE_FIELD_NUMBER: _ClassVar[int]
    ENGINE_FIELD_NUMBER: _ClassVar[int]
    ENGINES_FIELD_NUMBER: _ClassVar[int]
    CLONED_FIELD_NUMBER: _ClassVar[int]
    TRANSCRIPT_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_DURATION_S_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    language: str
    native_sample_rate: int
    engine: str
    engines: _containers.RepeatedScalarFieldContainer[str]
    cloned: bool
    transcript: str
    reference_duration_s: float
    created_at_unix_ms: int
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., language: _Optional[str] = ..., native_sample_rate: _Optional[int] = ..., engine: _Optional[str] = ..., engines: _Optional[_Iterable[str]] = ..., cloned: _Optional[bool] = ..., transcript: _Optional[str] = ..., reference_duration_s: _Optional[float] = ..., created_at_unix_ms: _Optional[int] = ...) -> None: ...

class CreateVoiceRequest(_message.Message):
    __slots__ = ("name", "language", "transcript", "audio")
    NAME_FIELD_NUMBER: _ClassVar[int]
    LANGUAGE_FIELD_NUMBER: _ClassVar[int]
    TRANSCRIPT_FIELD_NUMBER: _ClassVar[int]
    AUDIO_FIELD_NUMBER: _ClassVar[int]
    name: str
    language: str
    transcript: str
    audio: bytes
    def __init__(self, name: _Optional[str] = ..., language: _Optional[str] = ..., transcript: _Optional[str] = ..., audio: _Optional[bytes] = ...) -> None: ...

class GetVoiceRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class ListVoicesRequest(_message.Message):
    __slots__ = ("engine",)
    ENGINE_FIELD_NUMBER: _ClassVar[int]
    engine: str
    def __init__(self, engine: _Optional[str] = ...) -> None: ...

class ListVoicesResponse(_message.Message):
    __slots__ = ("voices", "default_voice", "engines")
    VOICES_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_VOICE_FIELD_NUMBER: _ClassVar[int]
    ENGINES_FIELD_NUMBER: _ClassVar[int]
    voices: _containers.RepeatedCompositeFieldContainer[Voice]
    default_voice: str
    engines: _containers.RepeatedCompositeFieldContainer[Engine]
    def __init__(self, voices: _Optional[_Iterable[_Union[Voice, _Mapping]]] = ..., default_voice: _Optional[str] = ..., engines: _Optional[_Iterable[_Union[Engine, _Mapping]]] = ...) -> None: ...

class Engine(_message.Message):
    __slots__ = ("name", "cloning", "speakers", "native_sample_rate")
    NAME_FIELD_NUMBER: _ClassVar[int]
    CLONING_FIELD_NUMBER: _ClassVar[int]
    SPEAKERS_FIELD_NUMBER: _ClassVar[int]
    NATIVE_SAMPLE_RATE_FIELD_NUMBER: _ClassVar[int]
    name: str
    cloning: bool
    speakers: int
    native_sample_rate: int
    def __init__(self, name: _Optional[str] = ..., cloning: _Optional[bool] = ..., speakers: _Optional[int] = ..., native_sample_rate: _Optional[int] = ...) -> None: ...

class DeleteVoiceRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class DeleteVoiceResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...
