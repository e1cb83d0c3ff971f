"""The web app in a real (headless) Chromium against the real stack, with a fake microphone.

Playwright drives Debian's /usr/bin/chromium; the microphone is a spoken WAV made at test time
(Chromium plays it in a loop as the capture device). Every check reads the page's own state
(data attributes the pages set), never a sleep. Screenshots of every page go to
test-artifacts/screenshots/ (ignored by git); no test may leave a console error behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import soundfile
from playwright.async_api import (
    Browser,
    ConsoleMessage,
    Page,
    WebSocket,
    WebSocketRoute,
    async_playwright,
    expect,
)

from tests.speech import silence, speak, wav_bytes
from tests.stack import ROOT, Stack, free_port, listening_process

pytestmark = pytest.mark.integration

CHROMIUM = "/usr/bin/chromium"
SCREENSHOTS = ROOT / "test-artifacts" / "screenshots"
QUESTION = "What is the capital of France?"
OWN_NAME = "parley.test"  # a name the operator gave the gateway (PARLEY_GATEWAY_ALLOWED_HOSTS)
REBOUND_NAME = "evil.test"  # an attacker's name, re-resolved to this machine after its page loaded
REFERENCE_TEXT = "The quick brown fox jumps over the lazy dog, then runs into the forest."


@pytest.fixture(scope="module")
def microphone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One spoken question, then silence long enough for the reply (Chromium loops the file)."""
    path = tmp_path_factory.mktemp("mic") / "question.wav"
    path.write_bytes(wav_bytes(silence(1.0) + speak(QUESTION) + silence(25.0)))
    return path


def chromium_args(microphone: Path, *extra: str) -> list[str]:
    return [
        "--no-sandbox",
        "--disable-background-networking",
        "--disable-component-update",
        "--no-first-run",
        "--autoplay-policy=no-user-gesture-required",
        "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={microphone}",
        *extra,
    ]


@pytest.fixture(scope="module")
async def browser(microphone: Path) -> AsyncIterator[Browser]:
    if not shutil.which(CHROMIUM):
        pytest.fail("Chromium is missing: apt-get install -y chromium (.ci/run does)")
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=chromium_args(microphone)
        )
        yield launched
        await launched.close()


async def connect_push_to_talk(page: Page) -> None:
    """On the talk page: push-to-talk (the looping fake microphone stays out of it), Connect, connected."""
    await page.get_by_label("Turn taking").select_option("push_to_talk")
    await page.get_by_role("button", name="Connect").click()
    await expect(page.get_by_test_id("status")).to_have_attribute("data-state", "connected", timeout=30_000)


async def open_page(page: Page, name: str) -> None:
    """Go to a page and wait until its module is loaded (its controls work only from then on)."""
    await page.goto(f"/#{name}")
    await expect(page.locator("body")).to_have_attribute("data-ready", name, timeout=20_000)


class PageErrors:
    def __init__(self, page: Page) -> None:
        self.messages: list[str] = []
        page.on("console", self._console)
        page.on("pageerror", lambda error: self.messages.append(f"page error: {error}"))

    def _console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            self.messages.append(message.text)


@pytest.fixture
async def page(browser: Browser, stack: Stack, request: pytest.FixtureRequest) -> AsyncIterator[Page]:
    context = await browser.new_context(base_url=stack.url, accept_downloads=True)
    opened = await context.new_page()
    errors = PageErrors(opened)
    yield opened
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    await opened.screenshot(path=str(SCREENSHOTS / f"{request.node.name}.png"), full_page=True)
    await context.close()
    assert errors.messages == [], errors.messages


async def test_a_spoken_turn_through_the_page(page: Page) -> None:
    await open_page(page, "talk")
    await page.get_by_role("button", name="Connect").click()
    await expect(page.get_by_test_id("status")).to_have_attribute("data-state", "connected", timeout=30_000)
    user = page.get_by_test_id("user-message").first
    await expect(user).to_contain_text("capital", timeout=60_000)
    reply = page.get_by_test_id("assistant-message").first
    await expect(reply).to_have_attribute("data-played", "true", timeout=90_000)  # its audio played to the end
    assert (await reply.inner_text()).strip()
    await expect(page.get_by_test_id("timings").first).to_be_visible()
    await page.get_by_role("button", name="Disconnect").click()


