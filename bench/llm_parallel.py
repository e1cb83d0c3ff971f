"""Several replies at once on one LLM model copy: the batched engine against one copy serving replies in turn.

Loads the embedded default model (or PARLEY_LLM_MODEL) twice through the LLM service's own engines:

    single    LlamaCppGenerator, one copy; concurrent replies take turns (what the pool does with
              PARLEY_LLM_PARALLEL_SEQUENCES=1 and one instance)
    batched   LlamaCppBatchedGenerator, one copy decoding up to --sequences replies in one batch per token

For N = 1, 2, 4 replies started at the same moment (fixed questions, greedy, the service's
max_tokens and system prompt), each run records per reply the seconds from the request to its
first token and its tokens/s after that, and for the run the tokens of all replies over its wall
time (aggregate tokens/s). Configurations alternate within a run, so load from elsewhere on the
machine falls on both alike; the table gives medians over runs (first token: p50/p95 over every
reply of every run). These replies each read their whole prompt on both copies (batching alone).

The conversation case is one conversation of three turns, each turn sending the whole history
again (as the gateway does); it records the first token of turns 2 and 3 and the prompt tokens
each read, on the single copy (reusing its previous prompt's cells, as `llama_cpp.Llama` does) and
on the batched copy without prefix reuse, reusing its prompt cells (the default) and reusing its
reply cells too. Each run and copy opens with another question, so no turn finds its own prompt
cached from an earlier run.

    python bench/llm_parallel.py                 # 3 runs, N = 1 2 4
    python bench/llm_parallel.py --runs 5 --concurrency 1 2 4 8 --sequences 8

Prints a Markdown table and one JSON line for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from parley_llm.catalogue import choose_model
from parley_llm.config import LlmSettings
from parley_llm.engines.base import ChatMessage, Delta
from parley_llm.engines.llama_cpp import LlamaCppGenerator, default_threads
from parley_llm.engines.llama_cpp_batched import PROMPT_TOKENS, LlamaCppBatchedGenerator

QUESTIONS = [
    "What's the capital of France?",
    "How do I boil an egg?",
    "Tell me a fun fact about octopuses.",
    "Why is the sky blue?",
    "What should I cook for dinner tonight?",
    "How far away is the moon?",
    "Can you recommend a good book?",
    "What is the tallest mountain in the world?",
]

OPENERS = [
    "What's the capital of France?",
    "What's the capital of Japan?",
    "What's the biggest animal on earth?",
    "Who wrote Romeo and Juliet?",
    "What's the capital of Italy?",
    "What's the fastest land animal?",
    "Who painted the Mona Lisa?",
    "What's the capital of Spain?",
    "What's the largest ocean?",
    "Who invented the telephone?",
    "What's the capital of Canada?",
    "What's the longest river in the world?",
]
FOLLOW_UPS = ["Tell me more about it.", "Why is that?"]

Stream = Callable[[list[ChatMessage], int, float], Iterator[Delta]]


@dataclass
class Timed:
    first_s: float
    tokens: int
    tokens_per_s: float


def _p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def one_run(stream: Stream, settings: LlmSettings, n: int) -> tuple[list[Timed], float]:
    """n replies started together; their timings and the run's aggregate tokens/s."""
    results: list[Timed | None] = [None] * n
    gate = threading.Barrier(n + 1)

    def ask(i: int) -> None:
        messages = [ChatMessage("system", settings.system_prompt), ChatMessage("user", QUESTIONS[i])]
        gate.wait()
        started = time.perf_counter()
        first: float | None = None
        tokens = 0
        for delta in stream(messages, settings.max_tokens, 0.0):
            if first is None:
                first = time.perf_counter()
            tokens = delta.completion_tokens
        end = time.perf_counter()
        assert first is not None
        results[i] = Timed(first - started, tokens, (tokens - 1) / max(1e-6, end - first) if tokens > 1 else 0.0)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(n)]
    for thread in threads:
        thread.start()
    gate.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    timed = [r for r in results if r is not None]
    return timed, sum(r.tokens for r in timed) / wall


def conversation(
    stream: Stream, settings: LlmSettings, opener: str, read: Callable[[], int]
) -> list[tuple[float, int]]:
    """Three turns, each with the whole history; (first token s, prompt tokens read) of turns 2 and 3."""
    messages = [ChatMessage("system", settings.system_prompt), ChatMessage("user", opener)]
    timed = []
    for turn, follow_up in enumerate([*FOLLOW_UPS, ""]):
        before = read()
        started = time.perf_counter()
        first: float | None = None
        text = ""
        for delta in stream(messages, settings.max_tokens, 0.0):
            if first is None:
                first = time.perf_counter()
            text += delta.text
        assert first is not None
        if turn:
            timed.append((first - started, read() - before))
        messages = [*messages, ChatMessage("assistant", text), ChatMessage("user", follow_up)]
    return timed


