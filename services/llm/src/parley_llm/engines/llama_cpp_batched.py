"""GGUF models through llama.cpp, several replies at once on one model copy.

`llama_cpp.Llama` decodes one sequence at a time, so a reply that holds it makes
every other reply wait for its whole generation, and a second `Llama` doubles the
weights in memory. Here one `Llama` loads the model (and keeps tokenizing and
chat templating exactly as the single-sequence engine does), and one scheduler
thread owns a second llama.cpp context with `sequences` KV streams on the same
weights. Each step it decodes the next token of every generating reply in one
batch, and reads a chunk of the prompt of each newly admitted one (continuous
batching: replies join and leave between steps). Nothing but the scheduler thread
touches the model or that context; callers only exchange queue items with it.

With temperature 0 a reply alone is word for word what `LlamaCppGenerator` says
from an empty cache; with others in the batch it is too on plain weights, while the
repacked weights the service uses may round a near tie the other way (see
`without_weight_repacking` and `_step` for the two llama.cpp behaviours involved).

A caller's `stream()` is one reply: its deltas arrive through a queue; closing
the iterator (barge-in) asks the scheduler to drop the sequence and returns only
once the scheduler is done with it, so its KV stream is free for the next one.

Prompt-prefix reuse (as llama.cpp's server does with its slots): a conversation sends
its whole history again each turn, and a dropped preemptive reply is asked again with
nearly the same prompt. So a KV stream keeps its cells when its reply ends, with the
exact tokens they hold (the prompt and every generated token decoded into the cache,
never the last sampled one, which was not), and a new reply takes the free stream
whose cached tokens share the longest prefix with its prompt (else the least recently
used one), drops the cells past that prefix and reads only the rest of its prompt.

Prefills (`prefill`): a conversation read into a free KV stream and nothing generated, so that
the reply that follows finds it there (the gateway sends each partial transcript while the user
speaks). Only the part of the prompt more words cannot change is read, and only in idle time:
one that comes while other replies are decoded is answered at once, unread.

llama.cpp's CPU matrix kernels round a token differently in a batch of fewer than
`EXACT_ROWS` rows than in a larger one (plain weights too: logits up to ~0.4 apart,
measured with this llama.cpp). A prompt read from scratch goes in large batches, its
reply's tokens one per step. By default (`reuse_reply_cells`, as `llama_cpp.Llama`
does) the last reply's cells are reused too: a turn's prompt is read ~a reply's length
faster, and a reply is word for word what the single-sequence engine says for the same
conversation, not what a fresh evaluation of its prompt gives. Without it only cells
decoded in large batches are reused (the prompts: a conversation's earlier turns and
system prompt), at least `EXACT_ROWS` prompt tokens are read again and no prompt chunk
is smaller than that, so a reply is word for word what a fresh evaluation gives.
"""

from __future__ import annotations

import codecs
import contextlib
import ctypes
import logging
import queue
import random
import threading
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import llama_cpp
import llama_cpp.llama_cpp as bindings
from llama_cpp import Llama, llama_chat_format
from prometheus_client import Counter, Gauge, Histogram

from parley_llm.engines.base import PREFILL, ChatMessage, Delta
from parley_llm.engines.llama_cpp import default_threads
from parley_llm.prompt import TRANSCRIPT_STOPS, fit_history, transcript

log = logging.getLogger(__name__)

ACTIVE_SEQUENCES = Gauge("parley_llm_active_sequences", "Replies being decoded together on the model copies")
PROMPT_TOKENS = Counter(
    "parley_llm_prompt_tokens",
    "Prompt tokens of admitted replies: read from a KV stream's cache (cached) or decoded (evaluated)",
    ["source"],
)
PREFILLS = Counter(
    "parley_llm_prefills",
    "Prefills (GenerateRequest.prefill_only): read into a KV stream, or skipped while other replies were decoded",
    ["outcome"],
)
BATCH_TOKENS = Histogram(
    "parley_llm_batch_tokens", "Tokens decoded in one batched step", buckets=(1, 2, 3, 4, 6, 8, 16, 64, 256, 512)
)

