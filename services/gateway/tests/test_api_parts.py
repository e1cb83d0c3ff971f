"""Parts of the HTTP API that need no stack: streaming encoders, subtitles, cutting speech into pieces."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator
from typing import Any

import av
import numpy as np
import pytest

from parley.audio.v1.audio_pb2 import AudioChunk
from parley.tts.v1 import tts_pb2
from parley.vad.v1 import vad_pb2
from parley_gateway.api.dialogue_jobs import DialogueJobs, TooManyJobs
from parley_gateway.api.encoding import encoder_for
from parley_gateway.api.transcriptions import LANGUAGE_NAMES, Segment, speech_stretches, spoken_language, subtitles


@pytest.mark.parametrize("fmt", ["mp3", "opus", "aac", "flac", "wav"])
def test_audio_streams_out_while_it_comes_in_and_decodes_whole(fmt: str) -> None:
    tone = (np.sin(2 * np.pi * 220 * np.arange(48000) / 24000) * 8000).astype("<i2").tobytes()  # 2 s at 24 kHz
    encoder = encoder_for(fmt, 24000)  # type: ignore[arg-type]
    pieces = [encoder.push(tone[i : i + 9600]) for i in range(0, len(tone), 9600)]  # 200 ms each
    assert sum(1 for piece in pieces[:-1] if piece) >= len(pieces) - 3, "bytes must flow before the end"
    data = b"".join(pieces) + encoder.finish()
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.audio[0]
        seconds = sum(frame.samples for frame in container.decode(stream)) / stream.rate
    assert 1.95 < seconds < 2.1


def test_subtitles() -> None:
    segments = [Segment(0.5, 2.25, "Hello there."), Segment(3.0, 3.0, ""), Segment(3661.5, 3662.0, "Late.")]
    assert subtitles(segments, "srt") == (
        "1\n00:00:00,500 --> 00:00:02,250\nHello there.\n\n2\n01:01:01,500 --> 01:01:02,000\nLate.\n"
    )
    assert subtitles(segments, "vtt") == (
        "WEBVTT\n\n00:00:00.500 --> 00:00:02.250\nHello there.\n\n01:01:01.500 --> 01:01:02.000\nLate.\n"
    )


def test_verbose_json_names_the_language_spoken_longest_as_openai_does() -> None:
    segments = [
        Segment(0.0, 1.0, "Hello.", "en", 0.9),
        Segment(2.0, 4.0, "Bonjour.", "fr", 0.6),
        Segment(5.0, 7.0, "Merci beaucoup.", "fr", 0.9),
        Segment(8.0, 20.0, "", "en", 0.2),  # no words: no say in the language
    ]
    assert spoken_language(segments, "") == ("french", pytest.approx(0.75))
    assert spoken_language(segments, "de") == ("german", 1.0), "the language asked for is the language"
    assert spoken_language([Segment(0.0, 1.0, "")], "") == ("", 0.0)
    # Whisper's own names, which OpenAI's API reports (lower case, English).
    assert len(LANGUAGE_NAMES) == 100 and LANGUAGE_NAMES["en"] == "english" and LANGUAGE_NAMES["ht"] == "haitian creole"


class FakeVad:
    def __init__(self, events: list[tuple[int, float]]) -> None:
        self.events = events

    async def detect(self, audio: Any, metadata: Any) -> AsyncIterator[vad_pb2.VadEvent]:
        async for _ in audio():
            pass
        for kind, at in self.events:
            yield vad_pb2.VadEvent(kind=kind, timestamp_s=at)  # type: ignore[arg-type]


async def test_speech_is_cut_into_pieces_the_asr_service_takes() -> None:
    started, stopped = vad_pb2.VadEvent.SPEECH_STARTED, vad_pb2.VadEvent.SPEECH_STOPPED
    vad = FakeVad([(started, 1.0), (stopped, 3.0), (started, 10.0), (stopped, 75.0), (started, 99.0)])
    pcm = bytes(2 * 16000 * 100)  # 100 s
    pieces = await speech_stretches(vad, pcm, longest_s=28)  # type: ignore[arg-type]
    assert [(p.start_s, p.end_s) for p in pieces] == [
        (1.0, 3.0),
        (10.0, 38.0),
        (38.0, 66.0),
        (66.0, 75.0),
        (99.0, 100.0),
    ]


async def dialogue_stream(messages: list[tts_pb2.DialogueResponse]) -> AsyncIterator[tts_pb2.DialogueResponse]:
    for message in messages:
        yield message


async def test_dialogue_jobs_are_bounded_and_expire() -> None:
    now = [1000.0]
    jobs = DialogueJobs(max_jobs=2, keep_s=60, clock=lambda: now[0])
    started = tts_pb2.DialogueStarted(turns_total=1, speakers=[2], sample_rate=16000)
    spoken = [
        tts_pb2.DialogueResponse(audio=AudioChunk(pcm=bytes(3200), sample_rate=16000), turn=0),
        tts_pb2.DialogueResponse(turn=0, turn_done=tts_pb2.TurnDone(turn=0, turns_total=1, audio_s=0.1)),
    ]
    first = jobs.start(started, dialogue_stream(spoken))
    assert first.task is not None
    await first.task
    assert first.summary()["status"] == "done" and first.summary()["turns"][0]["speaker"] == 2
    assert [piece async for piece in first.stream()] == [bytes(3200)]

    hanging: asyncio.Event = asyncio.Event()

    async def never_ending() -> AsyncIterator[tts_pb2.DialogueResponse]:
        await hanging.wait()
        yield spoken[0]

    jobs.make_room()
    second = jobs.start(started, never_ending())
    jobs.make_room()  # full: the finished job makes room
    assert set(jobs.jobs) == {second.id}
    third = jobs.start(started, never_ending())
    with pytest.raises(TooManyJobs):
        jobs.make_room()  # both running
    now[0] += 3600
    assert await jobs.delete(second.id) and second.status == "cancelled"
    jobs.make_room()
    await jobs.close()
    assert third.status == "cancelled" and jobs.jobs == {}
