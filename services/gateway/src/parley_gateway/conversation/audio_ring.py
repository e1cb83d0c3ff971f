"""The last few seconds of a session's input audio, addressed by stream position."""

from __future__ import annotations

from collections import deque


class AudioRing:
    """PCM16 mono audio; positions count samples since the session started."""

    def __init__(self, sample_rate: int, seconds: float) -> None:
        self.sample_rate = sample_rate
        self.capacity = int(sample_rate * seconds)
        self._chunks: deque[tuple[int, bytes]] = deque()  # (start position, pcm)
        self._held = 0
        self.end = 0  # position just past the newest sample

    def append(self, pcm: bytes) -> int:
        """Store `pcm`; returns its start position."""
        start = self.end
        self._chunks.append((start, pcm))
        samples = len(pcm) // 2
        self.end += samples
        self._held += samples
        while self._chunks and self._held - len(self._chunks[0][1]) // 2 >= self.capacity:
            self._held -= len(self._chunks.popleft()[1]) // 2
        return start

    def read(self, start: int, end: int) -> bytes:
        """Audio from `start` to `end` (clamped to what is held)."""
        out = []
        for chunk_start, pcm in self._chunks:
            chunk_end = chunk_start + len(pcm) // 2
            if chunk_end <= start or chunk_start >= end:
                continue
            out.append(pcm[max(0, start - chunk_start) * 2 : (min(end, chunk_end) - chunk_start) * 2])
        return b"".join(out)