async def test_the_main_controls_are_labelled_and_reachable_by_keyboard(page: Page) -> None:
    await open_page(page, "talk")
    for label in ("Turn taking", "Message", "Voice", "Personality (system prompt)"):
        await expect(page.get_by_label(label, exact=True)).to_have_count(1)
    connect = page.get_by_role("button", name="Connect")
    for _ in range(20):
        await page.keyboard.press("Tab")
        if await connect.evaluate("button => document.activeElement === button"):
            break
    else:
        pytest.fail("Tab never reaches the Connect button")
    await page.get_by_role("link", name="Voices").focus()
    await page.keyboard.press("Enter")
    await expect(page.locator('[data-page="voices"]')).to_be_visible()


async def test_voice_studio_upload_check_save_list_delete(page: Page, stack: Stack) -> None:
    await open_page(page, "voices")
    studio = page.locator('[data-page="voices"]')
    await expect(studio.locator('tr[data-voice="joe"]')).to_be_visible(timeout=20_000)
    await expect(page.get_by_test_id("cloning-notice")).to_be_visible()  # the CPU default cannot clone

    not_audio = {"name": "notes.wav", "mimeType": "audio/wav", "buffer": b"these are just words\n" * 40}
    await page.get_by_test_id("voice-file").set_input_files(not_audio)  # type: ignore[arg-type]
    await expect(page.get_by_test_id("voice-check")).to_contain_text("not audio")
    await expect(page.get_by_test_id("voice-save")).to_be_disabled()

    reference = {"name": "reference.wav", "mimeType": "audio/wav", "buffer": wav_bytes(speak(REFERENCE_TEXT))}
    await page.get_by_test_id("voice-file").set_input_files(reference)  # type: ignore[arg-type]
    await expect(page.get_by_test_id("voice-check")).to_contain_text("Looks good")
    await page.get_by_label("Name").fill("Browser Voice")
    await page.get_by_label("What the recording says, word for word").fill(REFERENCE_TEXT)
    await page.get_by_test_id("voice-save").click()
    row = studio.locator("tr", has_text="Browser Voice")
    await expect(row).to_be_visible(timeout=30_000)
    await expect(row).to_contain_text("none running")
    await row.get_by_role("button", name="Delete Browser Voice").click()
    await expect(row).to_have_count(0)
    async with httpx.AsyncClient(base_url=stack.url) as http:
        listed = (await http.get("/v1/voices")).json()["voices"]
    assert not any(v["name"] == "Browser Voice" for v in listed)


async def test_dialogue_studio_generates_and_downloads_a_wav(page: Page, stack: Stack) -> None:
    await open_page(page, "dialogue")
    await page.get_by_test_id("dialogue-generate").click()
    studio = page.locator('[data-page="dialogue"]')
    await expect(studio).to_have_attribute("data-state", "done", timeout=120_000)
    await expect(page.get_by_test_id("dialogue-progress")).to_have_attribute("value", "1")
    async with page.expect_download() as download_info:
        await page.get_by_test_id("dialogue-download").click()
    download = await download_info.value
    samples, rate = soundfile.read(await download.path(), dtype="float32")
    async with httpx.AsyncClient(base_url=stack.url) as http:
        [job] = [d for d in (await http.get("/v1/dialogues")).json()["dialogues"] if d["status"] == "done"][-1:]
    assert len(job["turns"]) == 4 and abs(samples.size / rate - job["audio_s"]) < 0.01
    for turn in job["turns"]:  # audio for every line
        part = samples[int(turn["start_s"] * rate) : int(turn["end_s"] * rate)]
        assert part.size > rate // 2 and np.sqrt(np.mean(part**2)) > 0.02, turn


async def test_playground_speaks_and_downloads(page: Page) -> None:
    await open_page(page, "speech")
    await page.get_by_label("Format").select_option("wav")
    await page.get_by_test_id("speech-speak").click()
    await expect(page.locator('[data-page="speech"]')).to_have_attribute("data-state", "done", timeout=60_000)
    async with page.expect_download() as download_info:
        await page.get_by_test_id("speech-download").click()
    samples, rate = soundfile.read(await (await download_info.value).path(), dtype="float32")
    assert rate == 24000 and samples.size > rate and np.sqrt(np.mean(samples**2)) > 0.02


async def test_monitor_lists_all_four_services(page: Page) -> None:
    await open_page(page, "monitor")
    monitor = page.locator('[data-page="monitor"]')
    await expect(monitor).to_have_attribute("data-services", "vad,asr,llm,tts", timeout=30_000)
    await expect(page.get_by_test_id("monitor-live")).to_have_text("Live")
    await expect(page.get_by_test_id("monitor-system")).to_contain_text("CPU")


