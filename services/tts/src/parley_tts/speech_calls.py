"""Speech in one voice: `Synthesize` (one text) and `Speak` (a reply spoken while it is written).

Both speak through `SpeechOutput`, which the dialogue uses too: an utterance's audio from an engine's
pool at the output rate, and, for a cloned voice, how much that audio sounds like its reference.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterable, AsyncIterator

import grpc
import numpy as np
from prometheus_client import Counter, Histogram

from parley.audio.v1.audio_pb2 import AudioChunk
from parley.models import PoolTimeout
from parley.pcm import Float32Array, float_to_pcm16
from parley.server import ServiceRuntime
from parley.streams import StreamAborted, read_to_end
from parley.text import breaks_off
from parley.tts.v1 import tts_pb2
from parley_tts.config import TtsSettings
from parley_tts.engines.base import CannotClone, Context, UnspeakableText, Utterance
from parley_tts.refusal import Refused, checked_rate_and_speed, checked_text
from parley_tts.similarity import similarity
from parley_tts.speech import Conversations, spoken_chunks
from parley_tts.speech_text import check_speaks, checked_language, prepare_text
from parley_tts.voice_library import Voice, VoiceLibrary

FIRST_AUDIO_SECONDS = Histogram(
    "parley_tts_first_audio_seconds", "Request to first audio chunk", buckets=(0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 1, 2, 5)
)
REAL_TIME_FACTOR = Histogram(
    "parley_tts_real_time_factor", "Synthesis time / audio duration", buckets=(0.02, 0.05, 0.1, 0.2, 0.5, 1, 2)
)
SPEAKER_SIMILARITY = Histogram(
    "parley_tts_speaker_similarity",
    "Cosine similarity of speaker embeddings, a cloned voice's reference vs the speech made in it",
    ["engine"],
    buckets=(0.2, 0.4, 0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 1.0),
)
SIMILARITY_METADATA = "parley-speaker-similarity"
# Which languages are spoken, and by which engine: a request is counted once its voice and language
# are accepted. "default" is a request that names no language (the voice's own); never a code, as
# codes are two letters.
SPEECH_REQUESTS = Counter(
    "parley_tts_requests_total",
    "Speech requests accepted, by method, engine and language (ISO 639-1; default: none named)",
    ["method", "engine", "language"],
)


class SpeechOutput:
    """An utterance's audio, and the cloning score of what was said in a cloned voice."""

    def __init__(self, settings: TtsSettings, voices: VoiceLibrary) -> None:
        self.settings = settings
        self.voices = voices

    async def audio(
        self,
        voice: Voice,
        utterance: Utterance,
        context: Context,
        out_rate: int,
        heard: list[Float32Array] | None = None,
    ) -> AsyncIterator[Float32Array]:
        """One utterance's audio at `out_rate`, errors turned into Refused; `heard` collects it (cloned voices)."""
        if voice.reference_embedding is None:
            heard = None
        try:
            async for samples in spoken_chunks(
                voice.engine,
                utterance,
                context,
                out_rate,
                self.settings.chunk_ms,
                self.settings.queue_timeout_s,
                heard,
            ):
                yield samples
        except PoolTimeout as exc:
            raise Refused(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc)) from None
        except (UnspeakableText, CannotClone) as exc:
            code = (
                grpc.StatusCode.INVALID_ARGUMENT
                if isinstance(exc, UnspeakableText)
                else grpc.StatusCode.FAILED_PRECONDITION
            )
            raise Refused(code, str(exc)) from None

    async def similarity(self, voice: Voice, heard: list[Float32Array]) -> float | None:
        """How much the speech made in a cloned voice sounds like its reference (None when not scored)."""
        if voice.reference_embedding is None or not heard or not self.settings.speaker_similarity:
            return None
        rate = voice.engine.rate_of(voice.voice)
        try:
            embedding = await self.voices.embedding(np.concatenate(heard), rate)
        except PoolTimeout:
            return None  # a score is not worth a wait
        if embedding is None:
            return None
        score = round(similarity(voice.reference_embedding, embedding), 4)
        SPEAKER_SIMILARITY.labels(voice.engine.name).observe(score)
        return score


