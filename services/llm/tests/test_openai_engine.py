"""The openai engine against llama-cpp-python's own OpenAI-compatible server."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator

import pytest

from parley_llm.catalogue import CATALOGUE, DEFAULT_MODEL, model_file
from parley_llm.engines.base import ChatMessage
from parley_llm.engines.openai_compat import OpenAICompatibleGenerator


@pytest.fixture(scope="module")
def server_url() -> Iterator[str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "llama_cpp.server",
            "--model",
            str(model_file(CATALOGUE[DEFAULT_MODEL])),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--n_ctx",
            "1024",
            "--model_alias",
            "parley",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}/v1"
    try:
        for _ in range(300):
            try:
                with urllib.request.urlopen(f"{url}/models", timeout=1):
                    break
            except OSError:
                if process.poll() is not None:
                    pytest.fail("llama_cpp.server exited")
                time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        process.wait(30)


QUESTION = [ChatMessage("system", "Answer briefly."), ChatMessage("user", "What is the capital of France?")]


@pytest.mark.parametrize("prompt_format", ["transcript", "chat"])
def test_replies_stream_from_the_server(server_url: str, prompt_format: str) -> None:
    generator = OpenAICompatibleGenerator(server_url, "", "parley", prompt_format, 30)
    deltas = list(generator.stream(QUESTION, max_tokens=24, temperature=0.0))
    assert deltas, "no deltas"
    assert deltas[-1].finish_reason in {"stop", "length"}
    assert [d.completion_tokens for d in deltas] == sorted(d.completion_tokens for d in deltas)


def test_closing_the_stream_early_leaves_the_server_usable(server_url: str) -> None:
    generator = OpenAICompatibleGenerator(server_url, "", "parley", "transcript", 30)
    stream = generator.stream(QUESTION, max_tokens=200, temperature=0.7)
    next(stream)
    stream.close()  # what a barge-in does
    started = time.perf_counter()
    assert list(generator.stream(QUESTION, max_tokens=8, temperature=0.0))
    assert time.perf_counter() - started < 10
