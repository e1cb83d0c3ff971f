"""The stack started the ways the docs tell an operator to start it, with API keys on.

- `make run` with `PARLEY_GATEWAY_API_KEYS` (README);
- `runpod/start.sh` as a RunPod pod runs it (docs/runpod.md): keys set, `/workspace` a
  temporary directory (`PARLEY_WORKSPACE`), no GPU, the embedded models;
- `runpod/start.sh` split over two "pods" (docs/runpod.md, two-pod layout): one runs NATS (with a
  token), the gateway, VAD, ASR and LLM; the other the TTS service alone.

Each launcher gets a short readiness timeout (`PARLEY_LAUNCHER_READY_TIMEOUT_S`) that passes
before the models are loaded: the stack must come up all the same, answer a keyed spoken turn,
refuse an unkeyed one, and still serve once the timeout is long past.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest
import websockets

from tests.conversation_client import ConversationClient
from tests.speech import silence, speak
from tests.stack import ROOT, stack_environment, stack_ports

pytestmark = pytest.mark.integration

KEY = "operator-key-0123456789abcdef"
READY_TIMEOUT_S = 3  # what the launchers get here: far shorter than the models take to load
BIN = str(Path(sys.executable).parent)


class Launcher:
    """A launcher process (make run, start.sh) with its output collected line by line."""

    def __init__(self, command: list[str], env: dict[str, str]) -> None:
        self.lines: list[str] = []
        self.started = time.monotonic()
        self.process = subprocess.Popen(
            command,
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,  # Ctrl-C reaches the whole process group: so does stop()
        )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_for(self, pattern: str, timeout_s: float = 240) -> str:
        """The first output line matching `pattern`; fails with the output when it never comes."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            found = next((line for line in self.lines if re.search(pattern, line)), None)
            if found is not None:
                return found
            if self.process.poll() is not None:
                time.sleep(0.5)  # the last lines
                break
            time.sleep(0.2)
        tail = "\n".join(self.lines[-80:])
        pytest.fail(f"no line matching {pattern!r} (exit code {self.process.poll()}):\n{tail}")

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> int:
        """SIGTERM to the launcher (`docker stop` signals a container's first process), or Ctrl-C (SIGINT to
        the terminal's whole process group)."""
        if self.process.poll() is None:
            if sig is signal.SIGINT:
                os.killpg(self.process.pid, sig)
            else:
                self.process.send_signal(sig)
        try:
            return self.process.wait(90)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            return self.process.wait()


def keyed_headers() -> dict[str, str]:
    return {"authorization": f"Bearer {KEY}"}


async def spoken_turn(ws_url: str, headers: dict[str, str]) -> tuple[str, int]:
    """One spoken question over the WebSocket: (what was heard, bytes of reply audio)."""
    async with ConversationClient(ws_url, headers=headers) as conv:
        await conv.stream_audio(speak("What is the capital of France?") + silence(1.2))
        done = await conv.wait_for("response.done", timeout_s=90)
        assert done.get("status", "completed") == "completed", done
        heard = conv.received.of_type("transcript.final")
        return (heard[0]["text"] if heard else ""), len(conv.received.audio_bytes())


async def assert_refused_without_a_key(ws_url: str) -> None:
    with pytest.raises(websockets.InvalidStatus) as refused:
        async with websockets.connect(ws_url):
            pass
    assert refused.value.response.status_code == 403


async def assert_still_serving(launcher: Launcher, url: str, ws_url: str) -> None:
    """Past the launcher's readiness timeout, the stack serves: ready, a keyed spoken turn answered."""
    remaining = READY_TIMEOUT_S + 2 - (time.monotonic() - launcher.started)
    await asyncio.sleep(max(0.0, remaining))
    assert launcher.process.poll() is None, launcher.output()
    async with httpx.AsyncClient(base_url=url) as http:
        assert (await http.get("/readyz")).status_code == 401
        assert (await http.get("/readyz", headers=keyed_headers())).status_code == 200
    heard, audio = await spoken_turn(ws_url, keyed_headers())
    assert "capital" in heard.lower() and audio > 24000, (heard, audio)  # over half a second of speech
    await assert_refused_without_a_key(ws_url)


def assert_nothing_listens(ports: dict[str, int]) -> None:
    """Every process of the stack is gone: none of its ports is still served."""
    listening = {c.laddr.port for c in psutil.net_connections("tcp") if c.status == psutil.CONN_LISTEN}
    assert not listening & set(ports.values()), {name: port for name, port in ports.items() if port in listening}


@pytest.fixture
def state(tmp_path: Path) -> Path:
    return tmp_path


@pytest.fixture
def launchers() -> Iterator[list[Launcher]]:
    running: list[Launcher] = []
    yield running
    for launcher in running:
        launcher.stop()
        # Whatever a failed test left behind: the launcher's session (supervisord gives each program a
        # process group of its own, so a group kill would miss them).
        for process in psutil.process_iter():
            with contextlib.suppress(psutil.Error, ProcessLookupError):
                if os.getsid(process.pid) == launcher.process.pid:
                    process.kill()


async def test_make_run_with_api_keys_is_ready_and_stays_up(state: Path, launchers: list[Launcher]) -> None:
    ports = stack_ports()
    env = stack_environment(
        state / "state",
        ports,
        {"PARLEY_GATEWAY_API_KEYS": KEY, "PARLEY_LAUNCHER_READY_TIMEOUT_S": str(READY_TIMEOUT_S)},
    )
    make = Launcher(["make", "--no-print-directory", "run"], env)
    launchers.append(make)
    url, ws_url = f"http://127.0.0.1:{ports['gateway']}", f"ws://127.0.0.1:{ports['gateway']}/v1/conversation"

    ready = make.wait_for(r"Parley is ready after")
    assert url in ready
    late = make.wait_for(r"not ready after \d+ s", timeout_s=1)  # said once, with what was missing
    assert "PARLEY_LAUNCHER_READY_TIMEOUT_S" in late and "Still waiting" in late
    await assert_still_serving(make, url, ws_url)
    assert make.stop(signal.SIGINT) in (0, -signal.SIGINT)  # make itself dies of the Ctrl-C, as in a terminal
    assert_nothing_listens(ports)


