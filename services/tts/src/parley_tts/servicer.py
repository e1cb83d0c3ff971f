from __future__ import annotations

import time
from collections.abc import AsyncIterator

import grpc
import numpy as np
from prometheus_client import Histogram

from parley.audio.v1.audio_pb2 import AudioChunk
from parley.models import ModelPool, PoolTimeout
from parley.pcm import StreamResampler, float_to_pcm16
from parley.server import ServiceRuntime
from parley.text import normalize_for_speech
from parley.tts.v1 import tts_pb2, tts_pb2_grpc
from parley_tts.config import TtsSettings
from parley_tts.engines.base import SpeechSynthesizer, UnspeakableText, VoiceInfo

FIRST_AUDIO_SECONDS = Histogram(
    "parley_tts_first_audio_seconds", "Request to first audio chunk", buckets=(0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 1, 2, 5)
)
REAL_TIME_FACTOR = Histogram(
    "parley_tts_real_time_factor", "Synthesis time / audio duration", buckets=(0.02, 0.05, 0.1, 0.2, 0.5, 1, 2)
)


class TextToSpeechServicer(tts_pb2_grpc.TextToSpeechServicer):
    def __init__(self, settings: TtsSettings, runtime: ServiceRuntime) -> None:
        self.settings = settings
        self.runtime = runtime
        # The model copies; a request borrows one while it speaks.
        self.pool: ModelPool[SpeechSynthesizer] = ModelPool("tts")
        # What the copies can say, read once at load so the event loop never touches a model.
        self.engine = ""
        self.voices: dict[str, VoiceInfo] = {}

    def add(self, synthesizer: SpeechSynthesizer) -> None:
        """Put a loaded (and self-tested) copy in service; call on the event loop."""
        self.engine = synthesizer.engine
        self.voices = {v.id: v for v in synthesizer.voices()}
        self.pool.add(synthesizer)

    async def _check_loaded(self, context: grpc.aio.ServicerContext) -> None:
        if not self.pool.size:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "TTS model is still loading")

    async def ListVoices(  # noqa: N802 (gRPC method name)
        self, request: tts_pb2.ListVoicesRequest, context: grpc.aio.ServicerContext
    ) -> tts_pb2.ListVoicesResponse:
        await self._check_loaded(context)
        return tts_pb2.ListVoicesResponse(
            voices=[
                tts_pb2.Voice(
                    id=v.id, name=v.name, language=v.language, native_sample_rate=v.sample_rate, engine=self.engine
                )
                for v in self.voices.values()
            ],
            default_voice=self.settings.default_voice,
        )

    async def Synthesize(  # noqa: N802 (gRPC method name)
        self, request: tts_pb2.SynthesizeRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[AudioChunk]:
        await self._check_loaded(context)
        if len(request.text) > self.settings.max_text_chars:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"text is {len(request.text)} characters; the limit is {self.settings.max_text_chars}",
            )
        # NFKC and no control characters: "𝕳𝖊𝖑𝖑𝖔" is read as "Hello", not spelled out.
        text = normalize_for_speech(request.text)
        if not text:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "text is empty (nothing printable to speak)")
        voice_id = request.voice or self.settings.default_voice
        if voice_id not in self.voices:
            await context.abort(
                grpc.StatusCode.NOT_FOUND, f"unknown voice {voice_id!r}; known: {', '.join(sorted(self.voices))}"
            )
        if request.sample_rate and not 8000 <= request.sample_rate <= 48000:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "sample_rate must be 0 (native) or 8000..48000")
        speed = request.speed or 1.0
        if not 0.5 <= speed <= 2.0:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "speed must be 0 (normal) or 0.5..2.0")
        native_rate = self.voices[voice_id].sample_rate
        out_rate = request.sample_rate or native_rate
        resampler = StreamResampler(native_rate, out_rate)
        chunk_samples = out_rate * self.settings.chunk_ms // 1000
        started = time.perf_counter()
        sent_samples = 0
        async with self.runtime.stream("Synthesize", context):
            try:
                async with (
                    self.pool.lease(self.settings.queue_timeout_s) as model,
                    model.stream(lambda synthesizer: synthesizer.synthesize(text, voice_id, speed)) as pieces,
                ):
                    async for audio in pieces:
                        samples = resampler.push(audio)
                        for offset in range(0, samples.size, chunk_samples):
                            piece = samples[offset : offset + chunk_samples]
                            if sent_samples == 0:
                                FIRST_AUDIO_SECONDS.observe(time.perf_counter() - started)
                            yield AudioChunk(
                                pcm=float_to_pcm16(piece), sample_rate=out_rate, start_s=sent_samples / out_rate
                            )
                            sent_samples += piece.size
            except PoolTimeout as exc:
                await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
            except UnspeakableText as exc:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            # Flush the resampler (text with nothing to pronounce, "...", yields no audio at all).
            tail = resampler.push(np.zeros(0, dtype=np.float32), last=True)
            if tail.size:
                yield AudioChunk(pcm=float_to_pcm16(tail), sample_rate=out_rate, start_s=sent_samples / out_rate)
                sent_samples += tail.size
        if sent_samples:
            REAL_TIME_FACTOR.observe((time.perf_counter() - started) / (sent_samples / out_rate))