async def test_the_page_reconnects_after_the_gateway_restarts(browser: Browser, stack: Stack) -> None:
    """Killed gateway (supervisord restarts it): the page says so, reconnects by itself, and talks again."""
    context = await browser.new_context(base_url=stack.url)
    page = await context.new_page()
    errors = PageErrors(page)
    try:
        await open_page(page, "talk")
        await connect_push_to_talk(page)
        status = page.get_by_test_id("status")

        gateway = listening_process(stack.ports["gateway"])
        os.kill(gateway, signal.SIGKILL)
        await expect(page.get_by_test_id("errors")).to_contain_text("Connection closed", timeout=10_000)
        await expect(status).to_have_attribute("data-state", "connected", timeout=60_000)
        await page.get_by_test_id("text-input").fill("Hello again!")
        await page.get_by_test_id("send").click()
        # The reply's audio reaches the page. (Whether it is then played to its end is what the spoken-turn
        # test checks; after reconnecting under heavy CPU load that was seen to stall: see the issue notes.)
        reply = page.get_by_test_id("assistant-message").first
        await expect(reply).to_have_attribute("data-audio", "receiving", timeout=90_000)
        assert (await reply.inner_text()).strip()
    finally:
        await context.close()
    # While the gateway was down, the browser logged its failed attempts to reach it, and /readyz's
    # 503 while the new gateway was finding the services; nothing else.
    unexpected = [
        m
        for m in errors.messages
        if "ERR_CONNECTION_REFUSED" not in m and "WebSocket" not in m and "status of 503" not in m
    ]
    assert unexpected == [], unexpected


def frames_of(page: Page, event_type: str, sent: bool) -> list[dict[str, Any]]:
    """Every JSON frame of one type the page sends (`sent`) or receives, as they come (a list that fills itself)."""
    frames: list[dict[str, Any]] = []

    def watch(socket: WebSocket) -> None:
        def seen(payload: str | bytes) -> None:
            if isinstance(payload, str) and f'"{event_type}"' in payload:
                frames.append(json.loads(payload))

        socket.on("framesent" if sent else "framereceived", seen)

    page.on("websocket", watch)
    return frames


async def test_the_server_speaks_at_the_rate_the_page_plays(page: Page) -> None:
    """The page asks for its AudioContext's rate, so the server resamples once and the page not at all."""
    starts = frames_of(page, "session.start", sent=True)
    started = frames_of(page, "session.started", sent=False)
    audio_started = frames_of(page, "response.audio.started", sent=False)
    await open_page(page, "talk")
    await connect_push_to_talk(page)
    rate = await page.evaluate("() => Number(document.querySelector('[data-page=talk]').dataset.outputRate)")
    assert rate in (44100, 48000), rate  # what Chromium plays at
    assert starts[-1]["output_sample_rate"] == rate, starts
    assert started[-1]["output_sample_rate"] == rate, started
    await page.get_by_test_id("text-input").fill("Hello!")
    await page.get_by_test_id("send").click()
    await expect(page.get_by_test_id("assistant-message").first).to_have_attribute(
        "data-played", "true", timeout=90_000
    )
    assert audio_started and all(event["sample_rate"] == rate for event in audio_started), audio_started
    await page.get_by_role("button", name="Disconnect").click()


# When the first reply started to be heard and when it had been heard to its end (performance.now()).
REPLY_TIMES = """
window.replyTimes = {};
new MutationObserver((changes) => {
  for (const change of changes) window.replyTimes[change.attributeName] ??= performance.now();
}).observe(document, { subtree: true, attributeFilter: ['data-playing', 'data-played'] });
"""


