from __future__ import annotations

import time
from collections.abc import AsyncIterator

import grpc
import numpy as np
from prometheus_client import Histogram

from parley.audio.v1.audio_pb2 import AudioChunk
from parley.pcm import StreamResampler, float_to_pcm16
from parley.server import ServiceRuntime
from parley.threads import iterate_in_thread
from parley.tts.v1 import tts_pb2, tts_pb2_grpc
from parley_tts.config import TtsSettings
from parley_tts.engines.base import SpeechSynthesizer

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
        self.synthesizer: SpeechSynthesizer | None = None  # set once loaded

    async def _engine(self, context: grpc.aio.ServicerContext) -> SpeechSynthesizer:
        if self.synthesizer is None:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "TTS model is still loading")
        assert self.synthesizer is not None
        return self.synthesizer

    async def ListVoices(  # noqa: N802 (gRPC method name)
        self, request: tts_pb2.ListVoicesRequest, context: grpc.aio.ServicerContext
    ) -> tts_pb2.ListVoicesResponse:
        engine = await self._engine(context)
        return tts_pb2.ListVoicesResponse(
            voices=[
                tts_pb2.Voice(
                    id=v.id, name=v.name, language=v.language, native_sample_rate=v.sample_rate, engine=engine.engine
                )
                for v in engine.voices()
            ],
            default_voice=self.settings.default_voice,
        )

    async def Synthesize(  # noqa: N802 (gRPC method name)
        self, request: tts_pb2.SynthesizeRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[AudioChunk]:
        engine = await self._engine(context)
        text = request.text.strip()
        if not text:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "text is empty")
        if len(text) > self.settings.max_text_chars:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"text is {len(text)} characters; the limit is {self.settings.max_text_chars}",
            )
        voices = {v.id: v for v in engine.voices()}
        voice_id = request.voice or self.settings.default_voice
        if voice_id not in voices:
            await context.abort(
                grpc.StatusCode.NOT_FOUND, f"unknown voice {voice_id!r}; known: {', '.join(sorted(voices))}"
            )
        if request.sample_rate and not 8000 <= request.sample_rate <= 48000:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "sample_rate must be 0 (native) or 8000..48000")
        speed = request.speed or 1.0
        if not 0.5 <= speed <= 2.0:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "speed must be 0 (normal) or 0.5..2.0")
        native_rate = voices[voice_id].sample_rate
        out_rate = request.sample_rate or native_rate
        resampler = StreamResampler(native_rate, out_rate)
        chunk_samples = out_rate * self.settings.chunk_ms // 1000
        started = time.perf_counter()
        sent_samples = 0
        async with self.runtime.stream("Synthesize", context):
            async for audio in iterate_in_thread(lambda: engine.synthesize(text, voice_id, speed)):
                samples = resampler.push(audio)
                for offset in range(0, samples.size, chunk_samples):
                    piece = samples[offset : offset + chunk_samples]
                    if sent_samples == 0:
                        FIRST_AUDIO_SECONDS.observe(time.perf_counter() - started)
                    yield AudioChunk(pcm=float_to_pcm16(piece), sample_rate=out_rate, start_s=sent_samples / out_rate)
                    sent_samples += piece.size
            # Flush the resampler; `audio` may be unbound when the text had nothing to say ("...").
            tail = resampler.push(np.zeros(0, dtype=np.float32), last=True)
            if tail.size:
                yield AudioChunk(pcm=float_to_pcm16(tail), sample_rate=out_rate, start_s=sent_samples / out_rate)
                sent_samples += tail.size
        if sent_samples:
            REAL_TIME_FACTOR.observe((time.perf_counter() - started) / (sent_samples / out_rate))
