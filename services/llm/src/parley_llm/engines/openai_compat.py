"""Any OpenAI-compatible HTTP server as the conversation model.

For operators who prefer an API model or a separate inference server (vLLM,
llama.cpp's server, llama-cpp-python's server, a hosted API). `chat` prompts
use /v1/chat/completions; `transcript` prompts (base models) use
/v1/completions with the same dialogue format the local engine uses.
Closing the stream closes the HTTP response, which stops a well-behaved
server generating.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from openai import OpenAI

from parley_llm.engines.base import ChatMessage, Delta, nothing_prefilled
from parley_llm.prompt import TRANSCRIPT_STOPS, transcript


class OpenAICompatibleGenerator:
    def __init__(self, base_url: str, api_key: str, model: str, prompt_format: str, timeout_s: float) -> None:
        self.client = OpenAI(base_url=base_url, api_key=api_key or "none", timeout=timeout_s, max_retries=1)
        self.model = model
        self.chat = prompt_format != "transcript"

    def prefill(self, messages: list[ChatMessage], max_tokens: int) -> Iterator[Delta]:
        return nothing_prefilled()  # the server keeps its own cache, if any

    def stream(self, messages: list[ChatMessage], max_tokens: int, temperature: float) -> Iterator[Delta]:
        stream: Any
        if self.chat:
            stream = self.client.chat.completions.create(
                model=self.model,
                messages=[{"role": m.role, "content": m.content} for m in messages],  # type: ignore[misc]
                max_tokens=max_tokens,
                temperature=temperature,
                stream=True,
            )
        else:
            stream = self.client.completions.create(
                model=self.model,
                prompt=transcript(messages),
                max_tokens=max_tokens,
                temperature=temperature,
                stop=TRANSCRIPT_STOPS[:4],  # the API allows at most four
                stream=True,
            )
        produced = 0
        try:
            for chunk in stream:
                if not chunk.choices:
                    continue
                choice = chunk.choices[0]
                text = (choice.delta.content or "") if self.chat else (choice.text or "")
                produced += 1 if text else 0
                if choice.finish_reason:
                    yield Delta(text, produced, choice.finish_reason)
                    return
                if text:
                    yield Delta(text, produced)
        finally:
            stream.close()