async def test_a_server_that_speaks_at_another_rate_is_played_at_its_rate(page: Page) -> None:
    """A server that ignores `output_sample_rate` (an older one) speaks at its own rate: the page plays
    that audio for as long as it lasts (the browser resamples it), not sped up to the page's rate."""
    answered: list[dict[str, Any]] = []
    received_bytes = [0]

    def route(page_side: WebSocketRoute) -> None:
        server = page_side.connect_to_server()

        def to_server(message: str | bytes) -> None:
            if isinstance(message, str) and '"session.start"' in message:
                start = json.loads(message)
                start.pop("output_sample_rate", None)
                message = json.dumps(start)
            server.send(message)

        def to_page(message: str | bytes) -> None:
            if isinstance(message, bytes):
                received_bytes[0] += len(message)
            elif '"session.started"' in message:
                answered.append(json.loads(message))
            page_side.send(message)

        page_side.on_message(to_server)
        server.on_message(to_page)

    await page.route_web_socket(re.compile(r"/v1/conversation"), route)
    await page.add_init_script(REPLY_TIMES)
    await open_page(page, "talk")
    await connect_push_to_talk(page)
    page_rate = await page.evaluate("() => Number(document.querySelector('[data-page=talk]').dataset.outputRate)")
    server_rate = answered[-1]["output_sample_rate"]
    assert server_rate != page_rate, (server_rate, page_rate)
    await page.get_by_test_id("text-input").fill("Tell me about the weather in spring, in two sentences.")
    await page.get_by_test_id("send").click()
    reply = page.get_by_test_id("assistant-message").first
    await expect(reply).to_have_attribute("data-played", "true", timeout=90_000)
    times = await page.evaluate("() => window.replyTimes")
    heard_s = (times["data-played"] - times["data-playing"]) / 1000
    audio_s = received_bytes[0] / 2 / server_rate
    assert audio_s > 1 and heard_s > 0.9 * audio_s, (heard_s, audio_s)
    await page.get_by_role("button", name="Disconnect").click()


async def test_a_refused_session_start_says_why_and_can_be_tried_again(page: Page) -> None:
    """`session.start` refused (a voice the server does not have): the error shows, and Connect works again."""
    status = page.get_by_test_id("status")
    await open_page(page, "talk")
    await expect(page.get_by_test_id("voice-select").locator("option[value=joe]")).to_have_count(1, timeout=20_000)
    await page.evaluate(
        """() => { const select = document.querySelector('[data-testid=voice-select]');
            select.append(new Option('Gone', 'no-such-voice')); select.value = 'no-such-voice'; }"""
    )
    await page.get_by_label("Turn taking").select_option("push_to_talk")
    await page.get_by_role("button", name="Connect").click()
    await expect(page.get_by_test_id("errors")).to_contain_text("unknown_voice", timeout=30_000)
    await expect(status).to_have_attribute("data-state", "error")
    await expect(page.get_by_role("button", name="Connect")).to_be_enabled()
    await page.get_by_text("Voice and personality").click()
    await page.get_by_test_id("voice-select").select_option("joe")
    await page.get_by_role("button", name="Connect").click()
    await expect(status).to_have_attribute("data-state", "connected", timeout=30_000)
    await page.get_by_role("button", name="Disconnect").click()


async def test_a_page_name_that_is_not_a_page_shows_the_talk_page(page: Page) -> None:
    """`#toString` and the like (names every object has) are no pages: the talk page shows."""
    for name in ("toString", "constructor", "__proto__", "nowhere"):
        await page.goto(f"/#{name}")
        await expect(page.locator("body")).to_have_attribute("data-ready", "talk", timeout=20_000)
        await expect(page.locator('[data-page="talk"]')).to_be_visible()
        await page.goto("about:blank")


def session_starts(page: Page) -> list[dict[str, Any]]:
    """Every session.started the server sends the page, as they come (a list that fills itself)."""
    started: list[dict[str, Any]] = []

    def watch(socket: WebSocket) -> None:
        def received(payload: str | bytes) -> None:
            if isinstance(payload, str) and '"session.started"' in payload:
                started.append(json.loads(payload))

        socket.on("framereceived", received)

    page.on("websocket", watch)
    return started


