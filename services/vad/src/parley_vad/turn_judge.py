"""End-of-turn verdicts: the turn model's copies, how a pause borrows one, and the metrics.

Each copy lives in a ModelPool, so it runs on its own worker thread (never on the event
loop, never on two threads at once). A verdict that would wait too long for a free copy
is skipped: the pause is then reported without one, and the client falls back on the
silence rule, which a late verdict could not have beaten anyway.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import partial

from prometheus_client import Counter, Histogram

from parley.models import ModelPool, PoolTimeout
from parley.pcm import Float32Array
from parley_vad.engines.base import TurnDetector
from parley_vad.recent_audio import RecentAudio

TURN_SECONDS = Histogram(
    "parley_vad_end_of_turn_seconds",
    "Time the end-of-turn model took for one verdict (features and inference, not the wait for a copy)",
    buckets=(0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1),
)
TURN_PROBABILITY = Histogram(
    "parley_vad_end_of_turn_probability",
    "End-of-turn verdicts: P(turn complete) at each pause",
    buckets=(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0),
)
TURN_SKIPPED = Counter(
    "parley_vad_end_of_turn_skipped_total",
    "Pauses reported without a verdict because every end-of-turn model copy stayed busy",
)


@dataclass(frozen=True)
class Verdict:
    probability: float  # P(turn complete)
    seconds: float  # the model's time for it


def _judge(audio: Float32Array, model: TurnDetector) -> Verdict:
    """Runs on the copy's own thread."""
    started = time.perf_counter()
    probability = model.completion(audio)
    return Verdict(probability, time.perf_counter() - started)


class TurnJudge:
    def __init__(self, queue_timeout_s: float) -> None:
        self.queue_timeout_s = queue_timeout_s
        self.pool: ModelPool[TurnDetector] = ModelPool("vad-turn")
        self.window_samples = 0  # the most recent audio the model hears; set once loaded

    def add(self, detector: TurnDetector) -> None:
        """Put a loaded (and self-tested) copy in service; call on the event loop."""
        self.window_samples = detector.window_samples
        self.pool.add(detector)

    @property
    def ready(self) -> bool:
        return self.pool.size > 0

    async def judge(self, stream: RecentAudio, start: int, stop: int) -> Verdict | None:
        """The verdict on the utterance in samples [start, stop) of a stream, silence so far included (the model
        hears at most its window); None when no copy came free in time."""
        utterance = stream.between(max(start, stop - self.window_samples), stop)
        try:
            async with self.pool.lease(self.queue_timeout_s) as copy:
                verdict = await copy.run(partial(_judge, utterance))
        except PoolTimeout:
            TURN_SKIPPED.inc()
            return None
        TURN_SECONDS.observe(verdict.seconds)
        TURN_PROBABILITY.observe(verdict.probability)
        return verdict
