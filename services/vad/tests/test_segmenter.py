from __future__ import annotations

import pytest

from parley_vad.segmenter import Kind, SegmenterOptions, SegmentEvent, SpeechSegmenter

FRAME_S = 0.032


def run(probabilities: list[float], **options: int | float) -> list[tuple[Kind, float]]:
    segmenter = SpeechSegmenter(SegmenterOptions(**options), FRAME_S)  # type: ignore[arg-type]
    events = [segmenter.push(p) for p in probabilities]
    return [(e.kind, round(e.timestamp_s, 3)) for e in events if e is not None]


def test_speech_then_silence() -> None:
    probs = [0.0] * 10 + [0.9] * 30 + [0.0] * 30
    events = run(probs, min_silence_ms=500, min_speech_ms=200, speech_pad_ms=100, pause_ms=0)
    assert events == [
        (Kind.SPEECH_STARTED, round(10 * FRAME_S - 0.1, 3)),
        (Kind.SPEECH_STOPPED, round(40 * FRAME_S, 3)),
    ]


def test_a_short_noise_never_starts_a_turn() -> None:
    probs = [0.0] * 10 + [0.95] * 4 + [0.0] * 40  # 128 ms of "speech"
    assert run(probs, min_speech_ms=200) == []


def test_short_pauses_do_not_end_speech() -> None:
    probs = [0.9] * 20 + [0.0] * 8 + [0.9] * 20 + [0.0] * 30  # a 256 ms pause
    events = run(probs, min_silence_ms=500, min_speech_ms=100, pause_ms=0)
    assert [kind for kind, _ in events] == [Kind.SPEECH_STARTED, Kind.SPEECH_STOPPED]


def test_middling_probabilities_keep_speech_going() -> None:
    # Between the release threshold and the threshold: no new silence starts.
    probs = [0.9] * 20 + [0.4] * 40 + [0.0] * 30
    events = run(probs, threshold=0.5, min_silence_ms=500, min_speech_ms=100)
    assert events[-1] == (Kind.SPEECH_STOPPED, round(60 * FRAME_S, 3))


def test_flush_closes_open_speech() -> None:
    segmenter = SpeechSegmenter(SegmenterOptions(min_speech_ms=0), FRAME_S)
    for _ in range(10):
        segmenter.push(0.9)
    event = segmenter.flush()
    assert event is not None and event.kind is Kind.SPEECH_STOPPED


def test_a_pause_comes_before_the_stop() -> None:
    probs = [0.9] * 20 + [0.0] * 20
    events = run(probs, min_silence_ms=500, min_speech_ms=100, speech_pad_ms=0, pause_ms=200)
    assert events == [
        (Kind.SPEECH_STARTED, 0.0),
        (Kind.SPEECH_PAUSED, round(20 * FRAME_S, 3)),
        (Kind.SPEECH_STOPPED, round(20 * FRAME_S, 3)),
    ]


def test_speech_after_a_pause_resumes_the_turn() -> None:
    probs = [0.9] * 20 + [0.0] * 8 + [0.9] * 10 + [0.0] * 20
    kinds = [kind for kind, _ in run(probs, min_silence_ms=500, min_speech_ms=100, pause_ms=200)]
    assert kinds == [
        Kind.SPEECH_STARTED,
        Kind.SPEECH_PAUSED,
        Kind.SPEECH_RESUMED,
        Kind.SPEECH_PAUSED,
        Kind.SPEECH_STOPPED,
    ]


def test_a_pause_settles_after_more_silence() -> None:
    """Reported at pause_ms (early work starts), judged at settle_ms: both name the same end of speech."""
    probs = [0.9] * 20 + [0.0] * 20
    options = {"min_silence_ms": 500, "min_speech_ms": 100, "speech_pad_ms": 0, "pause_ms": 100, "settle_ms": 200}
    events = _events(probs, **options)
    assert [(e.kind, round(e.timestamp_s, 3)) for e in events] == [
        (Kind.SPEECH_STARTED, 0.0),
        (Kind.SPEECH_PAUSED, round(20 * FRAME_S, 3)),
        (Kind.PAUSE_SETTLED, round(20 * FRAME_S, 3)),
        (Kind.SPEECH_STOPPED, round(20 * FRAME_S, 3)),
    ]
    paused, settled = events[1], events[2]
    assert round(paused.decided_at_s, 3) == round(24 * FRAME_S, 3)  # 4 frames: 128 ms >= 100
    assert round(settled.decided_at_s, 3) == round(27 * FRAME_S, 3)  # 7 frames: 224 ms >= 200