async def test_the_page_resumes_its_conversation_after_the_gateway_restarts(browser: Browser, stack: Stack) -> None:
    """A turn, the gateway killed (supervisord restarts it), another turn: one conversation throughout.

    The page resumes its session (the server says `resumed` and gives back the first turn), the
    transcript stays as it was with nothing doubled, the outage's banners go once it is over, and
    the second turn joins the same history: a reload of the tab resumes the session with both."""
    context = await browser.new_context(base_url=stack.url)
    page = await context.new_page()
    errors = PageErrors(page)
    started = session_starts(page)
    talk = page.locator('[data-page="talk"]')
    banners = page.get_by_test_id("errors")
    users = page.get_by_test_id("user-message")
    replies = page.get_by_test_id("assistant-message")
    first, second = "Hello, my name is Ada.", "What is my name?"
    try:
        await open_page(page, "talk")
        await connect_push_to_talk(page)
        await page.get_by_test_id("text-input").fill(first)
        await page.get_by_test_id("send").click()
        await expect(replies.first).to_have_attribute("data-played", "true", timeout=90_000)
        first_reply = await replies.first.inner_text()

        os.kill(listening_process(stack.ports["gateway"]), signal.SIGKILL)
        await expect(banners).to_contain_text("Connection closed", timeout=10_000)
        await expect(page.get_by_test_id("status")).to_have_attribute("data-state", "connected", timeout=60_000)
        resumed = started[-1]
        assert resumed["resumed"] is True and resumed["session_id"] == started[0]["session_id"], resumed
        assert [turn["role"] for turn in resumed.get("history", [])] == ["user", "assistant"], resumed
        assert resumed["history"][0]["content"] == first, resumed
        await expect(talk).to_have_attribute("data-session", "resumed")
        for outage in ("Connection closed", "cannot be reached", "not ready"):  # all over now
            await expect(banners).not_to_contain_text(outage)
        # The transcript as it was: the same two messages (the reply still the one that played), no copies.
        await expect(users).to_have_text([first])
        await expect(replies).to_have_count(1)
        await expect(replies.first).to_have_attribute("data-played", "true")
        assert await replies.first.inner_text() == first_reply

        await page.get_by_test_id("text-input").fill(second)
        await page.get_by_test_id("send").click()
        await expect(page.get_by_test_id("timings")).to_have_count(2, timeout=90_000)  # its response.done

        await page.reload()  # the tab remembers its conversation: Connect resumes it, history and all
        await expect(page.locator("body")).to_have_attribute("data-ready", "talk", timeout=20_000)
        await connect_push_to_talk(page)
        await expect(talk).to_have_attribute("data-session", "resumed")
        history = started[-1]["history"]
        assert [turn["role"] for turn in history] == ["user", "assistant", "user", "assistant"], history
        assert [turn["content"] for turn in history if turn["role"] == "user"] == [first, second], history
        await expect(users).to_have_text([first, second])
        await expect(replies).to_have_count(sum(1 for t in history if t["role"] == "assistant" and t["content"]))
    finally:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        await page.screenshot(path=str(SCREENSHOTS / "resumed_after_gateway_restart.png"), full_page=True)
        await context.close()
    unexpected = [
        m
        for m in errors.messages
        if "ERR_CONNECTION_REFUSED" not in m and "WebSocket" not in m and "status of 503" not in m
    ]
    assert unexpected == [], unexpected


async def test_a_conversation_the_server_no_longer_has_goes_on_in_a_new_one(page: Page) -> None:
    """The tab's conversation is unknown to the server (expired, say): a new one starts, and the page says so."""
    talk = page.locator('[data-page="talk"]')
    stale = {"id": "sess_0123456789abcdef", "token": "a-token-this-server-never-gave"}
    await open_page(page, "talk")
    await page.evaluate("stale => sessionStorage.setItem('parley.conversation', JSON.stringify(stale))", stale)
    await page.reload()
    await expect(page.locator("body")).to_have_attribute("data-ready", "talk", timeout=20_000)
    await connect_push_to_talk(page)
    await expect(page.get_by_test_id("transcript-note")).to_contain_text("could not be resumed")
    await expect(talk).to_have_attribute("data-session", "new")
    await expect(page.get_by_test_id("errors").locator("li")).to_have_count(0)
    kept = await page.evaluate("() => JSON.parse(sessionStorage.getItem('parley.conversation'))")
    assert kept["id"].startswith("sess_") and kept["id"] != stale["id"], kept
    await page.get_by_role("button", name="Disconnect").click()  # ends it: nothing left to resume
    assert await page.evaluate("() => sessionStorage.getItem('parley.conversation')") is None


# The socket's send buffer as the page sees it: full while `linkStalled` is set, as on a link too
# slow for the microphone's audio (one the test cannot make: loopback drains anything).
STALLED_LINK = """
const buffered = Object.getOwnPropertyDescriptor(WebSocket.prototype, 'bufferedAmount').get;
Object.defineProperty(WebSocket.prototype, 'bufferedAmount', {
  configurable: true,
  get() { return window.linkStalled ? 1 << 20 : buffered.call(this); },
});
window.linkStalled = true;
"""