def prompt_reader(single: LlamaCppGenerator) -> Callable[[], int]:
    """Prompt tokens the single copy has read so far: `Llama.generate` reads what its cache
    lacks of a prompt in its first `eval` call."""
    llm: Any = single.llm
    count = 0
    fresh = False
    generate, evaluate = llm.generate, llm.eval

    def generating(*args: Any, **kwargs: Any) -> Any:
        nonlocal fresh
        fresh = True
        return generate(*args, **kwargs)

    def evaluating(tokens: Any) -> Any:
        nonlocal count, fresh
        if fresh:
            count += len(tokens)
            fresh = False
        return evaluate(tokens)

    llm.generate, llm.eval = generating, evaluating
    return lambda: count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--concurrency", type=int, nargs="*", default=[1, 2, 4])
    parser.add_argument("--sequences", type=int, default=4, help="sequences of the batched copy")
    parser.add_argument("--no-conversation", action="store_true", help="skip the conversation case")
    args = parser.parse_args()
    settings = LlmSettings()
    choice = choose_model(settings.model, settings.model_path, settings.prompt_format, settings.model_cache_dir)
    single = LlamaCppGenerator(
        choice.path, choice.prompt_format, settings.context_tokens, settings.threads, settings.gpu_layers
    )
    batched = LlamaCppBatchedGenerator(
        choice.path,
        choice.prompt_format,
        settings.context_tokens,
        settings.threads,
        settings.gpu_layers,
        args.sequences,
    )
    turn = threading.Lock()  # one copy: replies take turns, as the pool lends it

    def in_turn(messages: list[ChatMessage], max_tokens: int, temperature: float) -> Iterator[Delta]:
        with turn:
            single.llm.reset()  # type: ignore[no-untyped-call]  # every reply reads its whole prompt, as the batched engine does
            yield from single.stream(messages, max_tokens, temperature)

    def single_reusing(messages: list[ChatMessage], max_tokens: int, temperature: float) -> Iterator[Delta]:
        with turn:
            yield from single.stream(messages, max_tokens, temperature)

    single_read = prompt_reader(single)
    engines: dict[str, Stream] = {"single": in_turn, "batched": batched.stream}
    reuse = {  # batched copy: (reuse_prefixes, reuse_reply_cells)
        "batched, no prefix reuse": (False, False),
        "batched, prompt cells reused": (True, False),
        "batched, reply cells reused too": (True, True),
    }
    samples: dict[tuple[str, int], list[tuple[list[Timed], float]]] = {}
    talks: dict[str, list[tuple[float, int]]] = {}
    loads = []

    def evaluated() -> int:
        return int(PROMPT_TOKENS.labels("evaluated")._value.get())

    for run in range(args.runs):
        batched.reuse_prefixes = False  # batching alone: every reply reads its whole prompt
        for n in args.concurrency:
            for name, stream in engines.items():
                samples.setdefault((name, n), []).append(one_run(stream, settings, n))
        if not args.no_conversation:
            single.llm.reset()  # type: ignore[no-untyped-call]
            talks.setdefault("single copy", []).extend(
                conversation(single_reusing, settings, OPENERS[(3 * run) % len(OPENERS)], single_read)
            )
            for k, (name, (prefixes, replies)) in enumerate(reuse.items()):
                batched.reuse_prefixes, batched.reuse_reply_cells = prefixes, replies
                opener = OPENERS[(3 * run + k) % len(OPENERS)]
                talks.setdefault(name, []).extend(conversation(batched.stream, settings, opener, evaluated))
        loads.append(os.getloadavg()[0])
        print(f"run {run + 1}/{args.runs} done, load average {loads[-1]:.2f}", flush=True)

    rows = []
    print()
    print("| engine | replies at once | first token p50 / p95 | tokens/s per reply p50 | aggregate tokens/s |")
    print("|---|---|---|---|---|")
    for n in args.concurrency:
        for name in engines:
            runs = samples[(name, n)]
            firsts = [t.first_s for timed, _ in runs for t in timed]
            speeds = [t.tokens_per_s for timed, _ in runs for t in timed if t.tokens > 1]
            row = {
                "engine": name,
                "n": n,
                "first_p50_ms": round(1000 * statistics.median(firsts)),
                "first_p95_ms": round(1000 * _p95(firsts)),
                "tokens_per_s_p50": round(statistics.median(speeds), 1) if speeds else 0.0,
                "aggregate_tokens_per_s": round(statistics.median(a for _, a in runs), 1),
                "reply_tokens_p50": statistics.median(t.tokens for timed, _ in runs for t in timed),
            }
            rows.append(row)
            label = "single copy, in turn" if name == "single" else f"batched, {args.sequences} sequences"
            print(
                f"| {label} | {n} | {row['first_p50_ms']} / {row['first_p95_ms']} ms | "
                f"{row['tokens_per_s_p50']} | {row['aggregate_tokens_per_s']} |"
            )
    talk_rows = []
    if talks:
        print()
        print("| conversation, turns 2-3 | first token p50 / max | prompt tokens read p50 |")
        print("|---|---|---|")
        for name, timed in talks.items():
            firsts = [t for t, _ in timed]
            row = {
                "engine": name,
                "first_p50_ms": round(1000 * statistics.median(firsts)),
                "first_max_ms": round(1000 * max(firsts)),
                "prompt_tokens_read_p50": statistics.median(r for _, r in timed),
            }
            talk_rows.append(row)
            print(f"| {name} | {row['first_p50_ms']} / {row['first_max_ms']} ms | {row['prompt_tokens_read_p50']} |")
    print()
    print(
        json.dumps(
            {
                "model": str(settings.model_path or settings.model),
                "threads": settings.threads or default_threads(),
                "max_tokens": settings.max_tokens,
                "runs": args.runs,
                "cpus": len(os.sched_getaffinity(0)),
                "machine": platform.processor() or platform.machine(),
                "load_average_after_each_run": loads,
                "rows": rows,
                "conversation_rows": talk_rows,
            }
        )
    )
    batched.close()


if __name__ == "__main__":
    main()
