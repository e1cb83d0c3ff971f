from __future__ import annotations

import random

import numpy as np

from parley_vad.recent_audio import RecentAudio


def test_any_range_reads_back_what_was_appended_while_it_is_kept() -> None:
    rng = random.Random(1)
    for capacity in (1, 5, 17, 100):
        recent, written = RecentAudio(capacity), np.zeros(0, dtype=np.float32)
        for _ in range(200):
            chunk = np.arange(written.size, written.size + rng.randint(0, 3 * capacity), dtype=np.float32)
            written = np.concatenate([written, chunk])
            recent.append(chunk)
            begin = rng.randint(-5, written.size + 5)
            stop = rng.randint(begin, written.size + 10)
            kept_from = max(0, written.size - capacity)
            expected = written[max(begin, kept_from) : max(min(stop, written.size), max(begin, kept_from))]
            assert np.array_equal(recent.between(begin, stop), expected), (capacity, begin, stop)
        assert recent.end == written.size


def test_memory_stays_bounded_however_long_the_stream() -> None:
    recent = RecentAudio(1000)
    for _ in range(100):
        recent.append(np.ones(777, dtype=np.float32))
    assert recent.capacity == 1000 and recent.start == 77_700 - 1000
    assert recent.between(0, recent.end).size == 1000
