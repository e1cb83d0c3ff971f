"""Start the whole stack under supervisord, wait until it is ready, print the URL.

    python deploy/run_stack.py            # what `make run` does
    python deploy/run_stack.py --quiet    # only our own lines (tests use this)
    python deploy/run_stack.py --only nats,gateway,vad,asr,llm   # part of it (the TTS runs elsewhere)

It never stops a stack for being slow to get ready (deploy/launcher.py says what it decides);
Ctrl-C (or SIGTERM) stops supervisord, which stops every service cleanly.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request
import xmlrpc.client
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from launcher import Kind, LauncherSettings, Program, Readiness, StackWatch

if TYPE_CHECKING:
    from parley.settings import CommonSettings

HERE = Path(__file__).resolve().parent
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


def probe_headers() -> dict[str, str]:
    """How the launcher's readiness probe presents itself: with the first API key when the gateway has keys.

    The probe is a client like any other (it runs where the keys are, in the same environment):
    `/readyz` stays behind the keys, since it names the services and their last errors.
    """
    from parley_gateway.config import GatewaySettings

    keys = GatewaySettings().key_list()
    return {"Authorization": f"Bearer {keys[0]}"} if keys else {}


def readiness(url: str, headers: dict[str, str]) -> Readiness:
    """What /readyz says (ready on 200; missing kinds, crashing ones); a gateway not up yet is not ready."""
    request = urllib.request.Request(f"{url}/readyz", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=2) as response:
            return Readiness(True, json.load(response))
    except urllib.error.HTTPError as error:
        if error.code in (400, 401, 403):  # a probe that cannot read /readyz says so, never waits in silence
            detail = error.read(300).decode(errors="replace")
            return Readiness(False, {"status": f"the readiness probe was refused ({error.code}): {detail}"})
        try:
            return Readiness(False, json.load(error))
        except ValueError:
            return Readiness(False, {"status": f"/readyz answered {error.code}"})
    except (OSError, http.client.HTTPException, ValueError):  # URLError and a cut connection included
        return Readiness(False, {"status": "gateway not answering yet"})


class Supervisor:
    """supervisord's XML-RPC interface on its Unix socket: what each program is doing."""

    def __init__(self, socket_path: Path) -> None:
        self.socket_path = socket_path

    def programs(self) -> list[Program]:
        """Every program supervisord runs; none while it is still starting (or already gone)."""
        from supervisor.xmlrpc import SupervisorTransport  # type: ignore[import-untyped]

        # A fresh connection each time: the transport's own is unusable after one failed request.
        transport = SupervisorTransport(None, None, serverurl=f"unix://{self.socket_path}")
        rpc = xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport)
        try:
            infos: list[dict[str, Any]] = rpc.supervisor.getAllProcessInfo()  # type: ignore[assignment]
        except (OSError, http.client.HTTPException, xmlrpc.client.Error):
            return []
        finally:
            transport.close()
        return [Program.from_info(info) for info in infos]


def watch(
    supervisord: subprocess.Popen[bytes],
    stopping: threading.Event,
    watcher: StackWatch,
    supervisor: Supervisor,
    url: str | None,
    log_hint: str,
) -> bool:
    """Report on the stack until it is stopped; False when a program could not start (the stack must stop)."""
    headers = probe_headers() if url else {}
    while supervisord.poll() is None and not stopping.is_set():
        state = readiness(url, headers) if url else None
        for notice in watcher.observe(supervisor.programs(), state):
            if notice.kind is Kind.READY:
                print(f"\nParley is {notice.text}: {url}\n(Ctrl-C stops everything)", flush=True)
            elif notice.kind in (Kind.WAITING, Kind.BACK):
                print(f"... {notice.text}", flush=True)
            else:
                print(f"parley: {notice.text}", file=sys.stderr, flush=True)
            if notice.stops:
                print(f"parley: stopping the stack ({log_hint})", file=sys.stderr, flush=True)
                return False
        stopping.wait(2.0 if watcher.ever_ready else 0.5)
    return True


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--timeout",
        type=float,
        default=None,
        help="seconds before the launcher says the stack is late (PARLEY_LAUNCHER_READY_TIMEOUT_S); it keeps waiting",
    )
    parser.add_argument("--quiet", action="store_true", help="send the services' logs to the state dir")
    parser.add_argument(
        "--only", type=programs, default=frozenset(PROGRAMS), help="run only these programs (comma-separated)"
    )
    args = parser.parse_args()

    settings = LauncherSettings()
    if args.timeout is not None:
        settings.ready_timeout_s = args.timeout
    env = stack_environment(args.only)
    state_dir = Path(env["PARLEY_STATE_DIR"])
    url = gateway_url()
    output = None
    if args.quiet:
        output = open(state_dir / "stack.log", "ab")  # noqa: SIM115 (lives as long as the stack)
    supervisord = subprocess.Popen(
        [str(Path(env["PARLEY_BIN"]) / "supervisord"), "-c", str(HERE / "supervisord.conf")],
        env=env,
        stdout=output,
        stderr=subprocess.STDOUT if output else None,
    )

    stopping = threading.Event()  # set once a stop is asked: what goes down then is no news

    def stop(*_: object) -> None:
        stopping.set()
        if supervisord.poll() is None:
            supervisord.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    if "gateway" not in args.only:
        print(f"started {', '.join(sorted(args.only))} (no gateway here; Ctrl-C stops them)", flush=True)
    log_hint = f"its log: {state_dir / 'stack.log'}" if args.quiet else "its log is above"
    watcher = StackWatch(settings)
    probed = url if "gateway" in args.only else None
    started = False
    try:
        started = watch(supervisord, stopping, watcher, Supervisor(state_dir / "supervisor.sock"), probed, log_hint)
    finally:
        if not started:  # a program could not start, or the watch itself failed: no stack left unwatched
            stop()
    while True:
        try:
            code = supervisord.wait()
            return code if started else 1
        except KeyboardInterrupt:
            stop()


if __name__ == "__main__":
    raise SystemExit(main())
