"""A reply's voice: one TTS stream, fed sentence by sentence as the LLM writes them.

The stream is pinned to the conversation's TTS instance when it can be. If that instance dies
mid-reply, the rest is spoken by another, from the sentence whose audio was flowing (the user
may hear its start twice, never a gap), as often as the routing policy allows.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import AsyncIterator, Callable

from parley.pcm import duration_s
from parley.tts.v1 import tts_pb2
from parley_gateway.conversation.heard import SpokenAudio, SpokenPiece
from parley_gateway.routing.model_services import ModelServices, ServiceError

log = logging.getLogger(__name__)


class TextFeed:
    """A reply's sentences for its TTS stream, as the LLM writes them.

    Replayable from any sentence (the stream may move to another TTS instance), and it knows
    when an answer is owed, for the stream's deadlines: from the moment a sentence or the end
    marker went out while an earlier answer is still missing. Each answer restarts the clock
    while more is outstanding, so a stream that read the whole reply at once and then went
    silent is still owed its next answer (it once was not, and such a reply never ended).
    """

    def __init__(self) -> None:
        self.pieces: list[str] = []
        self.ended = False
        self._more = asyncio.Event()
        self._owed_since: float | None = None  # time.monotonic() since when an answer is owed
        self._sent = 0  # pieces handed to the current stream
        self._end_sent = False
        self._answered = -1  # the last piece audio came back for

    def add(self, text: str) -> None:
        self.pieces.append(text)
        self._more.set()

    def end(self) -> None:
        self.ended = True
        self._more.set()

    def answered(self, piece: int) -> None:
        """Audio of `piece` came back: the next answer is owed from now if more went out."""
        self._answered = max(self._answered, piece)
        outstanding = self._sent - 1 > self._answered or self._end_sent
        self._owed_since = time.monotonic() if outstanding else None

    def owed_since(self) -> float | None:
        return self._owed_since

    def restart(self, first: int) -> None:
        """The stream moves to another instance, which gets the pieces from `first` on."""
        self._answered = first - 1
        self._sent = first
        self._end_sent = False
        self._owed_since = None

    async def read(self, first: int = 0) -> AsyncIterator[str]:
        sent = first
        while True:
            if sent < len(self.pieces):
                if self._owed_since is None:
                    self._owed_since = time.monotonic()
                sent += 1
                self._sent = sent
                yield self.pieces[sent - 1]
            elif self.ended:
                self._end_sent = True
                if self._owed_since is None:
                    self._owed_since = time.monotonic()  # the end of the stream is owed now
                return
            else:
                self._more.clear()
                await self._more.wait()


class ReplySpeech:
    """The TTS side of one reply: `say()` each sentence, `end()`, and `run()` speaks them."""

    def __init__(
        self,
        services: ModelServices,
        start: tts_pb2.SpeakStart,
        spoken: SpokenAudio,
        on_audio: Callable[[bytes], None],
        name: str,
    ) -> None:
        self.services = services
        self.start = start
        self.spoken = spoken
        self.on_audio = on_audio  # each chunk, in order, once its place in the reply is known
        self.name = name  # for the log
        self.feed = TextFeed()
        self.speaker_similarity: float | None = None  # a cloned voice: how much the reply sounded like it

    def say(self, sentence: str) -> None:
        """Queue a sentence; it counts as heard only once its audio plays."""
        self.spoken.pieces.append(SpokenPiece(sentence))
        self.feed.add(sentence)

    def end(self) -> None:
        self.feed.end()

    async def run(self) -> None:
        rate = self.start.sample_rate
        feed, spoken = self.feed, self.spoken
        failovers = self.services.policy.midstream_failovers
        first = 0  # the piece this stream starts from
        for attempt in range(failovers + 1):
            speaking = first - 1  # the last piece audio came for
            try:
                pieces = functools.partial(feed.read, first)  # replayed from here if the stream moves again
                async for response in self.services.speak(self.start, pieces, feed.owed_since):
                    if response.HasField("done") and response.done.HasField("speaker_similarity"):
                        self.speaker_similarity = round(response.done.speaker_similarity, 3)
                    if not response.HasField("audio") or not response.audio.pcm:
                        continue
                    index = first + response.piece
                    feed.answered(index)
                    piece = spoken.pieces[index]
                    if index != speaking:
                        # Pieces with no audio of their own were spoken with this one (an engine that
                        # joins a piece cut mid-phrase to the next): they are heard once it starts.
                        for joined in spoken.pieces[speaking + 1 : index]:
                            joined.start_ms = joined.end_ms = spoken.audio_ms
                        piece.start_ms, speaking = spoken.audio_ms, index
                    spoken.audio_ms += duration_s(response.audio.pcm, rate) * 1000
                    piece.end_ms = spoken.audio_ms
                    self.on_audio(response.audio.pcm)
                return
            except ServiceError as exc:
                if not exc.retryable or attempt == failovers:
                    raise
                first = max(speaking, first)
                log.warning(
                    "%s: TTS instance lost mid-reply (%s); re-speaking from piece %d on another",
                    self.name,
                    exc.message,
                    first,
                )
                feed.restart(first)
