"""How the llama.cpp engine prompts each kind of model: its chat template, or a transcript with stops."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from parley_llm.engines import llama_cpp
from parley_llm.engines.base import ChatMessage
from parley_llm.prompt import TRANSCRIPT_STOPS, transcript

CONVERSATION = [ChatMessage("system", "Be brief."), ChatMessage("user", "What's the capital of France?")]


class FakeLlama:
    """Stands in for llama_cpp.Llama: records how it was asked, answers "Paris." in two pieces."""

    def __init__(self, model_path: str, **options: Any) -> None:
        self.metadata: dict[str, str] = dict(TEMPLATES.get(Path(model_path).name, {}))
        self.calls: list[tuple[str, Any, dict[str, Any]]] = []

    def tokenize(self, text: bytes, add_bos: bool = True) -> list[int]:
        return list(range(len(text.split())))

    def create_chat_completion(self, messages: list[dict[str, str]], **options: Any) -> Iterator[dict[str, Any]]:
        self.calls.append(("chat", messages, options))
        yield {"choices": [{"delta": {"role": "assistant"}, "finish_reason": None}]}
        yield {"choices": [{"delta": {"content": "Paris"}, "finish_reason": None}]}
        yield {"choices": [{"delta": {"content": "."}, "finish_reason": "stop"}]}

    def create_completion(self, prompt: str, **options: Any) -> Iterator[dict[str, Any]]:
        self.calls.append(("completion", prompt, options))
        yield {"choices": [{"text": " Paris", "finish_reason": None}]}
        yield {"choices": [{"text": ".", "finish_reason": "stop"}]}


TEMPLATES = {"instruct.gguf": {"tokenizer.chat_template": "{{ messages }}"}, "base.gguf": {}}


@pytest.fixture
def models(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(llama_cpp, "Llama", FakeLlama)
    for name in TEMPLATES:
        (tmp_path / name).write_bytes(b"GGUF")
    return tmp_path


def reply(generator: llama_cpp.LlamaCppGenerator) -> str:
    return "".join(delta.text for delta in generator.stream(CONVERSATION, max_tokens=16, temperature=0.0))


@pytest.mark.parametrize("prompt_format", ["chat", "auto"])
def test_an_instruct_model_is_prompted_through_its_chat_template(models: Path, prompt_format: str) -> None:
    generator = llama_cpp.LlamaCppGenerator(models / "instruct.gguf", prompt_format, 512, 1, 0)
    assert reply(generator) == "Paris."
    llm: FakeLlama = generator.llm  # type: ignore[assignment]
    [(kind, messages, options)] = llm.calls
    assert kind == "chat"
    assert messages == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What's the capital of France?"},
    ]
    assert "stop" not in options, "the template's own end token ends the reply"


@pytest.mark.parametrize(("file", "prompt_format"), [("base.gguf", "auto"), ("instruct.gguf", "transcript")])
def test_a_base_model_continues_a_transcript_until_the_next_speaker(
    models: Path, file: str, prompt_format: str
) -> None:
    generator = llama_cpp.LlamaCppGenerator(models / file, prompt_format, 512, 1, 0)
    assert reply(generator) == " Paris."
    llm: FakeLlama = generator.llm  # type: ignore[assignment]
    [(kind, prompt, options)] = llm.calls
    assert kind == "completion"
    assert prompt == transcript(CONVERSATION)
    assert options["stop"] == TRANSCRIPT_STOPS
