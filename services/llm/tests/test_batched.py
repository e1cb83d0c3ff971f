"""The batched llama.cpp engine: several replies on one model copy, word for word what
the single-sequence engine says, on the real embedded model (the default unless
PARLEY_LLM_MODEL says)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Iterator

import grpc
import llama_cpp
import pytest

from parley.llm.v1 import llm_pb2, llm_pb2_grpc
from parley.server import ServiceRuntime
from parley.testing import serving
from parley_llm.__main__ import capacity
from parley_llm.catalogue import choose_model
from parley_llm.config import DEFAULT_SYSTEM_PROMPT, LlmSettings
from parley_llm.engines import llama_cpp_batched
from parley_llm.engines.base import PREFILL, ChatMessage, Delta
from parley_llm.engines.llama_cpp import LlamaCppGenerator
from parley_llm.engines.llama_cpp_batched import (
    EXACT_ROWS,
    PROMPT_TOKENS,
    LlamaCppBatchedGenerator,
    SchedulerStopped,
    without_weight_repacking,
)
from parley_llm.servicer import ConversationServicer

SEQUENCES = 4
MAX_TOKENS = 16
QUESTIONS = [
    "What is the capital of France?",
    "Tell me a short story about a dragon.",
    "How do I boil an egg?",
    "Why is the sky blue?",
    "Name three fruits, in French and Japanese.",  # multi-byte characters split across tokens
]


def conversation(question: str) -> list[ChatMessage]:
    return [ChatMessage("system", DEFAULT_SYSTEM_PROMPT), ChatMessage("user", question)]


@pytest.fixture(scope="module")
def model_choice() -> tuple[object, str]:
    settings = LlmSettings()
    choice = choose_model(settings.model, settings.model_path, "auto")
    return choice.path, choice.prompt_format


@pytest.fixture(scope="module")
def single(model_choice: tuple[object, str]) -> LlamaCppGenerator:
    """The single-sequence engine with plain weights, as the batched engine loads them."""
    path, prompt_format = model_choice
    with without_weight_repacking():
        return LlamaCppGenerator(path, prompt_format, 2048, 0, 0)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def reference(single: LlamaCppGenerator) -> dict[str, tuple[str, str]]:
    """Each question's greedy reply from the single-sequence engine, from an empty cache."""
    replies = {}
    for question in QUESTIONS:
        single.llm.reset()  # no prefix reuse from the question before: it changes the rounding
        deltas = list(single.stream(conversation(question), MAX_TOKENS, 0.0))
        replies[question] = ("".join(d.text for d in deltas), deltas[-1].finish_reason)
    return replies


@pytest.fixture(scope="module")
def engine(model_choice: tuple[object, str]) -> Iterator[LlamaCppBatchedGenerator]:
    """Plain weights, as the reference: replies must match word for word even in a batch."""
    path, prompt_format = model_choice
    # The exact mode: replies word for word a fresh evaluation's (the service reuses reply cells too).
    generator = LlamaCppBatchedGenerator(  # type: ignore[arg-type]
        path, prompt_format, 2048, 0, 0, SEQUENCES, plain_weights=True, reuse_reply_cells=False
    )
    yield generator
    generator.close()


def test_alone_a_reply_on_repacked_weights_is_the_single_sequence_engines(model_choice: tuple[object, str]) -> None:
    """The service's own configuration: repacked weights, a reply alone (prompt and tokens
    decoded in batches of their own, as the single-sequence engine does)."""
    path, prompt_format = model_choice
    single = LlamaCppGenerator(path, prompt_format, 2048, 0, 0)  # type: ignore[arg-type]
    batched = LlamaCppBatchedGenerator(path, prompt_format, 2048, 0, 0, 2, reuse_reply_cells=False)  # type: ignore[arg-type]
    try:
        for question in QUESTIONS[:2]:
            single.llm.reset()
            deltas = list(single.stream(conversation(question), MAX_TOKENS, 0.0))
            assert reply(batched, question) == ("".join(d.text for d in deltas), deltas[-1].finish_reason)
    finally:
        batched.close()


def reply(engine: LlamaCppBatchedGenerator, question: str) -> tuple[str, str]:
    deltas = list(engine.stream(conversation(question), MAX_TOKENS, 0.0))
    return "".join(d.text for d in deltas), deltas[-1].finish_reason


