"""The one way a Parley model service starts, serves and stops.

`run_service` gives every service the same life cycle:

1. bind the gRPC server at once, with health NOT_SERVING and reflection on,
   so probes and grpcurl work while the model loads;
2. register on NATS in the background (ready=false until loaded);
3. load the model in a worker thread, logging progress every few seconds;
4. flip health to SERVING and the NATS load record to ready;
5. on SIGTERM/SIGINT: report NOT_SERVING, leave NATS, give running streams
   `grace_s` to finish, then exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from nats.aio.client import Client as NatsClient
from prometheus_client import Counter, Gauge, start_http_server

from parley import __version__
from parley.logs import setup_logging
from parley.registry import StreamSlots, connect, register
from parley.settings import ServiceSettings

log = logging.getLogger(__name__)

MODEL_LOAD_SECONDS = Gauge("parley_model_load_seconds", "Seconds the model took to load", ["kind"])
STREAMS_ACTIVE = Gauge("parley_streams_active", "Streams being served", ["kind"])
STREAMS_TOTAL = Counter("parley_streams_total", "Streams served, by outcome", ["kind", "method", "outcome"])
READY = Gauge("parley_ready", "1 once the model is loaded and the service is SERVING", ["kind"])

PROGRESS_EVERY_S = 5.0

# Keepalive pings from gateways must be allowed or the server answers GOAWAY.
SERVER_OPTIONS = [
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.max_receive_message_length", 8 * 1024 * 1024),
]


@dataclass
class ServiceSpec:
    """What a service plugs into the common life cycle."""

    kind: str
    # Fully-qualified gRPC service names, for health and reflection.
    grpc_services: list[str]
    # Adds the servicer(s) to the server.
    add_servicers: Callable[[grpc.aio.Server], None]
    # Blocking model load; runs in a worker thread.
    load_model: Callable[[], None]
    # Extra NATS metadata (engine, model, ...).
    metadata: dict[str, str] = field(default_factory=dict)


class ServiceRuntime:
    """Shared state a servicer needs: its stream slots and metric labels."""

    def __init__(self, kind: str, capacity: int) -> None:
        self.kind = kind
        self.slots = StreamSlots(capacity=capacity)

    @contextlib.asynccontextmanager
    async def stream(self, method: str, context: grpc.aio.ServicerContext) -> AsyncIterator[None]:
        """Hold one stream slot for the duration of a call; count its outcome.

        A call that finds every slot taken is refused with RESOURCE_EXHAUSTED.
        """
        if self.slots.active >= self.slots.capacity:
            STREAMS_TOTAL.labels(self.kind, method, "busy").inc()
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED, f"all {self.slots.capacity} {self.kind} stream slots are busy"
            )
        self.slots.active += 1
        STREAMS_ACTIVE.labels(self.kind).inc()
        outcome = "error"
        try:
            yield
            outcome = "ok"
        except asyncio.CancelledError:
            outcome = "cancelled"
            raise
        finally:
            self.slots.active -= 1
            STREAMS_ACTIVE.labels(self.kind).dec()
            STREAMS_TOTAL.labels(self.kind, method, outcome).inc()


async def _load_with_progress(kind: str, load_model: Callable[[], None]) -> float:
    started = time.monotonic()
    log.info("loading %s model", kind)
    task = asyncio.create_task(asyncio.to_thread(load_model))
    while True:
        done, _ = await asyncio.wait({task}, timeout=PROGRESS_EVERY_S)
        if done:
            task.result()
            break
        log.info("still loading %s model (%.0f s)", kind, time.monotonic() - started)
    elapsed = time.monotonic() - started
    MODEL_LOAD_SECONDS.labels(kind).set(elapsed)
    log.info("%s model loaded in %.1f s", kind, elapsed)
    return elapsed


async def serve(settings: ServiceSettings, runtime: ServiceRuntime, spec: ServiceSpec) -> None:
    if settings.metrics_port:
        start_http_server(settings.metrics_port, addr=settings.host)
        log.info("metrics on http://%s:%d/metrics", settings.host, settings.metrics_port)

    server = grpc.aio.server(options=SERVER_OPTIONS)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    spec.add_servicers(server)
    reflection.enable_server_reflection([*spec.grpc_services, health.SERVICE_NAME, reflection.SERVICE_NAME], server)
    for name in ["", *spec.grpc_services]:
        await health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    port = server.add_insecure_port(f"{settings.host}:{settings.port}")
    await server.start()
    address = settings.advertised_address(port)
    log.info("gRPC %s listening on %s:%d (advertised as %s)", spec.kind, settings.host, port, address)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    nats_client: NatsClient | None = None

    async def join_nats() -> None:
        nonlocal nats_client
        nats_client = await connect(settings.nats_url, f"parley-{spec.kind}")
        await register(
            nats_client,
            kind=spec.kind,
            version=__version__,
            address=address,
            metadata=spec.metadata,
            load=runtime.slots.snapshot,
        )

    registration = asyncio.create_task(join_nats())
    loading = asyncio.create_task(_load_with_progress(spec.kind, spec.load_model))
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait({loading, stopping}, return_when=asyncio.FIRST_COMPLETED)
    if loading.done() and loading.exception() is None:
        runtime.slots.ready = True
        READY.labels(spec.kind).set(1)
        for name in ["", *spec.grpc_services]:
            await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.info("%s ready", spec.kind)
        await stop.wait()
    elif loading.done():
        log.error("%s model failed to load: %s", spec.kind, loading.exception())

    log.info("shutting down: draining streams for up to %.0f s", settings.grace_s)
    runtime.slots.ready = False
    READY.labels(spec.kind).set(0)
    await health_servicer.enter_graceful_shutdown()
    registration.cancel()
    if nats_client is not None and nats_client.is_connected:
        await nats_client.drain()
    await server.stop(settings.grace_s)
    loading.cancel()
    if loading.done() and not loading.cancelled() and loading.exception() is not None:
        raise SystemExit(1)


def run_service(kind: str, settings: ServiceSettings, build: Callable[[ServiceRuntime], ServiceSpec]) -> None:
    """Entry point of every model service's `__main__`."""
    setup_logging(kind, settings.log_level)
    runtime = ServiceRuntime(kind, settings.max_streams)

    async def main() -> None:
        # build() runs inside the loop so servicers may capture it.
        await serve(settings, runtime, build(runtime))

    asyncio.run(main())