async def test_the_page_says_when_its_microphone_cannot_get_through(page: Page) -> None:
    """Microphone audio the socket cannot take is dropped, never silently: a notice while it lasts,
    and a note of how much was lost once audio gets through again."""
    await page.add_init_script(STALLED_LINK)
    talk = page.locator('[data-page="talk"]')
    banners = page.get_by_test_id("errors")
    await open_page(page, "talk")
    await page.get_by_role("button", name="Connect").click()  # hands-free: the microphone streams all along
    await expect(page.get_by_test_id("status")).to_have_attribute("data-state", "connected", timeout=30_000)
    await expect(banners).to_contain_text("too slow")
    await expect(talk).to_have_attribute("data-mic", "dropping")
    await page.evaluate("() => { window.linkStalled = false; }")
    await expect(talk).not_to_have_attribute("data-mic", "dropping")
    await expect(banners).not_to_contain_text("too slow")
    await expect(page.get_by_test_id("transcript-note")).to_contain_text("microphone audio was lost")
    await page.get_by_role("button", name="Disconnect").click()


async def test_a_voice_recorded_in_the_browser_is_checked_and_saved(page: Page, stack: Stack) -> None:
    await open_page(page, "voices")
    record = page.get_by_test_id("voice-record")
    await record.click()
    await expect(record).to_have_text("Stop recording")
    await page.wait_for_timeout(4500)  # the recording's own length: the fake microphone speaks in it
    await record.click()
    await expect(page.get_by_test_id("voice-check")).to_contain_text("Looks good", timeout=10_000)
    await page.get_by_label("Name").fill("Recorded Voice")
    await page.get_by_label("What the recording says, word for word").fill(QUESTION)
    await page.get_by_test_id("voice-save").click()
    row = page.locator('[data-page="voices"] tr', has_text="Recorded Voice")
    await expect(row).to_be_visible(timeout=30_000)  # the server decoded the browser's WebM/Opus too
    await row.get_by_role("button", name="Delete Recorded Voice").click()
    await expect(row).to_have_count(0)


API_KEY = "parley-test-key-0123456789"


