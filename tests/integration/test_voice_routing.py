"""A voice goes only where it can be spoken: a Piper-only TTS instance beside one that also runs FireRedTTS2.

Its own small cluster: NATS with JetStream (stored voices live there), a gateway, VAD and LLM (a
conversation's reply needs them), a Piper-only TTS instance, and a TTS instance running Piper and
FireRedTTS2 on the tiny random-weight model (services/tts/tests/tiny_fireredtts2.py) on CPU, loaded
from a models directory by the engine's own code. Which instance spoke what is read from each
instance's own Prometheus counters (`parley_streams_total{method=...}`).
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conversation_client import ConversationClient
from tests.speech import speak, wav_bytes
from tests.stack import LOOPBACK_USERS, ROOT, free_port, start_nats

pytestmark = pytest.mark.integration

REFERENCE_TEXT = "The quick brown fox jumps over the lazy dog, then runs into the forest."
STARTUP_S = 120
PROMPT_S = 3.0  # "at once": far below every timeout a request could otherwise run into (15-45 s)


@dataclass
class Cluster:
    url: str
    ws_url: str
    logs: Path
    env: dict[str, str]
    metrics: dict[str, int] = field(default_factory=dict)  # TTS instance name -> its metrics port
    processes: dict[str, asyncio.subprocess.Process] = field(default_factory=dict)

    async def spawn(self, name: str, *args: str, **env: str) -> None:
        log = (self.logs / f"{name}.log").open("ab")
        self.processes[name] = await asyncio.create_subprocess_exec(
            sys.executable, *args, env={**os.environ, **self.env, **env}, stdout=log, stderr=log, cwd=ROOT
        )

    async def tts(self, name: str, *args: str, **env: str) -> None:
        self.metrics[name] = free_port()
        await self.spawn(
            name,
            *args,
            PARLEY_TTS_PORT=str(free_port()),
            PARLEY_TTS_METRICS_PORT=str(self.metrics[name]),
            PARLEY_TTS_INSTANCES="1",
            **env,
        )

    def failure(self, what: str) -> AssertionError:
        logs = {p.name: p.read_text(errors="replace")[-1500:] for p in self.logs.glob("*.log")}
        return AssertionError(f"{what}\n{logs}")

    async def ready(self, check: Callable[[dict[str, Any]], bool], timeout_s: float = STARTUP_S) -> None:
        """Wait until `check` holds for the gateway's /v1/services."""
        deadline = time.monotonic() + timeout_s
        found: dict[str, Any] = {}
        async with httpx.AsyncClient() as http:
            while True:
                with suppress(httpx.HTTPError):
                    found = (await http.get(f"{self.url}/v1/services")).json()
                    if check(found):
                        return
                if time.monotonic() > deadline:
                    raise self.failure(f"not within {timeout_s} s: {found}")
                await asyncio.sleep(0.2)

    async def streams(self, name: str) -> dict[str, float]:
        """The streams a TTS instance itself counted, by method (every outcome: served, refused, cut)."""
        async with httpx.AsyncClient() as http:
            text = (await http.get(f"http://127.0.0.1:{self.metrics[name]}/metrics")).text
        counted: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "parley_streams_total":
                    method = sample.labels["method"]
                    counted[method] = counted.get(method, 0) + sample.value
        return counted


def routable(instance: dict[str, Any]) -> bool:
    return bool(instance["ready"] and instance["serving"] and not instance["stopping"])


