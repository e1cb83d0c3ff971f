"""The session's voice activity stream: all of its input audio through one VAD stream.

Speech events go to the turn machine, placed on the session's audio positions. If the VAD
instance goes away, the client is told and the stream starts over on another (after the
routing policy's pause), from the audio that arrives next.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from pydantic import BaseModel

from parley.audio.v1.audio_pb2 import AudioChunk
from parley.streams import options_metadata
from parley.vad.v1.vad_pb2 import VadEvent
from parley_gateway.conversation.audio_ring import AudioRing
from parley_gateway.conversation.reply_output import Send
from parley_gateway.conversation.transcription import PIPELINE_RATE
from parley_gateway.conversation.turns import TurnTaker
from parley_gateway.protocol import error_event
from parley_gateway.routing.model_services import ModelServices, ServiceError


class VoiceActivity:
    def __init__(
        self, services: ModelServices, options: BaseModel, ring: AudioRing, turns: TurnTaker, send: Send
    ) -> None:
        self.services = services
        self.metadata = options_metadata(options)
        self.ring = ring
        self.turns = turns
        self.send = send
        self._audio: asyncio.Queue[tuple[int, bytes]] = asyncio.Queue()
        self.task = asyncio.create_task(self._run())

    def audio(self, position: int, pcm: bytes) -> None:
        """Input audio at `position` in the ring (at the pipeline rate)."""
        self._audio.put_nowait((position, pcm))

    async def close(self) -> None:
        self.task.cancel()
        await asyncio.wait({self.task})

    async def _requests(self, origin: list[int]) -> AsyncIterator[AudioChunk]:
        while True:
            position, pcm = await self._audio.get()
            if not origin:
                origin.append(position)  # this VAD stream's time zero
            yield AudioChunk(pcm=pcm, sample_rate=PIPELINE_RATE)

    async def _run(self) -> None:
        while True:
            origin: list[int] = []

            def requests(origin: list[int] = origin) -> AsyncIterator[AudioChunk]:
                origin.clear()
                return self._requests(origin)

            try:
                async for vad_event in self.services.detect(requests, self.metadata):
                    self._on_event(vad_event, origin[0] if origin else self.ring.end)
            except ServiceError as exc:
                self.send(error_event(exc.code, f"voice detection interrupted: {exc.message}"))
            # The VAD instance went away: start over on another.
            await asyncio.sleep(self.services.policy.restart_after_s)

    def _on_event(self, vad_event: VadEvent, origin: int) -> None:
        position = origin + int(vad_event.timestamp_s * PIPELINE_RATE)
        at_ms = round(position * 1000 / PIPELINE_RATE)
        if vad_event.kind == VadEvent.SPEECH_STARTED:
            self.turns.speech_started(position, at_ms)
        elif vad_event.kind == VadEvent.SPEECH_PAUSED:
            self.turns.speech_paused(position, at_ms, _silence_ms(vad_event))
        elif vad_event.kind == VadEvent.PAUSE_JUDGED and vad_event.HasField("end_of_turn"):
            # The VAD's turn model on the pause it sent last (none comes: it runs none, or was busy, or speech came
            # back before the pause was long enough to judge).
            self.turns.pause_judged(vad_event.end_of_turn, vad_event.end_of_turn_ms, _silence_ms(vad_event))
        elif vad_event.kind == VadEvent.SPEECH_RESUMED:
            self.turns.speech_resumed(position, at_ms)
        elif vad_event.kind == VadEvent.SPEECH_STOPPED:
            self.turns.speech_stopped(at_ms, _silence_ms(vad_event))


def _silence_ms(vad_event: VadEvent) -> int:
    """The silence the VAD had seen when it decided a pause, a verdict or a stop: from the end of speech on."""
    return round((vad_event.decided_at_s - vad_event.timestamp_s) * 1000)
