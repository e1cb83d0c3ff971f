"""Start the whole stack as `make run` does, on free loopback ports (tests and benchmarks)."""

from __future__ import annotations

import http.client
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
SERVICES = ("vad", "asr", "llm", "tts")
NATS_SERVER = shutil.which("nats-server") or str(Path(sys.executable).parent / "nats-server")


LOOPBACK_USERS = {
    "MAX_SESSIONS_PER_CLIENT": "1000",
    "API_REQUESTS_PER_MINUTE": "100000",
    "API_UPLOADS_PER_MINUTE": "100000",
    "TEXT_INPUTS_PER_MINUTE": "100000",
    "TEXT_INPUTS_BURST": "1000",
}


# Every port this process has handed out. The kernel may give a just-closed port to the next
# bind(0), and gRPC servers bind with SO_REUSEPORT: two services handed the same port would
# both listen on it and share its connections (or the gateway's HTTP port would answer in HTTP/2).
_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A free loopback port never handed out before in this process."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


def listening_process(port: int) -> int:
    """The pid of the process that listens on a loopback TCP port."""
    for process in psutil.process_iter():
        try:
            if any(c.status == psutil.CONN_LISTEN and c.laddr.port == port for c in process.net_connections("tcp")):
                return int(process.pid)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    raise AssertionError(f"no process listens on port {port}")


def start_nats(port: int, jetstream_dir: Path | None = None, *options: str) -> subprocess.Popen[bytes]:
    """A real nats-server on loopback (with JetStream, kept in `jetstream_dir`, when given).

    `options` go to nats-server as they are (`--auth <token>`, `--tls ...`).
    """
    command = [NATS_SERVER, "-a", "127.0.0.1", "-p", str(port), *options]
    if jetstream_dir is not None:
        command += ["-js", "-sd", str(jetstream_dir)]
    process = subprocess.Popen(command, stderr=subprocess.DEVNULL)
    for _ in range(100):
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return process
        time.sleep(0.05)
    process.kill()
    raise RuntimeError("nats-server did not start")


@dataclass
class Stack:
    url: str
    ws_url: str
    nats_url: str
    ports: dict[str, int]  # "nats", "gateway", each service, and "<service>_metrics"
    state_dir: Path
    process: subprocess.Popen[bytes]
    ready_s: float = 0.0

    def log(self) -> str:
        path = self.state_dir / "stack.log"
        return path.read_text(errors="replace")[-6000:] if path.exists() else ""

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()


def stack_ports() -> dict[str, int]:
    """Free loopback ports for NATS, the gateway, and each service's gRPC and metrics."""
    ports = {name: free_port() for name in ("nats", "gateway", *SERVICES)}
    ports.update({f"{name}_metrics": free_port() for name in SERVICES})
    return ports


def stack_environment(
    state_dir: Path, ports: dict[str, int], extra_env: dict[str, str] | None = None
) -> dict[str, str]:
    """This process's environment with the stack's PARLEY_* settings: `ports`, `state_dir`, loopback users."""
    env = dict(os.environ)
    env.update(
        PARLEY_STATE_DIR=str(state_dir),
        PARLEY_NATS_URL=f"nats://127.0.0.1:{ports['nats']}",
        PARLEY_GATEWAY_PORT=str(ports["gateway"]),
        **{f"PARLEY_{name.upper()}_PORT": str(ports[name]) for name in SERVICES},
        **{f"PARLEY_{name.upper()}_METRICS_PORT": str(ports[f"{name}_metrics"]) for name in SERVICES},
        # Here one client (loopback) plays many users at once (tests, benchmarks, Locust):
        # the per-client limits would count them as one. tests/integration/test_limits.py tests those.
        **{f"PARLEY_GATEWAY_{name}": value for name, value in LOOPBACK_USERS.items()},
    )
    env.update(extra_env or {})
    return env


def start_stack(state_dir: Path, extra_env: dict[str, str] | None = None, timeout_s: float = 240) -> Stack:
    """Run deploy/run_stack.py and wait for /readyz; raises RuntimeError if it never gets ready."""
    ports = stack_ports()
    env = stack_environment(state_dir, ports, extra_env)
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "deploy" / "run_stack.py"), "--quiet", "--timeout", str(timeout_s)],
        env=env,
        stdout=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{ports['gateway']}"
    stack = Stack(
        url, f"ws://127.0.0.1:{ports['gateway']}/v1/conversation", env["PARLEY_NATS_URL"], ports, state_dir, process
    )
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and process.poll() is None:
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=2) as response:
                if response.status == 200:
                    stack.ready_s = time.perf_counter() - started
                    return stack
        except (OSError, http.client.HTTPException):
            pass
        time.sleep(0.1)
    log = stack.log()
    stack.stop()
    raise RuntimeError(f"the stack did not become ready:\n{log}")
