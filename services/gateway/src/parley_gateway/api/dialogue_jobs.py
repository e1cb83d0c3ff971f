"""Dialogue jobs: a script spoken by the TTS service in the background, followed, streamed and downloaded.

A job is one `SynthesizeDialogue` stream. Its audio is kept as it arrives, so a client can
poll the progress, listen while it is made (readers wait on a condition for more), and
download the whole WAV once it is done. Jobs are bounded: at most `max_jobs` exist, the
oldest finished one makes room, and a finished job is forgotten after `keep_s`.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import secrets
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import soundfile

from parley.tts.v1 import tts_pb2

Status = Literal["running", "done", "failed", "cancelled"]


class TooManyJobs(Exception):
    pass


@dataclass
class TurnAudio:
    turn: int
    speaker: int
    start_s: float
    end_s: float
    speaker_similarity: float | None = None


@dataclass
class DialogueJob:
    id: str
    turns_total: int
    speakers: list[int]
    sample_rate: int
    status: Status = "running"
    error: str = ""
    created: float = field(default_factory=time.time)
    finished: float | None = None
    turns: list[TurnAudio] = field(default_factory=list)
    audio: bytearray = field(default_factory=bytearray)  # PCM16 mono, every turn one after another
    changed: asyncio.Condition = field(default_factory=asyncio.Condition, repr=False)
    task: asyncio.Task[None] | None = field(default=None, repr=False)
    responses: AsyncIterator[tts_pb2.DialogueResponse] | None = field(default=None, repr=False)
    clock: Callable[[], float] = field(default=time.time, repr=False)

    @property
    def audio_s(self) -> float:
        return len(self.audio) / 2 / self.sample_rate

    def summary(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "status": self.status,
            "error": self.error or None,
            "turns_total": self.turns_total,
            "turns_done": len(self.turns),
            "progress": round(len(self.turns) / self.turns_total, 3) if self.turns_total else 1.0,
            "audio_s": round(self.audio_s, 3),
            "sample_rate": self.sample_rate,
            "created_at": int(self.created),
            "turns": [
                {
                    "turn": t.turn,
                    "speaker": t.speaker,
                    "start_s": round(t.start_s, 3),
                    "end_s": round(t.end_s, 3),
                    "speaker_similarity": t.speaker_similarity,
                }
                for t in self.turns
            ],
            "audio_url": f"/v1/dialogues/{self.id}/audio",
            "download_url": f"/v1/dialogues/{self.id}/audio.wav",
        }

    async def _changed(self) -> None:
        async with self.changed:
            self.changed.notify_all()

    async def close_stream(self) -> None:
        """End the TTS stream (idempotent): its model copy goes back to work for others."""
        close = getattr(self.responses, "aclose", None)
        if close is not None:
            with contextlib.suppress(Exception):
                await close()

    async def run(self) -> None:
        """Keep the stream's audio and progress (its `started` message was read already)."""
        assert self.responses is not None
        turn_start = 0.0
        try:
            async for message in self.responses:
                if message.HasField("audio") and message.audio.pcm:
                    self.audio += message.audio.pcm
                if message.HasField("turn_done"):
                    done = message.turn_done
                    similarity = done.speaker_similarity if done.HasField("speaker_similarity") else None
                    speaker = self.speakers[done.turn] if done.turn < len(self.speakers) else 0
                    self.turns.append(TurnAudio(done.turn, speaker, turn_start, self.audio_s, similarity))
                    turn_start = self.audio_s
                await self._changed()
            self.status = "done"
        except asyncio.CancelledError:
            self.status = "cancelled"
            raise
        except Exception as exc:
            self.status, self.error = "failed", str(exc)
        finally:
            self.finished = self.clock()
            await self.close_stream()
            await asyncio.shield(self._changed())

    async def stream(self) -> AsyncIterator[bytes]:
        """The audio from the start, as it is made, until the job ends."""
        sent = 0

        def more_or_ended() -> bool:
            return len(self.audio) > sent or self.status != "running"

        while True:
            async with self.changed:
                await self.changed.wait_for(more_or_ended)
            if len(self.audio) > sent:
                piece = bytes(self.audio[sent:])
                sent += len(piece)
                yield piece
            elif self.status != "running":
                return

    def wav(self) -> bytes:
        buffer = io.BytesIO()
        samples = np.frombuffer(bytes(self.audio), dtype="<i2")
        soundfile.write(buffer, samples, self.sample_rate, format="WAV", subtype="PCM_16")
        return buffer.getvalue()


class DialogueJobs:
    def __init__(self, max_jobs: int, keep_s: float, clock: Callable[[], float] = time.time) -> None:
        self.max_jobs = max_jobs
        self.keep_s = keep_s
        self.clock = clock
        self.jobs: dict[str, DialogueJob] = {}

    def make_room(self) -> None:
        """Forget expired jobs and, if still full, the oldest finished ones; TooManyJobs if all are running."""
        now = self.clock()
        for job_id, job in list(self.jobs.items()):
            if job.finished is not None and now - job.finished > self.keep_s:
                del self.jobs[job_id]
        if len(self.jobs) >= self.max_jobs:
            finished = sorted((j for j in self.jobs.values() if j.finished is not None), key=lambda j: j.finished or 0)
            for job in finished[: len(self.jobs) - self.max_jobs + 1]:
                del self.jobs[job.id]
        if len(self.jobs) >= self.max_jobs:
            raise TooManyJobs(f"{self.max_jobs} dialogues are being made; try again when one is done")

    def start(
        self, started: tts_pb2.DialogueStarted, responses: AsyncIterator[tts_pb2.DialogueResponse]
    ) -> DialogueJob:
        """A job for a dialogue stream whose first message, `started`, was read already (call make_room first)."""
        job = DialogueJob(
            f"dlg-{secrets.token_hex(6)}", started.turns_total, list(started.speakers), started.sample_rate
        )
        job.responses, job.clock = responses, self.clock
        job.task = asyncio.create_task(job.run())
        self.jobs[job.id] = job
        return job

    def get(self, job_id: str) -> DialogueJob | None:
        return self.jobs.get(job_id)

    async def delete(self, job_id: str) -> bool:
        job = self.jobs.pop(job_id, None)
        if job is None:
            return False
        if job.task is not None and not job.task.done():
            job.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await job.task
        if job.status == "running":  # cancelled before its task ever ran
            job.status, job.finished = "cancelled", self.clock()
        await job.close_stream()
        return True

    async def close(self) -> None:
        for job_id in list(self.jobs):
            await self.delete(job_id)