async def test_runpod_start_sh_all_in_one_pod_with_keys(state: Path, launchers: list[Launcher]) -> None:
    ports = stack_ports()
    workspace = state / "workspace"
    env = stack_environment(
        workspace / "parley",
        ports,
        {
            "PATH": f"{BIN}:{os.environ['PATH']}",  # the image's python
            "PARLEY_WORKSPACE": str(workspace),
            "PARLEY_GATEWAY_API_KEYS": KEY,
            "PARLEY_LAUNCHER_READY_TIMEOUT_S": str(READY_TIMEOUT_S),
            "RUNPOD_POD_ID": "testpod",
        },
    )
    del env["PARLEY_STATE_DIR"]  # start.sh puts it on the volume itself
    pod = Launcher(["runpod/start.sh"], env)
    launchers.append(pod)
    url, ws_url = f"http://127.0.0.1:{ports['gateway']}", f"ws://127.0.0.1:{ports['gateway']}/v1/conversation"

    pod.wait_for(r"Parley is ready after")
    assert (workspace / "parley" / "nats").is_dir(), "JetStream keeps voices on the volume"
    await assert_still_serving(pod, url, ws_url)
    # The page through RunPod's proxy: the pod's proxy name is one of the gateway's names.
    proxy = f"testpod-{ports['gateway']}.proxy.runpod.net"
    async with httpx.AsyncClient(base_url=url) as http:
        assert (await http.get("/", headers={"host": proxy})).status_code == 200
        assert (await http.get("/", headers={"host": "evil.example"})).status_code == 400
    # A browser's turn from the page it loaded (here by the pod's address; behind the proxy its name).
    heard, audio = await spoken_turn(ws_url, {**keyed_headers(), "origin": url})
    assert audio > 24000, heard
    assert pod.stop() == 0
    assert_nothing_listens(ports)


async def test_runpod_start_sh_split_over_two_pods(state: Path, launchers: list[Launcher]) -> None:
    ports = stack_ports()
    nats_token = "nats-token-0123456789"
    common = {
        "PATH": f"{BIN}:{os.environ['PATH']}",
        "PARLEY_NATS_TOKEN": nats_token,
        "PARLEY_LAUNCHER_READY_TIMEOUT_S": str(READY_TIMEOUT_S),
    }
    first = stack_environment(
        state / "a" / "parley",
        ports,
        {
            **common,
            "PARLEY_WORKSPACE": str(state / "a"),
            "PARLEY_POD_SERVICES": "nats,gateway,vad,asr,llm",
            "PARLEY_GATEWAY_API_KEYS": KEY,
            "RUNPOD_POD_ID": "poda",
        },
    )
    del first["PARLEY_STATE_DIR"]
    pod_a = Launcher(["runpod/start.sh"], first)
    launchers.append(pod_a)
    pod_a.wait_for(r"not ready after \d+ s")  # past its readiness timeout, without a TTS anywhere yet

    tts_port = ports["tts"]
    second = stack_environment(
        state / "b" / "parley",
        ports,
        {
            **common,
            "PARLEY_WORKSPACE": str(state / "b"),
            "PARLEY_POD_SERVICES": "tts",
            # On RunPod <pod id>.runpod.internal; here that name does not resolve.
            "PARLEY_TTS_ADVERTISE_ADDRESS": f"127.0.0.1:{tts_port}",
            "RUNPOD_POD_ID": "podb",
        },
    )
    del second["PARLEY_STATE_DIR"]
    pod_b = Launcher(["runpod/start.sh"], second)
    launchers.append(pod_b)

    pod_a.wait_for(r"Parley is ready after")
    url, ws_url = f"http://127.0.0.1:{ports['gateway']}", f"ws://127.0.0.1:{ports['gateway']}/v1/conversation"
    await assert_still_serving(pod_a, url, ws_url)
    async with httpx.AsyncClient(base_url=url, headers=keyed_headers()) as http:
        tts = (await http.get("/v1/services")).json()["tts"]
    assert [instance["address"] for instance in tts] == [f"127.0.0.1:{tts_port}"]
    assert pod_b.stop() == 0 and pod_a.stop() == 0
    assert_nothing_listens(ports)


async def test_a_service_that_cannot_start_stops_the_stack_with_its_error(
    state: Path, launchers: list[Launcher]
) -> None:
    """The one reason a launcher stops a stack by itself: a program that keeps failing before it was ever ready."""
    ports = stack_ports()
    missing = state / "models" / "no-such-model.gguf"
    env = stack_environment(
        state / "state",
        ports,
        {"PARLEY_LLM_MODEL_PATH": str(missing), "PARLEY_LAUNCHER_CRASH_RESTARTS": "3"},
    )
    launcher = Launcher([sys.executable, "deploy/run_stack.py"], env)
    launchers.append(launcher)
    verdict = launcher.wait_for(r"cannot start", timeout_s=120)
    assert verdict.startswith("parley: llm cannot start: it exited 3 times") and str(missing) in verdict, verdict
    launcher.wait_for(r"stopping the stack \(its log is above\)", timeout_s=1)
    assert launcher.process.wait(60) == 1
    assert_nothing_listens(ports)