class SpeechCalls:
    def __init__(
        self,
        settings: TtsSettings,
        runtime: ServiceRuntime,
        voices: VoiceLibrary,
        output: SpeechOutput,
        conversations: Conversations,
    ) -> None:
        self.settings = settings
        self.runtime = runtime
        self.voices = voices
        self.output = output
        self.conversations = conversations

    async def synthesize(
        self, request: tts_pb2.SynthesizeRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[AudioChunk]:
        text = checked_text(request.text, self.settings.max_text_chars)
        if not text:
            raise Refused(grpc.StatusCode.INVALID_ARGUMENT, "text is empty (nothing printable to speak)")
        speed = checked_rate_and_speed(request.sample_rate, request.speed)
        language = checked_language(request.language)
        voice = await self.voices.resolve(request.voice, request.engine)
        self._check_language(voice, language)
        SPEECH_REQUESTS.labels("Synthesize", voice.engine.name, language or "default").inc()
        out_rate = request.sample_rate or voice.engine.rate_of(voice.voice)
        utterance = Utterance(prepare_text(text, language, voice.engine), voice.voice, speed=speed)
        started, sent = time.perf_counter(), 0
        heard: list[Float32Array] = []
        async with self.runtime.stream("Synthesize", context):
            async for samples in self.output.audio(voice, utterance, voice.engine.new_context(), out_rate, heard):
                if not sent:
                    FIRST_AUDIO_SECONDS.observe(time.perf_counter() - started)
                yield AudioChunk(pcm=float_to_pcm16(samples), sample_rate=out_rate, start_s=sent / out_rate)
                sent += samples.size
        if sent:
            REAL_TIME_FACTOR.observe((time.perf_counter() - started) / (sent / out_rate))
        score = await self.output.similarity(voice, heard)
        if score is not None:
            context.set_trailing_metadata(((SIMILARITY_METADATA, f"{score:.4f}"),))

    async def speak(
        self, request_iterator: AsyncIterable[tts_pb2.SpeakRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[tts_pb2.SpeakResponse]:
        """A reply's pieces as the client writes them, spoken in one voice with the conversation's memory."""
        requests = aiter(request_iterator)
        first = await anext(requests, None)
        if first is None or first.WhichOneof("item") != "start":
            raise Refused(grpc.StatusCode.INVALID_ARGUMENT, "the first Speak request must be `start`")
        start = first.start
        try:
            speed = checked_rate_and_speed(start.sample_rate, start.speed)
            language = checked_language(start.language)
            voice = await self.voices.resolve(start.voice, start.engine)
            self._check_language(voice, language)
        except Refused:
            await read_to_end(requests)  # so that the client hears this refusal, not INTERNAL
            raise
        SPEECH_REQUESTS.labels("Speak", voice.engine.name, language or "default").inc()
        out_rate = start.sample_rate or voice.engine.rate_of(voice.voice)
        heard: list[Float32Array] = []
        pieces: asyncio.Queue[str | None] = asyncio.Queue()
        reader = asyncio.create_task(self._read_pieces(requests, pieces))
        sent, started = 0, time.perf_counter()
        try:
            async with (
                self.runtime.stream("Speak", context),
                self.conversations.context(start.conversation_id, voice.engine, voice.engine.new_context()) as memory,
            ):
                async for text, index in _spoken_pieces(pieces, voice.engine.speaks_phrases):
                    utterance = Utterance(prepare_text(text, language, voice.engine), voice.voice, speed=speed)
                    async for samples in self.output.audio(voice, utterance, memory, out_rate, heard):
                        if not sent:
                            FIRST_AUDIO_SECONDS.observe(time.perf_counter() - started)
                        chunk = AudioChunk(pcm=float_to_pcm16(samples), sample_rate=out_rate, start_s=sent / out_rate)
                        yield tts_pb2.SpeakResponse(audio=chunk, piece=index)
                        sent += samples.size
                await reader  # raises what the reader met (a refused piece, an aborted stream)
            score = await self.output.similarity(voice, heard)
            done = tts_pb2.SpeakDone(audio_s=sent / out_rate, speaker_similarity=score)
            yield tts_pb2.SpeakResponse(done=done)
        finally:
            reader.cancel()

    def _check_language(self, voice: Voice, language: str) -> None:
        check_speaks(voice.engine, voice.languages(), language, list(self.voices.engines.by_name.values()))

    async def _read_pieces(
        self, requests: AsyncIterator[tts_pb2.SpeakRequest], pieces: asyncio.Queue[str | None]
    ) -> None:
        """Text pieces in as the client writes them (normalised), None at `end_of_text`."""
        try:
            async for request in requests:
                kind = request.WhichOneof("item")
                if kind == "text":
                    pieces.put_nowait(checked_text(request.text, self.settings.max_text_chars))
                elif kind == "end_of_text":
                    return
                else:
                    raise Refused(
                        grpc.StatusCode.INVALID_ARGUMENT, f"unexpected `{kind}` after the start of a Speak call"
                    )
            raise StreamAborted  # ended without end_of_text: the client gave up
        finally:
            pieces.put_nowait(None)


async def _spoken_pieces(pieces: asyncio.Queue[str | None], speaks_phrases: bool) -> AsyncIterator[tuple[str, int]]:
    """Each piece's text to speak and its index (the call's order, empty pieces counted), until None.

    For an engine that does not speak phrases, a piece that breaks off mid-phrase waits and is spoken
    with the next one(s), as one utterance named by the last of them: its audio then tells the client
    that the pieces before it have been spoken too.
    """
    index, waiting = 0, list[str]()
    while (text := await pieces.get()) is not None:
        if text:
            waiting.append(text)
            if speaks_phrases or not breaks_off(text):
                yield " ".join(waiting), index
                waiting = []
        index += 1
    if waiting:
        yield " ".join(waiting), index - 1
