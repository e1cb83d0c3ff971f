from parley.audio.v1 import audio_pb2 as _audio_pb2
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class VadEvent(_message.Message):
    __slots__ = ("kind", "timestamp_s", "probability", "decided_at_s", "end_of_turn", "end_of_turn_ms")
    class Kind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        KIND_UNSPECIFIED: _ClassVar[VadEvent.Kind]
        SPEECH_STARTED: _ClassVar[VadEvent.Kind]
        SPEECH_STOPPED: _ClassVar[VadEvent.Kind]
        SPEECH_PAUSED: _ClassVar[VadEvent.Kind]
        SPEECH_RESUMED: _ClassVar[VadEvent.Kind]
        PAUSE_JUDGED: _ClassVar[VadEvent.Kind]
    KIND_UNSPECIFIED: VadEvent.Kind
    SPEECH_STARTED: VadEvent.Kind
    SPEECH_STOPPED: VadEvent.Kind
    SPEECH_PAUSED: VadEvent.Kind
    SPEECH_RESUMED: VadEvent.Kind
    PAUSE_JUDGED: VadEvent.Kind
    KIND_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_S_FIELD_NUMBER: _ClassVar[int]
    PROBABILITY_FIELD_NUMBER: _ClassVar[int]
    DECIDED_AT_S_FIELD_NUMBER: _ClassVar[int]
    END_OF_TURN_FIELD_NUMBER: _ClassVar[int]
    END_OF_TURN_MS_FIELD_NUMBER: _ClassVar[int]
    kind: VadEvent.Kind
    timestamp_s: float
    probability: float
    decided_at_s: float
    end_of_turn: float
    end_of_turn_ms: float
    def __init__(self, kind: _Optional[_Union[VadEvent.Kind, str]] = ..., timestamp_s: _Optional[float] = ..., probability: _Optional[float] = ..., decided_at_s: _Optional[float] = ..., end_of_turn: _Optional[float] = ..., end_of_turn_ms: _Optional[float] = ...) -> None: ...
