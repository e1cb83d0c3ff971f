"""A spoken question through the real stack, as the browser would send it."""

from __future__ import annotations

import json
import re
import urllib.request
from html.parser import HTMLParser
from pathlib import PurePosixPath
from urllib.parse import urljoin, urlsplit

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conversation_client import ConversationClient
from tests.speech import rms, silence, speak
from tests.stack import Stack

pytestmark = pytest.mark.integration

ORDER = [
    "session.started",
    "vad.speech_started",
    "vad.speech_stopped",
    "transcript.final",
    "response.created",
    "response.text.delta",
    "response.audio.started",
    "response.audio.done",
    "response.done",
]


def first_index(types: list[str], wanted: str) -> int:
    assert wanted in types, f"no {wanted} in {types}"
    return types.index(wanted)


def llm_prefills(stack: Stack) -> float:
    """The prefills the LLM service read, by its own metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{stack.ports['llm_metrics']}/metrics") as response:
        text = response.read().decode()
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "parley_llm_prefill_seconds_count"
    )


async def test_spoken_question_gets_a_spoken_answer(stack: Stack) -> None:
    question = speak("What is the capital city of France?")
    prefills_before = llm_prefills(stack)
    async with ConversationClient(stack.ws_url, input_sample_rate=16000) as conv:
        assert conv.session["session_id"].startswith("sess_")
        rate = conv.session["output_sample_rate"]
        await conv.stream_audio(silence(0.5) + question + silence(1.5), realtime=True)
        done = await conv.wait_for("response.done", timeout_s=60)

    types = conv.received.types()
    indices = [first_index(types, t) for t in ORDER]
    assert indices == sorted(indices), f"events out of order: {types}"
    heard = conv.received.of_type("transcript.final")[0]
    final = heard["text"].lower()
    assert "capital" in final and "france" in final, final
    assert 0 < heard["confidence"] <= 1, heard  # how sure the recogniser was of its words
    reply_text = "".join(e["text"] for e in conv.received.of_type("response.text.delta"))
    assert reply_text.strip(), "the LLM said nothing"
    audio = conv.received.audio_bytes()
    assert len(audio) / 2 / rate >= 0.5, f"reply audio is only {len(audio) / 2 / rate:.2f} s"
    assert rms(audio) > 0.01, "reply audio is silence"
    # Binary audio arrives between audio.started and audio.done.
    started, finished = conv.arrival("response.audio.started"), conv.arrival("response.audio.done")
    assert all(started <= t <= finished for t, _ in conv.received.audio)
    assert done["status"] == "completed"
    timings = done["timings"]
    # The VAD waited its end-of-turn silence (500 ms by default, in 32 ms frames), or, when its turn
    # model judged the question complete at the pause, the pause's (200 ms). A turn whose words came
    # only after the silence (a loaded machine) waits for them, and an unsure one for more speech:
    # never before the silence rule, never past the 1.2 s cap (and words that came late).
    if timings["turn_end"] == "end_of_turn":
        assert 180 <= timings["vad_silence_ms"] <= 300, timings
    else:
        assert timings["turn_end"] in {"silence", "max_silence", "doubtful"}, timings
        assert 480 <= timings["vad_silence_ms"] <= 1600, timings
    # No audio leaves before the transcript and the first token; the reply ends after its first audio.
    assert max(timings["asr_ms"], timings["llm_first_token_ms"]) <= timings["first_audio_sent_ms"], timings
    assert timings["first_audio_sent_ms"] <= timings["total_ms"], timings
    # The gateway's clock agrees with what the client saw: from the end of the turn (when
    # vad.speech_stopped left) to the first audio byte, give or take the socket's delivery.
    client_ms = (conv.received.audio[0][0] - conv.arrival("vad.speech_stopped")) * 1000
    assert abs(client_ms - timings["first_audio_sent_ms"]) < 100, (client_ms, timings)
    # While the question was spoken its partial transcripts were read into the LLM's cache.
    assert llm_prefills(stack) > prefills_before


async def test_typed_turn_and_history(stack: Stack) -> None:
    questions = ["Hello, who are you?", "Say that again please."]
    async with ConversationClient(stack.ws_url) as conv:
        replies = []
        for question in questions:
            seen = len(conv.received.events)
            await conv.send_event({"type": "text.input", "text": question})
            done = await conv.wait_for("response.done", timeout_s=60, after=seen)
            assert done["status"] == "completed", done
            deltas = [e for _, e in conv.received.events[seen:] if e["type"] == "response.text.delta"]
            assert "".join(e["text"] for e in deltas).strip() == done["text"] != "", (deltas, done)
            replies.append(done)
        resume = {"session_id": conv.session["session_id"], "resume_token": conv.session["resume_token"]}
    assert replies[0]["response_id"] != replies[1]["response_id"]
    assert len(conv.received.audio_bytes()) > 0
    # The history as the server keeps it (a resumed session is given it): both turns, in order.
    async with ConversationClient(stack.ws_url, **resume) as again:
        assert again.session["resumed"] is True, again.session
        history = again.session["history"]
    assert history == [
        {"role": "user", "content": questions[0]},
        {"role": "assistant", "content": replies[0]["text"]},
        {"role": "user", "content": questions[1]},
        {"role": "assistant", "content": replies[1]["text"]},
    ], history


def test_health_readiness_and_metrics(stack: Stack) -> None:
    with urllib.request.urlopen(f"{stack.url}/healthz") as response:
        assert json.load(response) == {"status": "ok"}
    with urllib.request.urlopen(f"{stack.url}/readyz") as response:
        assert response.status == 200
    with urllib.request.urlopen(f"{stack.url}/metrics") as response:
        text = response.read().decode()
    assert "parley_gateway_stage_seconds_bucket" in text
    with urllib.request.urlopen(f"{stack.url}/v1/services") as response:
        services = json.load(response)
    for kind in ("vad", "asr", "llm", "tts"):
        assert services[kind] and services[kind][0]["ready"], services
    with urllib.request.urlopen(f"http://127.0.0.1:{stack.ports['tts_metrics']}/metrics") as response:
        assert "parley_ready" in response.read().decode()


class _Assets(HTMLParser):
    """What a page makes the browser load: its scripts and stylesheets."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        url = found.get("src") if tag == "script" else found.get("href") if tag == "link" else None
        if url and not url.startswith("data:"):
            self.urls.append(url)


