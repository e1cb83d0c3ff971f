"""Start the whole stack under supervisord, wait until it is ready, print the URL.

    python deploy/run_stack.py            # what `make run` does
    python deploy/run_stack.py --quiet    # only our own lines (tests use this)
    python deploy/run_stack.py --only nats,gateway,vad,asr,llm   # part of it (the TTS runs elsewhere)

Ctrl-C (or SIGTERM) stops supervisord, which stops every service cleanly.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

if TYPE_CHECKING:
    from parley.settings import CommonSettings

HERE = Path(__file__).resolve().parent
PROGRESS_EVERY_S = 10.0
PROGRAMS = ("nats", "vad", "asr", "llm", "tts", "gateway")  # deploy/supervisord.conf's programs


def stack_environment(only: frozenset[str] = frozenset(PROGRAMS)) -> dict[str, str]:
    """The environment supervisord and every service get: PARLEY_* with defaults filled."""
    from parley.settings import CommonSettings

    env = dict(os.environ)
    common = CommonSettings()
    state_dir = common.state_dir.resolve()
    state_dir.mkdir(parents=True, exist_ok=True)
    write_nats_config(common, state_dir, env.get("PARLEY_NATS_LISTEN", ""))
    env.update(
        PARLEY_STATE_DIR=str(state_dir),
        PARLEY_BIN=str(Path(sys.executable).parent),
        PYTHONUNBUFFERED="1",
        **{f"PARLEY_AUTOSTART_{name.upper()}": str(name in only).lower() for name in PROGRAMS},
    )
    return env


def programs(value: str) -> frozenset[str]:
    """`--only`: a comma-separated list of supervisord programs."""
    names = frozenset(name.strip() for name in value.split(",") if name.strip())
    if not names or names - set(PROGRAMS):
        raise argparse.ArgumentTypeError(f"expected some of {', '.join(PROGRAMS)}; got {value!r}")
    return names


def write_nats_config(common: CommonSettings, state_dir: Path, listen_host: str) -> Path:
    """nats-server's config: where it listens, JetStream's directory, and the token when one is set.

    It listens on the host of PARLEY_NATS_URL unless PARLEY_NATS_LISTEN says otherwise (0.0.0.0 on
    the pod other pods join); beyond loopback it needs a token, or anyone who reaches the port could
    register a model service. A file keeps the token out of the process list.
    """
    url = urlparse(common.nats_url.split(",")[0])
    host = listen_host or url.hostname or "127.0.0.1"
    token = common.nats_token.get_secret_value()
    if not token and host not in {"127.0.0.1", "localhost", "::1"}:
        raise SystemExit(f"NATS would listen on {host} without credentials: set PARLEY_NATS_TOKEN")
    lines = [
        "# Written by deploy/run_stack.py at every start; edit PARLEY_* settings instead.",
        f"listen: {json.dumps(f'{host}:{url.port or 4222}')}",
        f"jetstream {{ store_dir: {json.dumps(str(state_dir / 'nats'))} }}",
    ]
    if token:
        lines.append(f"authorization {{ token: {json.dumps(token)} }}")
    path = state_dir / "nats-server.conf"
    path.touch(mode=0o600)
    path.chmod(0o600)
    path.write_text("\n".join(lines) + "\n")
    return path


def gateway_url() -> str:
    from parley_gateway.config import GatewaySettings

    gateway = GatewaySettings()
    host = "127.0.0.1" if gateway.host in {"0.0.0.0", "::"} else gateway.host
    return f"http://{host}:{gateway.port}"


def readiness(url: str) -> tuple[bool, dict[str, Any]]:
    """Whether /readyz says ready, and what it says (missing kinds, crashing ones)."""
    try:
        with urllib.request.urlopen(f"{url}/readyz", timeout=2) as response:
            return True, json.load(response)
    except urllib.error.HTTPError as error:
        return False, json.load(error)
    except (urllib.error.URLError, ConnectionError, TimeoutError, ValueError):
        return False, {"status": "gateway not answering yet"}


def wait_ready(url: str, process: subprocess.Popen[bytes], timeout_s: float, quiet: bool) -> bool:
    """Poll /readyz; every PROGRESS_EVERY_S say what is still missing (and what keeps crashing)."""
    started = time.monotonic()
    reported = started
    while time.monotonic() - started < timeout_s and process.poll() is None:
        ready, body = readiness(url)
        if ready:
            return True
        if not quiet and time.monotonic() - reported >= PROGRESS_EVERY_S:
            reported = time.monotonic()
            print(f"... waiting for the stack ({reported - started:.0f} s): {describe(body)}", flush=True)
        time.sleep(0.5)
    print(f"not ready: {describe(readiness(url)[1])}", file=sys.stderr, flush=True)
    return False


def describe(body: dict[str, Any]) -> str:
    parts = []
    if body.get("missing"):
        parts.append(f"no ready {', '.join(body['missing'])} yet")
    for kind, problem in (body.get("crashing") or {}).items():
        parts.append(
            f"{kind} keeps failing ({problem['crashes']} crashes, {problem['failed_starts']} failed starts "
            f"in {problem['window_s']:.0f} s; last: {problem['last_problem']})"
        )
    return "; ".join(parts) or str(body.get("status"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--timeout", type=float, default=300, help="seconds to wait for /readyz")
    parser.add_argument("--quiet", action="store_true", help="send the services' logs to the state dir")
    parser.add_argument(
        "--only", type=programs, default=frozenset(PROGRAMS), help="run only these programs (comma-separated)"
    )
    args = parser.parse_args()

    env = stack_environment(args.only)
    url = gateway_url()
    output = None
    if args.quiet:
        output = open(Path(env["PARLEY_STATE_DIR"]) / "stack.log", "ab")  # noqa: SIM115 (lives as long as the stack)
    supervisord = subprocess.Popen(
        [str(Path(env["PARLEY_BIN"]) / "supervisord"), "-c", str(HERE / "supervisord.conf")],
        env=env,
        stdout=output,
        stderr=subprocess.STDOUT if output else None,
    )

    def stop(*_: object) -> None:
        if supervisord.poll() is None:
            supervisord.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    started = time.monotonic()
    if "gateway" not in args.only:
        print(f"started {', '.join(sorted(args.only))} (no gateway here; Ctrl-C stops them)", flush=True)
    elif wait_ready(url, supervisord, args.timeout, args.quiet):
        print(
            f"\nParley is ready after {time.monotonic() - started:.1f} s: {url}\n(Ctrl-C stops everything)", flush=True
        )
    else:
        print(f"Parley did not become ready within {args.timeout:.0f} s; see {url}/readyz", file=sys.stderr, flush=True)
        stop()
    while True:
        try:
            return supervisord.wait()
        except KeyboardInterrupt:
            stop()


if __name__ == "__main__":
    raise SystemExit(main())
