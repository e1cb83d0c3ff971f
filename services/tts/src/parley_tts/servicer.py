"""The TextToSpeech gRPC methods: validation, limits and metrics around `speech.py`."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass

import grpc
import numpy as np
from nats.errors import Error as NatsError
from prometheus_client import Histogram

from parley.audio.v1.audio_pb2 import AudioChunk
from parley.models import ModelPool, PoolTimeout
from parley.pcm import Float32Array, float_to_pcm16
from parley.server import ServiceRuntime
from parley.streams import StreamAborted
from parley.text import normalize_for_speech
from parley.tts.v1 import tts_pb2, tts_pb2_grpc
from parley_tts.config import TtsSettings
from parley_tts.engines.base import CannotClone, Context, StoredVoice, UnspeakableText, Utterance, VoiceInfo
from parley_tts.script import Line, ScriptError, check_lines, parse_script
from parley_tts.similarity import SpeakerEmbedder, similarity
from parley_tts.speech import Conversations, EngineRuntime, Engines, VoiceError, spoken_chunks
from parley_tts.voices import (
    REFERENCE_RATE,
    ReferenceError,
    VoiceProfile,
    VoiceStore,
    check_reference,
    new_voice_id,
    reference_samples,
    reference_wav,
)

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
MIN_SCORED_AUDIO_S = 0.5  # shorter speech says too little about the voice to score it
LANGUAGE = r"^[a-z]{2,3}$"


@dataclass
class Voice:
    """A voice resolved for one request: the engine that speaks it and what that engine gets."""

    engine: EngineRuntime
    voice: str | StoredVoice
    speaker: int = 1  # the speaker it speaks as in a dialogue
    reference_embedding: Float32Array | None = None  # a cloned voice's, for the similarity score


class _Refused(Exception):
    """A request refused with a status code and a message for the client."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class TextToSpeechServicer(tts_pb2_grpc.TextToSpeechServicer):
    def __init__(self, settings: TtsSettings, runtime: ServiceRuntime) -> None:
        self.settings = settings
        self.runtime = runtime
        self.engines = Engines()
        self.conversations = Conversations(settings.max_conversations)
        # Set once NATS answers (the store) and the model loaded (the embedder); until then,
        # stored voices are unavailable and cloned speech is not scored.
        self.voice_store: VoiceStore | None = None
        self.embedder: ModelPool[SpeakerEmbedder] | None = None

    # ---- helpers ---------------------------------------------------------------

    async def _check_loaded(self, context: grpc.aio.ServicerContext) -> None:
        if not self.engines.ready:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "TTS model is still loading")

    def _text(self, text: str) -> str:
        if len(text) > self.settings.max_text_chars:
            raise _Refused(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"text is {len(text)} characters; "
                f"the limit is {self.settings.max_text_chars} (PARLEY_TTS_MAX_TEXT_CHARS)",
            )
        # NFKC and no control characters: "𝕳𝖊𝖑𝖑𝖔" is read as "Hello", not spelled out.
        return normalize_for_speech(text)

    def _rate_and_speed(self, sample_rate: int, speed: float) -> float:
        if sample_rate and not 8000 <= sample_rate <= 48000:
            raise _Refused(grpc.StatusCode.INVALID_ARGUMENT, "sample_rate must be 0 (native) or 8000..48000")
        speed = speed or 1.0
        if not 0.5 <= speed <= 2.0:
            raise _Refused(grpc.StatusCode.INVALID_ARGUMENT, "speed must be 0 (normal) or 0.5..2.0")
        return speed

    async def _voice(self, voice_id: str, engine: str) -> Voice:
        """A built-in voice of an engine here, or a stored voice with the prompt codes of an engine that clones."""
        voice_id = voice_id or self.settings.default_voice
        try:
            runtime = self.engines.for_builtin(voice_id, engine)
            if runtime is not None:
                return Voice(runtime, voice_id)
            profile = await self._profile(voice_id)
            if profile is not None:
                runtime = self.engines.for_stored(voice_id, engine)
                codes = await self._prompt_codes(profile, runtime)
                embedding = np.asarray(profile.embedding, dtype=np.float32) if profile.embedding else None
                return Voice(runtime, StoredVoice(profile.id, profile.transcript, codes), 1, embedding)
        except VoiceError as exc:
            raise _Refused(grpc.StatusCode.FAILED_PRECONDITION, str(exc)) from None
        known = ", ".join(sorted(v.id for _, v in self.engines.builtin_voices()))
        where = "" if self.voice_store is not None else " (stored voices are unavailable: NATS is not reachable)"
        raise _Refused(
            grpc.StatusCode.NOT_FOUND, f"unknown voice {voice_id!r}; built-in: {known}; stored: see ListVoices{where}"
        )

    def _store(self) -> VoiceStore:
        if self.voice_store is None:
            raise _Refused(
                grpc.StatusCode.UNAVAILABLE, "the voice store (NATS JetStream) is not reachable from this instance yet"
            )
        return self.voice_store

    async def _profile(self, voice_id: str) -> VoiceProfile | None:
        if self.voice_store is None:
            return None
        try:
            return await self.voice_store.get(voice_id)
        except (NatsError, TimeoutError) as exc:
            raise _Refused(grpc.StatusCode.UNAVAILABLE, f"the voice store did not answer: {exc}") from None

    async def _prompt_codes(self, profile: VoiceProfile, runtime: EngineRuntime) -> bytes:
        """The engine's stored prompt codes for a voice; computed (once, for every instance) if it has none yet."""
        store = self._store()
        codes = await store.codes(profile, runtime.name)
        if codes is not None:
            return codes
        samples = reference_samples(await store.reference(profile.id))
        codes = await self._encode(runtime, samples, profile.transcript)
        await store.add_codes(profile.id, runtime.name, codes)
        return codes

    async def _encode(self, runtime: EngineRuntime, samples: Float32Array, transcript: str) -> bytes:
        try:
            async with runtime.pool.lease(self.settings.queue_timeout_s) as model:
                return await model.run(lambda synthesizer: synthesizer.encode_reference(samples, transcript))
        except PoolTimeout as exc:
            raise _Refused(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc)) from None

    async def _embedding(self, audio: Float32Array, sample_rate: int) -> Float32Array | None:
        if self.embedder is None or audio.size < MIN_SCORED_AUDIO_S * sample_rate:
            return None
        async with self.embedder.lease(self.settings.queue_timeout_s) as embedder:
            return await embedder.run(lambda model: model.embed(audio, sample_rate))

    async def _similarity(self, voice: Voice, heard: list[Float32Array]) -> float | None:
        """How much the speech made in a cloned voice sounds like its reference (None when not scored)."""
        if voice.reference_embedding is None or not heard or not self.settings.speaker_similarity:
            return None
        rate = voice.engine.rate_of(voice.voice)
        try:
            embedding = await self._embedding(np.concatenate(heard), rate)
        except PoolTimeout:
            return None  # a score is not worth a wait
        if embedding is None:
            return None
        score = round(similarity(voice.reference_embedding, embedding), 4)
        SPEAKER_SIMILARITY.labels(voice.engine.name).observe(score)
        return score

    async def _speak(
        self,
        voice: Voice,
        utterance: Utterance,
        context: Context,
        out_rate: int,
        heard: list[Float32Array] | None = None,
    ) -> AsyncIterator[Float32Array]:
        """One utterance's audio at `out_rate`, errors turned into _Refused; `heard` collects it (cloned voices)."""
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
            raise _Refused(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc)) from None
        except (UnspeakableText, CannotClone) as exc:
            code = (
                grpc.StatusCode.INVALID_ARGUMENT
                if isinstance(exc, UnspeakableText)
                else grpc.StatusCode.FAILED_PRECONDITION
            )
            raise _Refused(code, str(exc)) from None

    # ---- one text --------------------------------------------------------------

    async def Synthesize(  # noqa: N802 (gRPC method name)
        self, request: tts_pb2.SynthesizeRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[AudioChunk]:
        await self._check_loaded(context)
        try:
            text = self._text(request.text)
            if not text:
                raise _Refused(grpc.StatusCode.INVALID_ARGUMENT, "text is empty (nothing printable to speak)")
            speed = self._rate_and_speed(request.sample_rate, request.speed)
            voice = await self._voice(request.voice, request.engine)
            out_rate = request.sample_rate or voice.engine.rate_of(voice.voice)
            utterance = Utterance(text, voice.voice, speed=speed)
            started, sent = time.perf_counter(), 0
            heard: list[Float32Array] = []
            async with self.runtime.stream("Synthesize", context):
                async for samples in self._speak(voice, utterance, _fresh_context(voice), out_rate, heard):
                    if not sent:
                        FIRST_AUDIO_SECONDS.observe(time.perf_counter() - started)
                    yield AudioChunk(pcm=float_to_pcm16(samples), sample_rate=out_rate, start_s=sent / out_rate)
                    sent += samples.size
            if sent:
                REAL_TIME_FACTOR.observe((time.perf_counter() - started) / (sent / out_rate))
            score = await self._similarity(voice, heard)
            if score is not None:
                context.set_trailing_metadata(((SIMILARITY_METADATA, f"{score:.4f}"),))
        except _Refused as refused:
            await context.abort(refused.code, refused.message)

    # ---- a reply spoken while it is written ------------------------------------

    async def Speak(  # noqa: N802 (gRPC method name)
        self, request_iterator: AsyncIterable[tts_pb2.SpeakRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[tts_pb2.SpeakResponse]:
        await self._check_loaded(context)
        requests = aiter(request_iterator)
        try:
            first = await anext(requests, None)
            if first is None or first.WhichOneof("item") != "start":
                raise _Refused(grpc.StatusCode.INVALID_ARGUMENT, "the first Speak request must be `start`")
            start = first.start
            speed = self._rate_and_speed(start.sample_rate, start.speed)
            voice = await self._voice(start.voice, start.engine)
            out_rate = start.sample_rate or voice.engine.rate_of(voice.voice)
            heard: list[Float32Array] = []
            pieces: asyncio.Queue[str | None] = asyncio.Queue()
            reader = asyncio.create_task(self._read_pieces(requests, pieces))
            sent, started = 0, time.perf_counter()
            try:
                async with (
                    self.runtime.stream("Speak", context),
                    self.conversations.context(start.conversation_id, voice.engine, _fresh_context(voice)) as memory,
                ):
                    index = 0
                    while (text := await pieces.get()) is not None:
                        if text:
                            utterance = Utterance(text, voice.voice, speed=speed)
                            async for samples in self._speak(voice, utterance, memory, out_rate, heard):
                                if not sent:
                                    FIRST_AUDIO_SECONDS.observe(time.perf_counter() - started)
                                chunk = AudioChunk(
                                    pcm=float_to_pcm16(samples), sample_rate=out_rate, start_s=sent / out_rate
                                )
                                yield tts_pb2.SpeakResponse(audio=chunk, piece=index)
                                sent += samples.size
                        index += 1
                    await reader  # raises what the reader met (a refused piece, an aborted stream)
                score = await self._similarity(voice, heard)
                done = tts_pb2.SpeakDone(audio_s=sent / out_rate, speaker_similarity=score)
                yield tts_pb2.SpeakResponse(done=done)
            finally:
                reader.cancel()
        except StreamAborted:
            return  # the client went away (barge-in): nothing to answer
        except _Refused as refused:
            await context.abort(refused.code, refused.message)

    async def _read_pieces(
        self, requests: AsyncIterator[tts_pb2.SpeakRequest], pieces: asyncio.Queue[str | None]
    ) -> None:
        """Text pieces in as the client writes them (normalised), None at `end_of_text`."""
        try:
            async for request in requests:
                kind = request.WhichOneof("item")
                if kind == "text":
                    pieces.put_nowait(self._text(request.text))
                elif kind == "end_of_text":
                    return
                else:
                    raise _Refused(
                        grpc.StatusCode.INVALID_ARGUMENT, f"unexpected `{kind}` after the start of a Speak call"
                    )
            raise StreamAborted  # ended without end_of_text: the client gave up
        finally:
            pieces.put_nowait(None)

    # ---- dialogue --------------------------------------------------------------

    async def SynthesizeDialogue(  # noqa: N802 (gRPC method name)
        self, request: tts_pb2.DialogueRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[tts_pb2.DialogueResponse]:
        await self._check_loaded(context)
        try:
            lines = self._script(request)
            self._rate_and_speed(request.sample_rate, 0)
            voices = await self._dialogue_voices(request, {line.speaker for line in lines})
            engines = {v.engine.name for v in voices.values()}
            if len(engines) > 1:
                raise _Refused(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"the speakers' voices belong to different engines ({', '.join(sorted(engines))}); "
                    "one dialogue is spoken by one engine",
                )
            engine = next(iter(voices.values())).engine
            out_rate = request.sample_rate or engine.rate_of(next(iter(voices.values())).voice)
            memory = engine.new_context()
            # Every speaker's voice is known before the first line: an engine that keeps the speakers'
            # prompts puts them all first, as FireRedTTS2's authors do for a dialogue.
            memory.cast({speaker: voice.voice for speaker, voice in voices.items()})
            async with self.runtime.stream("SynthesizeDialogue", context):
                started = tts_pb2.DialogueStarted(
                    turns_total=len(lines), speakers=[line.speaker for line in lines], sample_rate=out_rate
                )
                yield tts_pb2.DialogueResponse(started=started)
                for index, line in enumerate(lines):
                    sent = 0
                    heard: list[Float32Array] = []
                    voice = voices[line.speaker]
                    if line.text:
                        utterance = Utterance(self._text(line.text), voice.voice, speaker=voice.speaker)
                        async for samples in self._speak(voice, utterance, memory, out_rate, heard):
                            chunk = AudioChunk(
                                pcm=float_to_pcm16(samples), sample_rate=out_rate, start_s=sent / out_rate
                            )
                            yield tts_pb2.DialogueResponse(audio=chunk, turn=index)
                            sent += samples.size
                    score = await self._similarity(voice, heard)
                    done = tts_pb2.TurnDone(
                        turn=index, turns_total=len(lines), audio_s=sent / out_rate, speaker_similarity=score
                    )
                    yield tts_pb2.DialogueResponse(turn=index, turn_done=done)
        except _Refused as refused:
            await context.abort(refused.code, refused.message)

    def _script(self, request: tts_pb2.DialogueRequest) -> list[Line]:
        if request.turns and request.script:
            raise _Refused(grpc.StatusCode.INVALID_ARGUMENT, "give the dialogue as `turns` or as `script`, not both")
        try:
            lines = (
                [Line(turn.speaker, turn.text.strip()) for turn in request.turns]
                if request.turns
                else parse_script(request.script)
            )
            s = self.settings
            check_lines(lines, s.max_script_turns, s.max_script_chars, s.max_text_chars)
        except ScriptError as exc:
            raise _Refused(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from None
        return lines

    async def _dialogue_voices(self, request: tts_pb2.DialogueRequest, speakers: set[int]) -> dict[int, Voice]:
        """The voice of every speaker: the one asked for, or the engine's own voice for that speaker.

        The engine's default voice speaks as the line's speaker (Piper gives each a pitch of its
        own), and so does every voice of a cloning engine (its speaker tags are part of the model);
        a voice chosen for a speaker on another engine speaks as itself.
        """
        unknown = set(request.voices) - {1, 2, 3, 4}
        if unknown:
            raise _Refused(grpc.StatusCode.INVALID_ARGUMENT, f"voices for unknown speakers {sorted(unknown)}")
        cast: dict[int, Voice] = {}
        for speaker in speakers:
            voice = await self._voice(request.voices.get(speaker, ""), request.engine)
            voice.speaker = speaker if voice.engine.cloning or speaker not in request.voices else 1
            cast[speaker] = voice
        return cast

    # ---- voices ------------------------------------------------------------------

    async def CreateVoice(  # noqa: N802 (gRPC method name)
        self, request: tts_pb2.CreateVoiceRequest, context: grpc.aio.ServicerContext
    ) -> tts_pb2.Voice:
        """Check the upload, embed it, compute prompt codes on every cloning engine here, store it for all."""
        await self._check_loaded(context)
        try:
            store = self._store()
            name = " ".join(request.name.split())
            if not 1 <= len(name) <= 64:
                raise _Refused(grpc.StatusCode.INVALID_ARGUMENT, "a voice needs a name of 1-64 characters")
            language = request.language or "en"
            if not re.match(LANGUAGE, language):
                raise _Refused(grpc.StatusCode.INVALID_ARGUMENT, f"language {language!r} is not an ISO 639 code")
            transcript = normalize_for_speech(request.transcript).strip()
            limits = self.settings.reference_limits()
            if not transcript:
                raise _Refused(
                    grpc.StatusCode.INVALID_ARGUMENT, "the transcript of the reference (what it says) is needed"
                )
            if len(transcript) > limits.max_transcript_chars:
                raise _Refused(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"the transcript is {len(transcript)} characters; the limit is {limits.max_transcript_chars} "
                    "(PARLEY_TTS_MAX_TRANSCRIPT_CHARS)",
                )
            try:
                reference = await asyncio.to_thread(check_reference, request.audio, limits)
            except ReferenceError as exc:
                raise _Refused(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from None
            embedding = await self._embedding(reference.samples, REFERENCE_RATE)
            codes = {
                runtime.name: await self._encode(runtime, reference.samples, transcript)
                for runtime in self.engines.cloners()
            }
            profile = VoiceProfile(
                id=new_voice_id(name),
                name=name,
                language=language,
                transcript=transcript,
                duration_s=round(reference.duration_s, 3),
                source_sample_rate=reference.source_rate,
                embedding=[] if embedding is None else [round(float(x), 6) for x in embedding],
            )
            try:
                stored = await store.create(profile, reference_wav(reference), codes)
            except (NatsError, TimeoutError) as exc:
                raise _Refused(grpc.StatusCode.UNAVAILABLE, f"the voice store did not answer: {exc}") from None
            return self._stored_voice(stored)
        except _Refused as refused:
            await context.abort(refused.code, refused.message)
            raise  # not reached: abort raises

    async def GetVoice(  # noqa: N802 (gRPC method name)
        self, request: tts_pb2.GetVoiceRequest, context: grpc.aio.ServicerContext
    ) -> tts_pb2.Voice:
        await self._check_loaded(context)
        for runtime, builtin in self.engines.builtin_voices():
            if builtin.id == request.id:
                return _builtin_voice(runtime, builtin)
        try:
            profile = await self._profile(request.id)
        except _Refused as refused:
            await context.abort(refused.code, refused.message)
            raise
        if profile is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no voice {request.id!r}")
        assert profile is not None
        return self._stored_voice(profile)

    async def DeleteVoice(  # noqa: N802 (gRPC method name)
        self, request: tts_pb2.DeleteVoiceRequest, context: grpc.aio.ServicerContext
    ) -> tts_pb2.DeleteVoiceResponse:
        await self._check_loaded(context)
        if any(builtin.id == request.id for _, builtin in self.engines.builtin_voices()):
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION, f"{request.id!r} is a built-in voice; it cannot be deleted"
            )
        try:
            deleted = await self._store().delete(request.id)
        except _Refused as refused:
            await context.abort(refused.code, refused.message)
        except (NatsError, TimeoutError) as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"the voice store did not answer: {exc}")
        if not deleted:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no voice {request.id!r}")
        return tts_pb2.DeleteVoiceResponse()

    async def ListVoices(  # noqa: N802 (gRPC method name)
        self, request: tts_pb2.ListVoicesRequest, context: grpc.aio.ServicerContext
    ) -> tts_pb2.ListVoicesResponse:
        await self._check_loaded(context)
        voices = [
            _builtin_voice(e, v)
            for e, v in self.engines.builtin_voices()
            if not request.engine or request.engine == e.name
        ]
        cloners = [e.name for e in self.engines.cloners()]
        if self.voice_store is not None and (not request.engine or request.engine in cloners):
            try:
                voices += [self._stored_voice(profile) for profile in await self.voice_store.all()]
            except (NatsError, TimeoutError) as exc:
                await context.abort(grpc.StatusCode.UNAVAILABLE, f"the voice store did not answer: {exc}")
        engines = [
            tts_pb2.Engine(name=e.name, cloning=e.cloning, speakers=4, native_sample_rate=e.sample_rate)
            for e in self.engines.by_name.values()
        ]
        return tts_pb2.ListVoicesResponse(voices=voices, default_voice=self.settings.default_voice, engines=engines)

    def _stored_voice(self, profile: VoiceProfile) -> tts_pb2.Voice:
        cloners = self.engines.cloners()
        return tts_pb2.Voice(
            id=profile.id,
            name=profile.name,
            language=profile.language,
            native_sample_rate=cloners[0].sample_rate if cloners else REFERENCE_RATE,
            engines=[e.name for e in cloners],
            cloned=True,
            transcript=profile.transcript,
            reference_duration_s=profile.duration_s,
            created_at_unix_ms=profile.created_at_unix_ms,
        )


def _builtin_voice(runtime: EngineRuntime, voice: VoiceInfo) -> tts_pb2.Voice:
    return tts_pb2.Voice(
        id=voice.id,
        name=voice.name,
        language=voice.language,
        native_sample_rate=voice.sample_rate,
        engine=runtime.name,
        engines=[runtime.name],
    )


def _fresh_context(voice: Voice) -> Context:
    return voice.engine.new_context()
