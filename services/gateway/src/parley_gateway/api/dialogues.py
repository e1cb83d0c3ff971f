"""Dialogues: `/v1/dialogues`, a `[S1]`-`[S4]` script spoken with a voice per speaker, as a job.

Submit a script and get a job at once (its first turn is already being spoken); follow its
progress, listen while it is made (`/audio` streams WAV from the start as the turns come),
and download the whole WAV when it is done.
"""

from __future__ import annotations

import re
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field

from parley.tts.v1 import tts_pb2
from parley_gateway.api.dialogue_jobs import DialogueJob, DialogueJobs, TooManyJobs
from parley_gateway.api.encoding import StreamingWavEncoder
from parley_gateway.api.errors import ApiError, from_service
from parley_gateway.api.speech import ENGINES, SAMPLE_RATE, VOICE_ID_OR_DEFAULT, services_of
from parley_gateway.protocol import ErrorCode
from parley_gateway.routing.model_services import ServiceError

router = APIRouter(tags=["dialogues"])


class Turn(BaseModel):
    speaker: int = Field(ge=1, le=4)
    text: str


class DialogueRequest(BaseModel):
    script: str = Field(default="", description='"[S1] Hi there! [S2] Hello." (or give `turns`)')
    turns: list[Turn] = Field(default_factory=list)
    voices: dict[int, str] = Field(
        default_factory=dict, description='Speaker (1-4) to voice id, e.g. {"1": "joe"}; others get distinct voices.'
    )
    model: str = Field(default="", description="An engine (piper, fireredtts2); empty: the one that has the voices.")
    sample_rate: int = Field(default=SAMPLE_RATE, ge=8000, le=48000)


def jobs_of(request: Request) -> DialogueJobs:
    jobs: DialogueJobs = request.app.state.gateway.dialogues
    return jobs


def job_of(request: Request, job_id: str) -> DialogueJob:
    job = jobs_of(request).get(job_id)
    if job is None:
        raise ApiError(404, f"no dialogue {job_id[:40]!r} (finished ones are kept for a while)", "not_found", "id")
    return job


@router.post("/v1/dialogues", status_code=202)
async def create_dialogue(body: DialogueRequest, request: Request) -> dict[str, Any]:
    """Start speaking a script; answers once the TTS service accepted it (a bad script is a 400 here)."""
    if body.model and body.model not in ENGINES:
        raise ApiError(
            400,
            f"unknown model {body.model!r}; use {', '.join(sorted(ENGINES))} or leave it empty",
            "unknown_model",
            "model",
        )
    for speaker, voice in body.voices.items():
        if not re.match(VOICE_ID_OR_DEFAULT, voice):
            raise ApiError(400, f"voices.{speaker}: {voice[:40]!r} is not a voice id", "invalid_request", "voices")
    jobs = jobs_of(request)
    try:
        jobs.make_room()
    except TooManyJobs as exc:
        raise ApiError(429, str(exc), "too_many_dialogues") from None
    dialogue = tts_pb2.DialogueRequest(
        script=body.script,
        turns=[tts_pb2.DialogueTurn(speaker=t.speaker, text=t.text) for t in body.turns],
        voices=body.voices,
        sample_rate=body.sample_rate,
        engine=body.model,
    )
    responses = services_of(request).dialogue(dialogue)
    try:
        first = await anext(responses, None)
    except ServiceError as error:
        raise from_service(error, "voices" if error.code == ErrorCode.VOICE_UNAVAILABLE else "script") from None
    if first is None or not first.HasField("started"):
        raise ApiError(502, "the TTS service did not start the dialogue", "service_error")
    return jobs.start(first.started, responses).summary()


@router.get("/v1/dialogues")
async def list_dialogues(request: Request) -> dict[str, Any]:
    return {"dialogues": [job.summary() for job in jobs_of(request).jobs.values()]}


@router.get("/v1/dialogues/{job_id}")
async def get_dialogue(job_id: str, request: Request) -> dict[str, Any]:
    """Status, progress (turns done of the total), and where each finished turn lies in the audio."""
    return job_of(request, job_id).summary()


@router.get("/v1/dialogues/{job_id}/audio", response_class=StreamingResponse)
async def stream_dialogue(job_id: str, request: Request) -> StreamingResponse:
    """WAV from the first turn on, streamed as the turns are spoken (the header says 'unknown length')."""
    job = job_of(request, job_id)
    encoder = StreamingWavEncoder(job.sample_rate)

    async def body() -> Any:
        yield encoder.push(b"")
        async for piece in job.stream():
            yield piece

    return StreamingResponse(body(), media_type="audio/wav")


@router.get("/v1/dialogues/{job_id}/audio.wav")
async def download_dialogue(job_id: str, request: Request) -> Response:
    """The whole dialogue as one WAV file, once it is done (409 while it is still being spoken)."""
    job = job_of(request, job_id)
    if job.status == "running":
        raise ApiError(
            409, f"the dialogue is still being spoken ({len(job.turns)} of {job.turns_total} turns)", "not_ready"
        )
    if job.status != "done":
        raise ApiError(409, f"the dialogue {job.status}: {job.error or 'no audio'}", "not_ready")
    headers = {"content-disposition": f'attachment; filename="{job.id}.wav"'}
    return Response(job.wav(), media_type="audio/wav", headers=headers)


@router.delete("/v1/dialogues/{job_id}")
async def delete_dialogue(job_id: str, request: Request) -> dict[str, Any]:
    """Stop a running dialogue (the TTS service stops at once) or forget a finished one."""
    if not await jobs_of(request).delete(job_id):
        raise ApiError(404, f"no dialogue {job_id[:40]!r}", "not_found", "id")
    return {"id": job_id, "deleted": True}
