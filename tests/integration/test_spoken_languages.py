"""Spoken questions in French, German, Spanish and English, through the real stack.

The question is recognised in its language (the multilingual Whisper base model, detecting among
en, fr, de and es), the reply is made in it, and the reply's speech request carries that language:
each TTS instance counts what it speaks in `parley_tts_requests_total{method, engine, language}`.

The stack is `make run`'s (its TTS instance runs Piper only), beside a second TTS instance running
Piper and FireRedTTS2 on the tiny random-weight model (services/tts/tests/tiny_fireredtts2.py) on
CPU: FireRedTTS2's built-in voice speaks French and German, Piper's joe English only, and no
voice speaks Spanish: a Spanish reply comes as text, with a `voice_unavailable` notice naming
Spanish, and no speech request at all.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import unicodedata
from collections.abc import Iterator
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conversation_client import ConversationClient
from tests.speech import silence, speak
from tests.stack import ROOT, Stack, free_port, start_stack

pytestmark = pytest.mark.integration

STARTUP_S = 120


@dataclass(frozen=True)
class Question:
    language: str
    espeak_voice: str
    text: str
    key_words: tuple[str, ...]  # normalised words the transcript must have
    engine: str | None  # the engine the reply must be spoken by; None: no voice speaks the language


# Short questions the base model gets right from espeak-ng's voices (checked by running them; its
# detection on espeak-ng's French is the weakest, and this question is one it reliably hears as French).
QUESTIONS = (
    Question("fr", "fr", "Je voudrais un café, s'il vous plaît, c'est possible ?", ("cafe", "possible"), "fireredtts2"),
    Question("de", "de", "Guten Morgen, wie geht es Ihnen heute?", ("guten", "morgen", "wie", "geht"), "fireredtts2"),
    Question("es", "es", "Buenos días, ¿cómo estás?", ("buenos", "dias", "como", "estas"), None),
    Question("en", "en-us", "How many days are there in a week?", ("how", "many", "days", "week"), "piper"),
)


@dataclass
class SpokenStack:
    stack: Stack
    metrics_urls: tuple[str, ...]  # every TTS instance's /metrics


def words(text: str) -> list[str]:
    """Lowercase words without accents or punctuation ("¿Cómo estás?" -> ["como", "estas"])."""
    plain = unicodedata.normalize("NFKD", text.lower())
    plain = "".join(char for char in plain if not unicodedata.combining(char))
    return re.findall(r"[a-z]+", plain)


def speech_requests(metrics_urls: tuple[str, ...]) -> dict[tuple[str, str], float]:
    """(engine, language) -> Speak requests the TTS instances accepted, summed over the instances."""
    counted: dict[tuple[str, str], float] = {}
    for url in metrics_urls:
        for family in text_string_to_metric_families(httpx.get(url).text):
            for sample in family.samples:
                if sample.name == "parley_tts_requests_total" and sample.labels["method"] == "Speak":
                    key = (sample.labels["engine"], sample.labels["language"])
                    counted[key] = counted.get(key, 0) + sample.value
    return counted


def wait_for_fireredtts2(stack: Stack, process: subprocess.Popen[bytes], log: Path) -> None:
    """Until the gateway routes to the FireRedTTS2 instance (it registers through NATS)."""
    deadline = time.monotonic() + STARTUP_S
    found: dict[str, Any] = {}
    while time.monotonic() < deadline and process.poll() is None:
        with suppress(httpx.HTTPError):
            found = httpx.get(f"{stack.url}/v1/services").json()
            if any(
                "fireredtts2" in i["engines"] and i["ready"] and i["serving"] and not i["stopping"]
                for i in found.get("tts", [])
            ):
                return
        time.sleep(0.2)
    raise AssertionError(
        f"the FireRedTTS2 instance is not routable: {found}\n{log.read_text(errors='replace')[-3000:]}"
    )


@pytest.fixture(scope="module")
def spoken(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SpokenStack]:
    state_dir = tmp_path_factory.mktemp("spoken-languages")
    try:
        stack = start_stack(
            state_dir,
            extra_env={
                "PARLEY_ASR_MODEL": "base",
                "PARLEY_ASR_DETECT_LANGUAGES": "en,fr,de,es",
                "PARLEY_GATEWAY_LLM_MAX_TOKENS": "12",  # a short reply is enough to see its language spoken
                "PARLEY_GATEWAY_DISCOVERY_INTERVAL_S": "0.5",
            },
        )
    except RuntimeError as exc:
        pytest.fail(str(exc))
    metrics_port, log = free_port(), state_dir / "fireredtts2.log"
    with log.open("ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "services.tts.tests.tiny_fireredtts2", str(state_dir / "fireredtts2"), "400"],
            env={
                **os.environ,
                "PARLEY_NATS_URL": stack.nats_url,
                "PARLEY_STATE_DIR": str(state_dir),
                "PARLEY_TTS_PORT": str(free_port()),
                "PARLEY_TTS_METRICS_PORT": str(metrics_port),
                "PARLEY_TTS_INSTANCES": "1",
                "PARLEY_TTS_ENGINES": "piper,fireredtts2",
                "PARLEY_TTS_FIREREDTTS2_ALLOW_CPU": "true",
                "PARLEY_TTS_FIREREDTTS2_DEVICE": "cpu",
                "PARLEY_TTS_FIREREDTTS2_FRAME_LIMIT": "400",  # the tiny model's: a prompt and a sentence fit
                "PARLEY_TTS_FIREREDTTS2_MAX_FRAMES": "10",  # random weights never stop by themselves
            },
            stdout=out,
            stderr=out,
            cwd=ROOT,
        )
    try:
        wait_for_fireredtts2(stack, process, log)
        yield SpokenStack(
            stack,
            (f"http://127.0.0.1:{stack.ports['tts_metrics']}/metrics", f"http://127.0.0.1:{metrics_port}/metrics"),
        )
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
        stack.stop()


@pytest.mark.parametrize("question", QUESTIONS, ids=[q.language for q in QUESTIONS])
async def test_a_spoken_question_is_heard_in_its_language_and_answered_in_it(
    spoken: SpokenStack, question: Question
) -> None:
    before = speech_requests(spoken.metrics_urls)
    async with ConversationClient(spoken.stack.ws_url, input_sample_rate=16000) as conv:
        audio = speak(question.text, voice=question.espeak_voice)
        await conv.stream_audio(silence(0.5) + audio + silence(1.5), realtime=True)
        final = await conv.wait_for("transcript.final", timeout_s=30)
        done = await conv.wait_for("response.done", timeout_s=90)

    assert final["language"] == question.language, final
    assert 0 < final["language_probability"] <= 1, final
    heard = words(final["text"])
    assert all(word in heard for word in question.key_words), (question.key_words, final["text"])
    assert done["status"] == "completed", (done, conv.received.of_type("error"))
    unavailable = [e for e in conv.received.of_type("error") if e["code"] == "voice_unavailable"]
    # The reply's Speak request carried the language, to a voice of the engine that speaks it. An
    # instance counts a request when it accepts it: the reply has ended by now.
    after = speech_requests(spoken.metrics_urls)
    grown = {key: after[key] - before.get(key, 0) for key in after if after[key] != before.get(key, 0)}
    if question.engine is None:
        # No voice speaks it: the reply is text only, the client is told which language lacks one.
        assert [e["language"] for e in unavailable] == [question.language], unavailable
        assert done["text"] and not conv.received.audio_bytes() and grown == {}, (done, grown)
        return
    assert not unavailable
    assert conv.received.audio_bytes(), "the reply was not spoken"
    assert grown == {(question.engine, question.language): 1}, grown
