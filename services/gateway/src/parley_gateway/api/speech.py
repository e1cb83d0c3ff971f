"""OpenAI-compatible text to speech: `POST /v1/audio/speech`, streamed as it is synthesised."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Literal

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field

from parley.audio.v1.audio_pb2 import AudioChunk
from parley.tts.v1 import tts_pb2
from parley_gateway.api.encoding import MEDIA_TYPES, AudioFormat, encoder_for
from parley_gateway.api.errors import ApiError, from_service
from parley_gateway.config import ApiSettings
from parley_gateway.protocol import VOICE_ID, ErrorCode
from parley_gateway.routing.model_services import GrpcServices, ServiceError

router = APIRouter(tags=["audio"])

SAMPLE_RATE = 24000  # OpenAI's `pcm` is 24 kHz 16-bit mono; every format here uses it
# OpenAI's model names speak with whatever engine has the voice; ours pick an engine.
OPENAI_MODELS = {"tts-1", "tts-1-hd", "gpt-4o-mini-tts", "gpt-4o-tts", "parley"}
ENGINES = {"piper", "fireredtts2"}
# OpenAI's voice names, which scripts written for OpenAI send: they get the default voice.
OPENAI_VOICES = {"alloy", "ash", "ballad", "coral", "echo", "fable", "nova", "onyx", "sage", "shimmer", "verse"}
VOICE_ID_OR_DEFAULT = f"^$|{VOICE_ID}"


class SpeechRequest(BaseModel):
    model: str = Field(
        default="tts-1",
        description="tts-1, tts-1-hd, gpt-4o-mini-tts or parley: any engine; piper or fireredtts2: that engine.",
    )
    input: str = Field(min_length=1, description="The text to speak.")
    voice: str = Field(
        default="",
        pattern=VOICE_ID_OR_DEFAULT,
        description="A voice id from /v1/voices (built-in or cloned); OpenAI's voice names and empty mean the default.",
    )
    response_format: AudioFormat = "mp3"
    speed: float = Field(default=1.0, ge=0.25, le=4.0, description="0.5-2.0 here (OpenAI's range is wider).")
    instructions: str | None = Field(default=None, description="Accepted for compatibility; not used.")
    stream_format: Literal["audio"] | None = Field(default=None, description="Only raw audio streams (no SSE).")


def services_of(request: Request) -> GrpcServices:
    services: GrpcServices | None = request.app.state.gateway.services
    if services is None:
        raise ApiError(503, "the gateway is not connected to NATS yet", "service_unavailable")
    return services


def settings_of(request: Request) -> ApiSettings:
    """The HTTP API's section of the settings."""
    settings: ApiSettings = request.app.state.gateway.api_settings
    return settings


async def stream_speech(
    services: GrpcServices, synthesis: tts_pb2.SynthesizeRequest, fmt: AudioFormat
) -> StreamingResponse:
    """Audio of one synthesis in `fmt`; errors before the first audio become HTTP errors."""
    chunks = services.synthesize(synthesis)
    try:
        first: AudioChunk | None = await anext(chunks, None)
    except ServiceError as error:
        voice = error.status is not None or error.code == ErrorCode.VOICE_UNAVAILABLE
        raise from_service(error, "voice" if voice else None) from None
    encoder = encoder_for(fmt, synthesis.sample_rate)

    async def body() -> AsyncIterator[bytes]:
        # Encoding 100-200 ms of audio takes well under a millisecond: it stays on the loop.
        try:
            if first is not None:
                yield encoder.push(first.pcm)
            async for chunk in chunks:
                yield encoder.push(chunk.pcm)
            yield encoder.finish()
        finally:
            close = getattr(chunks, "aclose", None)
            if close is not None:
                await close()  # a client that hung up stops the synthesis

    return StreamingResponse(body(), media_type=MEDIA_TYPES[fmt])


@router.post("/v1/audio/speech", response_class=StreamingResponse)
async def create_speech(body: SpeechRequest, request: Request) -> StreamingResponse:
    """Speak `input`; the audio streams back while it is synthesised (first bytes in a fraction of a second)."""
    settings = settings_of(request)
    if len(body.input) > settings.max_speech_chars:
        raise ApiError(
            400,
            f"input is {len(body.input)} characters; the limit is {settings.max_speech_chars} "
            "(PARLEY_GATEWAY_API_MAX_SPEECH_CHARS)",
            "input_too_long",
            "input",
        )
    if body.model not in OPENAI_MODELS | ENGINES:
        known = ", ".join(sorted(OPENAI_MODELS | ENGINES))
        raise ApiError(400, f"unknown model {body.model!r}; use one of {known}", "unknown_model", "model")
    if not 0.5 <= body.speed <= 2.0:
        raise ApiError(
            400, f"speed {body.speed:g} is outside 0.5-2.0, the range voices here speak", "bad_speed", "speed"
        )
    if body.stream_format not in (None, "audio"):
        raise ApiError(400, "only stream_format 'audio' is supported", "unsupported", "stream_format")
    voice = "" if body.voice in OPENAI_VOICES else body.voice
    synthesis = tts_pb2.SynthesizeRequest(
        text=body.input,
        voice=voice or settings.voice,
        sample_rate=SAMPLE_RATE,
        speed=body.speed,
        engine=body.model if body.model in ENGINES else "",
    )
    return await stream_speech(services_of(request), synthesis, body.response_format)
