"""End-of-turn verdicts after SPEECH_PAUSED (PAUSE_JUDGED), over real gRPC: the real service build, what the
model hears, busy and absent models, and the model's threads."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from prometheus_client import REGISTRY

from parley.audio.v1.audio_pb2 import AudioChunk
from parley.pcm import Float32Array, float_to_pcm16, pcm16_to_float
from parley.server import ServiceRuntime
from parley.testing import OverlapProbe, serving
from parley.vad.v1 import vad_pb2, vad_pb2_grpc
from parley_vad.__main__ import build
from parley_vad.config import VadSettings
from parley_vad.engines.base import FrameScorer
from parley_vad.engines.smart_turn import TurnModelError
from parley_vad.recent_audio import RecentAudio
from parley_vad.servicer import VoiceActivityServicer
from parley_vad.turn_judge import Verdict
from tests.speech import silence, speak

RATE = 16000
PAUSED = vad_pb2.VadEvent.SPEECH_PAUSED
JUDGED = vad_pb2.VadEvent.PAUSE_JUDGED
STARTED = vad_pb2.VadEvent.SPEECH_STARTED


class LoudnessDetector:
    """A stand-in VAD model: a frame is speech when it is loud, so event times are exact."""

    sample_rate = RATE
    frame_samples = 512

    def new_stream(self) -> FrameScorer:
        return lambda frame: 0.9 if float(np.sqrt(np.mean(frame**2))) > 0.01 else 0.0


class RecordingTurnDetector:
    """A stand-in end-of-turn model: keeps what it heard and answers `answer` after `delay_s` (or once `gate` opens)."""

    sample_rate = RATE
    window_samples = 8 * RATE

    def __init__(self, answer: float = 0.25, delay_s: float = 0.0, gate: threading.Event | None = None) -> None:
        self.answer = answer
        self.delay_s = delay_s
        self.gate = gate
        self.heard: list[Float32Array] = []
        self.gate_opened: list[bool] = []  # for each call with a gate: whether it opened (not timed out)
        self.probe = OverlapProbe()

    def completion(self, audio: Float32Array) -> float:
        with self.probe.entered():
            self.heard.append(audio.copy())
            time.sleep(self.delay_s)
            if self.gate is not None:
                self.gate_opened.append(self.gate.wait(10))
            return self.answer


def noise(seconds: float, seed: int) -> bytes:
    return float_to_pcm16(np.random.default_rng(seed).standard_normal(int(seconds * RATE)) * 0.2)


async def chunks(pcm: bytes, chunk_s: float = 0.2) -> AsyncIterator[AudioChunk]:
    step = int(RATE * chunk_s) * 2
    for i in range(0, len(pcm), step):
        yield AudioChunk(pcm=pcm[i : i + step], sample_rate=RATE)
    yield AudioChunk(end_of_stream=True)


async def detect(
    servicer: VoiceActivityServicer, streams: list[bytes], chunk_s: float = 0.2, **options: str
) -> list[list[vad_pb2.VadEvent]]:
    """Runs `streams` at once through Detect over a real gRPC channel; their events, in order."""
    metadata = tuple((f"parley-{name.replace('_', '-')}", value) for name, value in options.items())
    async with serving(lambda server: vad_pb2_grpc.add_VoiceActivityServicer_to_server(servicer, server)) as channel:
        stub = vad_pb2_grpc.VoiceActivityStub(channel)

        async def one(pcm: bytes) -> list[vad_pb2.VadEvent]:
            return [event async for event in stub.Detect(chunks(pcm, chunk_s), metadata=metadata)]

        return list(await asyncio.gather(*(one(pcm) for pcm in streams)))


def servicer_with(turns: list[RecordingTurnDetector], **settings: object) -> VoiceActivityServicer:
    servicer = VoiceActivityServicer(VadSettings(**settings), ServiceRuntime("vad", 8))  # type: ignore[arg-type]
    servicer.add(LoudnessDetector())
    for copy in turns:
        servicer.add_turn_detector(copy)
    return servicer


def verdicts(events: list[vad_pb2.VadEvent]) -> list[tuple[vad_pb2.VadEvent, vad_pb2.VadEvent | None]]:
    """Each pause with the verdict that follows it (None: none came); a verdict never comes anywhere else: right
    after its pause, judged then or after more silence."""
    pairs: list[tuple[vad_pb2.VadEvent, vad_pb2.VadEvent | None]] = []
    for index, event in enumerate(events):
        if event.kind == JUDGED:
            pause = events[index - 1]
            assert index and pause.kind == PAUSED, "a verdict follows its pause, before any other event"
            assert event.timestamp_s == pause.timestamp_s and event.decided_at_s >= pause.decided_at_s
        elif event.kind == PAUSED:
            following = events[index + 1] if index + 1 < len(events) else None
            pairs.append((event, following if following is not None and following.kind == JUDGED else None))
    return pairs


def last_verdict_of_each_utterance(events: list[vad_pb2.VadEvent]) -> list[vad_pb2.VadEvent | None]:
    last: list[vad_pb2.VadEvent | None] = []
    for event in events:
        if event.kind == STARTED:
            last.append(None)
        elif event.kind == JUDGED:
            last[-1] = event
    return last


def metric(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


async def test_the_service_judges_each_pause_with_smart_turn() -> None:
    spec = build(VadSettings(), ServiceRuntime("vad", 4))
    await asyncio.to_thread(spec.load_model)
    did = await asyncio.to_thread(spec.self_test)
    assert "judged a second of silence" in did
    await asyncio.sleep(0.05)  # the self-test puts the models in service on the event loop
    audio = (
        silence(0.5)
        + speak("I would like to book a table for two people tonight.")
        + silence(1.0)
        + speak("Can you tell me what the weather is like in")
        + silence(1.0)
    )
    calls_before = metric("parley_vad_end_of_turn_seconds_count")
    async with serving(spec.add_servicers) as channel:
        stub = vad_pb2_grpc.VoiceActivityStub(channel)
        events = [event async for event in stub.Detect(chunks(audio))]

    pairs = verdicts(events)
    others = [event for event in events if event.kind != JUDGED]
    assert [event.kind for event in events].count(STARTED) == 2
    assert pairs and all(v is not None and v.HasField("end_of_turn") and v.end_of_turn_ms > 0 for _, v in pairs)
    assert not any(event.HasField("end_of_turn") or event.end_of_turn_ms for event in others)
    # The last verdict of each utterance: a finished request, then one that stops mid-sentence.
    complete, cut_off = last_verdict_of_each_utterance(events)
    assert complete is not None and complete.end_of_turn > 0.7, complete
    assert cut_off is not None and cut_off.end_of_turn < 0.3, cut_off
    assert metric("parley_vad_end_of_turn_seconds_count") == calls_before + len(pairs)


async def test_the_model_hears_the_utterance_from_its_padded_start_to_the_pause() -> None:
    model = RecordingTurnDetector(answer=0.25)
    servicer = servicer_with([model])
    # A short utterance, then one longer than the model's 8 s window; 1 s chunks, so a pause is decided
    # inside a chunk whose later audio is already in.
    audio = silence(0.5) + noise(1.0, 1) + silence(1.0) + noise(10.0, 2) + silence(1.0)
    [events] = await detect(servicer, [audio], chunk_s=1.0)

    samples = pcm16_to_float(audio)
    starts = [round(event.timestamp_s * RATE) for event in events if event.kind == STARTED]
    pairs = verdicts(events)
    assert len(starts) == len(pairs) == len(model.heard) == 2
    for start, (_, verdict), heard in zip(starts, pairs, model.heard, strict=True):
        assert verdict is not None and verdict.end_of_turn == pytest.approx(0.25)
        stop = round(verdict.decided_at_s * RATE)
        assert np.array_equal(heard, samples[max(start, stop - model.window_samples) : stop])
    first_verdict = pairs[0][1]
    assert first_verdict is not None
    assert model.heard[0].size == round((first_verdict.decided_at_s - events[0].timestamp_s) * RATE)
    assert model.heard[1].size == model.window_samples


async def test_no_turn_model_no_verdict() -> None:
    servicer = servicer_with([], turn_model="none")
    [events] = await detect(servicer, [silence(0.5) + noise(1.0, 3) + silence(1.0)])
    assert [event.kind for event in events].count(PAUSED) == 1
    assert JUDGED not in [event.kind for event in events]
    assert not any(event.HasField("end_of_turn") or event.end_of_turn_ms for event in events)
    with pytest.raises(RuntimeError, match="no end-of-turn model"):
        servicer.add_turn_detector(RecordingTurnDetector())


async def test_a_busy_model_leaves_the_pause_without_a_verdict(monkeypatch: pytest.MonkeyPatch) -> None:
    busy = threading.Event()  # the one copy answers only once the other stream's pause went without it
    servicer = servicer_with([RecordingTurnDetector(gate=busy)], turn_queue_timeout_ms=0)
    assert servicer.turns is not None
    judge = servicer.turns.judge

    async def judge_then_free_the_model(stream: RecentAudio, start: int, stop: int) -> Verdict | None:
        verdict = await judge(stream, start, stop)
        if verdict is None:
            busy.set()
        return verdict

    monkeypatch.setattr(servicer.turns, "judge", judge_then_free_the_model)
    audio = silence(0.3) + noise(1.0, 5) + silence(1.0)
    skipped_before = metric("parley_vad_end_of_turn_skipped_total")
    try:
        results = await detect(servicer, [audio, audio])
    finally:
        busy.set()
    pairs = [pair for events in results for pair in verdicts(events)]
    assert len(pairs) == 2
    assert sorted(verdict is not None for _, verdict in pairs) == [False, True]
    assert metric("parley_vad_end_of_turn_skipped_total") == skipped_before + 1


async def test_a_turn_model_copy_is_never_used_by_two_threads_at_once() -> None:
    copies = [RecordingTurnDetector(delay_s=0.05), RecordingTurnDetector(delay_s=0.05)]
    servicer = servicer_with(copies, turn_queue_timeout_ms=10_000)
    audio = silence(0.3) + noise(1.0, 6) + silence(1.0)
    results = await detect(servicer, [audio] * 4)
    assert all(verdict is not None for events in results for _, verdict in verdicts(events))
    assert sum(copy.probe.entries for copy in copies) == 4
    for copy in copies:
        assert copy.probe.overlaps == 0
        # Each copy runs on its own one worker thread, never on the event loop.
        assert len(copy.probe.thread_names) <= 1, copy.probe.thread_names
        assert all(name.startswith("vad-turn-model-") for name in copy.probe.thread_names), copy.probe.thread_names
    assert threading.main_thread().name not in {name for copy in copies for name in copy.probe.thread_names}


async def test_streams_wait_until_the_turn_model_is_in_service() -> None:
    servicer = servicer_with([])
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await detect(servicer, [b""])  # the end marker alone, so the refusal races no audio
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_the_service_does_not_load_without_its_turn_model(tmp_path: Path) -> None:
    missing = tmp_path / "models" / "smart-turn-v3.2-cpu.onnx"
    spec = build(VadSettings(turn_model_path=missing), ServiceRuntime("vad", 1))
    with pytest.raises(TurnModelError, match=r"cannot read the smart-turn-v3\.2 end-of-turn model"):
        await asyncio.to_thread(spec.load_model)
    # `none` never looks for the file.
    spec = build(VadSettings(turn_model="none", turn_model_path=missing), ServiceRuntime("vad", 1))
    await asyncio.to_thread(spec.load_model)
    assert "end-of-turn" not in await asyncio.to_thread(spec.self_test)


async def test_a_pause_goes_out_before_its_verdict_is_made() -> None:
    """The client starts its early work at the pause: the model's time must not hold the pause back."""
    seen_pause = threading.Event()  # the model answers only once the client has the pause (or after 10 s)
    model = RecordingTurnDetector(gate=seen_pause)
    servicer = servicer_with([model], turn_queue_timeout_ms=10_000)
    audio = silence(0.3) + noise(1.0, 7) + silence(1.0)
    async with serving(lambda server: vad_pb2_grpc.add_VoiceActivityServicer_to_server(servicer, server)) as channel:
        stub = vad_pb2_grpc.VoiceActivityStub(channel)
        kinds = []
        async for event in stub.Detect(chunks(audio)):
            kinds.append(event.kind)
            if event.kind == PAUSED:
                seen_pause.set()
    assert model.gate_opened == [True], "the model answered before the client had the pause"
    assert kinds.index(PAUSED) + 1 == kinds.index(JUDGED)


