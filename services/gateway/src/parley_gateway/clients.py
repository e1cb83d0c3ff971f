"""Calls to the model services, routed by the directory, with fail-over.

A stream whose instance turns out to be gone (UNAVAILABLE) before it has
answered anything is retried on another instance; once data has flowed, a
failure is reported to the session instead (replaying half a reply would
repeat audio the user already heard). gRPC's own retries never apply once
response headers arrived, hence this layer.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Callable
from typing import Any, TypeVar

import grpc

from parley.asr.v1 import asr_pb2, asr_pb2_grpc
from parley.audio.v1.audio_pb2 import AudioChunk
from parley.llm.v1 import llm_pb2, llm_pb2_grpc
from parley.tts.v1 import tts_pb2, tts_pb2_grpc
from parley.vad.v1 import vad_pb2, vad_pb2_grpc
from parley_gateway.discovery import NoInstance, ServiceDirectory
from parley_gateway.protocol import ErrorCode

Message = TypeVar("Message")
Metadata = tuple[tuple[str, str], ...]


class ServiceError(Exception):
    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _error(kind: str, exc: grpc.aio.AioRpcError) -> ServiceError:
    if exc.code() == grpc.StatusCode.NOT_FOUND and kind == "tts":
        return ServiceError(ErrorCode.UNKNOWN_VOICE, exc.details() or "unknown voice")
    if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED):
        return ServiceError(ErrorCode.SERVICE_UNAVAILABLE, f"{kind} service: {exc.details()}")
    return ServiceError(ErrorCode.SERVICE_ERROR, f"{kind} service: {exc.code().name}: {exc.details()}")


async def _stream(
    directory: ServiceDirectory, kind: str, open_call: Callable[[grpc.aio.Channel], Any]
) -> AsyncIterator[Any]:
    tried: set[str] = set()
    while True:
        try:
            async with directory.lease(kind, exclude=frozenset(tried)) as instance:
                assert instance.channel is not None
                call = open_call(instance.channel)
                answered = False
                try:
                    async for message in call:
                        answered = True
                        yield message
                    return
                except grpc.aio.AioRpcError as exc:
                    if exc.code() != grpc.StatusCode.UNAVAILABLE or answered:
                        raise _error(kind, exc) from None
                    directory.forget(kind, instance.record.id, "connection refused")
                    tried.add(instance.record.id)
                finally:
                    # Cancelling here is what stops the service's work on barge-in.
                    call.cancel()
        except NoInstance:
            raise ServiceError(ErrorCode.SERVICE_UNAVAILABLE, f"no {kind} service is available") from None


def generate(
    directory: ServiceDirectory, request: llm_pb2.GenerateRequest, timeout_s: float
) -> AsyncIterator[llm_pb2.TextDelta]:
    return _stream(directory, "llm", lambda ch: llm_pb2_grpc.ConversationStub(ch).Generate(request, timeout=timeout_s))


def synthesize(
    directory: ServiceDirectory, request: tts_pb2.SynthesizeRequest, timeout_s: float
) -> AsyncIterator[AudioChunk]:
    return _stream(
        directory, "tts", lambda ch: tts_pb2_grpc.TextToSpeechStub(ch).Synthesize(request, timeout=timeout_s)
    )


def transcribe(
    directory: ServiceDirectory, audio: AsyncIterable[AudioChunk], metadata: Metadata
) -> AsyncIterator[asr_pb2.Transcript]:
    # No fail-over once audio was consumed: the iterator cannot be replayed.
    return _stream(
        directory, "asr", lambda ch: asr_pb2_grpc.SpeechRecognitionStub(ch).Transcribe(audio, metadata=metadata)
    )


def detect(
    directory: ServiceDirectory, audio: AsyncIterable[AudioChunk], metadata: Metadata
) -> AsyncIterator[vad_pb2.VadEvent]:
    return _stream(directory, "vad", lambda ch: vad_pb2_grpc.VoiceActivityStub(ch).Detect(audio, metadata=metadata))
