"""How long a reply takes to start once the user's turn has ended: LLM, first piece, TTS.

The voice-to-voice figure of `conversation_latency.py` adds the end of turn and the pause's
transcript to this chain; here the turn is typed (`text.input`), so the turn ends when the text
arrives and nothing but the reply is measured. For each question, from the gateway's own
`response.done` timings (milliseconds after the text arrived):

    llm_first_token_ms   the LLM's first token
    tts_first_piece_ms   the first clause or sentence handed to TTS
    tts_first_audio_ms   the first synthesised audio

and, at the client, the first reply audio byte after the text left it, and the longest gap a
player would hear: playing from the first byte on, the most any chunk arrived after the audio
before it had run out (0: the reply plays without a break; a first piece cut short must be
followed by the next one's audio before it ends). Each configuration
(`--config NAME:KEY=VALUE,...`, gateway or service settings) gets its own stack; rounds go
through the configurations in turn, so a machine that gets busier hurts them alike.

    python bench/reply_chain.py --rounds 2 --config default: \
        --config short:PARLEY_GATEWAY_FIRST_CLAUSE_MIN_CHARS=8
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.conversation_latency import percentile  # noqa: E402
from tests.conversation_client import ConversationClient  # noqa: E402
from tests.speech import QUESTIONS  # noqa: E402
from tests.stack import start_stack  # noqa: E402

STAGES = ("llm_first_token_ms", "tts_first_piece_ms", "tts_first_audio_ms", "client_first_audio_ms", "gap_ms")


def longest_gap_ms(audio: list[tuple[float, bytes]], sample_rate: int) -> float:
    """The longest silence a player starting at the first chunk hears before the last one (PCM16)."""
    if not audio:
        return float("nan")
    playing_until, longest = audio[0][0], 0.0
    for arrival, pcm in audio:
        longest = max(longest, arrival - playing_until)
        playing_until = max(playing_until, arrival) + len(pcm) / 2 / sample_rate
    return longest * 1000


async def one_reply(ws_url: str, question: str) -> dict[str, Any]:
    async with ConversationClient(ws_url) as conv:
        sent = time.perf_counter()
        await conv.send_event({"type": "text.input", "text": question})
        done = await conv.wait_for("response.done", timeout_s=60)
        audio = conv.received.audio
        rate = conv.received.of_type("response.audio.started")[0]["sample_rate"] if audio else 0
        return {
            **{k: v for k, v in done["timings"].items() if k in STAGES},
            "client_first_audio_ms": ((audio[0][0] if audio else float("nan")) - sent) * 1000,
            "gap_ms": longest_gap_ms(audio, rate),
            "text": done.get("text", ""),
        }


def parse_config(spec: str) -> tuple[str, dict[str, str]]:
    name, _, settings = spec.partition(":")
    return name, dict(item.split("=", 1) for item in settings.split(",") if item)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2, help="rounds through the configurations")
    parser.add_argument("--config", action="append", default=[], help="NAME:KEY=VALUE,... (repeatable)")
    args = parser.parse_args()
    configs = [parse_config(spec) for spec in args.config or ["default:"]]
    results: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in configs}
    for round_ in range(args.rounds):
        for name, env in configs:
            with tempfile.TemporaryDirectory() as state:
                stack = start_stack(Path(state), env)
                try:
                    for question in QUESTIONS:
                        reply = asyncio.run(one_reply(stack.ws_url, question))
                        results[name].append(reply)
                        print(
                            f"round {round_ + 1} {name:>10}  first token {reply.get('llm_first_token_ms', 0):5.0f}"
                            f"  first piece {reply.get('tts_first_piece_ms', 0):5.0f}"
                            f"  first audio {reply['client_first_audio_ms']:5.0f} ms  gap {reply['gap_ms']:4.0f} ms"
                            f"  {reply['text'][:50]!r}",
                            flush=True,
                        )
                finally:
                    stack.stop()
    report: dict[str, Any] = {}
    for name, env in configs:
        replies = results[name]
        report[name] = {"env": env, "replies": len(replies)}
        for stage in STAGES:
            values = [r[stage] for r in replies if stage in r]
            if values:
                report[name][stage] = {"p50": round(statistics.median(values)), "p95": round(percentile(values, 0.95))}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