def assert_kv_holds_caches(engine: LlamaCppBatchedGenerator) -> None:
    """Read while the scheduler is idle, waiting for work: each KV stream holds exactly the
    cells of the tokens it says it keeps (positions 0 to n-1), nothing beyond."""
    memory = engine._memory
    held = [
        (llama_cpp.llama_memory_seq_pos_min(memory, s), llama_cpp.llama_memory_seq_pos_max(memory, s))
        for s in range(engine.sequences)
    ]
    assert held == [(0, len(c) - 1) if c else (-1, -1) for c in engine._cached]


def evaluated() -> float:
    return float(PROMPT_TOKENS.labels("evaluated")._value.get())


def common_prefix(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))


def answer(engine: LlamaCppBatchedGenerator, messages: list[ChatMessage]) -> tuple[tuple[str, str], int]:
    """The greedy reply, and how many prompt tokens it decoded (the rest came from a cache)."""
    before = evaluated()
    deltas = list(engine.stream(messages, MAX_TOKENS, 0.0))
    return ("".join(d.text for d in deltas), deltas[-1].finish_reason), round(evaluated() - before)


@contextlib.contextmanager
def prefixes_not_reused(engine: LlamaCppBatchedGenerator) -> Iterator[None]:
    engine.reuse_prefixes = False
    try:
        yield
    finally:
        engine.reuse_prefixes = True


def fresh(engine: LlamaCppBatchedGenerator, messages: list[ChatMessage]) -> tuple[str, str]:
    """The reply from an empty KV stream: its whole prompt decoded from position 0."""
    with prefixes_not_reused(engine):
        result, decoded = answer(engine, messages)
    assert decoded == len(engine._prompt(messages)[0])
    return result


def expected_reuse(engine: LlamaCppBatchedGenerator, messages: list[ChatMessage]) -> tuple[int, int]:
    """The prompt's length and the longest prefix a KV stream holds with reusable numbers
    (its prompt cells; its reply cells too with reuse_reply_cells), less what is read again."""
    prompt = engine._prompt(messages)[0]
    if engine.reuse_reply_cells:
        usable, again = engine._cached, 1
    else:
        usable, again = [c[:n] for c, n in zip(engine._cached, engine._exact, strict=True)], EXACT_ROWS
    return len(prompt), max(0, min(len(prompt) - again, max(common_prefix(c, prompt) for c in usable)))


def test_alone_a_reply_is_the_single_sequence_engines(
    engine: LlamaCppBatchedGenerator, reference: dict[str, tuple[str, str]]
) -> None:
    for question in QUESTIONS[:2] + QUESTIONS[4:]:
        assert reply(engine, question) == reference[question], question
    assert_kv_holds_caches(engine)


def test_replies_decoded_together_are_each_the_single_sequence_engines(
    engine: LlamaCppBatchedGenerator, reference: dict[str, tuple[str, str]]
) -> None:
    """Four at once, one joining mid-way (taking the slot of one cancelled mid-way)."""
    results: dict[str, tuple[str, str]] = {}
    cut: list[str] = []
    talking = threading.Event()

    def full(question: str) -> None:
        results[question] = reply(engine, question)

    def signalling(question: str) -> None:
        text = ""
        deltas = engine.stream(conversation(question), MAX_TOKENS, 0.0)
        for delta in deltas:
            text += delta.text
            if delta.completion_tokens >= 3:
                talking.set()
            if delta.finish_reason:
                results[question] = (text, delta.finish_reason)

    def cancelled(question: str) -> None:
        deltas = engine.stream(conversation(question), MAX_TOKENS, 0.0)
        text = ""
        for delta in deltas:
            text += delta.text
            if delta.completion_tokens >= 4:
                break
        deltas.close()  # a barge-in: returns once the scheduler has dropped the sequence
        cut.append(text)

    threads = [
        threading.Thread(target=signalling, args=(QUESTIONS[1],)),
        threading.Thread(target=full, args=(QUESTIONS[0],)),
        threading.Thread(target=cancelled, args=(QUESTIONS[2],)),
        threading.Thread(target=full, args=(QUESTIONS[4],)),
    ]
    for thread in threads:
        thread.start()
    assert talking.wait(120)
    joiners = [threading.Thread(target=full, args=(QUESTIONS[3],))]
    for thread in joiners:
        thread.start()
    for thread in threads + joiners:
        thread.join(180)
    for question in (QUESTIONS[0], QUESTIONS[1], QUESTIONS[3], QUESTIONS[4]):
        assert results[question] == reference[question], question
    assert cut and reference[QUESTIONS[2]][0].startswith(cut[0]) and cut[0]
    assert_kv_holds_caches(engine)


