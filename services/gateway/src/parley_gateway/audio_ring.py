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

    def since(self, position: int) -> bytes:
        """Audio from `position` (clamped to what is held) to the end."""
        out = []
        for start, pcm in self._chunks:
            end = start + len(pcm) // 2
            if end <= position:
                continue
            skip = max(0, position - start)
            out.append(pcm[skip * 2 :])
        return b"".join(out)
