"""Semantic end of turn: cut-offs and voice-to-voice, with the VAD's turn model and without it.

Each round starts the whole stack (as `make run` does) once per configuration, in turn:

    turn-model   the defaults: the VAD judges each pause (Smart Turn v3.2), the gateway ends a
                 turn judged complete at the pause and waits longer on one judged incomplete
    silence      PARLEY_VAD_TURN_MODEL=none: pauses carry no verdict, the silence rule alone

and on each stack measures:

* **Cut-offs.** 24 spoken questions, each with a natural pause of 400-800 ms in mid-sentence
  ("I would like to know the weather in" ... "Paris tomorrow"), streamed at real-time pace in
  a fresh session. A turn is *cut off* when the gateway ended it (`vad.speech_stopped`, a
  non-empty `transcript.final`, or `response.created`) before the last speech frame of the
  second half left the client; *answered early* when reply audio arrived before then.
  Each question is spoken in one go by espeak-ng with an SSML break where the pause goes, so the
  first half keeps the intonation of a sentence that goes on; the break's silence is then cut
  out and replaced by exactly the pause wanted. Voices and speaking rates vary.
* **Voice-to-voice** over the latency benchmark's questions (bench/conversation_latency.py):
  from the last speech frame leaving the client to the first reply audio byte.

Configurations alternate within each round, so the machine's drift hits both alike.

    python bench/turn_cutoffs.py --rounds 3                  # the full measurement
    python bench/turn_cutoffs.py --rounds 1 --questions 4 --latency-questions 2   # a quick check
    python bench/turn_cutoffs.py --verdicts-only             # the turn model's P(complete) alone, no stack
    python bench/turn_cutoffs.py --env PARLEY_GATEWAY_END_OF_TURN_THRESHOLD=0.5
    python bench/turn_cutoffs.py --configs turn-model,turn-model-pause-100,silence

Prints per-turn lines, then a JSON summary per configuration (for docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.conversation_latency import one_turn, percentile  # noqa: E402
from tests.conversation_client import ConversationClient  # noqa: E402
from tests.speech import QUESTIONS, silence, speak  # noqa: E402
from tests.stack import start_stack  # noqa: E402

SAMPLE_RATE = 16000

# (what comes before the pause, what comes after it): every first half is a sentence that has not ended.
PAUSED_QUESTIONS = (
    ("I would like to know the weather in", "Paris tomorrow"),
    ("Can you tell me how to get to", "the train station from here"),
    ("What is the best way to cook", "rice without a rice cooker"),
    ("I need to book a table for", "four people on Friday evening"),
    ("How many kilometres is it from", "London to Edinburgh"),
    ("Could you remind me to call", "my sister at six o'clock"),
    ("What time does the museum", "open on Sundays"),
    ("I am looking for a good recipe for", "chocolate cake"),
    ("Tell me something interesting about", "the planet Mars"),
    ("How long should I boil an egg if I want", "the yolk to stay soft"),
    ("Which language do people speak in", "Brazil"),
    ("What should I pack for a trip to", "the mountains in winter"),
    ("Can you explain the difference between", "a virus and a bacterium"),
    ("I want to learn how to play", "the guitar"),
    ("Where can I find a cheap hotel near", "the city centre"),
    ("What is the tallest mountain in", "Africa"),
    ("Please tell me a short story about", "a friendly dragon"),
    ("What is a good present for", "my ten year old nephew"),
    ("Who wrote the famous novel about", "a white whale"),
    ("What are some good exercises for", "a sore back"),
    ("Could you suggest a film for", "a rainy afternoon"),
    ("How do I change the language on", "my phone"),
    ("Is it going to rain in", "Berlin this weekend"),
    ("What is the fastest way to learn", "Spanish"),
)
VOICES = ("en-us", "en-gb", "en-us+f3", "en-gb-x-rp", "en-029", "en-gb-scotland")
RATES = (150, 165, 180, 140, 175, 160)  # words per minute
CONFIGS = {
    "turn-model": {},
    "silence": {"PARLEY_VAD_TURN_MODEL": "none"},
    # Not run unless asked for: pauses reported and judged after 100 ms of silence instead of 200.
    "turn-model-pause-100": {"PARLEY_VAD_PAUSE_MS": "100", "PARLEY_VAD_TURN_SILENCE_MS": "100"},
    # Not run unless asked for: only a near-certain "incomplete" (under 0.05) waits; the silence rule
    # decides the rest of what the model is unsure of (the defaults before cut-offs were measured).
    "turn-model-eager": {"PARLEY_GATEWAY_END_OF_TURN_INCOMPLETE_THRESHOLD": "0.05"},
    # Not run unless asked for: speech after the VAD's stop needs its full min_speech_ms (200 ms) to be
    # reported, as before PARLEY_VAD_RESUME_MIN_SPEECH_MS.
    "turn-model-slow-resume": {"PARLEY_VAD_RESUME_MIN_SPEECH_MS": "200"},
    # Not run unless asked for: incomplete and doubtful turns wait 1.2 s instead of 1.5 s.
    "turn-model-cap-1200": {
        "PARLEY_GATEWAY_INCOMPLETE_TURN_MAX_SILENCE_MS": "1200",
        "PARLEY_GATEWAY_DOUBTFUL_TURN_MAX_SILENCE_MS": "1200",
    },
    # Not run unless asked for: pauses reported after 100 ms of silence (the pause's transcript and the held
    # reply start then) and judged by the turn model after 200 ms, as its scores were measured.
    "turn-model-early-pause": {"PARLEY_VAD_PAUSE_MS": "100", "PARLEY_VAD_TURN_SILENCE_MS": "200"},
    # Not run unless asked for: pauses reported and judged after 200 ms of silence.
    "turn-model-pause-200": {"PARLEY_VAD_PAUSE_MS": "200", "PARLEY_VAD_TURN_SILENCE_MS": "200"},
    # Not run unless asked for: the defaults before doubtful turns (PARLEY_GATEWAY_DOUBTFUL_TURN_MAX_SILENCE_MS,
    # PARLEY_GATEWAY_MIN_WORD_CONFIDENCE): one that sounds and reads differently waits the full cap, and
    # the recogniser's confidence is not asked.
    "turn-model-one-wait": {
        "PARLEY_GATEWAY_DOUBTFUL_TURN_MAX_SILENCE_MS": "1500",
        "PARLEY_GATEWAY_MIN_WORD_CONFIDENCE": "0",
    },
}
DEFAULT_CONFIGS = ("turn-model", "silence")
QUIET = 0.005  # peak amplitude under which a 10 ms frame counts as silence


@dataclass(frozen=True)
class PausedQuestion:
    first: str
    second: str
    pause_s: float
    pcm: bytes  # the first half, the pause, the second half (PCM16 at 16 kHz, no silence around it)


def pause_for(index: int, count: int) -> float:
    """Pauses spread evenly over 400-800 ms, in an order unrelated to the questions' order."""
    step = (index * 7) % count
    return round(0.4 + 0.4 * step / max(1, count - 1), 3)


