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

from parley.audio.v1.audio_pb2 import AudioChunk
from parley.streams import options_metadata
from parley_gateway.conversation.audio_ring import AudioRing
from parley_gateway.conversation.reply_output import Send
from parley_gateway.protocol import error_event, event
from parley_gateway.routing.model_services import ModelServices, ServiceError

PIPELINE_RATE = 16000  # what VAD and ASR receive
# Audio goes to ASR in pieces of this length, however much is sent at once (a resumed
# utterance is re-sent from its start): far below the ASR's chunk limit.
ASR_CHUNK_SAMPLES = PIPELINE_RATE // 5

# Called once with the final transcript (None: none came) and its language.
OnFinal = Callable[[int, str | None, str], None]


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
    ) -> None:
        self.services = services
        self.ring = ring
        self.turn_id = turn_id
        self.start = start
        self.language = language
        self.send = send
        self.on_final = on_final
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
        text: str | None = None
        language = ""
        try:
            async for result in self.services.transcribe(self._requests, metadata, lambda: self.end_sent_at):
                if result.is_final:
                    text, language = result.text.strip(), result.language
                elif self.end_at is None:
                    self.send(event("transcript.partial", text=result.text.strip(), stable=result.stable_text.strip()))
        except ServiceError as exc:
            self.send(error_event(exc.code, exc.message))
        self.on_final(self.turn_id, text, language)
