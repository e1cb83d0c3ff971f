"""What of a reply the user heard: its sentences placed in its audio, cut at a played position."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

# Played positions this close to the end count as the whole reply (rounding, resampling).
PLAYED_TOLERANCE_MS = 60.0


@dataclass
class SpokenPiece:
    text: str
    start_ms: float = math.inf  # position in the reply audio (inf: none of its audio came yet)
    end_ms: float = math.inf


@dataclass
class SpokenAudio:
    """A reply's sentences, in order, and how much audio it has."""

    pieces: list[SpokenPiece] = field(default_factory=list)
    audio_ms: float = 0.0

    def fully_played(self, played_ms: float) -> bool:
        return played_ms + PLAYED_TOLERANCE_MS >= self.audio_ms

    def heard_text(self, played_ms: float) -> str:
        """The part spoken before `played_ms` (words cut proportionally)."""
        if self.fully_played(played_ms):
            played_ms = self.audio_ms
        heard: list[str] = []
        for piece in self.pieces:
            # A piece with no audio of its own was spoken at the start of the next: heard once that plays.
            spoken_with_next = piece.start_ms == piece.end_ms
            if played_ms >= piece.end_ms and not (spoken_with_next and played_ms <= piece.start_ms):
                heard.append(piece.text)
            elif played_ms > piece.start_ms:
                words = piece.text.split()
                share = (played_ms - piece.start_ms) / max(1.0, piece.end_ms - piece.start_ms)
                heard.append(" ".join(words[: round(len(words) * share)]))
        return " ".join(h for h in heard if h)