def test_a_cancelled_reply_frees_its_sequence_for_the_next(
    engine: LlamaCppBatchedGenerator, reference: dict[str, tuple[str, str]]
) -> None:
    for _ in range(3):
        streams = [engine.stream(conversation(q), MAX_TOKENS, 0.0) for q in QUESTIONS[:SEQUENCES]]
        for stream in streams:
            next(stream)
        for stream in streams:
            stream.close()
        assert_kv_holds_caches(engine)  # close returned: the scheduler is done with the cells
        # A cancelled reply keeps its prompt and the tokens it decoded, nothing more.
        prompts = [engine._prompt(conversation(q))[0] for q in QUESTIONS[:SEQUENCES]]
        for cached in engine._cached:
            prompt = next(p for p in prompts if cached[: len(p)] == p)
            said = b"".join(engine._token_bytes(t) for t in cached[len(prompt) :]).decode(errors="ignore")
            assert reference[QUESTIONS[prompts.index(prompt)]][0].startswith(said)
            assert len(cached) - len(prompt) < MAX_TOKENS
        # Its prompt went in large batches, its tokens one per step: only the prompt is reusable as is.
        assert engine._exact == [next(len(p) for p in prompts if c[: len(p)] == p) for c in engine._cached]
    assert reply(engine, QUESTIONS[3]) == reference[QUESTIONS[3]]


def test_a_conversations_next_turn_decodes_only_its_new_tokens(engine: LlamaCppBatchedGenerator) -> None:
    """Each turn sends the whole history again: the KV stream of the turn before holds it."""
    messages = conversation(QUESTIONS[0])
    said, _ = answer(engine, messages)
    for follow_up in ("And how many people live there?", "What is it famous for?"):
        messages = [*messages, ChatMessage("assistant", said[0]), ChatMessage("user", follow_up)]
        size, kept = expected_reuse(engine, messages)
        before = engine._prompt(messages[:-2])[0]
        assert kept >= len(before)  # the whole previous prompt, and its reply as far as it tokenizes alike
        said, decoded = answer(engine, messages)
        assert decoded == size - kept
        assert said == fresh(engine, messages)
        assert_kv_holds_caches(engine)
    # Asked again (a preemptive reply dropped, then asked for real): the whole prompt is
    # cached; its last tokens are read again, enough to round as a fresh prompt does.
    assert answer(engine, messages) == (said, EXACT_ROWS)


def test_a_new_question_reuses_the_system_prompt(
    engine: LlamaCppBatchedGenerator, reference: dict[str, tuple[str, str]]
) -> None:
    reply(engine, QUESTIONS[1])
    size, kept = expected_reuse(engine, conversation(QUESTIONS[3]))
    system = engine._prompt([ChatMessage("system", DEFAULT_SYSTEM_PROMPT)])[0]
    assert len(system) // 2 < kept < size
    result, decoded = answer(engine, conversation(QUESTIONS[3]))
    assert (result, decoded) == (reference[QUESTIONS[3]], size - kept)


def test_with_every_stream_cached_an_unrelated_prompt_takes_the_least_recently_used(
    engine: LlamaCppBatchedGenerator, reference: dict[str, tuple[str, str]]
) -> None:
    # Four at once fill the four streams, one each.
    streams = [engine.stream(conversation(q), MAX_TOKENS, 0.0) for q in QUESTIONS[:SEQUENCES]]
    firsts = [next(stream).text for stream in streams]  # each admitted while the others generate
    for first, stream, question in zip(firsts, streams, QUESTIONS, strict=False):
        assert first + "".join(d.text for d in stream) == reference[question][0]
    assert all(engine._cached)
    other = [ChatMessage("system", "You are a pirate."), ChatMessage("user", "Say hello.")]
    oldest = min(range(SEQUENCES), key=lambda s: engine._last_used[s])
    kept_before = [list(c) for c in engine._cached]
    size, kept = expected_reuse(engine, other)  # only the template's first tokens, alike in all
    result, decoded = answer(engine, other)
    assert decoded == size - kept
    prompt = engine._prompt(other)[0]
    assert engine._cached[oldest][: len(prompt)] == prompt
    assert [c for s, c in enumerate(engine._cached) if s != oldest] == [
        c for s, c in enumerate(kept_before) if s != oldest
    ]
    assert result == fresh(engine, other)
    # The streams it did not take still serve their own conversations exactly.
    assert reply(engine, QUESTIONS[SEQUENCES - 1]) == reference[QUESTIONS[SEQUENCES - 1]]
    assert_kv_holds_caches(engine)


