"""Voices: `/v1/voices`, every voice the TTS service speaks, and stored (cloned) voices made from an upload."""

from __future__ import annotations

import re
from typing import Annotated, Any

from fastapi import APIRouter, File, Form, Request, Response, UploadFile
from fastapi.responses import StreamingResponse

from parley.tts.v1 import tts_pb2
from parley_gateway.api.encoding import AudioFormat
from parley_gateway.api.errors import ApiError, from_service
from parley_gateway.api.speech import SAMPLE_RATE, services_of, settings_of, stream_speech
from parley_gateway.protocol import VOICE_ID
from parley_gateway.routing.model_services import ServiceError

router = APIRouter(tags=["voices"])

PREVIEW_TEXT = "Hello! This is how I sound. I hope you like my voice."


def voice_json(voice: tts_pb2.Voice) -> dict[str, Any]:
    return {
        "id": voice.id,
        "name": voice.name,
        "language": voice.language,
        "cloned": voice.cloned,
        "engine": voice.engine or None,
        "engines": list(voice.engines),
        "native_sample_rate": voice.native_sample_rate,
        "transcript": voice.transcript if voice.cloned else None,
        "reference_duration_s": round(voice.reference_duration_s, 3) if voice.cloned else None,
        "created_at": voice.created_at_unix_ms // 1000 if voice.cloned else None,
    }


async def _call(request: Request, call: Any, param: str | None = None) -> Any:
    services = services_of(request)
    try:
        return await services.tts_unary(call, settings_of(request).voices_timeout_s)
    except ServiceError as error:
        raise from_service(error, param) from None


@router.get("/v1/voices")
async def list_voices(request: Request) -> dict[str, Any]:
    """Built-in voices of every engine and stored (cloned) voices, each with the engines that can speak it."""
    try:  # every instance's: a voice lists each engine that speaks it somewhere
        answer = await services_of(request).list_voices(settings_of(request).voices_timeout_s)
    except ServiceError as error:
        raise from_service(error) from None
    return {
        "voices": [voice_json(v) for v in answer.voices],
        "default_voice": answer.default_voice,
        "engines": [{"name": e.name, "cloning": e.cloning, "speakers": e.speakers} for e in answer.engines],
        "cloning_available": any(e.cloning for e in answer.engines),
    }


@router.post("/v1/voices", status_code=201)
async def create_voice(
    request: Request,
    file: Annotated[UploadFile, File(description="3-30 s of one speaker: wav, mp3, ogg, webm, flac, m4a")],
    name: Annotated[str, Form(min_length=1, max_length=64)],
    transcript: Annotated[str, Form(min_length=1, description="What the recording says, word for word")],
    language: Annotated[str, Form(pattern=r"^[a-z]{2,3}$")] = "en",
) -> dict[str, Any]:
    """Store a voice for every TTS instance; the upload is checked (decodes, length, level, clipping) first."""
    limit = settings_of(request).max_upload_bytes
    audio = await file.read(limit + 1)
    if len(audio) > limit:
        raise ApiError(
            413, f"the upload is larger than {limit:,} bytes (PARLEY_GATEWAY_API_MAX_UPLOAD_BYTES)", "too_large", "file"
        )
    made = tts_pb2.CreateVoiceRequest(name=name, transcript=transcript, language=language, audio=audio)
    voice: tts_pb2.Voice = await _call(request, lambda stub: stub.CreateVoice(made), "file")
    return voice_json(voice)


@router.get("/v1/voices/{voice_id}")
async def get_voice(voice_id: str, request: Request) -> dict[str, Any]:
    _check_id(voice_id)
    voice: tts_pb2.Voice = await _call(request, lambda stub: stub.GetVoice(tts_pb2.GetVoiceRequest(id=voice_id)))
    return voice_json(voice)


@router.delete("/v1/voices/{voice_id}")
async def delete_voice(voice_id: str, request: Request) -> dict[str, Any]:
    _check_id(voice_id)
    await _call(request, lambda stub: stub.DeleteVoice(tts_pb2.DeleteVoiceRequest(id=voice_id)))
    return {"id": voice_id, "deleted": True}


@router.get("/v1/voices/{voice_id}/preview", response_class=StreamingResponse)
async def preview_voice(
    voice_id: str, request: Request, text: str = PREVIEW_TEXT, response_format: AudioFormat = "wav"
) -> Response:
    """A short sample in this voice, streamed."""
    _check_id(voice_id)
    if len(text) > 300:
        raise ApiError(400, "a preview text is at most 300 characters", "input_too_long", "text")
    synthesis = tts_pb2.SynthesizeRequest(text=text, voice=voice_id, sample_rate=SAMPLE_RATE)
    return await stream_speech(services_of(request), synthesis, response_format)


def _check_id(voice_id: str) -> None:
    if not re.match(VOICE_ID, voice_id):
        raise ApiError(400, f"{voice_id[:40]!r} is not a voice id", "invalid_request", "voice_id")