@contextlib.contextmanager
def another_gateway(stack: Stack, env: dict[str, str], ready_headers: dict[str, str]) -> Iterator[str]:
    """A second gateway on the same NATS (so the same services), with its own settings; yields its URL."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "parley_gateway"],
        env={
            **os.environ,
            "PARLEY_NATS_URL": stack.nats_url,
            "PARLEY_GATEWAY_PORT": str(port),
            "PARLEY_STATE_DIR": str(stack.state_dir),
            **env,
        },
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/readyz", headers=ready_headers).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the second gateway did not get ready"
            time.sleep(0.25)
        yield url
    finally:
        process.terminate()
        process.wait(30)


@pytest.fixture(scope="module")
def keyed_gateway(stack: Stack) -> Iterator[str]:
    """A gateway with an API key: what a public pod runs."""
    with another_gateway(stack, {"PARLEY_GATEWAY_API_KEYS": API_KEY}, {"authorization": f"Bearer {API_KEY}"}) as url:
        yield url


async def test_a_public_pod_asks_for_the_key_once_then_everything_works(browser: Browser, keyed_gateway: str) -> None:
    async with httpx.AsyncClient(base_url=keyed_gateway) as http:
        assert (await http.get("/v1/voices")).status_code == 401
    context = await browser.new_context(base_url=keyed_gateway)
    page = await context.new_page()
    errors = PageErrors(page)
    try:
        await page.goto("/")
        dialog = page.get_by_test_id("key-dialog")
        await expect(dialog).to_be_visible(timeout=20_000)  # the page's first API call met a 401
        await page.get_by_label("Key", exact=True).fill(API_KEY)
        await page.get_by_test_id("key-save").click()
        await expect(page.locator("body")).to_have_attribute("data-ready", "talk", timeout=20_000)
        await expect(page.get_by_test_id("voice-select").locator("option[value=joe]")).to_have_count(1)
        assert await stored_anywhere(page, API_KEY) == [], "the key itself is kept in the browser"

        await connect_push_to_talk(page)  # the WebSocket carries a token
        await page.get_by_test_id("text-input").fill("Hello!")
        await page.get_by_test_id("send").click()
        await expect(page.get_by_test_id("assistant-message").first).to_have_attribute(
            "data-played", "true", timeout=90_000
        )

        await page.get_by_role("link", name="Monitor").click()  # EventSource with a token
        await expect(page.locator('[data-page="monitor"]')).to_have_attribute(
            "data-services", "vad,asr,llm,tts", timeout=30_000
        )
        await page.reload()  # the tab keeps its token: no second question
        await expect(page.locator("body")).to_have_attribute("data-ready", "monitor", timeout=20_000)
        await expect(dialog).to_be_hidden()
        assert await stored_anywhere(page, API_KEY) == [], "the key itself is kept in the browser"

        # A key an older page left in localStorage goes at the next load.
        await page.evaluate("key => localStorage.setItem('parley.api_key', key)", API_KEY)
        await page.reload()
        await expect(page.locator("body")).to_have_attribute("data-ready", "monitor", timeout=20_000)
        assert await stored_anywhere(page, API_KEY) == [], "an old stored key stays"

        # The token refused (expired, or the keys changed) after a reload: the key is not in memory any
        # more, so the page asks for it again, and goes on with a fresh token.
        await page.evaluate(FORGE_TOKEN)
        await page.goto("/#talk")
        await page.reload()
        await expect(dialog).to_be_visible(timeout=20_000)
        await page.get_by_label("Key", exact=True).fill(API_KEY)
        await page.get_by_test_id("key-save").click()
        await expect(page.get_by_test_id("voice-select").locator("option[value=joe]")).to_have_count(1)
        await connect_push_to_talk(page)
        assert await stored_anywhere(page, API_KEY) == [], "the key itself is kept in the browser"

        # Refused again, but this page load still holds the key: a new token, without asking.
        await page.get_by_role("button", name="Disconnect").click()
        await page.evaluate(FORGE_TOKEN)
        await page.get_by_role("link", name="Voices").click()
        await expect(page.locator('[data-page="voices"] tr[data-voice="joe"]')).to_be_visible(timeout=20_000)
        await page.get_by_role("link", name="Talk").click()
        await connect_push_to_talk(page)
        await expect(dialog).to_be_hidden()

        # Another tab has no token: even a page whose first call is its EventSource asks for the key.
        other = await context.new_page()
        other_errors = PageErrors(other)
        await other.goto("/#monitor")
        await expect(other.get_by_test_id("key-dialog")).to_be_visible(timeout=20_000)
        await other.get_by_label("Key", exact=True).fill(API_KEY)
        await other.get_by_test_id("key-save").click()
        await expect(other.locator('[data-page="monitor"]')).to_have_attribute(
            "data-services", "vad,asr,llm,tts", timeout=30_000
        )
        errors.messages += other_errors.messages
    finally:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        await page.screenshot(path=str(SCREENSHOTS / "public_pod_with_key.png"), full_page=True)
        await context.close()
    # The first, keyless calls were refused (401) before the key was given: the browser logs those.
    unexpected = [m for m in errors.messages if "401" not in m]
    assert unexpected == [], unexpected


# The page's token replaced by one the server never gave (as after its keys changed).
FORGE_TOKEN = """() => { for (const store of [localStorage, sessionStorage])
    for (const name of Object.keys(store)) if (name.startsWith('parley.token')) store.setItem(name,
        JSON.stringify({value: '1.0123456789ab.forged', until: Date.now() + 3600_000})); }"""


async def stored_anywhere(page: Page, secret: str) -> list[str]:
    """The names of the page's localStorage and sessionStorage entries that hold `secret`."""
    names: list[str] = await page.evaluate(
        """secret => [localStorage, sessionStorage].flatMap((store) =>
            Object.keys(store).filter((name) => (store.getItem(name) ?? '').includes(secret)))""",
        secret,
    )
    return names


@pytest.fixture(scope="module")
def named_gateway(stack: Stack) -> Iterator[str]:
    """A keyless gateway (as `make run` starts one) that was also given a name of its own."""
    with another_gateway(stack, {"PARLEY_GATEWAY_ALLOWED_HOSTS": OWN_NAME}, {}) as url:
        yield url


async def test_the_page_works_from_each_of_the_gateways_names(microphone: Path, named_gateway: str) -> None:
    port = named_gateway.rsplit(":", 1)[1]
    own = f"http://{OWN_NAME}:{port}"
    # parley.test resolves here; over plain HTTP only a secure origin may use the microphone (a
    # named pod is served over HTTPS: RunPod's proxy), so the browser counts this one as secure.
    args = chromium_args(
        microphone,
        f"--host-resolver-rules=MAP {OWN_NAME} 127.0.0.1",
        f"--unsafely-treat-insecure-origin-as-secure={own}",
    )
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=args)
        for base in (own, f"http://localhost:{port}", named_gateway):
            context = await browser.new_context(base_url=base)
            page = await context.new_page()
            errors = PageErrors(page)
            try:
                await open_page(page, "talk")
                await connect_push_to_talk(page)
                await page.get_by_test_id("text-input").fill("Hello!")
                await page.get_by_test_id("send").click()
                await expect(page.get_by_test_id("assistant-message").first).to_have_attribute(
                    "data-played", "true", timeout=90_000
                )
            finally:
                await context.close()
            assert errors.messages == [], (base, errors.messages)
        await browser.close()