def test_a_reply_cancelled_mid_way_leaves_a_cache_the_next_turn_reuses_exactly(
    engine: LlamaCppBatchedGenerator,
) -> None:
    messages = conversation(QUESTIONS[1])
    deltas = engine.stream(messages, MAX_TOKENS, 0.0)
    said = ""
    for delta in deltas:
        said += delta.text
        if delta.completion_tokens >= 4:
            break
    deltas.close()  # a barge-in: the caller heard only `said`
    assert_kv_holds_caches(engine)
    prompt = engine._prompt(messages)[0]
    cached = next(c for c in engine._cached if c[: len(prompt)] == prompt)
    assert len(cached) - len(prompt) < MAX_TOKENS  # what it decoded, never a token more
    follow_up = [*messages, ChatMessage("assistant", said), ChatMessage("user", "Wait, make it about a cat.")]
    size, kept = expected_reuse(engine, follow_up)
    assert kept >= len(prompt)
    result, decoded = answer(engine, follow_up)
    assert decoded == size - kept
    assert result == fresh(engine, follow_up)
    assert_kv_holds_caches(engine)


def test_utf8_split_across_tokens_and_stop_strings_are_held_back() -> None:
    sequence = llama_cpp_batched._Sequence(
        reply=llama_cpp_batched._Reply([], 10, 0.0),
        seq_id=0,
        sampler=None,
        pending=[],
        cached=[],
        exact=0,
        prompt_tokens=1,
        max_tokens=10,
        room=100,
        stops=[b"\nUser:"],
    )
    released = []
    for piece in [b"Caf", b"\xc3", b"\xa9 \xe6\x97", b"\xa5!", b"\nUs"]:
        sequence.text += piece
        end = len(sequence.text) - LlamaCppBatchedGenerator._stop_prefix(sequence)
        released.append(LlamaCppBatchedGenerator._release(sequence, end))
    assert released == ["Caf", "", "é ", "日!", ""]  # "\nUs" may begin "\nUser:": held back
    assert bytes(sequence.text[sequence.sent :]) == b"\nUs"
    assert [llama_cpp_batched._split_character(bytearray(t)) for t in (b"a\xe6\x97", b"a\xe6\x97\xa5", b"\xc3")] == [
        True,
        False,
        True,
    ]


def test_a_reply_that_fills_its_context_ends_with_length_and_failures_reach_every_stream(
    model_choice: tuple[object, str],
) -> None:
    path, prompt_format = model_choice
    small = LlamaCppBatchedGenerator(path, prompt_format, 80, 0, 0, 2)  # type: ignore[arg-type]
    story = [ChatMessage("user", "Count from 1 to 100, separated by commas.")]
    deltas = list(small.stream(story, 10_000, 0.0))
    last = deltas[-1]
    assert (last.finish_reason, last.prompt_tokens + last.completion_tokens) == ("length", 80)
    with pytest.raises(ValueError, match="exceed context window"):
        list(small.stream([ChatMessage("system", "word " * 100), ChatMessage("user", "Hi")], 8, 0.0))
    assert_kv_holds_caches(small)

    # A failure inside the scheduler fails the replies in flight and every later one; none hangs.
    def broken(sequence: object, token: int) -> Delta:
        raise RuntimeError("sampler exploded")

    small._advance = broken  # type: ignore[method-assign]
    started = time.monotonic()
    with pytest.raises(SchedulerStopped, match="sampler exploded"):
        list(small.stream(story, 8, 0.0))
    with pytest.raises(SchedulerStopped):
        list(small.stream(story, 8, 0.0))
    assert time.monotonic() - started < 30