def _espeak(text: str, voice: str, rate: int) -> np.ndarray:
    """Float samples at 16 kHz of SSML `text`."""
    with tempfile.TemporaryDirectory() as tmp:
        wav, raw = Path(tmp) / "speech.wav", Path(tmp) / "speech.raw"
        subprocess.run(["espeak-ng", "-m", "-v", voice, "-s", str(rate), "-w", str(wav), text], check=True)
        to_raw = ["-r", str(SAMPLE_RATE), "-c", "1", "-b", "16", "-e", "signed-integer", "-t", "raw"]
        subprocess.run(["sox", "-R", "-V1", str(wav), *to_raw, str(raw)], check=True)
        return np.frombuffer(raw.read_bytes(), dtype="<i2").astype(np.float32) / 32768.0


def _halves(audio: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The speech before and after its longest silence, each without silence around it."""
    frame = SAMPLE_RATE // 100
    peaks = np.abs(audio[: audio.size - audio.size % frame]).reshape(-1, frame).max(axis=1)
    loud = np.flatnonzero(peaks >= QUIET)
    first_loud, last_loud = int(loud[0]), int(loud[-1])
    gaps = np.diff(loud)
    widest = int(np.argmax(gaps))  # the break: longer than any gap between words
    before_end, after_start = int(loud[widest]) + 1, int(loud[widest + 1])
    return audio[first_loud * frame : before_end * frame], audio[after_start * frame : (last_loud + 1) * frame]


def _pcm16(samples: np.ndarray) -> bytes:
    return bytes((np.clip(samples, -1.0, 1.0) * 32767).astype("<i2").tobytes())


def paused_questions(count: int, pause_s: float | None = None) -> list[PausedQuestion]:
    """The first `count` questions, spoken; each with its own pause, or with `pause_s` if given."""
    out = []
    for index, (first, second) in enumerate(PAUSED_QUESTIONS[:count]):
        voice, rate = VOICES[index % len(VOICES)], RATES[index % len(RATES)]
        pause = pause_s if pause_s is not None else pause_for(index, len(PAUSED_QUESTIONS))
        before, after = _halves(_espeak(f'{first} <break time="800ms"/> {second}', voice, rate))
        gap = np.zeros(round(pause * SAMPLE_RATE), dtype=np.float32)
        out.append(PausedQuestion(first, second, pause, _pcm16(np.concatenate([before, gap, after]))))
    return out


async def settle(conv: ConversationClient, timeout_s: float) -> None:
    """Until every reply begun has ended, and at least one completed."""
    deadline = time.perf_counter() + timeout_s
    while time.perf_counter() < deadline:
        created = {e["response_id"] for e in conv.received.of_type("response.created")}
        ended = {e["response_id"] for e in conv.received.of_type("response.done")}
        ended |= {e["response_id"] for e in conv.received.of_type("response.cancelled")}
        if conv.received.of_type("response.done") and created <= ended:
            return
        await asyncio.sleep(0.05)
    raise TimeoutError(f"the replies did not end within {timeout_s} s: {conv.received.types()}")


async def paused_turn(ws_url: str, question: PausedQuestion, trailing_silence_s: float) -> dict[str, Any]:
    async with ConversationClient(ws_url) as conv:
        await conv.stream_audio(silence(0.5), realtime=True)
        speech_end = await conv.stream_audio(question.pcm, realtime=True)
        await conv.stream_audio(silence(trailing_silence_s), realtime=True)
        await settle(conv, timeout_s=60)
    turn_over = [
        t
        for t, e in conv.received.events
        if e["type"] in {"vad.speech_stopped", "response.created"}
        or (e["type"] == "transcript.final" and e["text"].strip())
    ]
    reply_audio = [t for t, e in conv.received.events if e["type"] == "response.audio.started"]
    answered = [e for e in conv.received.of_type("response.done") if e["status"] == "completed"]
    heard = [e for e in conv.received.of_type("transcript.final") if e["text"].strip()]
    return {
        "question": f"{question.first} ... {question.second}",
        "pause_ms": round(question.pause_s * 1000),
        "cut_off": bool(turn_over) and min(turn_over) < speech_end,
        "answered_early": bool(reply_audio) and min(reply_audio) < speech_end,
        "replies": len(conv.received.of_type("response.created")),
        "transcripts": [e["text"] for e in heard],
        "confidences": [e.get("confidence") for e in heard],  # the recogniser's, per transcript
        "turn_ends": [e["timings"].get("turn_end") for e in answered],
        "end_of_turn": [e["timings"].get("end_of_turn") for e in answered],
    }


async def measure(
    ws_url: str, questions: list[PausedQuestion], latency_audio: dict[str, bytes], trailing_silence_s: float
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    cut_turns = []
    for question in questions:
        turn = await paused_turn(ws_url, question, trailing_silence_s)
        cut_turns.append(turn)
        print(
            f"  pause {turn['pause_ms']:3d} ms  {'CUT OFF' if turn['cut_off'] else 'ok     '}"
            f"  ends {turn['turn_ends']}  heard {turn['transcripts']}  confidence {turn['confidences']}",
            flush=True,
        )
    latency_turns = []
    for text, pcm in latency_audio.items():
        turn = await one_turn(ws_url, pcm, trailing_silence_s, preemptive=True)
        turn["question"] = text
        latency_turns.append(turn)
        print(
            f"  v2v {turn['voice_to_voice_ms']:6.0f} ms  end {turn['server'].get('turn_end')}"
            f"  P={turn['server'].get('end_of_turn')}  heard {turn['transcript']!r}",
            flush=True,
        )
    return cut_turns, latency_turns


def summarise(cut_turns: list[dict[str, Any]], latency_turns: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if cut_turns:
        out["paused_turns"] = len(cut_turns)
        out["cut_off_share"] = round(sum(t["cut_off"] for t in cut_turns) / len(cut_turns), 3)
        out["answered_early_share"] = round(sum(t["answered_early"] for t in cut_turns) / len(cut_turns), 3)
        out["answered_once_share"] = round(sum(t["replies"] == 1 for t in cut_turns) / len(cut_turns), 3)
    if latency_turns:
        v2v = [t["voice_to_voice_ms"] for t in latency_turns]
        out["latency_turns"] = len(v2v)
        out["voice_to_voice_ms"] = {"p50": round(statistics.median(v2v)), "p95": round(percentile(v2v, 0.95))}
        ends = [t["server"].get("turn_end", "silence") for t in latency_turns]
        out["turn_ends"] = {reason: ends.count(reason) for reason in sorted(set(ends))}
        model_ms = [t["server"]["end_of_turn_ms"] for t in latency_turns if "end_of_turn_ms" in t["server"]]
        if model_ms:
            out["end_of_turn_model_ms"] = {"p50": round(statistics.median(model_ms)), "max": round(max(model_ms))}
    return out


def verdicts_only(questions: list[PausedQuestion]) -> None:
    """The turn model's P(turn complete) at a 200 ms pause, as the VAD would ask it, without the stack."""
    from parley_vad.engines.smart_turn import SmartTurnDetector

    model = SmartTurnDetector.from_file()
    lead, pause = np.zeros(SAMPLE_RATE * 3 // 10, np.float32), np.zeros(SAMPLE_RATE // 5, np.float32)

    def judged(speech: np.ndarray) -> float:
        return model.completion(np.concatenate([lead, speech, pause]))

    halves = []
    for question in questions:
        halves.append(judged(_halves(_samples(question.pcm))[0]))
        print(f"first half      {halves[-1]:.3f}  {question.first} ...", flush=True)
    complete = []
    for index, text in enumerate(QUESTIONS):
        complete.append(judged(_samples(speak(text, voice=VOICES[index % len(VOICES)]))))
        print(f"whole question  {complete[-1]:.3f}  {text}", flush=True)
    for threshold in (0.5, 0.6, 0.7, 0.8, 0.9):
        print(
            f"threshold {threshold}: first halves judged complete {sum(v >= threshold for v in halves)}/{len(halves)},"
            f" whole questions judged complete {sum(v >= threshold for v in complete)}/{len(complete)}"
        )


def _samples(pcm: bytes) -> np.ndarray:
    return np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=1, help="rounds; each starts one stack per configuration")
    parser.add_argument("--questions", type=int, default=len(PAUSED_QUESTIONS), help="paused questions per round")
    parser.add_argument("--latency-questions", type=int, default=len(QUESTIONS), help="voice-to-voice questions")
    parser.add_argument("--configs", default=",".join(DEFAULT_CONFIGS), help=f"some of {', '.join(CONFIGS)}")
    parser.add_argument("--trailing-silence", type=float, default=2.0, help="seconds of silence after speech")
    parser.add_argument("--env", action="append", default=[], help="KEY=VALUE for every started stack")
    parser.add_argument("--verdicts-only", action="store_true", help="only the turn model's verdicts, no stack")
    args = parser.parse_args()
    questions = paused_questions(args.questions)
    if args.verdicts_only:
        verdicts_only(questions)
        return
    extra_env = dict(item.split("=", 1) for item in args.env)
    configs = [name.strip() for name in args.configs.split(",") if name.strip()]
    latency_audio = {q: speak(q) for q in QUESTIONS[: args.latency_questions]}
    results: dict[str, tuple[list[dict[str, Any]], list[dict[str, Any]]]] = {name: ([], []) for name in configs}
    for round_ in range(args.rounds):
        for name in configs:
            print(f"round {round_ + 1}, {name}:", flush=True)
            with tempfile.TemporaryDirectory() as state:
                stack = start_stack(Path(state), {**CONFIGS[name], **extra_env})
                try:
                    cut, latency = asyncio.run(measure(stack.ws_url, questions, latency_audio, args.trailing_silence))
                finally:
                    stack.stop()
            results[name][0].extend(cut)
            results[name][1].extend(latency)
    report = {
        "machine": f"{platform.machine()} {os.cpu_count()} cores",
        "load_average": [round(v, 2) for v in os.getloadavg()],
        "env": extra_env,
        "rounds": args.rounds,
        **{name: summarise(*results[name]) for name in configs},
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
