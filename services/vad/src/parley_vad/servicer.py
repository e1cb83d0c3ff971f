from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator
from functools import partial

import grpc
import numpy as np
from pydantic import BaseModel, Field

from parley.audio.v1.audio_pb2 import AudioChunk
from parley.models import ModelPool, PoolTimeout
from parley.pcm import Float32Array
from parley.server import ServiceRuntime
from parley.streams import StreamAborted, audio_samples, stream_options
from parley.vad.v1 import vad_pb2, vad_pb2_grpc
from parley_vad.config import VadSettings
from parley_vad.engines.base import FrameScorer, SpeechDetector
from parley_vad.segmenter import Kind, SegmenterOptions, SegmentEvent, SpeechSegmenter

_KINDS = {
    Kind.SPEECH_STARTED: vad_pb2.VadEvent.SPEECH_STARTED,
    Kind.SPEECH_STOPPED: vad_pb2.VadEvent.SPEECH_STOPPED,
    Kind.SPEECH_PAUSED: vad_pb2.VadEvent.SPEECH_PAUSED,
    Kind.SPEECH_RESUMED: vad_pb2.VadEvent.SPEECH_RESUMED,
}


class DetectOptions(BaseModel):
    """`parley-*` request metadata accepted by Detect."""

    threshold: float | None = Field(default=None, gt=0, lt=1)
    min_silence_ms: int | None = Field(default=None, ge=0, le=10_000)
    min_speech_ms: int | None = Field(default=None, ge=0, le=10_000)
    speech_pad_ms: int | None = Field(default=None, ge=0, le=2_000)
    pause_ms: int | None = Field(default=None, ge=0, le=10_000)


def _score_all(score: FrameScorer, frames: Float32Array, _model: SpeechDetector) -> list[float]:
    """Runs on the model's thread: one probability per frame, in order, with the stream's own state."""
    return [score(frame) for frame in frames]


def _to_proto(event: SegmentEvent) -> vad_pb2.VadEvent:
    return vad_pb2.VadEvent(
        kind=_KINDS[event.kind],
        timestamp_s=event.timestamp_s,
        decided_at_s=event.decided_at_s,
        probability=event.probability,
    )


class VoiceActivityServicer(vad_pb2_grpc.VoiceActivityServicer):
    def __init__(self, settings: VadSettings, runtime: ServiceRuntime) -> None:
        self.settings = settings
        self.runtime = runtime
        # Inference runs on the model's own thread, never on the event loop: the loop
        # also answers NATS, and a stalled loop makes gateways forget the instance.
        self.pool: ModelPool[SpeechDetector] = ModelPool("vad")
        self.detector: SpeechDetector | None = None  # its shape (rate, frame size); set once loaded

    def add(self, detector: SpeechDetector) -> None:
        """Put a loaded (and self-tested) model in service; call on the event loop."""
        self.detector = detector
        self.pool.add(detector)

    def _segmenter_options(self, asked: DetectOptions) -> SegmenterOptions:
        s = self.settings
        return SegmenterOptions(
            threshold=asked.threshold if asked.threshold is not None else s.threshold,
            min_silence_ms=asked.min_silence_ms if asked.min_silence_ms is not None else s.min_silence_ms,
            min_speech_ms=asked.min_speech_ms if asked.min_speech_ms is not None else s.min_speech_ms,
            speech_pad_ms=asked.speech_pad_ms if asked.speech_pad_ms is not None else s.speech_pad_ms,
            pause_ms=asked.pause_ms if asked.pause_ms is not None else s.pause_ms,
        )

    async def Detect(  # noqa: N802 (gRPC method name)
        self, request_iterator: AsyncIterable[AudioChunk], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[vad_pb2.VadEvent]:
        detector = self.detector
        if detector is None or not self.pool.size:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "VAD model is still loading")
            return
        options = self._segmenter_options(await stream_options(context, DetectOptions))
        size = detector.frame_samples
        try:
            async with self.runtime.stream("Detect", context):
                score = detector.new_stream()
                segmenter = SpeechSegmenter(options, size / detector.sample_rate)
                pending = np.zeros(0, dtype=np.float32)
                audio = audio_samples(request_iterator, context, detector.sample_rate, self.settings.max_chunk_ms)
                async for samples, last in audio:
                    pending = np.concatenate([pending, samples])
                    whole = pending.size - pending.size % size
                    frames, pending = pending[:whole].reshape(-1, size), pending[whole:]
                    if frames.size:
                        try:
                            async with self.pool.lease(self.settings.queue_timeout_s) as model:
                                probabilities = await model.run(partial(_score_all, score, frames))
                        except PoolTimeout as exc:
                            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
                            return
                        for probability in probabilities:
                            event = segmenter.push(probability)
                            if event is not None:
                                yield _to_proto(event)
                    if last:
                        final = segmenter.flush()
                        if final is not None:
                            yield _to_proto(final)
        except StreamAborted:
            return  # the client went away; nothing to report to anyone
