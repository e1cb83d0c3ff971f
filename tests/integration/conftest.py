"""The whole stack started as `make run` starts it, on free loopback ports."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Stack:
    url: str
    ws_url: str
    nats_url: str
    ports: dict[str, int]
    state_dir: Path
    process: subprocess.Popen[bytes]

    def log(self) -> str:
        path = self.state_dir / "stack.log"
        return path.read_text(errors="replace")[-6000:] if path.exists() else ""


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    state_dir = tmp_path_factory.mktemp("parley-state")
    ports = {name: free_port() for name in ("nats", "gateway", "vad", "asr", "llm", "tts")}
    metrics = {name: free_port() for name in ("vad", "asr", "llm", "tts")}
    env = dict(os.environ)
    env.update(
        PARLEY_STATE_DIR=str(state_dir),
        PARLEY_NATS_URL=f"nats://127.0.0.1:{ports['nats']}",
        PARLEY_GATEWAY_PORT=str(ports["gateway"]),
        **{f"PARLEY_{name.upper()}_PORT": str(ports[name]) for name in ("vad", "asr", "llm", "tts")},
        **{f"PARLEY_{name.upper()}_METRICS_PORT": str(port) for name, port in metrics.items()},
    )
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "deploy" / "run_stack.py"), "--quiet", "--timeout", "240"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{ports['gateway']}"
    deadline = time.monotonic() + 240
    ready = False
    while time.monotonic() < deadline and process.poll() is None:
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=2) as response:
                ready = response.status == 200
        except OSError:
            pass
        if ready:
            break
        time.sleep(0.5)
    stack = Stack(
        url,
        f"ws://127.0.0.1:{ports['gateway']}/v1/conversation",
        env["PARLEY_NATS_URL"],
        {**ports, **{f"{k}_metrics": v for k, v in metrics.items()}},
        state_dir,
        process,
    )
    if not ready:
        process.send_signal(signal.SIGTERM)
        process.wait(30)
        pytest.fail(f"stack did not become ready:\n{stack.log()}")
    yield stack
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(60)
    except subprocess.TimeoutExpired:
        process.kill()