async def test_typed_turns_work_where_the_browser_gives_no_microphone(microphone: Path, named_gateway: str) -> None:
    """Plain HTTP under a name (no secure context): no microphone for the page, yet typed turns work."""
    port = named_gateway.rsplit(":", 1)[1]
    args = chromium_args(microphone, f"--host-resolver-rules=MAP {OWN_NAME} 127.0.0.1")
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=args)
        context = await browser.new_context(base_url=f"http://{OWN_NAME}:{port}")
        page = await context.new_page()
        errors = PageErrors(page)
        try:
            await open_page(page, "talk")
            assert await page.evaluate("() => window.isSecureContext") is False
            await connect_push_to_talk(page)
            await expect(page.locator('[data-page="talk"]')).to_have_attribute("data-mic", "unavailable")
            await expect(page.get_by_test_id("mic-note")).to_contain_text("secure")
            await page.get_by_test_id("text-input").fill("Hello!")
            await page.get_by_test_id("send").click()
            reply = page.get_by_test_id("assistant-message").first
            await expect(reply).to_have_attribute("data-played", "true", timeout=90_000)
            assert (await reply.inner_text()).strip()
        finally:
            SCREENSHOTS.mkdir(parents=True, exist_ok=True)
            await page.screenshot(path=str(SCREENSHOTS / "no_secure_context.png"), full_page=True)
            await context.close()
            await browser.close()
    assert errors.messages == [], errors.messages


class RebindingSite:
    """evil.test after its DNS was rebound to this machine, as seen by the visitor's browser.

    It listens on another loopback address (127.0.0.2) at the gateway's own port, so that the
    attacker's page and the gateway share an origin (evil.test:<port>). It answers `/cats` with
    the attacker's page; every other connection goes through to the gateway byte for byte, with
    the browser's own `Host: evil.test:<port>` and `Origin`: what a rebound name delivers.
    """

    PAGE = b"<!doctype html><title>cats</title><p>cute cats</p>"

    def __init__(self, gateway_port: int) -> None:
        self.gateway_port = gateway_port
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> RebindingSite:
        self.server = await asyncio.start_server(self._serve, "127.0.0.2", self.gateway_port)
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self.server is not None
        self.server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        if head.split(b" ", 2)[1] == b"/cats":
            response = b"HTTP/1.1 200 OK\r\ncontent-type: text/html\r\ncontent-length: %d\r\n"
            writer.write(response % len(self.PAGE) + b"connection: close\r\n\r\n" + self.PAGE)
            await writer.drain()
            writer.close()
            return
        upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", self.gateway_port)
        upstream_writer.write(head)

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError):
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            sink.close()

        await asyncio.gather(pipe(reader, upstream_writer), pipe(upstream_reader, writer))


async def test_a_page_whose_name_was_rebound_to_the_gateway_gets_nothing(microphone: Path, named_gateway: str) -> None:
    """DNS rebinding against the keyless gateway `make run` starts: the visitor opened evil.test:<port>,
    whose name now resolves to this machine, so its scripts' "same-origin" calls reach the gateway."""
    port = int(named_gateway.rsplit(":", 1)[1])
    args = chromium_args(microphone, f"--host-resolver-rules=MAP {REBOUND_NAME} 127.0.0.2")
    async with RebindingSite(port), async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=args)
        page = await browser.new_page()
        await page.goto(f"http://{REBOUND_NAME}:{port}/cats")
        stolen = await page.evaluate(
            """async () => {
                const status = (request) => request.then(r => r.status, e => `failed: ${e}`);
                const opens = (url) => new Promise(resolve => {
                    const ws = new WebSocket(url);
                    ws.onopen = () => { ws.close(); resolve('opened'); };
                    ws.onerror = () => resolve('refused');
                });
                return {
                    voices: await status(fetch('/v1/voices')),
                    page: await status(fetch('/')),
                    removed: await status(fetch('/v1/voices/joe', {method: 'DELETE'})),
                    socket: await opens(`ws://${location.host}/v1/conversation`),
                };
            }"""
        )
        await browser.close()
    assert stolen == {"voices": 400, "page": 400, "removed": 400, "socket": "refused"}, stolen
    async with httpx.AsyncClient(base_url=named_gateway) as http:
        assert (await http.get("/v1/voices")).status_code == 200  # the gateway's own name still works
