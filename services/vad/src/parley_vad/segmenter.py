"""Turns per-frame speech probabilities into speech events.

Model-agnostic: it sees only probabilities and frame times. Hysteresis (a
lower threshold to stay in speech), a minimum speech duration so that short
noises never start a turn, and a minimum silence that ends it. A shorter
silence first reports a pause (the turn may be over), and speech after a
pause reports a resume: clients use the pause to start work early. A pause that
lasts `settle_ms` is settled: the moment to judge it (the VAD's turn model), later
than the pause itself so that early work starts sooner than the judgement, which
scores a pause by the silence it hears too.

Speech soon after a stop (within `resume_window_ms` of the end of speech) needs
only `resume_min_speech_ms` to start: a client that keeps a turn open past the
stop for someone who pauses to think (the gateway's incomplete turns) learns
sooner that they went on, so its wait can be shorter.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class Kind(Enum):
    SPEECH_STARTED = 1
    SPEECH_STOPPED = 2
    SPEECH_PAUSED = 3
    SPEECH_RESUMED = 4
    PAUSE_SETTLED = 5  # the pause has lasted settle_ms (only when that is longer than pause_ms)


@dataclass(frozen=True)
class SegmentEvent:
    kind: Kind
    timestamp_s: float  # start of speech (padded), end of last speech (a pause's too), or start of renewed speech
    decided_at_s: float  # stream time when the event was decided
    probability: float


@dataclass(frozen=True)
class SegmenterOptions:
    threshold: float = 0.5
    min_silence_ms: int = 500
    min_speech_ms: int = 200
    speech_pad_ms: int = 300
    pause_ms: int = 200  # 0: no pause/resume events
    settle_ms: int = 0  # a pause is settled after this much silence; at or under pause_ms: when reported
    resume_window_ms: int = 0  # after a stop, for this long from the end of speech ...
    resume_min_speech_ms: int = 200  # ... this much speech starts speech again (instead of min_speech_ms)

    @property
    def settled_when_paused(self) -> bool:
        """A pause is settled the moment it is reported: no PAUSE_SETTLED follows it."""
        return self.settle_ms <= self.pause_ms

    @property
    def release_threshold(self) -> float:
        return max(0.01, self.threshold - 0.15)


class SpeechSegmenter:
    def __init__(self, options: SegmenterOptions, frame_s: float) -> None:
        self.options = options
        self.frame_s = frame_s
        self._now = 0.0  # end time of the last frame seen
        self._candidate_start: float | None = None  # speech seen, not yet long enough
        self._speaking = False
        self._silence_since: float | None = None  # end of the last speech frame
        self._paused = False
        self._settled = False  # the current pause was settled
        self._stopped_speech_end: float | None = None  # end of speech of the last stop

    def push(self, probability: float) -> SegmentEvent | None:
        start, self._now = self._now, self._now + self.frame_s
        if self._speaking:
            return self._while_speaking(probability, start)
        opts = self.options
        if probability >= opts.threshold:
            if self._candidate_start is None:
                self._candidate_start = start
            if self._now - self._candidate_start >= self._min_speech_s(self._candidate_start):
                self._speaking = True
                self._silence_since = None
                begin = max(0.0, self._candidate_start - opts.speech_pad_ms / 1000)
                self._candidate_start = None
                return SegmentEvent(Kind.SPEECH_STARTED, begin, self._now, probability)
        elif probability < opts.release_threshold:
            self._candidate_start = None  # a blip, not speech
        return None

    def _min_speech_s(self, candidate_start: float) -> float:
        """Speech that starts a segment: less of it soon after a stop."""
        opts = self.options
        ended = self._stopped_speech_end
        if ended is not None and candidate_start - ended <= opts.resume_window_ms / 1000:
            return min(opts.min_speech_ms, opts.resume_min_speech_ms) / 1000
        return opts.min_speech_ms / 1000

    def _while_speaking(self, probability: float, start: float) -> SegmentEvent | None:
        opts = self.options
        if probability >= opts.threshold:
            self._silence_since = None
            if self._paused:
                self._paused = self._settled = False
                return SegmentEvent(Kind.SPEECH_RESUMED, start, self._now, probability)
            return None
        if probability >= opts.release_threshold:
            return None  # in between: neither resets nor starts the silence
        if self._silence_since is None:
            self._silence_since = start
        silent_s = self._now - self._silence_since
        if silent_s >= opts.min_silence_ms / 1000:
            self._speaking = self._paused = self._settled = False
            ended = self._silence_since
            self._silence_since = None
            self._stopped_speech_end = ended
            return SegmentEvent(Kind.SPEECH_STOPPED, ended, self._now, probability)
        if opts.pause_ms and not self._paused and silent_s >= opts.pause_ms / 1000:
            self._paused = True
            return SegmentEvent(Kind.SPEECH_PAUSED, self._silence_since, self._now, probability)
        if self._paused and not self._settled and not opts.settled_when_paused and silent_s >= opts.settle_ms / 1000:
            self._settled = True
            return SegmentEvent(Kind.PAUSE_SETTLED, self._silence_since, self._now, probability)
        return None

    def flush(self) -> SegmentEvent | None:
        """End of stream: close an open speech segment."""
        if not self._speaking:
            return None
        self._speaking = self._paused = self._settled = False
        ended = self._silence_since if self._silence_since is not None else self._now
        return SegmentEvent(Kind.SPEECH_STOPPED, ended, self._now, 0.0)
