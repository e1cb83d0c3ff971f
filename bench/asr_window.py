"""Word error rate and decode time of the ASR engine per encoder window.

Whisper's stock encoder window is 30 s; Parley's ASR service encodes short
utterances in a shorter window (PARLEY_ASR_ENCODER_WINDOW_S, default 10 s).
This measures what that costs in accuracy and buys in time, on 40 everyday
sentences spoken by espeak-ng, each framed as the service sees it (300 ms of
VAD padding before, 200 ms of pause after).

    python bench/asr_window.py                      # windows 10, 15, 20, 30
    python bench/asr_window.py --windows 10 30 --model-path /workspace/models/whisper-large-v3-turbo
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.conversation_latency import word_error_rate  # noqa: E402
from parley.pcm import pcm16_to_float  # noqa: E402
from parley_asr.engines.faster_whisper import FasterWhisperRecognizer  # noqa: E402
from tests.speech import (  # noqa: E402
    QUESTIONS,
    silence,
    speak,
)

SENTENCES = [
    *QUESTIONS,
    "Please set an alarm for seven in the morning.",
    "I would like to order a large pizza with mushrooms.",
    "How long does it take to drive to the airport?",
    "Remind me to call my sister tomorrow afternoon.",
    "What should I cook for dinner tonight?",
    "Is it going to rain this weekend?",
    "Play some relaxing music in the living room.",
    "How tall is the highest mountain in the world?",
    "Can you explain how a rainbow is formed?",
    "My flight leaves at half past nine.",
    "Turn off the lights in the kitchen please.",
    "What is the difference between a frog and a toad?",
    "I need a new pair of running shoes.",
    "How much water should I drink every day?",
    "Who wrote the story about the little prince?",
    "Let us meet at the coffee shop near the park.",
    "The meeting has been moved to Thursday.",
    "Could you read me the latest news headlines?",
    "What is the best way to learn a new language?",
    "My phone battery is almost empty.",
    "How do plants turn sunlight into food?",
    "Please send a message to the whole team.",
    "What year did the first person walk on the moon?",
    "I forgot where I parked the car.",
    "Can dogs see colours the way we do?",
    "Book a table for two at eight o'clock.",
    "How far is the moon from the earth?",
    "The train was late again this morning.",
    "What are some good exercises for back pain?",
    "Thank you, that was very helpful.",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--windows", type=float, nargs="+", default=[10.0, 15.0, 20.0, 30.0])
    parser.add_argument("--model-path", type=Path, default=None)
    parser.add_argument("--repeats", type=int, default=3, help="timed decodes per sentence (median kept)")
    args = parser.parse_args()
    audio = [pcm16_to_float(silence(0.3) + speak(s) + silence(0.2)) for s in SENTENCES]
    recognizer = FasterWhisperRecognizer(args.model_path, "cpu", "int8", 0, 1, args.windows[0])
    report = []
    for window in args.windows:
        recognizer.encoder_window_s = window
        hypotheses, times = [], []
        for clip in audio:
            runs = []
            for _ in range(args.repeats):
                started = time.perf_counter()
                text = recognizer.transcribe(clip, None).text
                runs.append(time.perf_counter() - started)
            hypotheses.append(text)
            times.append(statistics.median(runs))
        wer = word_error_rate(SENTENCES, hypotheses)
        row = {"window_s": window, "wer": round(wer, 3), "decode_ms_p50": round(statistics.median(times) * 1000)}
        print(json.dumps(row), flush=True)
        report.append(row)


if __name__ == "__main__":
    main()