@asynccontextmanager
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    nats_port, gateway_port = free_port(), free_port()
    server = start_nats(nats_port, tmp_path / "jetstream")
    shared = {
        "PARLEY_NATS_URL": f"nats://127.0.0.1:{nats_port}",
        "PARLEY_STATE_DIR": str(tmp_path),
        **{f"PARLEY_GATEWAY_{name}": value for name, value in LOOPBACK_USERS.items()},
    }
    url = f"http://127.0.0.1:{gateway_port}"
    running = Cluster(url, f"ws://127.0.0.1:{gateway_port}/v1/conversation", tmp_path, shared)
    try:
        await running.spawn(
            "gateway",
            "-m",
            "parley_gateway",
            PARLEY_GATEWAY_PORT=str(gateway_port),
            PARLEY_GATEWAY_DISCOVERY_INTERVAL_S="0.5",
            PARLEY_GATEWAY_LLM_MAX_TOKENS="12",
        )
        await running.spawn("vad", "-m", "parley_vad", PARLEY_VAD_PORT=str(free_port()))
        await running.spawn("llm", "-m", "parley_llm", PARLEY_LLM_PORT=str(free_port()))
        # The Piper-only instance registers first, so ties in load go to it; requests sent at once
        # spread over both by load whatever the order (the test checks that too).
        await running.tts("piper", "-m", "parley_tts", PARLEY_TTS_ENGINES="piper")
        await running.tts(
            "firered",
            "-m",
            "services.tts.tests.tiny_fireredtts2",
            str(tmp_path / "fireredtts2"),
            "400",  # the tiny model's frame limit: a voice prompt, its transcript and a sentence fit
            PARLEY_TTS_ENGINES="piper,fireredtts2",
            PARLEY_TTS_FIREREDTTS2_ALLOW_CPU="true",
            PARLEY_TTS_FIREREDTTS2_DEVICE="cpu",
            PARLEY_TTS_FIREREDTTS2_FRAME_LIMIT="400",
            PARLEY_TTS_FIREREDTTS2_MAX_FRAMES="10",  # random weights never stop by themselves
            # One copy speaks three streams at once (batched steps): the cloned requests below share it.
            PARLEY_TTS_FIREREDTTS2_STREAMS_PER_COPY="3",
            PARLEY_TTS_GRACE_S="5",
        )
        yield running
    finally:
        for process in running.processes.values():
            if process.returncode is None:
                process.kill()
                await process.wait()
        server.kill()
        server.wait()


async def conversation_turns(url: str, voice: str, turns: int) -> int:
    """A conversation in `voice`, `turns` typed turns; the bytes of reply audio it got."""
    async with ConversationClient(url, voice=voice) as conv:
        for turn in range(turns):
            after = len(conv.received.events)
            await conv.send_event({"type": "text.input", "text": f"Say hello number {turn + 1}."})
            done = await conv.wait_for("response.done", timeout_s=60, after=after)
            assert done["status"] == "completed", conv.received.of_type("error")
        return len(conv.received.audio_bytes())


