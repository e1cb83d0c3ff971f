"""Do the embedded conversation models answer? Relevance and speed on spoken-style questions.

Loads each model through the LLM service's own engine (services/llm: catalogue, LlamaCppGenerator,
speech shaping) with the service's settings (system prompt, max_tokens, temperature, threads), asks
a fixed set of short questions the way people talk to a voice service (facts, arithmetic, how-to,
small talk, follow-ups that need the history), and for each reply records:

    correct   it contains one of the question's expected key words (whole words, any case)
    repeats   its first sentence has no word of its own: only the question's words and filler
    first     seconds from the request to the first piece the gateway's sentence chunker would
              send to TTS (services/gateway: SentenceChunker, first_clause_min_chars=20)
    tokens/s  generation speed after the first token

One model at a time: the run is CPU-bound. Sampling is seeded per question, so a run repeats.

    python bench/llm_answers.py                                   # every installed embedded model
    python bench/llm_answers.py --models qwen2.5-coder-0.5b-instruct gemma3-270m-base
    python bench/llm_answers.py --show --out replies.json         # every answer too, printed and saved

Prints a Markdown table row per model and one JSON line per model for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from parley.assembly import ModelFileError
from parley_gateway.conversation.sentences import SentenceChunker
from parley_llm.catalogue import CATALOGUE, choose_model
from parley_llm.config import LlmSettings
from parley_llm.engines.base import ChatMessage
from parley_llm.engines.llama_cpp import LlamaCppGenerator, default_threads
from parley_llm.prompt import spoken_turns
from parley_llm.shaping import SpeechShaper

# The gateway's default (services/gateway: first_clause_min_chars).
FIRST_CLAUSE_MIN_CHARS = 20
SEED = 1234


@dataclass(frozen=True)
class Question:
    text: str
    expected: tuple[str, ...]  # any of these, as whole words
    history: tuple[tuple[str, str], ...] = ()  # (role, content) turns before the question


QUESTIONS = [
    # Facts.
    Question("What's the capital of France?", ("paris",)),
    Question("How many days are there in a week?", ("seven", "7")),
    Question("What color is the sky on a clear day?", ("blue",)),
    Question("Who wrote Romeo and Juliet?", ("shakespeare",)),
    Question("What's the biggest planet in our solar system?", ("jupiter",)),
    Question("How many legs does a spider have?", ("eight", "8")),
    Question("At what temperature does water boil?", ("100", "hundred", "212")),
    Question("What language do they speak in Brazil?", ("portuguese",)),
    Question("What's the tallest mountain in the world?", ("everest",)),
    Question("Which ocean is the largest?", ("pacific",)),
    Question("What do bees make?", ("honey",)),
    Question("How many continents are there?", ("seven", "7")),
    # Arithmetic, as it is said.
    Question("What's two plus two?", ("four", "4")),
    Question("What is ten times five?", ("fifty", "50")),
    Question("What's a hundred minus thirty?", ("seventy", "70")),
    Question("How many minutes are in an hour?", ("sixty", "60")),
    # How-to.
    Question("How do I boil an egg?", ("water", "pot", "minutes", "saucepan")),
    Question("How can I fall asleep faster?", ("bed", "screens", "relax", "dark", "routine", "caffeine", "breathing")),
    Question("How do I make a cup of tea?", ("kettle", "tea bag", "steep", "hot water", "boiling water", "leaves")),
    Question("What should I do if I burn my finger?", ("cool", "cold", "water")),
    Question("How do you say thank you in Spanish?", ("gracias",)),
    Question("Give me one tip to save money.", ("budget", "spending", "track", "cook", "list", "expenses")),
    # Small talk.
    Question("Hi there, how are you today?", ("good", "well", "fine", "great", "doing")),
    Question("What's your name?", ("parley",)),
    Question("Can you tell me a joke?", ("why", "because", "knock")),
    Question("Thanks for your help!", ("welcome", "pleasure", "glad", "anytime", "happy")),
    # Explanations.
    Question("What is photosynthesis?", ("sunlight", "light", "energy")),
    Question("Why is the sky blue?", ("scattering", "scatters", "scattered", "light", "wavelengths")),
    # Follow-ups that need the history.
    Question(
        "And how many people live there?",
        ("million", "millions"),
        (("user", "What's the capital of Italy?"), ("assistant", "The capital of Italy is Rome.")),
    ),
    Question(
        "What's the capital there?",
        ("tokyo",),
        (("user", "I'm planning a trip to Japan."), ("assistant", "That sounds exciting! Japan is lovely.")),
    ),
    Question(
        "What's my name?",
        ("sam",),
        (("user", "Hi, my name is Sam."), ("assistant", "Nice to meet you, Sam!")),
    ),
]


@dataclass
class Reply:
    question: str
    text: str
    correct: bool
    repeats: bool
    first_token_s: float
    first_piece_s: float
    tokens: int
    tokens_per_s: float


@dataclass
class ModelResult:
    model: str
    load_s: float
    replies: list[Reply] = field(default_factory=list)

    def summary(self) -> dict[str, object]:
        replies = self.replies
        speeds = [r.tokens_per_s for r in replies if r.tokens > 1]
        return {
            "model": self.model,
            "questions": len(replies),
            "correct": sum(r.correct for r in replies),
            "repeats": sum(r.repeats for r in replies),
            "empty": sum(not r.text.strip() for r in replies),
            "first_piece_p50_s": round(statistics.median(r.first_piece_s for r in replies), 3),
            "first_piece_p95_s": round(_p95([r.first_piece_s for r in replies]), 3),
            "first_token_p50_s": round(statistics.median(r.first_token_s for r in replies), 3),
            "tokens_per_s_p50": round(statistics.median(speeds), 1) if speeds else 0.0,
            "reply_tokens_p50": statistics.median(r.tokens for r in replies),
            "load_s": round(self.load_s, 2),
        }


def _p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9']+", text.lower())


def is_correct(reply: str, expected: tuple[str, ...]) -> bool:
    lowered = reply.lower()
    return any(re.search(rf"\b{re.escape(word)}\b", lowered) for word in expected)


# Words that carry no answer: a first sentence made of these and the question's own words repeats it.
_FILLER = frozenset(
    re.findall(
        r"\S+",
        "a an the is are was were be it it's its that that's this there there's here of in on at to for and or "
        "so i i'm me my you you're your we our they their he she what's what how do does can well oh",
    )
)


def repeats_question(reply: str, question: str) -> bool:
    """The reply's first sentence says nothing the question did not: no word of its own but filler."""
    first_sentence = re.split(r"(?<=[.!?])\s", reply.strip(), maxsplit=1)[0]
    new_words = set(_words(first_sentence)) - set(_words(question)) - _FILLER
    return bool(_words(first_sentence)) and not new_words


