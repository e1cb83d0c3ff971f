"""Instances side by side and across hosts: routing, SIGKILL, draining, credentials, TLS.

Each test runs its own small cluster (NATS, one gateway, TTS instances: the HTTP
speech route needs only TTS), so it can kill and drain instances without
disturbing the shared stack. "Another host" is another loopback address
(127.0.0.2) behind a port forwarder, as RunPod's remapped TCP ports are: the
instance binds one port and advertises another.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import os
import signal
import ssl
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import httpx
import nats
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from nats.errors import NoServersError
from prometheus_client.parser import text_string_to_metric_families

from parley.registry import InstanceLoad, connect, register
from tests.stack import free_port, start_nats

pytestmark = pytest.mark.integration

LONG_TEXT = " ".join(
    f"Sentence number {n} of a long answer, read aloud while the operator restarts things." for n in range(22)
)
SPEECH = {"model": "tts-1", "voice": "joe", "response_format": "pcm"}
TOKEN = "nats-test-token"


@dataclass
class Cluster:
    nats_url: str
    gateway_url: str
    logs: Path
    env: dict[str, str]  # what every process of the cluster shares (NATS, credentials, TLS)
    processes: list[asyncio.subprocess.Process] = field(default_factory=list)

    async def spawn(self, module: str, name: str, **env: str) -> asyncio.subprocess.Process:
        log = (self.logs / f"{name}.log").open("ab")
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", module, env={**os.environ, **self.env, **env}, stdout=log, stderr=log
        )
        self.processes.append(process)
        return process

    async def tts(self, name: str, port: int, metrics_port: int = 0, **env: str) -> asyncio.subprocess.Process:
        return await self.spawn(
            "parley_tts",
            name,
            PARLEY_TTS_PORT=str(port),
            PARLEY_TTS_METRICS_PORT=str(metrics_port),
            PARLEY_TTS_INSTANCES="1",
            PARLEY_TTS_GRACE_S="60",
            **env,
        )

    async def services(self) -> dict[str, Any]:
        async with httpx.AsyncClient() as http:
            return dict((await http.get(f"{self.gateway_url}/v1/services")).json())

    async def tts_until(self, check: Callable[[list[dict[str, Any]]], bool], timeout_s: float = 90) -> list[Any]:
        deadline = time.monotonic() + timeout_s
        while True:
            with suppress(httpx.HTTPError):
                found = (await self.services()).get("tts", [])
                if check(found):
                    return list(found)
            if time.monotonic() > deadline:
                logs = {p.name: p.read_text(errors="replace")[-1500:] for p in self.logs.glob("*.log")}
                raise AssertionError(f"not within {timeout_s} s: {found if 'found' in locals() else None}\n{logs}")
            await asyncio.sleep(0.2)

    async def routable(self, *addresses: str) -> None:
        """Wait until exactly these TTS addresses are routed to (ready and SERVING)."""

        def check(found: list[dict[str, Any]]) -> bool:
            live = {i["address"] for i in found if i["ready"] and i["serving"] and not i["stopping"]}
            return live == set(addresses)

        await self.tts_until(check)

    async def stop(self) -> None:
        for process in self.processes:
            if process.returncode is None:
                process.kill()
                await process.wait()


@asynccontextmanager
async def cluster(tmp_path: Path, nats_options: tuple[str, ...] = (), **env: str) -> AsyncIterator[Cluster]:
    nats_port, gateway_port = free_port(), free_port()
    scheme = "tls" if "--tls" in nats_options else "nats"
    nats_url = f"{scheme}://127.0.0.1:{nats_port}"
    server = start_nats(nats_port, None, *nats_options)
    shared = {"PARLEY_NATS_URL": nats_url, "PARLEY_STATE_DIR": str(tmp_path), **env}
    running = Cluster(nats_url, f"http://127.0.0.1:{gateway_port}", tmp_path, shared)
    try:
        await running.spawn(
            "parley_gateway",
            "gateway",
            PARLEY_GATEWAY_PORT=str(gateway_port),
            PARLEY_GATEWAY_DISCOVERY_INTERVAL_S="0.5",
        )
        yield running
    finally:
        await running.stop()
        server.kill()
        server.wait()


async def speak(gateway_url: str, text: str = "Hello from the other instance.") -> bytes:
    async with httpx.AsyncClient(timeout=60) as http:
        response = await http.post(f"{gateway_url}/v1/audio/speech", json={**SPEECH, "input": text})
        assert response.status_code == 200, response.text
        return response.content


async def streams_reaching(metrics_port: int) -> float:
    """Every stream an instance saw, by its own Prometheus count (served, refused, cut)."""
    async with httpx.AsyncClient() as http:
        text = (await http.get(f"http://127.0.0.1:{metrics_port}/metrics")).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        if family.name == "parley_streams"
        for sample in family.samples
        if sample.name == "parley_streams_total"
    )


def streams_served(found: list[dict[str, Any]]) -> dict[str, int]:
    """Per TTS address, the streams the gateway opened there (its own count)."""
    return {i["address"]: int(i["held_by_gateway"]) for i in found}


async def test_tts_instances_share_streams_survive_a_kill_and_drain_without_losing_one(tmp_path: Path) -> None:
    async with cluster(tmp_path) as c:
        ports = {name: free_port() for name in ("a", "b", "c")}
        metrics = {name: free_port() for name in ("b", "c")}
        address = {name: f"127.0.0.1:{port}" for name, port in ports.items()}
        processes = {"a": await c.tts("tts-a", ports["a"])}
        await c.routable(address["a"])

        # SIGKILL mid-stream: that stream fails loudly (a truncated body is an error, never a short
        # answer), and the next one goes to the instance that is left.
        async with (
            httpx.AsyncClient(timeout=60) as http,
            http.stream("POST", f"{c.gateway_url}/v1/audio/speech", json={**SPEECH, "input": LONG_TEXT}) as killed,
        ):
            assert killed.status_code == 200
            chunks = killed.aiter_raw()
            await anext(chunks)
            processes["b"] = await c.tts("tts-b", ports["b"], metrics["b"])
            await c.routable(address["a"], address["b"])
            processes["a"].send_signal(signal.SIGKILL)
            with pytest.raises(httpx.RemoteProtocolError):
                async for _ in chunks:
                    pass
        started = time.monotonic()
        assert len(await speak(c.gateway_url)) > 24000  # > 0.5 s of 24 kHz PCM16
        assert time.monotonic() - started < 10
        await c.routable(address["b"])

        # Two instances: concurrent streams spread over both.
        processes["c"] = await c.tts("tts-c", ports["c"], metrics["c"])
        await c.routable(address["b"], address["c"])
        spread: dict[str, int] = {}

        async def held_during_burst() -> None:
            for _ in range(40):
                for addr, held in streams_served(await c.tts_until(lambda _: True)).items():
                    spread[addr] = max(spread.get(addr, 0), held)
                await asyncio.sleep(0.05)

        watcher = asyncio.create_task(held_during_burst())
        await asyncio.gather(*(speak(c.gateway_url, LONG_TEXT[:600]) for _ in range(6)))
        watcher.cancel()
        assert spread.get(address["b"], 0) >= 1 and spread.get(address["c"], 0) >= 1, spread

        # SIGTERM with a stream in flight: it completes; no new stream reaches the draining instance.
        reference = await speak(c.gateway_url, LONG_TEXT)
        async with (
            httpx.AsyncClient(timeout=120) as http,
            http.stream("POST", f"{c.gateway_url}/v1/audio/speech", json={**SPEECH, "input": LONG_TEXT}) as drained,
        ):
            chunks = drained.aiter_raw()
            received = bytearray(await anext(chunks))
            found = await c.tts_until(lambda found: sum(i["held_by_gateway"] for i in found) == 1)
            holder = next(addr for addr, held in streams_served(found).items() if held)
            name = next(name for name in ("b", "c") if address[name] == holder)
            victim, survivor = processes[name], address["c" if name == "b" else "b"]
            reached_before = await streams_reaching(metrics[name])
            victim.send_signal(signal.SIGTERM)
            await c.tts_until(lambda found: any(i["address"] == holder and i["stopping"] for i in found))
            for _ in range(3):
                await speak(c.gateway_url)
            assert await streams_reaching(metrics[name]) == reached_before  # not even refused there
            assert victim.returncode is None  # still draining: its stream is not done
            async for chunk in chunks:
                received += chunk
        # The stream ended properly (a cut one raises, as above) and is as long as the same text
        # spoken undisturbed (Piper's durations vary a little from run to run).
        assert 0.8 < len(received) / len(reference) < 1.25, (len(received), len(reference))
        assert await asyncio.wait_for(victim.wait(), timeout=15) == 0
        await c.routable(survivor)


@dataclass
class Certificates:
    ca: Path
    cert: Path
    key: Path


def make_certificates(directory: Path) -> Certificates:
    """A throw-away CA and a server certificate for both loopback "hosts"."""
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "parley test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    names = [
        x509.DNSName("localhost"),
        *(x509.IPAddress(ipaddress.ip_address(ip)) for ip in ("127.0.0.1", "127.0.0.2")),
    ]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    paths = Certificates(directory / "ca.pem", directory / "cert.pem", directory / "key.pem")
    paths.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths.key.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return paths


@asynccontextmanager
async def not_serving(called: list[str]) -> AsyncIterator[str]:
    """A gRPC server whose health says NOT_SERVING; it records every method called on it.

    Generic handlers only see methods no servicer serves, hence health records its own calls.
    """

    class Recorder(grpc.GenericRpcHandler):
        def service(self, handler_call_details: grpc.HandlerCallDetails) -> None:
            called.append(handler_call_details.method)  # type: ignore[attr-defined]
            return None  # UNIMPLEMENTED, unless health answers it

    class RecordedHealth(health.aio.HealthServicer):
        async def Check(  # noqa: N802 (the gRPC method's name)
            self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext[Any, Any]
        ) -> health_pb2.HealthCheckResponse:
            called.append("/grpc.health.v1.Health/Check")
            return await super().Check(request, context)

    server = grpc.aio.server()
    server.add_generic_rpc_handlers([Recorder()])
    checks = RecordedHealth()
    health_pb2_grpc.add_HealthServicer_to_server(checks, server)
    await checks.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(0)


@dataclass
class Forwarder:
    """A TCP port that leads to another, as a remapped RunPod TCP port or a NAT does."""

    server: asyncio.Server
    connections: int = 0


async def forward(listen: tuple[str, int], target: tuple[str, int]) -> Forwarder:
    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with suppress(ConnectionError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        forwarder.connections += 1
        target_reader, target_writer = await asyncio.open_connection(*target)
        await asyncio.gather(pipe(reader, target_writer), pipe(target_reader, writer))

    forwarder = Forwarder(await asyncio.start_server(handle, *listen))
    return forwarder


async def test_a_service_on_another_host_joins_through_nats_credentials_and_tls(tmp_path: Path) -> None:
    pki = make_certificates(tmp_path / "pki")
    nats_options = ("--auth", TOKEN, "--tls", "--tlscert", str(pki.cert), "--tlskey", str(pki.key))
    secure = {"PARLEY_NATS_TOKEN": TOKEN, "PARLEY_NATS_TLS_CA": str(pki.ca), "PARLEY_GRPC_TLS_CA": str(pki.ca)}
    async with cluster(tmp_path, nats_options, **secure) as c:
        # "Host B" binds 127.0.0.2:<bound>, is reached at 127.0.0.2:<advertised>, and serves TLS only.
        bound, advertised = free_port(), free_port()
        forwarder = await forward(("127.0.0.2", advertised), ("127.0.0.2", bound))
        await c.tts(
            "host-b",
            bound,
            PARLEY_TTS_HOST="127.0.0.2",
            PARLEY_ADVERTISE_ADDRESS=f"127.0.0.2:{advertised}",
            PARLEY_GRPC_TLS_CERT=str(pki.cert),
            PARLEY_GRPC_TLS_KEY=str(pki.key),
        )
        await c.routable(f"127.0.0.2:{advertised}")
        [instance] = await c.tts_until(lambda found: len(found) == 1)
        assert instance["tls"]
        assert len(await speak(c.gateway_url)) > 24000
        assert forwarder.connections >= 1  # through the advertised port, not the bound one

        tls = ssl.create_default_context(cafile=str(pki.ca))
        # Without the token, NATS turns a would-be instance away.
        with pytest.raises((nats.errors.Error, NoServersError), match=r"uthorization|no servers"):
            await nats.connect(c.nats_url, tls=tls, allow_reconnect=False, max_reconnect_attempts=0, connect_timeout=2)
        # With it, an instance whose own gRPC health does not say SERVING is listed but never routed to.
        impostor = await connect(c.nats_url, "impostor", token=TOKEN, tls=tls)
        called: list[str] = []
        async with not_serving(called) as impostor_address:
            try:
                await register(
                    impostor,
                    kind="tts",
                    version="0.0.1",
                    address=impostor_address,
                    metadata={},
                    load=lambda: InstanceLoad(ready=True, active=0, capacity=8),
                )
                await c.tts_until(lambda found: len(found) == 2)
                await asyncio.sleep(1.0)  # a few discovery polls: its health was asked
                for _ in range(4):
                    await speak(c.gateway_url)
                fake = next(i for i in await c.tts_until(lambda _: True) if i["id"] != instance["id"])
                assert not fake["serving"]
                assert "/grpc.health.v1.Health/Check" in called and all("Health" in m for m in called), called
            finally:
                await impostor.close()
        forwarder.server.close()