def test_capacity_is_copies_times_sequences() -> None:
    assert capacity(LlmSettings(instances=2, parallel_sequences=3)) == 6
    assert capacity(LlmSettings(instances=2, parallel_sequences=1)) == 2
    openai = LlmSettings(engine="openai", openai_base_url="http://x/v1", openai_model="m", instances=2)
    assert capacity(openai) == 2


def ask(text: str, max_tokens: int) -> llm_pb2.GenerateRequest:
    return llm_pb2.GenerateRequest(
        messages=[llm_pb2.Message(role="user", content=text)], max_tokens=max_tokens, temperature=0.0
    )


def servicer_for(engine: LlamaCppBatchedGenerator, settings: LlmSettings) -> ConversationServicer:
    servicer = ConversationServicer(settings, ServiceRuntime("llm", engine.sequences, queue_limit=4))
    for _ in range(engine.sequences):  # as the service does: one pool entry per sequence
        servicer.pool.add(engine)  # type: ignore[arg-type]
    servicer.runtime.slots.ready = True
    return servicer


async def every_sequence_freed(servicer: ConversationServicer) -> None:
    """Wait (up to 5 s) for the cancelled calls' workers to stop and give their sequences back."""
    for _ in range(100):
        if servicer.pool.free == SEQUENCES:
            break
        await asyncio.sleep(0.05)
    assert servicer.pool.free == SEQUENCES


async def test_streams_beyond_the_sequences_wait_then_are_refused_after_the_timeout(
    engine: LlamaCppBatchedGenerator,
) -> None:
    servicer = servicer_for(engine, LlmSettings(queue_timeout_s=1.0))
    async with serving(lambda s: llm_pb2_grpc.add_ConversationServicer_to_server(servicer, s)) as channel:
        stub = llm_pb2_grpc.ConversationStub(channel)
        busy = [stub.Generate(ask(f"Tell me a long story about dragon number {n}.", 400)) for n in range(SEQUENCES)]
        for call in busy:
            await anext(aiter(call))  # every sequence is generating
        assert servicer.pool.free == 0
        started = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            async for _ in stub.Generate(ask("And me?", 4)):
                pass
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert time.monotonic() - started >= 0.9  # it waited for a slot first
        for call in busy:
            call.cancel()
        await every_sequence_freed(servicer)
        deltas = [d async for d in stub.Generate(ask("Say hello.", 8))]
        assert "".join(d.text for d in deltas).strip()
    assert_kv_holds_caches(engine)


async def test_rapid_cancels_through_the_service_leave_every_sequence_clean(
    engine: LlamaCppBatchedGenerator, reference: dict[str, tuple[str, str]]
) -> None:
    servicer = servicer_for(engine, LlmSettings(queue_timeout_s=30, speech_shaping=False))
    async with serving(lambda s: llm_pb2_grpc.add_ConversationServicer_to_server(servicer, s)) as channel:
        stub = llm_pb2_grpc.ConversationStub(channel)
        story = ask("Tell me a very long story about a dragon.", 300)
        for cycle in range(10):
            calls = [stub.Generate(story) for _ in range(SEQUENCES)]
            if cycle % 2:
                for call in calls:
                    async for _ in call:
                        break  # cut after the first token, as a barge-in does
            else:
                await asyncio.sleep(0)  # cut before it even started
            for call in calls:
                call.cancel()
        await every_sequence_freed(servicer)
        assert servicer.runtime.slots.active == 0
    assert_kv_holds_caches(engine)
    assert reply(engine, QUESTIONS[0]) == reference[QUESTIONS[0]]


def test_reusing_reply_cells_a_conversation_is_the_single_sequence_engines(
    engine: LlamaCppBatchedGenerator, single: LlamaCppGenerator
) -> None:
    """`llama_cpp.Llama` reuses its previous reply's cells too: so does the batched engine
    with reuse_reply_cells, and then says word for word what it says, turn after turn."""
    single.llm.reset()
    engine.reuse_reply_cells = True
    try:
        messages = [ChatMessage("system", DEFAULT_SYSTEM_PROMPT), ChatMessage("user", "What is the capital of Italy?")]
        for follow_up in ("How many people live there?", "What is it famous for?", ""):
            size, kept = expected_reuse(engine, messages)
            deltas = list(single.stream(messages, MAX_TOKENS, 0.0))
            said = ("".join(d.text for d in deltas), deltas[-1].finish_reason)
            assert answer(engine, messages) == (said, size - kept)
            messages = [*messages, ChatMessage("assistant", said[0]), ChatMessage("user", follow_up)]
        # The last turn asked again: only its last token is read.
        assert answer(engine, messages[:-2]) == (said, 1)
        assert_kv_holds_caches(engine)
    finally:
        engine.reuse_reply_cells = False


