"""One utterance's ASR stream, read from the session's audio ring.

It starts at the utterance's (padded) start and follows the ring as audio arrives, in small
chunks; `end()` fixes its last sample and sends the end marker. Its requests can be replayed
from the start, so the routing layer may move it to another ASR instance until the final
transcript has come.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from parley import refusals
from parley.audio.v1.audio_pb2 import AudioChunk
from parley.streams import options_metadata
from parley_gateway.conversation.audio_ring import AudioRing
from parley_gateway.conversation.language import language_name
from parley_gateway.conversation.reply_output import Send
from parley_gateway.protocol import ErrorCode, error_event, event
from parley_gateway.routing.model_services import ModelServices, ServiceError

PIPELINE_RATE = 16000  # what VAD and ASR receive
# Audio goes to ASR in pieces of this length, however much is sent at once (a resumed
# utterance is re-sent from its start): far below the ASR's chunk limit.
ASR_CHUNK_SAMPLES = PIPELINE_RATE // 5


@dataclass(frozen=True)
class Heard:
    """An utterance's final transcript; `text` None when none came (the error was reported)."""

    text: str | None
    language: str = ""
    language_probability: float = 0.0  # how sure the ASR was of `language` (0..1)
    audio_s: float = 0.0  # the audio it covers
    confidence: float = 0.0  # how sure the ASR was of the words (0..1; 0: it could not tell)


# Called once per utterance with its turn and what was heard.
OnFinal = Callable[[int, Heard], None]


class Transcription:
    def __init__(
        self,
        services: ModelServices,
        ring: AudioRing,
        turn_id: int,
        start: int,
        language: str | None,
        send: Send,
        on_final: OnFinal,
        on_partial: Callable[[str], None] | None = None,
    ) -> None:
        """on_partial: each partial transcript's text, while the utterance goes on."""
        self.services = services
        self.ring = ring
        self.turn_id = turn_id
        self.start = start
        self.language = language
        self.send = send
        self.on_final = on_final
        self.on_partial = on_partial
        self.end_at: int | None = None  # ring position of its last sample, once ended
        self.end_sent_at: float | None = None  # time.monotonic() when the end marker left
        self._more = asyncio.Event()
        self.task = asyncio.create_task(self._run())

    def wake(self) -> None:
        """More audio is in the ring."""
        self._more.set()

    def end(self) -> None:
        if self.end_at is None:
            self.end_at = self.ring.end
            self._more.set()

    def abort(self) -> None:
        self.task.cancel()

    async def _requests(self) -> AsyncIterator[AudioChunk]:
        ring, cursor = self.ring, self.start
        while True:
            # Re-read the limit after every chunk: the end may be fixed while a chunk is in flight.
            limit = ring.end if self.end_at is None else self.end_at
            if cursor < limit:
                upto = min(limit, cursor + ASR_CHUNK_SAMPLES)
                pcm = ring.read(cursor, upto)
                cursor = upto
                if pcm:
                    yield AudioChunk(pcm=pcm, sample_rate=PIPELINE_RATE)
            elif self.end_at is not None:
                self.end_sent_at = time.monotonic()
                yield AudioChunk(end_of_stream=True, sample_rate=PIPELINE_RATE)
                return
            else:
                self._more.clear()
                if ring.end <= cursor:
                    await self._more.wait()

    async def _run(self) -> None:
        metadata = options_metadata({"partials": 1, "language": self.language})
        heard = Heard(None)
        try:
            async for result in self.services.transcribe(self._requests, metadata, lambda: self.end_sent_at):
                if result.is_final:
                    text = result.text.strip()
                    heard = Heard(
                        text, result.language, result.language_probability, result.audio_duration_s, result.confidence
                    )
                elif self.end_at is None:
                    self.send(event("transcript.partial", text=result.text.strip(), stable=result.stable_text.strip()))
                    if self.on_partial is not None:
                        self.on_partial(result.text)
        except ServiceError as exc:
            self.send(self._error(exc))
        self.on_final(self.turn_id, heard)

    def _error(self, exc: ServiceError) -> dict[str, object]:
        if exc.refused_for == refusals.LANGUAGE and self.language:
            # The recogniser cannot take the language the session asked for (an English-only model, say).
            name = language_name(self.language)
            return {
                **error_event(
                    ErrorCode.UNSUPPORTED_LANGUAGE,
                    f"speech in {name} ({self.language}) cannot be transcribed here: {exc.detail}; start the "
                    "session without `language` to have it detected, or type the turn (text.input)",
                ),
                "language": self.language,
            }
        return error_event(exc.code, exc.message)
