"""Voice-to-voice latency of the real stack, measured as a client sees it.

Starts the whole stack (as `make run` does) on free ports unless --url is given,
then for each spoken question (espeak-ng, silence trimmed so the end of the audio
IS the end of speech): streams it at real-time pace followed by silence, and
times, from the moment the last speech frame left the client:

    transcript.final, first response.text.delta, first reply audio byte

It also records the gateway's own per-stage timings (response.done), and the
word error rate of the final transcripts.

Barge-in (--barge-in N): asks for a long story by text, and 0.5 s after its
audio starts (past the echo guard) streams "wait, stop please" at real-time
pace; times the first speech frame leaving the client to response.cancelled.

    python bench/conversation_latency.py --runs 5            # 5 rounds over the question set
    python bench/conversation_latency.py --url ws://host:7860/v1/conversation
    python bench/conversation_latency.py --cold-start-only   # time `make run` to ready
    python bench/conversation_latency.py --runs 0 --barge-in 10

Prints p50/p95 per stage, and a JSON line for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.conversation_client import ConversationClient  # noqa: E402
from tests.speech import QUESTIONS, silence, speak  # noqa: E402
from tests.stack import start_stack  # noqa: E402


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def one_turn(ws_url: str, pcm: bytes, trailing_silence_s: float, preemptive: bool) -> dict[str, Any]:
    async with ConversationClient(ws_url, preemptive=preemptive) as conv:
        await conv.stream_audio(silence(0.5), realtime=True)
        speech_end = await conv.stream_audio(pcm, realtime=True)
        tail = asyncio.create_task(conv.stream_audio(silence(trailing_silence_s), realtime=True))
        done = await conv.wait_for("response.done", timeout_s=60)
        await tail
        first_audio = conv.received.audio[0][0] if conv.received.audio else float("nan")
        return {
            "transcript": conv.received.of_type("transcript.final")[0]["text"],
            "end_to_transcript_ms": (conv.arrival("transcript.final") - speech_end) * 1000,
            "end_to_first_token_ms": (conv.arrival("response.text.delta") - speech_end) * 1000,
            "voice_to_voice_ms": (first_audio - speech_end) * 1000,
            "server": done["timings"],
        }


STORYTELLER = (
    "The following is a conversation between a User and a storyteller Assistant who always answers "
    "with long, detailed stories of many sentences."
)


async def barge_in(ws_url: str, interruption: bytes) -> float:
    """Milliseconds from the first interrupting speech frame leaving to response.cancelled arriving."""
    async with ConversationClient(ws_url, system_prompt=STORYTELLER) as conv:
        await conv.send_event({"type": "text.input", "text": "Tell me a long story about a brave knight."})
        await conv.wait_for("response.audio.started", timeout_s=60)
        await asyncio.sleep(0.5)
        first_frame = time.perf_counter()
        speaking = asyncio.create_task(conv.stream_audio(interruption + silence(1.0), realtime=True))
        try:
            await conv.wait_for("response.cancelled", timeout_s=10)
        finally:
            speaking.cancel()
        return float((conv.arrival("response.cancelled") - first_frame) * 1000)


async def run(ws_url: str, runs: int, trailing_silence_s: float, preemptive: bool) -> list[dict[str, Any]]:
    audio = {q: speak(q) for q in QUESTIONS}
    results = []
    for round_ in range(runs):
        for question in QUESTIONS:
            turn = await one_turn(ws_url, audio[question], trailing_silence_s, preemptive)
            turn["question"] = question
            results.append(turn)
            print(
                f"round {round_ + 1} v2v {turn['voice_to_voice_ms']:6.0f} ms"
                f"  asr {turn['end_to_transcript_ms']:5.0f} ms"
                f"  heard: {turn['transcript']!r}",
                flush=True,
            )
    return results


SPELLING = {"colour": "color", "colours": "colors", "favourite": "favorite", "o'clock": "oclock"}


def normalise(text: str) -> str:
    """Lower case, no punctuation, one spelling (Whisper writes American English)."""
    words = text.lower().split()
    words = [SPELLING.get(w.strip(".,?!"), w) for w in words]
    return " ".join("".join(c for c in " ".join(words) if c.isalnum() or c.isspace()).split())


def word_error_rate(references: list[str], hypotheses: list[str]) -> float:
    import jiwer

    return float(jiwer.wer([normalise(r) for r in references], [normalise(h) for h in hypotheses]))


def summary(results: list[dict[str, Any]]) -> dict[str, Any]:
    stages = ["end_to_transcript_ms", "end_to_first_token_ms", "voice_to_voice_ms"]
    server_stages = sorted({k for r in results for k in r["server"]})
    out: dict[str, Any] = {}
    for name in stages:
        values = [r[name] for r in results]
        out[name] = {"p50": round(statistics.median(values)), "p95": round(percentile(values, 0.95))}
    out["preemptive_hit_rate"] = round(sum(1 for r in results if r["server"].get("preemptive")) / len(results), 3)
    for name in server_stages:
        values = [r["server"][name] for r in results if name in r["server"]]
        if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
            continue
        out[f"gateway.{name}"] = {"p50": round(statistics.median(values)), "p95": round(percentile(values, 0.95))}
    out["wer"] = round(word_error_rate([r["question"] for r in results], [r["transcript"] for r in results]), 3)
    out["turns"] = len(results)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="an already running gateway's /v1/conversation; default: start one")
    parser.add_argument("--runs", type=int, default=5, help="rounds over the question set")
    parser.add_argument("--trailing-silence", type=float, default=2.0, help="seconds of silence after speech")
    parser.add_argument("--cold-starts", type=int, default=0, help="also time this many cold starts to ready")
    parser.add_argument("--cold-start-only", action="store_true")
    parser.add_argument("--barge-in", type=int, default=0, help="also time this many barge-ins")
    parser.add_argument("--no-preemptive", action="store_true", help="wait for the end of turn to start replies")
    parser.add_argument("--env", action="append", default=[], help="KEY=VALUE for the started stack")
    args = parser.parse_args()
    extra_env = dict(item.split("=", 1) for item in args.env)
    report: dict[str, Any] = {
        "machine": f"{platform.machine()} {os.cpu_count()} cores",
        "env": extra_env,
        "preemptive": not args.no_preemptive,
    }

    if args.cold_starts or args.cold_start_only:
        times = []
        for _ in range(max(1, args.cold_starts)):
            with tempfile.TemporaryDirectory() as state:
                stack = start_stack(Path(state), extra_env)
                stack.stop()
                times.append(stack.ready_s)
                print(f"cold start to ready: {stack.ready_s:.2f} s", flush=True)
        report["cold_start_s"] = {"median": round(statistics.median(times), 2), "runs": [round(t, 2) for t in times]}
        if args.cold_start_only:
            print(json.dumps(report))
            return

    async def measure(ws_url: str) -> tuple[list[dict[str, Any]], list[float]]:
        results = await run(ws_url, args.runs, args.trailing_silence, not args.no_preemptive) if args.runs else []
        interruption = speak("Wait, stop please.")
        cuts = []
        for _ in range(args.barge_in):
            cuts.append(await barge_in(ws_url, interruption))
            print(f"barge-in: response.cancelled after {cuts[-1]:.0f} ms", flush=True)
        return results, cuts

    if args.url:
        results, cuts = asyncio.run(measure(args.url))
    else:
        with tempfile.TemporaryDirectory() as state:
            stack = start_stack(Path(state), extra_env)
            try:
                results, cuts = asyncio.run(measure(stack.ws_url))
            finally:
                stack.stop()
    if cuts:
        report["barge_in_ms"] = {"p50": round(statistics.median(cuts)), "p95": round(percentile(cuts, 0.95))}
    if results:
        report.update(summary(results))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
