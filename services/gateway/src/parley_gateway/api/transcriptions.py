"""OpenAI-compatible speech to text: `POST /v1/audio/transcriptions` for an uploaded file.

The file is decoded by FFmpeg (any common container; never trusting its name or headers),
resampled to 16 kHz, and split where people speak by the VAD service; each stretch of
speech (cut to at most `api_transcription_segment_s`) is one ASR stream, a few at once.
So a long recording is transcribed in pieces that fit the ASR service's limits, and every
piece has its time in the recording, which the srt, vtt and verbose_json formats need.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import numpy as np
import soxr
from fastapi import APIRouter, File, Form, Request, UploadFile
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from parley.audio.v1.audio_pb2 import AudioChunk
from parley.audio_files import AudioFileError, decode_audio
from parley.pcm import float_to_pcm16
from parley.vad.v1 import vad_pb2
from parley_gateway.api.errors import ApiError, from_service
from parley_gateway.api.speech import services_of, settings_of
from parley_gateway.routing.model_services import GrpcServices, ServiceError

router = APIRouter(tags=["audio"])

RATE = 16000
CHUNK_S = 0.5  # audio per message to the VAD and ASR services (below their 1 s chunk limit)
OPENAI_MODELS = {"whisper-1", "gpt-4o-transcribe", "gpt-4o-mini-transcribe", "parley"}
ResponseFormat = Literal["json", "text", "verbose_json", "srt", "vtt"]
# verbose_json names the language in English, lower case ("english"), as OpenAI's API does: these
# are Whisper's own names for its language codes (its tokenizer's table).
_WHISPER_LANGUAGES = (
    "en=english,zh=chinese,de=german,es=spanish,ru=russian,ko=korean,fr=french,ja=japanese,pt=portuguese,"
    "tr=turkish,pl=polish,ca=catalan,nl=dutch,ar=arabic,sv=swedish,it=italian,id=indonesian,hi=hindi,"
    "fi=finnish,vi=vietnamese,he=hebrew,uk=ukrainian,el=greek,ms=malay,cs=czech,ro=romanian,da=danish,"
    "hu=hungarian,ta=tamil,no=norwegian,th=thai,ur=urdu,hr=croatian,bg=bulgarian,lt=lithuanian,la=latin,"
    "mi=maori,ml=malayalam,cy=welsh,sk=slovak,te=telugu,fa=persian,lv=latvian,bn=bengali,sr=serbian,"
    "az=azerbaijani,sl=slovenian,kn=kannada,et=estonian,mk=macedonian,br=breton,eu=basque,is=icelandic,"
    "hy=armenian,ne=nepali,mn=mongolian,bs=bosnian,kk=kazakh,sq=albanian,sw=swahili,gl=galician,"
    "mr=marathi,pa=punjabi,si=sinhala,km=khmer,sn=shona,yo=yoruba,so=somali,af=afrikaans,oc=occitan,"
    "ka=georgian,be=belarusian,tg=tajik,sd=sindhi,gu=gujarati,am=amharic,yi=yiddish,lo=lao,uz=uzbek,"
    "fo=faroese,ht=haitian creole,ps=pashto,tk=turkmen,nn=nynorsk,mt=maltese,sa=sanskrit,"
    "lb=luxembourgish,my=myanmar,bo=tibetan,tl=tagalog,mg=malagasy,as=assamese,tt=tatar,haw=hawaiian,"
    "ln=lingala,ha=hausa,ba=bashkir,jw=javanese,su=sundanese,yue=cantonese"
)
LANGUAGE_NAMES: dict[str, str] = {
    code: name for code, name in (pair.split("=", 1) for pair in _WHISPER_LANGUAGES.split(","))
}


@dataclass
class Segment:
    start_s: float
    end_s: float
    text: str = ""
    language: str = ""
    language_probability: float = 0.0


def _chunks(pcm: bytes) -> list[AudioChunk]:
    step = int(RATE * CHUNK_S) * 2
    pieces = [AudioChunk(pcm=pcm[i : i + step], sample_rate=RATE) for i in range(0, len(pcm), step)]
    return [*pieces, AudioChunk(sample_rate=RATE, end_of_stream=True)]


def _requests(chunks: list[AudioChunk]) -> Any:
    async def requests() -> AsyncIterator[AudioChunk]:
        for chunk in chunks:
            yield chunk

    return requests


async def speech_stretches(services: GrpcServices, pcm: bytes, longest_s: float) -> list[Segment]:
    """Where the VAD service hears speech, cut to pieces of at most `longest_s`."""
    duration = len(pcm) / 2 / RATE
    found: list[Segment] = []
    start: float | None = None
    metadata = (("parley-pause-ms", "0"),)
    async for vad_event in services.detect(_requests(_chunks(pcm)), metadata):
        if vad_event.kind == vad_pb2.VadEvent.SPEECH_STARTED:
            start = vad_event.timestamp_s
        elif vad_event.kind == vad_pb2.VadEvent.SPEECH_STOPPED and start is not None:
            found.append(Segment(max(0.0, start), min(duration, vad_event.timestamp_s)))
            start = None
    if start is not None:  # speech ran to the end of the file
        found.append(Segment(max(0.0, start), duration))
    pieces: list[Segment] = []
    for segment in found:
        at = segment.start_s
        while segment.end_s - at > 0.05:
            end = min(segment.end_s, at + longest_s)
            pieces.append(Segment(at, end))
            at = end
    return pieces


async def transcribe_segment(services: GrpcServices, pcm: bytes, segment: Segment, language: str) -> None:
    audio = pcm[int(segment.start_s * RATE) * 2 : int(segment.end_s * RATE) * 2]
    metadata = (("parley-language", language),) if language else ()
    ended = time.monotonic()  # the whole piece is sent at once: its answer is owed from now
    async for result in services.transcribe(_requests(_chunks(audio)), metadata, lambda: ended):
        if result.is_final:
            segment.text, segment.language = result.text.strip(), result.language
            segment.language_probability = result.language_probability


def spoken_language(segments: list[Segment], asked: str) -> tuple[str, float]:
    """The recording's language (Whisper's English name) and how sure its detection was.

    Each piece is detected on its own: the language spoken longest wins, with the mean of its pieces'
    probabilities weighted by their length. A language asked for is the language, surely.
    """
    if asked:
        return LANGUAGE_NAMES.get(asked, asked), 1.0
    seconds: dict[str, float] = {}
    weighted: dict[str, float] = {}
    for segment in segments:
        if segment.text and segment.language:
            length = max(segment.end_s - segment.start_s, 1e-3)
            seconds[segment.language] = seconds.get(segment.language, 0.0) + length
            weighted[segment.language] = weighted.get(segment.language, 0.0) + length * segment.language_probability
    if not seconds:
        return "", 0.0
    code = max(seconds, key=lambda language: seconds[language])
    return LANGUAGE_NAMES.get(code, code), weighted[code] / seconds[code]


def _timestamp(seconds: float, separator: str) -> str:
    millis = round(seconds * 1000)
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{separator}{millis:03d}"


def subtitles(segments: list[Segment], fmt: Literal["srt", "vtt"]) -> str:
    spoken = [s for s in segments if s.text]
    if fmt == "srt":
        blocks = [
            f"{i}\n{_timestamp(s.start_s, ',')} --> {_timestamp(s.end_s, ',')}\n{s.text}\n"
            for i, s in enumerate(spoken, 1)
        ]
        return "\n".join(blocks)
    blocks = [f"{_timestamp(s.start_s, '.')} --> {_timestamp(s.end_s, '.')}\n{s.text}\n" for s in spoken]
    return "WEBVTT\n\n" + "\n".join(blocks)


@router.post("/v1/audio/transcriptions", response_model=None)
async def create_transcription(
    request: Request,
    file: Annotated[UploadFile, File(description="Audio in any common container: wav, mp3, ogg, webm, flac, m4a")],
    model: Annotated[str, Form()] = "whisper-1",
    language: Annotated[str, Form(pattern=r"^$|^[a-z]{2,3}$")] = "",
    prompt: Annotated[str, Form(description="Accepted for compatibility; not used.")] = "",
    response_format: Annotated[ResponseFormat, Form()] = "json",
    temperature: Annotated[float, Form(ge=0, le=1, description="Accepted; decoding is greedy.")] = 0.0,
) -> Response:
    """The text of an uploaded recording, as json, text, verbose_json (with segments), srt or vtt."""
    settings = settings_of(request)
    services = services_of(request)
    if model not in OPENAI_MODELS:
        raise ApiError(
            400, f"unknown model {model!r}; use one of {', '.join(sorted(OPENAI_MODELS))}", "unknown_model", "model"
        )
    data = await file.read(settings.max_upload_bytes + 1)
    try:
        decoded = await asyncio.to_thread(
            decode_audio,
            data,
            max_bytes=settings.max_upload_bytes,
            max_duration_s=settings.max_transcription_s,
        )
        samples = decoded.samples
        if decoded.sample_rate != RATE:
            samples = await asyncio.to_thread(soxr.resample, samples, decoded.sample_rate, RATE)
    except AudioFileError as error:
        raise ApiError(400, str(error), "invalid_audio", "file") from None
    pcm = float_to_pcm16(np.asarray(samples, dtype=np.float32))
    duration = len(pcm) / 2 / RATE
    try:
        segments = await speech_stretches(services, pcm, settings.transcription_segment_s)
        slots = asyncio.Semaphore(settings.parallel_segments)

        async def one(segment: Segment) -> None:
            async with slots:
                await transcribe_segment(services, pcm, segment, language)

        await asyncio.gather(*(one(segment) for segment in segments))
    except ServiceError as error:
        raise from_service(error) from None
    text = " ".join(s.text for s in segments if s.text)
    if response_format == "text":
        return PlainTextResponse(text)
    if response_format in ("srt", "vtt"):
        return PlainTextResponse(subtitles(segments, response_format), media_type="text/plain")
    if response_format == "json":
        return JSONResponse({"text": text})
    detected, probability = spoken_language(segments, language)
    return JSONResponse(
        {
            "task": "transcribe",
            "language": detected,
            # Not in OpenAI's schema (its SDK keeps unknown fields): how sure the detection was.
            "language_probability": round(probability, 3),
            "duration": round(duration, 3),
            "text": text,
            "segments": [
                {
                    "id": i,
                    "seek": 0,
                    "start": round(s.start_s, 3),
                    "end": round(s.end_s, 3),
                    "text": s.text,
                    "tokens": [],
                    "temperature": 0.0,
                    "avg_logprob": 0.0,
                    "compression_ratio": 0.0,
                    "no_speech_prob": 0.0,
                }
                for i, s in enumerate(s for s in segments if s.text)
            ],
        }
    )
