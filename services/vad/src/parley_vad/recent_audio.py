"""The most recent audio of one stream, in a fixed-size ring, addressed by stream sample index."""

from __future__ import annotations

import numpy as np

from parley.pcm import Float32Array


class RecentAudio:
    """Keeps the last `capacity` samples of a stream: bounded memory however long the stream runs."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least one sample")
        self._ring = np.zeros(capacity, dtype=np.float32)
        self.end = 0  # samples appended since the stream began; the next one's index

    @property
    def capacity(self) -> int:
        return self._ring.size

    @property
    def start(self) -> int:
        """Index of the oldest sample still kept."""
        return max(0, self.end - self.capacity)

    def append(self, samples: Float32Array) -> None:
        kept = samples[-self.capacity :]  # older ones would be overwritten at once
        at = (self.end + samples.size - kept.size) % self.capacity
        first = min(kept.size, self.capacity - at)
        self._ring[at : at + first] = kept[:first]
        self._ring[: kept.size - first] = kept[first:]
        self.end += samples.size

    def between(self, begin: int, stop: int) -> Float32Array:
        """A copy of samples [begin, stop), clipped to what is kept."""
        begin, stop = max(begin, self.start), min(stop, self.end)
        if stop <= begin:
            return np.zeros(0, dtype=np.float32)
        first, last = begin % self.capacity, (stop - 1) % self.capacity + 1
        if first < last:
            return self._ring[first:last].copy()
        return np.concatenate([self._ring[first:], self._ring[:last]])
