from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterable, AsyncIterator

import grpc
import numpy as np
from prometheus_client import Histogram
from pydantic import BaseModel, Field

from parley import refusals
from parley.asr.v1 import asr_pb2, asr_pb2_grpc
from parley.audio.v1.audio_pb2 import AudioChunk
from parley.models import ModelPool, PoolTimeout
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


# A partial whose language detection is at least this sure fixes the language of the stream's
# later partials, so their words do not switch language as the audio grows; the final still
# detects on the whole utterance, which has the most evidence.
PARTIAL_LANGUAGE_CONFIDENCE = 0.5


def unsupported_language(language: str, languages: frozenset[str], model: str) -> str | None:
    """Why the model cannot transcribe `language`, naming the setting to change; None when it can."""
    if language in languages:
        return None
    if languages == {"en"}:
        return (
            f"the ASR model {model} transcribes English only, not {language!r}: run the ASR service with "
            "PARLEY_ASR_MODEL=base (99 languages) or a multilingual PARLEY_ASR_MODEL_PATH, "
            "or ask for 'en' or no language"
        )
    return (
        f"the ASR model {model} does not know the language {language!r} (it knows {len(languages)}: "
        f"{', '.join(sorted(languages))}); ask for one of them, or for no language to have it detected, "
        "or point PARLEY_ASR_MODEL_PATH at a Whisper that knows it"
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
    """Streams are cheap (they buffer audio); decodes borrow a model from the pool.

    A partial decode runs only when a model is free at once (and, with several
    copies, not the last free one), and is stopped (not awaited to its end) when
    the utterance ends; the final decode waits in order for a model, up to
    `queue_timeout_s`.
    """

    def __init__(self, settings: AsrSettings, runtime: ServiceRuntime) -> None:
        self.settings = settings
        self.runtime = runtime
        self.pool: ModelPool[SpeechRecognizer] = ModelPool("asr")
        self.sample_rate = 16000  # set from the model at load
        self.languages: frozenset[str] = frozenset()  # likewise
        self.model_name = settings.model_path.name if settings.model_path else settings.model

    def add(self, recognizer: SpeechRecognizer) -> None:
        """Put a loaded (and self-tested) copy in service; call on the event loop."""
        self.sample_rate = recognizer.sample_rate
        self.languages = recognizer.languages
        self.pool.add(recognizer)

    async def _decode(self, audio: Float32Array, language: str | None, final: bool) -> asr_pb2.Transcript | None:
        """One decode on a pooled model; None when a partial found no model to spare (it is skipped).

        Partials are best effort: one never waits, and never takes the last free copy
        when there are several, so that a final (which the user waits for) starts at once.
        """
        if not final and self.pool.free <= (1 if self.pool.size > 1 else 0):
            return None
        stop = threading.Event()
        try:
            async with self.pool.lease(self.settings.queue_timeout_s if final else 0) as model:
                started = time.perf_counter()
                result: Recognition = await model.run(lambda r: r.transcribe(audio, language, stop, final), stop)
        except PoolTimeout:
            if final:
                raise
            return None
        elapsed = time.perf_counter() - started
        duration = audio.size / self.sample_rate
        DECODE_SECONDS.labels(str(final).lower()).observe(elapsed)
        if final and duration > 0:
            REAL_TIME_FACTOR.observe(elapsed / duration)
        return asr_pb2.Transcript(
            text=result.text,
            is_final=final,
            language=result.language,
            language_probability=result.language_probability,
            confidence=result.confidence,
            audio_duration_s=duration,
            processing_s=elapsed,
        )

    async def Transcribe(  # noqa: N802 (gRPC method name)
        self, request_iterator: AsyncIterable[AudioChunk], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[asr_pb2.Transcript]:
        if not self.pool.size:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "ASR model is still loading")
            return
        options = await stream_options(context, TranscribeOptions)
        language = options.language or self.settings.default_language or None
        problem = unsupported_language(language, self.languages, self.model_name) if language else None
        partial_language = language  # fixed by a sure partial detection when none was asked for
        rate = self.sample_rate
        max_samples = int(self.settings.max_utterance_s * rate)
        partial_every = int(self.settings.partial_interval_s * rate)
        pieces: list[Float32Array] = []
        total = 0
        decoded_at = 0  # samples covered by the last partial decode
        partial: asyncio.Task[asr_pb2.Transcript | None] | None = None
        last_partial_text = ""
        audio = audio_samples(request_iterator, context, rate, self.settings.max_chunk_ms)
        try:
            async with self.runtime.stream("Transcribe", context):
                if problem is not None:
                    # The audio is dropped undecoded, read to the end marker, and only then refused:
                    # aborting while the client still writes reaches it as INTERNAL, not this message.
                    async for _, last in audio:
                        if last:
                            break
                    await context.abort(
                        grpc.StatusCode.INVALID_ARGUMENT, problem, refusals.refused_for(refusals.LANGUAGE)
                    )
                async for samples, last in audio:
                    total += samples.size
                    # Past the limit, read on to the end marker and only then refuse:
                    # aborting while the client still writes reaches it as INTERNAL.
                    if samples.size and total <= max_samples:
                        pieces.append(samples)
                    if partial is not None and partial.done():
                        result = partial.result()
                        partial = None
                        if (
                            language is None
                            and result is not None
                            and result.language_probability >= PARTIAL_LANGUAGE_CONFIDENCE
                        ):
                            partial_language = result.language
                        if result is not None and result.text and result.text != last_partial_text:
                            result.stable_text = stable_prefix(last_partial_text, result.text)
                            last_partial_text = result.text
                            yield result
                    if last:
                        break
                    if options.partials and partial is None and max_samples >= total >= decoded_at + partial_every:
                        decoded_at = total
                        partial = asyncio.create_task(
                            self._decode(np.concatenate(pieces), partial_language, final=False)
                        )
                # The utterance is over: a partial still decoding is worthless now. Stop it
                # (its worker stops, the model is free again) rather than wait for it.
                await _stop(partial)
                partial = None
                if total > max_samples:
                    await context.abort(
                        grpc.StatusCode.OUT_OF_RANGE,
                        f"utterance of {total / rate:.1f} s is longer than "
                        f"PARLEY_ASR_MAX_UTTERANCE_S={self.settings.max_utterance_s:g}",
                    )
                utterance = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.float32)
                try:
                    final = await self._decode(utterance, language, final=True)
                except PoolTimeout as exc:
                    await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
                    return
                assert final is not None
                yield final
        except StreamAborted:
            return
        finally:
            await _stop(partial)


async def _stop(task: asyncio.Task[asr_pb2.Transcript | None] | None) -> None:
    """Cancel a partial decode and wait until its worker really stopped."""
    if task is not None and not task.done():
        task.cancel()
        await asyncio.wait({task})