def ask(generator: LlamaCppGenerator, settings: LlmSettings, question: Question) -> Reply:
    messages = [ChatMessage("system", settings.system_prompt)]
    messages += [ChatMessage(role, content) for role, content in question.history]
    messages = spoken_turns([*messages, ChatMessage("user", question.text)])
    chunker = SentenceChunker(FIRST_CLAUSE_MIN_CHARS)
    shaper = SpeechShaper() if settings.speech_shaping else None
    generator.llm.set_seed(SEED)
    text = ""
    tokens = 0
    started = time.perf_counter()
    first_token = first_piece = 0.0
    for delta in generator.stream(messages, settings.max_tokens, settings.temperature):
        now = time.perf_counter() - started
        first_token = first_token or now
        piece = delta.text
        if shaper is not None:
            piece = shaper.push(piece) + (shaper.flush() if delta.finish_reason else "")
        text += piece
        tokens = delta.completion_tokens
        if not first_piece and chunker.push(piece):
            first_piece = now
    ended = time.perf_counter() - started
    if not first_piece:
        chunker.flush()
        first_piece = ended  # the whole reply is one piece: it leaves when the reply ends
    speed = (tokens - 1) / max(1e-6, ended - first_token) if tokens > 1 else 0.0
    return Reply(
        question.text,
        text.strip(),
        is_correct(text, question.expected),
        repeats_question(text, question.text),
        first_token,
        first_piece,
        tokens,
        speed,
    )


def run_model(name: str, settings: LlmSettings, show: bool) -> ModelResult:
    started = time.perf_counter()
    choice = choose_model(name, None, settings.prompt_format, settings.model_cache_dir)
    generator = LlamaCppGenerator(
        choice.path, choice.prompt_format, settings.context_tokens, settings.threads, settings.gpu_layers
    )
    result = ModelResult(name, time.perf_counter() - started)
    for question in QUESTIONS:
        reply = ask(generator, settings, question)
        result.replies.append(reply)
        if show:
            mark = ("ok  " if reply.correct else "MISS") + (" REPEAT" if reply.repeats else "")
            print(f"  [{mark}] {reply.first_piece_s:5.2f}s  {question.text!r} -> {reply.text!r}", flush=True)
    del generator
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="*", default=list(CATALOGUE), choices=list(CATALOGUE))
    parser.add_argument("--show", action="store_true", help="print every question and answer")
    parser.add_argument("--out", type=Path, help="also write every reply, with its scores and times, as JSON here")
    args = parser.parse_args()
    settings = LlmSettings()
    load = os.getloadavg()
    print(
        f"# {platform.machine()}, {os.cpu_count()} CPUs, load {load[0]:.1f}/{load[1]:.1f}/{load[2]:.1f}, "
        f"threads {settings.threads or default_threads()}, max_tokens {settings.max_tokens}, "
        f"temperature {settings.temperature}, {len(QUESTIONS)} questions, "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        flush=True,
    )
    results: list[dict[str, object]] = []
    print("| model | correct | repeats question | empty | first piece p50 / p95 | first token p50 | tokens/s | load |")
    print("|---|---|---|---|---|---|---|---|")
    for name in args.models:
        try:
            result = run_model(name, settings, args.show)
        except ModelFileError as exc:
            print(f"# {name}: skipped: {exc}", file=sys.stderr)
            continue
        s = result.summary()
        print(
            f"| {name} | {s['correct']}/{s['questions']} | {s['repeats']} | {s['empty']} | "
            f"{s['first_piece_p50_s']:.2f} / {s['first_piece_p95_s']:.2f} s | {s['first_token_p50_s']:.2f} s | "
            f"{s['tokens_per_s_p50']} | {s['load_s']:.1f} s |",
            flush=True,
        )
        print(json.dumps({**s, "loadavg": [round(x, 2) for x in os.getloadavg()]}), flush=True)
        results.append({"summary": s, "replies": [asdict(reply) for reply in result.replies]})
        if args.out:
            args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
