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
from parley_vad.engines.base import FrameScorer, SpeechDetector, TurnDetector
from parley_vad.recent_audio import RecentAudio
from parley_vad.segmenter import Kind, SegmenterOptions, SegmentEvent, SpeechSegmenter
from parley_vad.turn_judge import TurnJudge, Verdict

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


def _judged(settled: SegmentEvent, verdict: Verdict) -> vad_pb2.VadEvent:
    """The turn model's verdict on a pause already sent, at the moment it was settled (the pause itself, or its
    PAUSE_SETTLED)."""
    return vad_pb2.VadEvent(
        kind=vad_pb2.VadEvent.PAUSE_JUDGED,
        timestamp_s=settled.timestamp_s,
        decided_at_s=settled.decided_at_s,
        probability=settled.probability,
        end_of_turn=verdict.probability,
        end_of_turn_ms=verdict.seconds * 1000,
    )


class VoiceActivityServicer(vad_pb2_grpc.VoiceActivityServicer):
    def __init__(self, settings: VadSettings, runtime: ServiceRuntime) -> None:
        self.settings = settings
        self.runtime = runtime
        # Inference runs on the model's own thread, never on the event loop: the loop
        # also answers NATS, and a stalled loop makes gateways forget the instance.
        self.pool: ModelPool[SpeechDetector] = ModelPool("vad")
        self.detector: SpeechDetector | None = None  # its shape (rate, frame size); set once loaded
        # The end-of-turn model judges each pause; None when the settings turn it off.
        self.turns = TurnJudge(settings.turn_queue_timeout_ms / 1000) if settings.turn_model != "none" else None

    def add(self, detector: SpeechDetector) -> None:
        """Put a loaded (and self-tested) model in service; call on the event loop."""
        self.detector = detector
        self.pool.add(detector)

    def add_turn_detector(self, detector: TurnDetector) -> None:
        """Put a loaded (and self-tested) end-of-turn model copy in service; call on the event loop."""
        if self.turns is None:
            raise RuntimeError("this instance runs no end-of-turn model (PARLEY_VAD_TURN_MODEL=none)")
        self.turns.add(detector)

    def _recent_audio(self, detector: SpeechDetector, options: SegmenterOptions) -> RecentAudio | None:
        """What the end-of-turn model hears, when pauses are judged on this stream."""
        if self.turns is None or not options.pause_ms:
            return None
        # A pause is decided inside a batch of frames that is already in the ring: keep a batch more than the
        # model's window (a chunk of at most max_chunk_ms, plus the part-frame carried over).
        batch = detector.sample_rate * self.settings.max_chunk_ms // 1000 + detector.frame_samples
        return RecentAudio(self.turns.window_samples + batch)

    def _segmenter_options(self, asked: DetectOptions) -> SegmenterOptions:
        s = self.settings
        return SegmenterOptions(
            threshold=asked.threshold if asked.threshold is not None else s.threshold,
            min_silence_ms=asked.min_silence_ms if asked.min_silence_ms is not None else s.min_silence_ms,
            min_speech_ms=asked.min_speech_ms if asked.min_speech_ms is not None else s.min_speech_ms,
            speech_pad_ms=asked.speech_pad_ms if asked.speech_pad_ms is not None else s.speech_pad_ms,
            pause_ms=asked.pause_ms if asked.pause_ms is not None else s.pause_ms,
            settle_ms=s.turn_silence_ms,
            resume_window_ms=s.resume_window_ms,
            resume_min_speech_ms=s.resume_min_speech_ms,
        )

    async def Detect(  # noqa: N802 (gRPC method name)
        self, request_iterator: AsyncIterable[AudioChunk], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[vad_pb2.VadEvent]:
        detector = self.detector
        if detector is None or not self.pool.size or (self.turns is not None and not self.turns.ready):
            await context.abort(grpc.StatusCode.UNAVAILABLE, "VAD model is still loading")
            return
        options = self._segmenter_options(await stream_options(context, DetectOptions))
        size, rate = detector.frame_samples, detector.sample_rate
        recent = self._recent_audio(detector, options)
        # The event at which a pause is judged: the pause itself, or its settling after more silence.
        judged_at = Kind.SPEECH_PAUSED if options.settled_when_paused else Kind.PAUSE_SETTLED
        utterance_start = 0  # stream sample where the current utterance's audio begins (padded)
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
                    if recent is not None:
                        recent.append(frames.ravel())  # kept in step with the frames the segmenter has seen
                    if frames.size:
                        try:
                            async with self.pool.lease(self.settings.queue_timeout_s) as model:
                                probabilities = await model.run(partial(_score_all, score, frames))
                        except PoolTimeout as exc:
                            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
                            return
                        for probability in probabilities:
                            event = segmenter.push(probability)
                            if event is None:
                                continue
                            if event.kind is Kind.SPEECH_STARTED:
                                utterance_start = round(event.timestamp_s * rate)
                            if event.kind in _KINDS:
                                yield _to_proto(event)  # the pause too goes out at once: early work starts now
                            if event.kind is judged_at and recent is not None and self.turns is not None:
                                # Awaited here, so the events after this pause keep their order behind its
                                # verdict; the audio arriving meanwhile waits in the request stream.
                                pause_end = round(event.decided_at_s * rate)
                                verdict = await self.turns.judge(recent, utterance_start, pause_end)
                                if verdict is not None:
                                    yield _judged(event, verdict)
                    if last:
                        final = segmenter.flush()
                        if final is not None:
                            yield _to_proto(final)
        except StreamAborted:
            return  # the client went away; nothing to report to anyone