# Tokens decoded at most in one llama_decode call (llama-cpp-python's own n_batch).
BATCH_TOKENS_MAX = 512
# Prompt tokens of a new reply read per step: a long prompt is read over several
# steps so that the replies already speaking keep getting tokens meanwhile.
PREFILL_CHUNK = 256
# The sampler settings `create_chat_completion`/`create_completion` use in
# llama-cpp-python 0.3.36 when a caller gives only the temperature.
TOP_K = 40
TOP_P = 0.95
MIN_P = 0.05
TYPICAL_P = 1.0
REPEAT_PENALTY = 1.0
PENALTY_LAST_N = 64  # Llama.last_n_tokens_size
# Keep a KV stream's cells when its reply ends and reuse their longest common prefix
# with the next prompt (the module docstring); False: every prompt is read whole.
REUSE_PREFIXES = True
# Reuse the cells of generated tokens too (decoded in small batches, so not exactly the
# numbers a fresh evaluation gives them: the module docstring). On, as llama_cpp.Llama (the
# single-sequence engine) does: a conversation's next turn then reads only its new words
# (first token 235 ms instead of 627 ms, docs/benchmarks.md), and is word for word what the
# single-sequence engine answers.
REUSE_REPLY_CELLS = True
# Below this many rows in one llama_decode batch llama.cpp's CPU kernels take another
# path with other rounding (measured on plain weights: a prompt read as 44 tokens and then
# its last 8 gives the logits of one 52-token batch exactly; a last chunk of 1 to 7 does not).
EXACT_ROWS = 8
# How often a waiting caller checks that the scheduler is still alive.
ALIVE_CHECK_S = 1.0


_LOADING = threading.Lock()


@contextlib.contextmanager
def without_weight_repacking() -> Iterator[None]:
    """`Llama` objects made inside load their weights without CPU repacking.

    llama.cpp's repacked (AVX2 "extra buffer") kernels compute rows of a batch in
    groups of four and round a token's numbers differently from a batch of one, so
    with several replies in one batch a greedy reply can take another word at a near
    tie than it would alone. Plain weights give every sequence exactly the numbers it
    gets alone, but their kernels gain nothing from batching (four tokens cost ~7x
    one here, against ~2.3x repacked: docs/benchmarks.md), so the service keeps
    repacking; tests use this to check the scheduling word for word. `Llama` has no
    argument for it, so its default model parameters are amended while it loads.
    """
    module: Any = bindings  # what llama_cpp.llama calls its default parameters from
    original = module.llama_model_default_params

    def plain_weights() -> Any:
        params = original()
        params.use_extra_bufts = False
        return params

    with _LOADING:
        module.llama_model_default_params = plain_weights
        try:
            yield
        finally:
            module.llama_model_default_params = original


class SchedulerStopped(RuntimeError):
    """The scheduler thread has died; its replies fail with this."""


class _Captured(Exception):  # a control-flow signal, not an error
    def __init__(self, prompt: list[int], stop: list[str]) -> None:
        self.prompt = prompt
        self.stop = stop


class _PromptRecorder:
    """Stands in for the `Llama` a chat handler is given: it tokenizes with the real
    one and, where the handler would start generating, hands back the prompt tokens
    and stop strings, so prompts are exactly what `create_chat_completion` feeds."""

    verbose = False

    def __init__(self, llm: Llama) -> None:
        self._llm = llm

    def tokenize(self, text: bytes, add_bos: bool = True, special: bool = False) -> list[int]:
        return self._llm.tokenize(text, add_bos=add_bos, special=special)

    def create_completion(self, prompt: list[int], stop: Any = None, **_: Any) -> Any:
        stops = [] if stop is None else [stop] if isinstance(stop, str) else list(stop)
        raise _Captured(list(prompt), stops)


@dataclass(eq=False)
class _Reply:
    """One reply, shared between its caller and the scheduler."""

    messages: list[ChatMessage]
    max_tokens: int
    temperature: float
    prefill: bool = False  # read the prompt's settled part into a KV stream, generate nothing
    out: queue.Queue[Delta | BaseException] = field(default_factory=queue.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)
    dropped: threading.Event = field(default_factory=threading.Event)  # the scheduler is done with it


