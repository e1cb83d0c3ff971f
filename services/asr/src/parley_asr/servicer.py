from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterable, AsyncIterator

import grpc
import numpy as np
from prometheus_client import Histogram
from pydantic import BaseModel, Field

from parley.asr.v1 import asr_pb2, asr_pb2_grpc
from parley.audio.v1.audio_pb2 import AudioChunk
from parley.pcm import Float32Array
from parley.server import ServiceRuntime
from parley.streams import StreamAborted, audio_samples, stream_options
from parley_asr.config import AsrSettings
from parley_asr.engines.base import Recognition, SpeechRecognizer

DECODE_SECONDS = Histogram(
    "parley_asr_decode_seconds",
    "Time to decode one result",
    ["final"],
    buckets=(0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 2, 5),
)
REAL_TIME_FACTOR = Histogram(
    "parley_asr_real_time_factor",
    "Decode time / audio duration of final results",
    buckets=(0.02, 0.05, 0.1, 0.2, 0.5, 1, 2),
)


def stable_prefix(previous: str, current: str) -> str:
    """The leading words two successive hypotheses agree on (case and punctuation aside)."""

    def norm(word: str) -> str:
        return "".join(c for c in word.lower() if c.isalnum())

    agreed: list[str] = []
    for old, new in zip(previous.split(), current.split(), strict=False):
        if norm(old) != norm(new):
            break
        agreed.append(new)
    return " ".join(agreed)


class TranscribeOptions(BaseModel):
    """`parley-*` request metadata accepted by Transcribe."""

    language: str | None = Field(default=None, pattern="^[a-z]{2,3}$|^$")
    partials: bool = False


class SpeechRecognitionServicer(asr_pb2_grpc.SpeechRecognitionServicer):
    def __init__(self, settings: AsrSettings, runtime: ServiceRuntime) -> None:
        self.settings = settings
        self.runtime = runtime
        self.recognizer: SpeechRecognizer | None = None  # set once loaded

    async def _decode(
        self, recognizer: SpeechRecognizer, audio: Float32Array, language: str | None, final: bool
    ) -> asr_pb2.Transcript:
        started = time.perf_counter()
        result: Recognition = await asyncio.to_thread(recognizer.transcribe, audio, language)
        elapsed = time.perf_counter() - started
        duration = audio.size / recognizer.sample_rate
        DECODE_SECONDS.labels(str(final).lower()).observe(elapsed)
        if final and duration > 0:
            REAL_TIME_FACTOR.observe(elapsed / duration)
        return asr_pb2.Transcript(
            text=result.text, is_final=final, language=result.language, audio_duration_s=duration, processing_s=elapsed
        )

    async def Transcribe(  # noqa: N802 (gRPC method name)
        self, request_iterator: AsyncIterable[AudioChunk], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[asr_pb2.Transcript]:
        recognizer = self.recognizer
        if recognizer is None:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "ASR model is still loading")
            return
        options = await stream_options(context, TranscribeOptions)
        language = options.language or self.settings.default_language or None
        max_samples = int(self.settings.max_utterance_s * recognizer.sample_rate)
        partial_every = int(self.settings.partial_interval_s * recognizer.sample_rate)
        pieces: list[Float32Array] = []
        total = 0
        decoded_at = 0  # samples covered by the last partial decode
        partial: asyncio.Task[asr_pb2.Transcript] | None = None
        last_partial_text = ""
        audio = audio_samples(request_iterator, context, recognizer.sample_rate, self.settings.max_chunk_ms)
        try:
            async with self.runtime.stream("Transcribe", context):
                async for samples, last in audio:
                    total += samples.size
                    # Past the limit, read on to the end marker and only then refuse:
                    # aborting while the client still writes reaches it as INTERNAL.
                    if samples.size and total <= max_samples:
                        pieces.append(samples)
                    if partial is not None and partial.done():
                        result = partial.result()
                        partial = None
                        if result.text and result.text != last_partial_text:
                            result.stable_text = stable_prefix(last_partial_text, result.text)
                            last_partial_text = result.text
                            yield result
                    if last:
                        break
                    if options.partials and partial is None and max_samples >= total >= decoded_at + partial_every:
                        decoded_at = total
                        partial = asyncio.create_task(
                            self._decode(recognizer, np.concatenate(pieces), language, final=False)
                        )
                if total > max_samples:
                    await context.abort(
                        grpc.StatusCode.OUT_OF_RANGE,
                        f"utterance of {total / recognizer.sample_rate:.1f} s is longer than "
                        f"PARLEY_ASR_MAX_UTTERANCE_S={self.settings.max_utterance_s:g}",
                    )
                if partial is not None:
                    # One model runs one decode at a time; the final pass follows it.
                    await partial
                utterance = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.float32)
                yield await self._decode(recognizer, utterance, language, final=True)
        except StreamAborted:
            return
        finally:
            if partial is not None and not partial.done():
                partial.cancel()