async def test_a_pause_is_judged_once_its_silence_lasted_the_turn_silence() -> None:
    """Reported after 100 ms of silence (early work starts), judged after 200 ms: the model hears that silence."""
    model = RecordingTurnDetector(answer=0.8)
    servicer = servicer_with([model], pause_ms=100, turn_silence_ms=200)
    audio = silence(0.5) + noise(1.0, 8) + silence(1.0)
    [events] = await detect(servicer, [audio], chunk_s=0.1)
    [(pause, verdict)] = verdicts(events)
    assert verdict is not None and verdict.end_of_turn == pytest.approx(0.8)
    assert 0.1 <= pause.decided_at_s - pause.timestamp_s < 0.15
    assert 0.2 <= verdict.decided_at_s - verdict.timestamp_s < 0.25
    [heard] = model.heard
    assert heard.size == round((verdict.decided_at_s - events[0].timestamp_s) * RATE)


async def test_speech_back_before_the_turn_silence_leaves_that_pause_unjudged() -> None:
    model = RecordingTurnDetector()
    servicer = servicer_with([model], pause_ms=100, turn_silence_ms=200)
    audio = silence(0.5) + noise(1.0, 9) + silence(0.15) + noise(1.0, 10) + silence(1.0)
    [events] = await detect(servicer, [audio], chunk_s=0.1)
    pairs = verdicts(events)
    assert [verdict is not None for _, verdict in pairs] == [False, True]
    assert vad_pb2.VadEvent.SPEECH_RESUMED in [event.kind for event in events]
    assert len(model.heard) == 1
