from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class AudioChunk(_message.Message):
    __slots__ = ("pcm", "sample_rate", "end_of_stream", "start_s")
    PCM_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_RATE_FIELD_NUMBER: _ClassVar[int]
    END_OF_STREAM_FIELD_NUMBER: _ClassVar[int]
    START_S_FIELD_NUMBER: _ClassVar[int]
    pcm: bytes
    sample_rate: int
    end_of_stream: bool
    start_s: float
    def __init__(self, pcm: _Optional[bytes] = ..., sample_rate: _Optional[int] = ..., end_of_stream: _Optional[bool] = ..., start_s: _Optional[float] = ...) -> None: ...
