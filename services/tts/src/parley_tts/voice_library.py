"""The voices an instance speaks: built-in voices of its engines and the stored (cloned) voices every instance shares.

It resolves the voice a request names (`resolve`), and serves the voice methods (`create`, `get`,
`delete`, `list_voices`). Stored voices live in NATS JetStream (`voices.VoiceStore`), with each cloning
engine's prompt codes computed once, by the first instance that needs them, for every instance.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass

import grpc
import numpy as np
from nats.errors import Error as NatsError

from parley.models import ModelPool, PoolTimeout
from parley.pcm import Float32Array
from parley.text import normalize_for_speech
from parley.tts.v1 import tts_pb2
from parley_tts.config import TtsSettings
from parley_tts.engines.base import StoredVoice, VoiceInfo
from parley_tts.refusal import Refused
from parley_tts.similarity import SpeakerEmbedder
from parley_tts.speech import EngineRuntime, Engines, VoiceError
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

MIN_SCORED_AUDIO_S = 0.5  # shorter speech says too little about the voice to score it
LANGUAGE = r"^[a-z]{2,3}$"


@dataclass
class Voice:
    """A voice resolved for one request: the engine that speaks it and what that engine gets."""

    engine: EngineRuntime
    voice: str | StoredVoice
    speaker: int = 1  # the speaker it speaks as in a dialogue
    reference_embedding: Float32Array | None = None  # a cloned voice's, for the similarity score

    def languages(self) -> frozenset[str]:
        """What it speaks: a built-in voice its listed languages; a cloned one its engine's.

        Cloning carries a timbre across the engine's languages; it does not teach the engine its
        reference's language (a Spanish reference on FireRedTTS2 still speaks only what it lists).
        """
        if isinstance(self.voice, str):
            return self.engine.voices[self.voice].languages
        return frozenset(language for info in self.engine.voices.values() for language in info.languages)


class VoiceLibrary:
    def __init__(self, settings: TtsSettings, engines: Engines) -> None:
        self.settings = settings
        self.engines = engines
        # Set once NATS answers (the store) and the model loaded (the embedder); until then,
        # stored voices are unavailable and cloned speech is not scored.
        self.store: VoiceStore | None = None
        self.embedder: ModelPool[SpeakerEmbedder] | None = None

    # ---- resolving a request's voice -----------------------------------------------------------------

    async def resolve(self, voice_id: str, engine: str) -> Voice:
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
                stored = StoredVoice(profile.id, profile.transcript, codes)
                return Voice(runtime, stored, 1, embedding)
        except VoiceError as exc:
            raise Refused(grpc.StatusCode.FAILED_PRECONDITION, str(exc)) from None
        known = ", ".join(sorted(v.id for _, v in self.engines.builtin_voices()))
        where = "" if self.store is not None else " (stored voices are unavailable: NATS is not reachable)"
        raise Refused(
            grpc.StatusCode.NOT_FOUND, f"unknown voice {voice_id!r}; built-in: {known}; stored: see ListVoices{where}"
        )

    def _store(self) -> VoiceStore:
        if self.store is None:
            raise Refused(
                grpc.StatusCode.UNAVAILABLE, "the voice store (NATS JetStream) is not reachable from this instance yet"
            )
        return self.store

    async def _profile(self, voice_id: str) -> VoiceProfile | None:
        if self.store is None:
            return None
        try:
            return await self.store.get(voice_id)
        except (NatsError, TimeoutError) as exc:
            raise Refused(grpc.StatusCode.UNAVAILABLE, f"the voice store did not answer: {exc}") from None

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
            raise Refused(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc)) from None

    async def embedding(self, audio: Float32Array, sample_rate: int) -> Float32Array | None:
        """The speaker embedding of `audio` (None before the embedder loaded, or for too little audio)."""
        if self.embedder is None or audio.size < MIN_SCORED_AUDIO_S * sample_rate:
            return None
        async with self.embedder.lease(self.settings.queue_timeout_s) as embedder:
            return await embedder.run(lambda model: model.embed(audio, sample_rate))

    # ---- the voice methods ---------------------------------------------------------------------------

    async def create(self, request: tts_pb2.CreateVoiceRequest) -> tts_pb2.Voice:
        """Check the upload, embed it, compute prompt codes on every cloning engine here, store it for all."""
        store = self._store()
        name = " ".join(request.name.split())
        if not 1 <= len(name) <= 64:
            raise Refused(grpc.StatusCode.INVALID_ARGUMENT, "a voice needs a name of 1-64 characters")
        language = request.language or "en"
        if not re.match(LANGUAGE, language):
            raise Refused(grpc.StatusCode.INVALID_ARGUMENT, f"language {language!r} is not an ISO 639 code")
        transcript = normalize_for_speech(request.transcript).strip()
        limits = self.settings.reference_limits()
        if not transcript:
            raise Refused(grpc.StatusCode.INVALID_ARGUMENT, "the transcript of the reference (what it says) is needed")
        if len(transcript) > limits.max_transcript_chars:
            raise Refused(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"the transcript is {len(transcript)} characters; the limit is {limits.max_transcript_chars} "
                "(PARLEY_TTS_MAX_TRANSCRIPT_CHARS)",
            )
        try:
            reference = await asyncio.to_thread(check_reference, request.audio, limits)
        except ReferenceError as exc:
            raise Refused(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from None
        embedding = await self.embedding(reference.samples, REFERENCE_RATE)
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
            raise Refused(grpc.StatusCode.UNAVAILABLE, f"the voice store did not answer: {exc}") from None
        return self.stored_voice(stored)

    async def get(self, voice_id: str) -> tts_pb2.Voice:
        for runtime, builtin in self.engines.builtin_voices():
            if builtin.id == voice_id:
                return builtin_voice(runtime, builtin)
        profile = await self._profile(voice_id)
        if profile is None:
            raise Refused(grpc.StatusCode.NOT_FOUND, f"no voice {voice_id!r}")
        return self.stored_voice(profile)

    async def delete(self, voice_id: str) -> None:
        if any(builtin.id == voice_id for _, builtin in self.engines.builtin_voices()):
            raise Refused(
                grpc.StatusCode.FAILED_PRECONDITION, f"{voice_id!r} is a built-in voice; it cannot be deleted"
            )
        try:
            deleted = await self._store().delete(voice_id)
        except (NatsError, TimeoutError) as exc:
            raise Refused(grpc.StatusCode.UNAVAILABLE, f"the voice store did not answer: {exc}") from None
        if not deleted:
            raise Refused(grpc.StatusCode.NOT_FOUND, f"no voice {voice_id!r}")

    async def list_voices(self, engine: str) -> tts_pb2.ListVoicesResponse:
        voices = [builtin_voice(e, v) for e, v in self.engines.builtin_voices() if not engine or engine == e.name]
        cloners = [e.name for e in self.engines.cloners()]
        if self.store is not None and (not engine or engine in cloners):
            try:
                voices += [self.stored_voice(profile) for profile in await self.store.all()]
            except (NatsError, TimeoutError) as exc:
                raise Refused(grpc.StatusCode.UNAVAILABLE, f"the voice store did not answer: {exc}") from None
        engines = [
            tts_pb2.Engine(name=e.name, cloning=e.cloning, speakers=4, native_sample_rate=e.sample_rate)
            for e in self.engines.by_name.values()
        ]
        return tts_pb2.ListVoicesResponse(voices=voices, default_voice=self.settings.default_voice, engines=engines)

    def stored_voice(self, profile: VoiceProfile) -> tts_pb2.Voice:
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


def builtin_voice(runtime: EngineRuntime, voice: VoiceInfo) -> tts_pb2.Voice:
    return tts_pb2.Voice(
        id=voice.id,
        name=voice.name,
        language=voice.language,
        native_sample_rate=voice.sample_rate,
        engine=runtime.name,
        engines=[runtime.name],
    )