@dataclass(eq=False)
class _Sequence:
    """A reply admitted to a KV stream; the scheduler thread's alone."""

    reply: _Reply
    seq_id: int
    sampler: Any  # llama_sampler_p
    pending: list[int]  # tokens still to decode: the prompt's, then the last sampled one
    cached: list[int]  # the tokens in its KV cells, position by position (what its stream keeps)
    exact: int  # how many of them, from the first, were decoded in batches of EXACT_ROWS or more
    prompt_tokens: int
    max_tokens: int
    room: int  # the most tokens its share of the context holds
    stops: list[bytes]
    started: bool = False  # its whole prompt is decoded: it gets a token each step
    completion: int = 0
    text: bytearray = field(default_factory=bytearray)
    sent: int = 0  # bytes of `text` handed to the decoder
    decoder: codecs.IncrementalDecoder = field(default_factory=lambda: codecs.getincrementaldecoder("utf-8")("ignore"))

    @property
    def pos(self) -> int:
        """The position of its next token: one cell per cached token, from 0."""
        return len(self.cached)


class LlamaCppBatchedGenerator:
    """One model copy serving up to `sequences` replies at once (see the module docstring)."""

    def __init__(
        self,
        path: Path,
        prompt_format: str,
        context_tokens: int,
        threads: int,
        gpu_layers: int,
        sequences: int,
        plain_weights: bool = False,
        reuse_prefixes: bool = REUSE_PREFIXES,
        reuse_reply_cells: bool = REUSE_REPLY_CELLS,
    ) -> None:
        """prompt_format: chat, transcript, or auto; every reply gets `context_tokens` of context.

        plain_weights: load without CPU weight repacking (see `without_weight_repacking`):
        greedy replies are then exact whoever else is talking, but batches are far slower.
        reuse_prefixes: start a prompt from the longest prefix a free KV stream holds.
        reuse_reply_cells: that prefix may include the previous reply's cells (faster, but
        not word for word what a fresh evaluation says: the module docstring).
        """
        if not path.is_file():
            raise FileNotFoundError(f"GGUF model not found at {path}")
        n_threads = threads or default_threads()
        # This Llama only loads, tokenizes and templates; its own context is never
        # decoded, so it is kept small.
        with without_weight_repacking() if plain_weights else contextlib.nullcontext():
            self.llm = Llama(
                model_path=str(path),
                n_ctx=256,
                n_threads=n_threads,
                n_gpu_layers=gpu_layers,
                verbose=False,
            )
        has_template = "tokenizer.chat_template" in self.llm.metadata
        self.chat = prompt_format == "chat" or (prompt_format == "auto" and has_template)
        self.sequences = sequences
        self.context_tokens = context_tokens
        self.reuse_prefixes = reuse_prefixes
        self.reuse_reply_cells = reuse_reply_cells
        # The single-sequence engine's context settings (rope, attention, KV types) with
        # one KV stream of `context_tokens` per sequence: a reply that fills its stream
        # ends with "length" and can never touch another's cells.
        params = llama_cpp.llama_context_params.from_buffer_copy(self.llm.context_params)
        params.n_ctx = context_tokens * sequences
        params.n_batch = BATCH_TOKENS_MAX
        params.n_ubatch = BATCH_TOKENS_MAX
        params.n_seq_max = sequences
        params.kv_unified = False
        params.n_threads = n_threads
        params.n_threads_batch = n_threads
        params.no_perf = True
        self._ctx = llama_cpp.llama_init_from_model(self.llm.model, params)
        if not self._ctx:
            raise RuntimeError(f"llama.cpp could not create a context for {sequences} sequences")
        self._memory = llama_cpp.llama_get_memory(self._ctx)
        self._vocab = llama_cpp.llama_model_get_vocab(self.llm.model)
        self._seq_context = min(context_tokens, llama_cpp.llama_n_ctx_seq(self._ctx))
        self._batch = llama_cpp.llama_batch_init(BATCH_TOKENS_MAX, 0, 1)
        self._piece = ctypes.create_string_buffer(256)
        # The scheduler's alone: the tokens each free KV stream's cells hold, position by
        # position, and when each stream last ended a reply (least recently used goes first).
        self._cached: list[list[int]] = [[] for _ in range(sequences)]
        self._exact: list[int] = [0] * sequences  # the leading cached tokens decoded in large batches
        self._last_used: list[int] = [0] * sequences
        self._ends = 0
        self._inbox: queue.Queue[_Reply | None] = queue.Queue()
        self._failure: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=f"llm-scheduler-{path.stem}", daemon=True)
        self._thread.start()
        log.info(
            "%s: %s prompts, %d sequences of %d tokens on one copy",
            path.name,
            "chat-template" if self.chat else "transcript",
            sequences,
            self._seq_context,
        )

    # -- the caller's side ---------------------------------------------------------

    def stream(self, messages: list[ChatMessage], max_tokens: int, temperature: float) -> Iterator[Delta]:
        return self._deltas(_Reply(messages, max_tokens, temperature))

    def prefill(self, messages: list[ChatMessage], max_tokens: int) -> Iterator[Delta]:
        """Read the prompt into a free KV stream (the one sharing most of it), where the reply that
        follows finds it: a partial transcript read while the user still speaks leaves only the last
        words and the template's tail to read once they stop. Only the part of the prompt that more
        words cannot change is read (`_settled`)."""
        return self._deltas(_Reply(messages, max_tokens, 0.0, prefill=True))

    def _deltas(self, reply: _Reply) -> Iterator[Delta]:
        self._send(reply)
        finished = False
        try:
            while True:
                item = self._receive(reply)
                if isinstance(item, BaseException):
                    finished = True
                    raise item
                if item.finish_reason:
                    finished = True
                yield item
                if finished:
                    return
        finally:
            if not finished:
                reply.cancelled.set()
                self._inbox.put(None)  # wakes an idle scheduler
            # The slot is only free once the scheduler is done with the sequence's KV stream.
            while not reply.dropped.wait(ALIVE_CHECK_S):
                if not self._thread.is_alive():
                    break

    def _send(self, reply: _Reply) -> None:
        if not self._thread.is_alive():
            raise SchedulerStopped(f"the LLM scheduler has stopped: {self._failure!r}")
        self._inbox.put(reply)

    def _receive(self, reply: _Reply) -> Delta | BaseException:
        while True:
            try:
                return reply.out.get(timeout=ALIVE_CHECK_S)
            except queue.Empty:
                if not self._thread.is_alive() and reply.out.empty():
                    return SchedulerStopped(f"the LLM scheduler has stopped: {self._failure!r}")

    def close(self) -> None:
        """Stop the scheduler (replies in flight fail) and free the context."""
        self._inbox.put(_STOP)
        self._thread.join()

    # -- the scheduler thread ------------------------------------------------------

    def _run(self) -> None:
        active: list[_Sequence] = []
        waiting: deque[_Reply] = deque()
        free_ids = list(range(self.sequences))
        try:
            while True:
                # Idle: sleep until a reply comes. Busy: take what came, decode on.
                items = [self._inbox.get()] if not active and not waiting else []
                items += self._drain()
                # Replies that came with the stop wait with the others, and fail with them below.
                waiting.extend(item for item in items if isinstance(item, _Reply))
                if _STOP in items:
                    raise SchedulerStopped("the LLM engine was closed")
                for sequence in [s for s in active if s.reply.cancelled.is_set()]:
                    self._drop(sequence, active, free_ids)
                for reply in [r for r in waiting if r.cancelled.is_set()]:
                    waiting.remove(reply)  # never started: nothing to free, its caller may go
                    reply.dropped.set()
                while waiting and free_ids:
                    reply = waiting.popleft()
                    if reply.prefill and active:
                        self._skip(reply)
                        continue
                    admitted = self._admit(reply, free_ids)
                    if admitted is not None:
                        active.append(admitted)
                        ACTIVE_SEQUENCES.inc()
                        if admitted.reply.prefill and not admitted.pending:
                            self._prefilled(admitted, active, free_ids)  # all of it was cached
                if active:
                    self._step(active, free_ids)
        except BaseException as exc:
            self._failure = exc
            if not isinstance(exc, SchedulerStopped):
                log.exception("LLM scheduler failed")
            error = exc if isinstance(exc, SchedulerStopped) else SchedulerStopped(f"the LLM scheduler failed: {exc}")
            for sequence in active:
                ACTIVE_SEQUENCES.dec()
                sequence.reply.out.put(error)
                sequence.reply.dropped.set()
            for reply in waiting:
                reply.out.put(error)
                reply.dropped.set()
            self._fail_inbox(error)
        finally:
            for sequence in active:
                llama_cpp.llama_sampler_free(sequence.sampler)
            llama_cpp.llama_batch_free(self._batch)
            llama_cpp.llama_free(self._ctx)
            self._fail_inbox(SchedulerStopped("the LLM scheduler has stopped"))

    def _drain(self) -> list[_Reply | None]:
        items: list[_Reply | None] = []
        while True:
            try:
                items.append(self._inbox.get_nowait())
            except queue.Empty:
                return items

    def _fail_inbox(self, error: BaseException) -> None:
        for item in self._drain():
            if isinstance(item, _Reply):
                item.out.put(error)
                item.dropped.set()

    def _count(self, messages: list[ChatMessage]) -> int:
        return len(self.llm.tokenize(transcript(messages).encode(), add_bos=True))

    def _prompt(self, messages: list[ChatMessage]) -> tuple[list[int], list[str]]:
        """Prompt tokens and stop strings, exactly as the single-sequence engine's calls build them."""
        if self.chat:
            llm = self.llm
            handler = (
                llm.chat_handler
                or llm._chat_handlers.get(llm.chat_format or "")  # how Llama picks its handler
                or llama_chat_format.get_chat_completion_handler(llm.chat_format or "")
            )
            try:
                handler(
                    llama=_PromptRecorder(llm),  # type: ignore[arg-type]
                    messages=[{"role": m.role, "content": m.content} for m in messages],  # type: ignore[misc]
                    stream=True,
                )
            except _Captured as captured:
                return captured.prompt, captured.stop
            raise RuntimeError("the chat handler did not build a prompt")
        # `Llama._create_completion` for a text prompt: BOS when the model adds one,
        # special tokens parsed, EOS/SEP when the model appends one.
        model = self.llm._model
        bos = model.token_cls() if model.token_cls() != -1 else self.llm.token_bos()
        sep = model.token_sep()
        head = [bos] if model.add_bos_token() and bos != -1 else []
        tail = [sep if sep != -1 else self.llm.token_eos()] if model.add_eos_token() or sep != -1 else []
        body = self.llm.tokenize(transcript(messages).encode(), add_bos=False, special=True)
        return head + body + tail, list(TRANSCRIPT_STOPS)

    def _admit(self, reply: _Reply, free_ids: list[int]) -> _Sequence | None:
        """Give a waiting reply a KV stream; a reply that cannot start fails alone."""
        try:
            # Fitted to its own KV stream, which may hold fewer tokens than the context asked for.
            messages = fit_history(reply.messages, self._seq_context - reply.max_tokens, self._count)
            prompt, stops = self._prompt(messages)
            if reply.prefill:
                prompt = self._settled(prompt, messages)
            if len(prompt) >= self._seq_context:
                raise ValueError(f"Requested tokens ({len(prompt)}) exceed context window of {self._seq_context}")
        except Exception as exc:
            reply.out.put(exc)
            reply.dropped.set()
            return None
        room = self._seq_context - len(prompt)  # tokens before its KV stream is full
        max_tokens = reply.max_tokens if 0 < reply.max_tokens < room else room
        seq_id, common = self._stream_for(prompt, free_ids, whole=reply.prefill)
        free_ids.remove(seq_id)
        cached = self._cached[seq_id][:common]
        exact = min(common, self._exact[seq_id])
        self._cached[seq_id], self._exact[seq_id] = [], 0  # the sequence owns the stream now
        PROMPT_TOKENS.labels("cached").inc(common)
        PROMPT_TOKENS.labels("evaluated").inc(len(prompt) - common)
        return _Sequence(
            reply=reply,
            seq_id=seq_id,
            sampler=self._sampler(reply.temperature),
            pending=prompt[common:],
            cached=cached,
            exact=exact,
            prompt_tokens=len(prompt),
            max_tokens=max_tokens,
            room=room,
            stops=[s.encode() for s in stops],
        )

    def _settled(self, prompt: list[int], messages: list[ChatMessage]) -> list[int]:
        """The part of a prefill's prompt that more words in the user's last message cannot change:
        what it shares with the prompt of the same message continued (not the template's tail, nor a
        last token the next word may merge with)."""
        last = messages[-1]
        continued, _ = self._prompt([*messages[:-1], ChatMessage(last.role, f"{last.content} and more")])
        return prompt[: _common_prefix(prompt, continued)]

    def _stream_for(self, prompt: list[int], free_ids: list[int], whole: bool = False) -> tuple[int, int]:
        """The free KV stream whose cache shares the longest prefix with `prompt` (ties and
        no match: the least recently used), with its cells past that prefix removed; and
        how many prompt tokens its cells already hold (`whole`: all of them may be, for a
        prefill, which needs no logits)."""
        shared = {seq_id: self._reusable(seq_id, prompt) for seq_id in free_ids}
        seq_id = max(free_ids, key=lambda s: (shared[s], -self._last_used[s]))
        # The last prompt token is always decoded: its row gives the logits of the first reply
        # token; unless reply cells are reused, in a batch large enough to round as a fresh one.
        keep_out = 0 if whole else 1 if self.reuse_reply_cells else EXACT_ROWS
        common = min(shared[seq_id], len(prompt) - keep_out)
        if common <= 0 or not llama_cpp.llama_memory_seq_rm(self._memory, seq_id, common, -1):
            # Nothing to keep, or a memory that cannot drop part of a sequence: start empty.
            common = 0
            llama_cpp.llama_memory_seq_rm(self._memory, seq_id, -1, -1)
        return seq_id, common

    def _reusable(self, seq_id: int, prompt: list[int]) -> int:
        """How many leading tokens of `prompt` the stream's cells hold with the numbers to reuse."""
        if not self.reuse_prefixes:
            return 0
        cached = self._cached[seq_id]
        return _common_prefix(cached if self.reuse_reply_cells else cached[: self._exact[seq_id]], prompt)

    def _sampler(self, temperature: float) -> Any:
        """The chain `Llama._init_sampler` builds for these settings."""
        chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
        add = llama_cpp.llama_sampler_chain_add
        # Neutral settings, so a no-op, but the same chain `Llama` builds (and calls it alike).
        n_vocab = llama_cpp.llama_vocab_n_tokens(self._vocab)
        add(chain, llama_cpp.llama_sampler_init_penalties(n_vocab, PENALTY_LAST_N, REPEAT_PENALTY, 0.0, 0.0))
        if temperature == 0.0:
            add(chain, llama_cpp.llama_sampler_init_greedy())
        else:
            add(chain, llama_cpp.llama_sampler_init_top_k(TOP_K))
            add(chain, llama_cpp.llama_sampler_init_typical(TYPICAL_P, 1))
            add(chain, llama_cpp.llama_sampler_init_top_p(TOP_P, 1))
            add(chain, llama_cpp.llama_sampler_init_min_p(MIN_P, 1))
            add(chain, llama_cpp.llama_sampler_init_temp(temperature))
            add(chain, llama_cpp.llama_sampler_init_dist(random.randint(0, 2**32 - 1)))
        return chain

    def _drop(self, sequence: _Sequence, active: list[_Sequence], free_ids: list[int], keep: bool = True) -> None:
        """The sequence leaves: its stream is free, keeping the cells it decoded for a later
        prompt to reuse (or none, `keep` False), and its caller is told."""
        active.remove(sequence)
        ACTIVE_SEQUENCES.dec()
        if keep and self.reuse_prefixes:
            self._cached[sequence.seq_id], self._exact[sequence.seq_id] = sequence.cached, sequence.exact
        else:
            llama_cpp.llama_memory_seq_rm(self._memory, sequence.seq_id, -1, -1)
            self._cached[sequence.seq_id], self._exact[sequence.seq_id] = [], 0
        self._ends += 1
        self._last_used[sequence.seq_id] = self._ends
        llama_cpp.llama_sampler_free(sequence.sampler)
        free_ids.append(sequence.seq_id)
        sequence.reply.dropped.set()

    def _step(self, active: list[_Sequence], free_ids: list[int]) -> None:
        """One step: the next token of every generating sequence in one batch, then a
        prompt chunk of each sequence still reading its prompt, each in a batch of its own.

        Prompts go alone because llama.cpp's CPU kernels round a prompt token differently
        when prompts of three or more sequences share a batch. Single tokens of many
        sequences do not on plain weights, so there a reply's words never depend on who else
        is talking; the repacked weights the service uses may round a near tie the other way
        (module docstring).
        """
        generating = [s for s in active if s.started]
        reading = [s for s in active if not s.started]
        if generating:
            self._decode(generating, 1, active, free_ids)
        for sequence in reading:
            if sequence in active:
                self._decode([sequence], PREFILL_CHUNK, active, free_ids)

    def _decode(self, sequences: list[_Sequence], chunk: int, active: list[_Sequence], free_ids: list[int]) -> None:
        """Decode up to `chunk` pending tokens of each sequence; sample after each finished prompt or token."""
        batch = self._batch
        batch.n_tokens = 0
        sampled: list[tuple[_Sequence, int]] = []  # (sequence, its row in the batch)
        prefilled: list[_Sequence] = []  # prefills whose prompt is all in after this batch
        taken: list[tuple[_Sequence, list[int]]] = []
        for sequence in sequences:
            tokens = sequence.pending[: _take(len(sequence.pending), chunk)]
            for offset, token in enumerate(tokens):
                row = batch.n_tokens
                batch.token[row] = token
                batch.pos[row] = sequence.pos + offset
                batch.n_seq_id[row] = 1
                batch.seq_id[row][0] = sequence.seq_id
                batch.logits[row] = False
                batch.n_tokens += 1
            del sequence.pending[: len(tokens)]
            taken.append((sequence, tokens))
            if not sequence.pending and sequence.reply.prefill:
                prefilled.append(sequence)
            elif not sequence.pending:  # all it had is in: its next token comes from this row
                sequence.started = True
                batch.logits[batch.n_tokens - 1] = True
                sampled.append((sequence, batch.n_tokens - 1))
        BATCH_TOKENS.observe(batch.n_tokens)
        status = llama_cpp.llama_decode(self._ctx, batch)
        if status != 0:
            # The batch did not go in: its sequences are in an unknown state and leave.
            error = RuntimeError(f"llama_decode failed ({status}) for a batch of {batch.n_tokens} tokens")
            for sequence in sequences:
                sequence.reply.out.put(error)
                self._drop(sequence, active, free_ids, keep=False)
            return
        for sequence, tokens in taken:  # now in its cells: a later prompt may reuse them
            # Only its own prompt chunks count as exact: rows of several sequences in one
            # batch (however many) were never compared with a fresh prompt's.
            if len(tokens) >= EXACT_ROWS and sequence.exact == len(sequence.cached):
                sequence.exact += len(tokens)
            sequence.cached += tokens
        for sequence in prefilled:
            self._prefilled(sequence, active, free_ids)
        for sequence, row in sampled:
            token = llama_cpp.llama_sampler_sample(sequence.sampler, self._ctx, row)
            delta = self._advance(sequence, token)
            if delta is not None:
                sequence.reply.out.put(delta)
                if delta.finish_reason:
                    self._drop(sequence, active, free_ids)

    @staticmethod
    def _skip(reply: _Reply) -> None:
        """A prefill that came while other replies are decoded is not read: it uses idle time only.

        Its few tokens cost a step of their own (the weights read once more: ~70 ms on two CPU cores
        for 4 tokens, against ~30 for a generating token), which every reply being generated would
        wait for, and the reply it prepares saves less than that (docs/benchmarks.md)."""
        PREFILLS.labels("skipped").inc()
        reply.out.put(Delta("", 0, PREFILL, 0))
        reply.dropped.set()

    def _prefilled(self, sequence: _Sequence, active: list[_Sequence], free_ids: list[int]) -> None:
        """A prefill's prompt is in its KV stream: it leaves, its cells kept for the reply to come."""
        PREFILLS.labels("read").inc()
        sequence.reply.out.put(Delta("", 0, PREFILL, sequence.prompt_tokens))
        self._drop(sequence, active, free_ids)

    def _advance(self, sequence: _Sequence, token: int) -> Delta | None:
        """Take a sampled token: the text it lets out, and whether the reply is over
        (end-of-generation token, a stop string, or the token limit)."""
        if llama_cpp.llama_vocab_is_eog(self._vocab, token):
            return self._finish(sequence, len(sequence.text), "stop")
        sequence.completion += 1
        sequence.text += self._token_bytes(token)
        # A stop can only begin in the part not yet released (the rest held back for it).
        starts = (sequence.text.find(stop, max(0, sequence.sent - len(stop))) for stop in sequence.stops)
        found = [i for i in starts if i >= 0]
        if found:
            return self._finish(sequence, min(found), "stop")
        if sequence.completion >= sequence.room or (
            # As `create_completion` does: a character split across tokens is finished first.
            sequence.completion >= sequence.max_tokens and not _split_character(sequence.text)
        ):
            return self._finish(sequence, len(sequence.text), "length")
        sequence.pending.append(token)
        # Hold back an ending that may be the start of a stop string.
        end = len(sequence.text) - self._stop_prefix(sequence)
        text = self._release(sequence, end)
        return Delta(text, sequence.completion) if text else None

    def _finish(self, sequence: _Sequence, end: int, reason: str) -> Delta:
        text = self._release(sequence, end) + sequence.decoder.decode(b"", final=True)
        return Delta(text, sequence.completion, reason, sequence.prompt_tokens)

    @staticmethod
    def _release(sequence: _Sequence, end: int) -> str:
        """Bytes up to `end` as text; a character split across tokens waits in the decoder."""
        if end <= sequence.sent:
            return ""
        text = sequence.decoder.decode(bytes(sequence.text[sequence.sent : end]))
        sequence.sent = end
        return text

    @staticmethod
    def _stop_prefix(sequence: _Sequence) -> int:
        text = sequence.text
        longest = 0
        for stop in sequence.stops:
            for size in range(min(len(stop), len(text) - sequence.sent), longest, -1):
                if text.endswith(stop[:size]):
                    longest = size
                    break
        return longest

    def _token_bytes(self, token: int) -> bytes:
        size = llama_cpp.llama_token_to_piece(self._vocab, token, self._piece, len(self._piece), 0, False)
        if size < 0:  # a piece longer than the buffer
            self._piece = ctypes.create_string_buffer(-size)
            size = llama_cpp.llama_token_to_piece(self._vocab, token, self._piece, len(self._piece), 0, False)
        return self._piece.raw[:size]


def _take(pending: int, chunk: int) -> int:
    """Tokens of `pending` to decode now, at most `chunk`, leaving none or at least
    EXACT_ROWS for the next batch, so every prompt chunk rounds as one batch would."""
    if pending <= chunk:
        return pending
    return chunk if pending - chunk >= EXACT_ROWS else pending - EXACT_ROWS


def _common_prefix(cached: list[int], prompt: list[int]) -> int:
    """How many leading tokens the two share."""
    for i, (a, b) in enumerate(zip(cached, prompt, strict=False)):
        if a != b:
            return i
    return min(len(cached), len(prompt))


def _split_character(text: bytearray) -> bool:
    """Whether `text` ends inside a multi-byte UTF-8 character."""
    for back in range(1, min(4, len(text)) + 1):
        byte = text[-back]
        if byte & 0xC0 != 0x80:  # the last lead byte (or an ASCII one)
            size = 2 if byte & 0xE0 == 0xC0 else 3 if byte & 0xF0 == 0xE0 else 4 if byte & 0xF8 == 0xF0 else 1
            return size > back
    return False


_STOP: Any = object()