@pytest.mark.parametrize(
    ("silent_frames", "first_pause"),
    [
        (5, [Kind.SPEECH_PAUSED]),  # 160 ms of silence, then speech again: it never settled
        (10, [Kind.SPEECH_PAUSED, Kind.PAUSE_SETTLED]),  # a settled 320 ms pause: the next one settles anew
    ],
    ids=["speech-back-before-it-settles", "each-pause-settles-anew"],
)
def test_a_pause_settles_only_when_it_lasts_and_each_pause_anew(silent_frames: int, first_pause: list[Kind]) -> None:
    probs = [0.9] * 20 + [0.0] * silent_frames + [0.9] * 10 + [0.0] * 20
    options = {"min_silence_ms": 500, "min_speech_ms": 100, "pause_ms": 100, "settle_ms": 200}
    kinds = [kind for kind, _ in run(probs, **options)]
    assert kinds == [
        Kind.SPEECH_STARTED,
        *first_pause,
        Kind.SPEECH_RESUMED,
        Kind.SPEECH_PAUSED,
        Kind.PAUSE_SETTLED,
        Kind.SPEECH_STOPPED,
    ]


def test_a_pause_reported_late_enough_is_settled_as_it_is_reported() -> None:
    probs = [0.9] * 20 + [0.0] * 20
    for settle_ms in (0, 150, 200):
        options = SegmenterOptions(min_silence_ms=500, min_speech_ms=100, pause_ms=200, settle_ms=settle_ms)
        assert options.settled_when_paused
        kinds = [kind for kind, _ in run(probs, **vars(options))]
        assert Kind.PAUSE_SETTLED not in kinds and Kind.SPEECH_PAUSED in kinds


def test_pause_events_can_be_turned_off() -> None:
    probs = [0.9] * 20 + [0.0] * 20
    kinds = [kind for kind, _ in run(probs, min_silence_ms=500, min_speech_ms=100, pause_ms=0)]
    assert kinds == [Kind.SPEECH_STARTED, Kind.SPEECH_STOPPED]


def test_speech_soon_after_a_stop_starts_sooner() -> None:
    """A speaker who paused past the stop goes on: 96 ms of speech say so, where a new turn needs 200."""
    probs = [0.9] * 20 + [0.0] * 22 + [0.9] * 10  # 704 ms of silence, then speech
    options = {"min_silence_ms": 500, "min_speech_ms": 200, "speech_pad_ms": 0, "pause_ms": 0}
    soon = run(probs, **options, resume_window_ms=1500, resume_min_speech_ms=96)
    assert soon[-1] == (Kind.SPEECH_STARTED, round(42 * FRAME_S, 3))
    decided = _events(probs, **options, resume_window_ms=1500, resume_min_speech_ms=96)
    assert round(decided[-1].decided_at_s, 3) == round(45 * FRAME_S, 3)  # three frames in
    as_before = _events(probs, **options, resume_window_ms=0, resume_min_speech_ms=96)
    assert round(as_before[-1].decided_at_s, 3) == round(49 * FRAME_S, 3)  # seven frames: min_speech_ms


def test_a_short_noise_long_after_a_stop_still_starts_nothing() -> None:
    probs = [0.9] * 20 + [0.0] * 60 + [0.95] * 4 + [0.0] * 10  # 1.9 s after the end of speech: 128 ms
    events = run(
        probs, min_silence_ms=500, min_speech_ms=200, pause_ms=0, resume_window_ms=1500, resume_min_speech_ms=96
    )
    assert [kind for kind, _ in events] == [Kind.SPEECH_STARTED, Kind.SPEECH_STOPPED]


def _events(probabilities: list[float], **options: int | float) -> list[SegmentEvent]:
    segmenter = SpeechSegmenter(SegmenterOptions(**options), FRAME_S)  # type: ignore[arg-type]
    return [e for e in (segmenter.push(p) for p in probabilities) if e is not None]
