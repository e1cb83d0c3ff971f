from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator

import grpc
import numpy as np
from pydantic import BaseModel, Field

from parley.audio.v1.audio_pb2 import AudioChunk
from parley.server import ServiceRuntime
from parley.streams import StreamAborted, audio_samples, stream_options
from parley.vad.v1 import vad_pb2, vad_pb2_grpc
from parley_vad.config import VadSettings
from parley_vad.engines.base import SpeechDetector
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
        self.detector: SpeechDetector | None = None  # set once loaded

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
        if detector is None:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "VAD model is still loading")
            return
        options = self._segmenter_options(await stream_options(context, DetectOptions))
        try:
            async with self.runtime.stream("Detect", context):
                score = detector.new_stream()
                segmenter = SpeechSegmenter(options, detector.frame_samples / detector.sample_rate)
                pending = np.zeros(0, dtype=np.float32)
                audio = audio_samples(request_iterator, context, detector.sample_rate, self.settings.max_chunk_ms)
                async for samples, last in audio:
                    pending = np.concatenate([pending, samples])
                    while pending.size >= detector.frame_samples:
                        frame, pending = pending[: detector.frame_samples], pending[detector.frame_samples :]
                        event = segmenter.push(score(frame))
                        if event is not None:
                            yield _to_proto(event)
                    if last:
                        final = segmenter.flush()
                        if final is not None:
                            yield _to_proto(final)
        except StreamAborted:
            return  # the client went away; nothing to report to anyone