def prefill(engine: LlamaCppBatchedGenerator, messages: list[ChatMessage]) -> tuple[list[Delta], int]:
    """A prefill's deltas, and how many prompt tokens it decoded."""
    before = evaluated()
    deltas = list(engine.prefill(messages, MAX_TOKENS))
    return deltas, round(evaluated() - before)


def test_a_prefilled_partial_transcript_leaves_only_the_last_words_to_read(engine: LlamaCppBatchedGenerator) -> None:
    """Read while the user speaks ("What is the capital of"), the conversation is in a KV stream when the
    question ends: the reply reads only the rest ("France?" and the template's tail)."""
    engine.reuse_reply_cells = True  # as the service runs
    try:
        partial, whole = conversation("What is the capital of"), conversation("What is the capital of France?")
        final_prompt = engine._prompt(whole)[0]
        deltas, decoded = prefill(engine, partial)
        assert [(d.text, d.finish_reason) for d in deltas] == [("", PREFILL)]
        settled = deltas[0].prompt_tokens
        # Only what more words cannot change: not the template's tail after the partial words.
        assert engine._prompt(partial)[0][:settled] == final_prompt[:settled]
        assert settled < len(engine._prompt(partial)[0])
        assert decoded <= settled
        assert_kv_holds_caches(engine)
        assert prefill(engine, partial)[1] == 0  # read already: nothing to do

        size, kept = expected_reuse(engine, whole)
        assert kept == settled  # the stream the prefill filled
        (text, reason), read = answer(engine, whole)
        assert read == size - settled < size // 4
        assert "paris" in text.lower() and reason
        assert_kv_holds_caches(engine)
    finally:
        engine.reuse_reply_cells = False


async def test_a_prefill_through_the_service_answers_once_read(engine: LlamaCppBatchedGenerator) -> None:
    servicer = servicer_for(engine, LlmSettings(queue_timeout_s=5))
    async with serving(lambda s: llm_pb2_grpc.add_ConversationServicer_to_server(servicer, s)) as channel:
        stub = llm_pb2_grpc.ConversationStub(channel)
        request = ask("Tell me about the tallest mountain in", 0)
        request.prefill_only = True
        [done] = [d async for d in stub.Generate(request)]
        assert (done.text, done.finish_reason, done.completion_tokens) == ("", PREFILL, 0)
        assert done.prompt_tokens > 0
        assert servicer.runtime.slots.active == 0 and servicer.pool.free == SEQUENCES
    assert_kv_holds_caches(engine)


async def test_an_engine_that_keeps_no_prompts_answers_a_prefill_at_once(engine: LlamaCppBatchedGenerator) -> None:
    """The single-sequence engine (one sequence a copy) reads none: no model copy is waited for."""
    servicer = servicer_for(engine, LlmSettings(parallel_sequences=1, queue_timeout_s=5))
    before = evaluated()
    async with serving(lambda s: llm_pb2_grpc.add_ConversationServicer_to_server(servicer, s)) as channel:
        request = ask("Tell me about the tallest mountain in", 0)
        request.prefill_only = True
        [done] = [d async for d in llm_pb2_grpc.ConversationStub(channel).Generate(request)]
    assert (done.finish_reason, done.prompt_tokens) == (PREFILL, 0) and evaluated() == before


def test_a_prefill_while_a_reply_is_generated_is_skipped(engine: LlamaCppBatchedGenerator) -> None:
    """Prefills use idle time only: a reply being generated would wait for their step."""
    story = engine.stream(conversation("Tell me a long story about a dragon."), MAX_TOKENS, 0.0)
    next(story)  # generating
    deltas, decoded = prefill(engine, conversation("How far away from the earth is the"))
    assert [(d.finish_reason, d.prompt_tokens) for d in deltas] == [(PREFILL, 0)] and decoded == 0
    assert "".join(d.text for d in story)  # the story went on
    deltas, decoded = prefill(engine, conversation("How far away from the earth is the"))
    assert deltas[0].prompt_tokens > 0 and decoded > 0  # idle again: read
    assert_kv_holds_caches(engine)