async def test_a_cloned_voice_is_spoken_only_where_fireredtts2_runs_and_refused_at_once_without_it(
    tmp_path: Path,
) -> None:
    reference = wav_bytes(speak(REFERENCE_TEXT))
    async with cluster(tmp_path) as c, httpx.AsyncClient(base_url=c.url, timeout=60) as http:

        def up(found: dict[str, Any]) -> bool:
            tts = [i for i in found.get("tts", []) if routable(i)]
            return (
                {tuple(i["engines"]) for i in tts} == {("piper",), ("fireredtts2", "piper")}
                and any(routable(i) for i in found.get("llm", []))
                and any(routable(i) for i in found.get("vad", []))
            )

        await c.ready(up)
        services = (await http.get("/v1/services")).json()
        firered = next(i for i in services["tts"] if "fireredtts2" in i["engines"])
        assert firered["capacity"] == 1 + 3, firered  # one Piper copy, and one FireRedTTS2 copy of three streams
        made = await http.post(
            "/v1/voices",
            data={"name": "Fox Reader", "transcript": REFERENCE_TEXT},
            files={"file": ("reader.wav", reference, "audio/wav")},
        )
        assert made.status_code == 201, made.text
        voice = made.json()["id"]
        listed = {v["id"]: v for v in (await http.get("/v1/voices")).json()["voices"]}
        assert listed[voice]["engines"] == ["fireredtts2"] and listed["joe"]["engines"] == ["piper"]

        # The built-in voice spreads over both instances, as least-loaded routing does: the Piper-only
        # instance takes streams whenever the voice lets it.
        piper_before = await c.streams("piper")
        # More at once than the other instance's capacity (4 streams), which it reports larger than its Piper part.
        burst = [{"model": "tts-1", "voice": "joe", "input": "Hello there.", "response_format": "pcm"}] * 8
        for answer in await asyncio.gather(*(http.post("/v1/audio/speech", json=b) for b in burst)):
            assert answer.status_code == 200, answer.text
        for _ in range(50):  # an instance counts a stream once it has ended: the last may still be closing
            if (await c.streams("piper")).get("Synthesize", 0) > piper_before.get("Synthesize", 0):
                break
            await asyncio.sleep(0.1)
        assert (await c.streams("piper")).get("Synthesize", 0) > piper_before.get("Synthesize", 0)

        # The cloned voice: speech, dialogue and conversation replies, some at once, all on FireRedTTS2.
        piper_before, firered_before = await c.streams("piper"), await c.streams("firered")
        speech = {"model": "tts-1", "voice": voice, "input": "Hello there.", "response_format": "pcm"}
        answers = await asyncio.gather(*(http.post("/v1/audio/speech", json=speech) for _ in range(4)))
        assert all(a.status_code == 200 and a.content for a in answers), [a.text for a in answers]
        named = await http.post(
            "/v1/audio/speech", json={**speech, "voice": "fireredtts2-random", "model": "fireredtts2"}
        )
        assert named.status_code == 200, named.text
        script = {"script": "[S1] Hi there. [S2] Hello.", "voices": {"1": voice, "2": voice}}
        job = await http.post("/v1/dialogues", json=script)
        assert job.status_code == 202, job.text
        audio = await asyncio.gather(*(conversation_turns(c.ws_url, voice, turns=2) for _ in range(2)))
        assert all(audio), audio
        deadline = time.monotonic() + 30
        while (await http.get(f"/v1/dialogues/{job.json()['id']}")).json()["status"] == "running":
            assert time.monotonic() < deadline, "the dialogue did not finish"
            await asyncio.sleep(0.2)
        assert (await http.get(f"/v1/dialogues/{job.json()['id']}")).json()["status"] == "done"

        async def firered_counted() -> dict[str, float]:
            # An instance counts a stream once it has ended: the last may still be closing.
            for _ in range(50):
                now = await c.streams("firered")
                spoken = {m: now.get(m, 0) - firered_before.get(m, 0) for m in wanted}
                if all(spoken[m] >= n for m, n in wanted.items()):
                    break
                await asyncio.sleep(0.1)
            return spoken

        wanted = {"Synthesize": 5, "SynthesizeDialogue": 1, "Speak": 4}  # a reply is one Speak stream
        assert await firered_counted() == wanted
        assert await c.streams("piper") == piper_before  # not one of them reached Piper, not even refused

        # The FireRedTTS2 instance stops: the voice is refused at once, and nothing goes to Piper.
        c.processes["firered"].terminate()
        assert await asyncio.wait_for(c.processes["firered"].wait(), timeout=30) == 0
        started = time.monotonic()
        refused = await http.post("/v1/audio/speech", json=speech)
        assert time.monotonic() - started < PROMPT_S
        assert refused.status_code == 400, refused.text
        assert refused.json()["error"]["code"] == "voice_unavailable" and "fireredtts2" in refused.text
        started = time.monotonic()
        dialogue = await http.post("/v1/dialogues", json={"script": "[S1] Hi.", "voices": {"1": voice}})
        assert time.monotonic() - started < PROMPT_S
        assert (dialogue.status_code, dialogue.json()["error"]["code"]) == (400, "voice_unavailable"), dialogue.text
        started = time.monotonic()
        async with ConversationClient(c.ws_url, start_session=False) as conv:
            await conv.send_event({"type": "session.start", "voice": voice})
            error = await conv.wait_for("error", timeout_s=PROMPT_S)
        assert time.monotonic() - started < PROMPT_S
        assert error["code"] == "voice_unavailable" and "fireredtts2" in error["message"], error
        assert await c.streams("piper") == piper_before
