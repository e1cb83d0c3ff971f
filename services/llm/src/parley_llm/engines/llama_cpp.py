"""GGUF models through llama-cpp-python."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

from llama_cpp import Llama

from parley_llm.engines.base import ChatMessage, Delta, nothing_prefilled
from parley_llm.prompt import TRANSCRIPT_STOPS, fit_history, transcript

log = logging.getLogger(__name__)


def default_threads() -> int:
    """One per core, at most 4: the first words of a reply are on the voice-to-voice path."""
    return max(1, min(4, len(os.sched_getaffinity(0))))


class LlamaCppGenerator:
    def __init__(self, path: Path, prompt_format: str, context_tokens: int, threads: int, gpu_layers: int) -> None:
        """prompt_format: chat, transcript, or auto (chat when the GGUF carries a chat template)."""
        if not path.is_file():
            raise FileNotFoundError(f"GGUF model not found at {path}")
        self.llm = Llama(
            model_path=str(path),
            n_ctx=context_tokens,
            n_threads=threads or default_threads(),
            n_gpu_layers=gpu_layers,
            verbose=False,
        )
        has_template = "tokenizer.chat_template" in self.llm.metadata
        self.chat = prompt_format == "chat" or (prompt_format == "auto" and has_template)
        self.context_tokens = context_tokens
        log.info("%s: %s prompts", path.name, "chat-template" if self.chat else "transcript")

    def _count(self, messages: list[ChatMessage]) -> int:
        return len(self.llm.tokenize(transcript(messages).encode(), add_bos=True))

    def prefill(self, messages: list[ChatMessage], max_tokens: int) -> Iterator[Delta]:
        return nothing_prefilled()  # `Llama` reuses its last prompt by itself; reading another here would evict it

    def stream(self, messages: list[ChatMessage], max_tokens: int, temperature: float) -> Iterator[Delta]:
        messages = fit_history(messages, self.context_tokens - max_tokens, self._count)
        chunks: Iterator[Any]
        if self.chat:
            chunks = cast(
                Iterator[Any],
                self.llm.create_chat_completion(
                    messages=[{"role": m.role, "content": m.content} for m in messages],  # type: ignore[misc]
                    max_tokens=max_tokens,
                    temperature=temperature,
                    stream=True,
                ),
            )
        else:
            prompt = transcript(messages)
            chunks = cast(
                Iterator[Any],
                self.llm.create_completion(
                    prompt, max_tokens=max_tokens, temperature=temperature, stop=TRANSCRIPT_STOPS, stream=True
                ),
            )
        produced = 0
        try:
            for chunk in chunks:
                choice = chunk["choices"][0]
                text = (choice["delta"].get("content") or "") if self.chat else choice["text"]
                produced += 1 if text else 0
                if choice.get("finish_reason"):
                    yield Delta(text, produced, choice["finish_reason"], self._count(messages))
                    return
                if text:
                    yield Delta(text, produced)
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()  # stops llama.cpp mid-reply on barge-in