# A module's imports: `import ... from '…'`, `export ... from '…'`, `import '…'`, `import('…')`.
_IMPORTS = re.compile(
    r"""^\s*(?:import|export)\b[^'"`;]*?\bfrom\s*['"]([^'"]+)['"]|^\s*import\s*['"]([^'"]+)['"]"""
    r"""|\bimport\(\s*['"]([^'"]+)['"]\s*\)""",
    re.MULTILINE,
)
CONTENT_TYPES = {".js": ("text/javascript", "application/javascript"), ".css": ("text/css",)}


def test_the_page_and_all_it_loads_are_served_under_a_proxy_path(stack: Stack) -> None:
    """The page, its stylesheet and every module its scripts import, as a browser would fetch them.

    Seen through a proxy that mounts the gateway at /some/prefix/: every URL must stay under it
    (relative), and answer with the content type a browser accepts for it.
    """
    prefix = "/some/prefix/"
    page_url = f"http://proxy.example{prefix}"

    def fetch(url: str) -> tuple[str, str]:
        path = urlsplit(url).path
        assert path.startswith(prefix), f"{url} leaves the proxy path {prefix}"
        with urllib.request.urlopen(f"{stack.url}/{path.removeprefix(prefix)}") as response:
            assert response.status == 200, url
            return response.headers.get_content_type(), response.read().decode()

    kind, page = fetch(page_url)
    assert kind == "text/html", kind
    assets = _Assets()
    assets.feed(page)
    assert any(url.endswith(".js") for url in assets.urls), assets.urls
    todo = [urljoin(page_url, url) for url in assets.urls]
    served: dict[str, str] = {}
    while todo:
        url = todo.pop()
        if url in served:
            continue
        suffix = PurePosixPath(urlsplit(url).path).suffix
        kind, body = fetch(url)
        served[url] = kind
        assert kind in CONTENT_TYPES.get(suffix, (kind,)), (url, kind)
        if suffix == ".js":
            todo += [urljoin(url, next(filter(None, m.groups()))) for m in _IMPORTS.finditer(body)]
    modules = [url for url in served if url.endswith(".js")]
    assert len(modules) > 1, f"no module imports another: {modules}"
