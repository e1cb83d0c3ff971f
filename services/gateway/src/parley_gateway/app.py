"""The gateway's HTTP and WebSocket surface."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, MutableMapping
from pathlib import Path
from typing import Any

from fastapi import FastAPI, WebSocket
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from nats.aio.client import Client as NatsClient
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.websockets import WebSocketDisconnect, WebSocketState

from parley.registry import connect
from parley_gateway.access import Access, AccessMiddleware
from parley_gateway.api import auth, dialogues, monitor, speech, transcriptions, voices
from parley_gateway.api import errors as api_errors
from parley_gateway.clients import GrpcServices
from parley_gateway.config import GatewaySettings
from parley_gateway.dialogues import DialogueJobs
from parley_gateway.discovery import ServiceDirectory
from parley_gateway.metrics import ERRORS_TOTAL, SESSIONS_ACTIVE, SESSIONS_TOTAL
from parley_gateway.monitor import Monitor
from parley_gateway.protocol import (
    AudioPlayed,
    AudioPlaying,
    ErrorCode,
    InputCommit,
    ProtocolError,
    ResponseCancel,
    SessionEnd,
    SessionStart,
    TextInput,
    error_event,
    event,
    parse_client_event,
)
from parley_gateway.session import ConversationSession

log = logging.getLogger(__name__)
STATIC_DIR = Path(__file__).parent / "static"
# "Service restart": the client should reconnect (elsewhere, behind a load balancer).
CLOSE_SERVICE_RESTART = 1012


class Outbox:
    """The single writer of one WebSocket, so events keep the order they were queued in."""

    def __init__(self, websocket: WebSocket, observer: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.websocket = websocket
        self.observer = observer  # sees every event (the monitor keeps turns' timings and errors)
        self.queue: asyncio.Queue[dict[str, Any] | bytes | None] = asyncio.Queue()
        self.task = asyncio.create_task(self._run())

    def send(self, message: dict[str, Any] | bytes) -> None:
        if isinstance(message, dict):
            if message.get("type") == "error":
                ERRORS_TOTAL.labels(message.get("code", "")).inc()
            if self.observer is not None:
                self.observer(message)
        self.queue.put_nowait(message)

    async def _run(self) -> None:
        while (message := await self.queue.get()) is not None:
            if isinstance(message, bytes):
                await self.websocket.send_bytes(message)
            else:
                await self.websocket.send_json(message)

    async def close(self) -> None:
        """Deliver what is queued, then stop."""
        self.queue.put_nowait(None)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.task, timeout=5)
        self.task.cancel()


class _EndSession(Exception):
    """session.end: close the connection after the goodbye."""


class Gateway:
    def __init__(self, settings: GatewaySettings) -> None:
        self.settings = settings
        self.nats: NatsClient | None = None
        self.directory: ServiceDirectory | None = None
        self.services: GrpcServices | None = None
        self.sessions: set[ConversationSession] = set()
        # Each session's socket and writer, so a draining gateway can end it between turns.
        self.connections: dict[ConversationSession, tuple[WebSocket, Outbox]] = {}
        self.draining = False
        self.dialogues = DialogueJobs(settings.api_max_dialogues, settings.api_dialogue_keep_s)
        self.monitor = Monitor()
        self.access = Access(settings.key_list(), settings.origin_list(), settings.token_ttl_s)
        self._tasks: list[asyncio.Task[Any]] = []

    async def start(self) -> None:
        if not self.access.enabled and self.settings.host not in ("127.0.0.1", "localhost", "::1"):
            log.warning(
                "no API keys are set and the gateway listens on %s: anyone who reaches it can use it "
                "(set PARLEY_GATEWAY_API_KEYS)",
                self.settings.host,
            )
        self._tasks.append(asyncio.create_task(self._join_nats()))

    async def _join_nats(self) -> None:
        s = self.settings
        self.nats = await connect(s.nats_url, "parley-gateway", **s.nats_options())
        self.directory = ServiceDirectory(
            self.nats,
            s.discovery_interval_s,
            s.discovery_window_s,
            s.instance_ttl_s,
            s.service_health_window_s,
            tls=s.grpc_channel_credentials() if s.grpc_tls_ca is not None else None,
        )
        self.services = GrpcServices(self.directory, s.first_answer_timeout_s, s.idle_timeout_s)
        await self.directory.watch_events()
        log.info("connected to NATS; discovering services")
        await self.directory.run()

    async def drain(self) -> None:
        """Take no new session; end each live one once it is between turns; give up after `drain_s`."""
        self.draining = True
        started = time.monotonic()
        log.info(
            "draining: %d session(s) live, up to %.0f s to finish their turns",
            len(self.sessions),
            self.settings.drain_s,
        )
        while self.sessions and time.monotonic() - started < self.settings.drain_s:
            for session in [s for s in self.sessions if not s.busy and s in self.connections]:
                websocket, outbox = self.connections.pop(session)
                outbox.send(event("session.ended", session_id=session.id, reason="gateway_draining"))
                await outbox.close()
                with contextlib.suppress(Exception):  # the client may be gone already
                    await websocket.close(CLOSE_SERVICE_RESTART, "gateway restarting; reconnect")
            await asyncio.sleep(0.1)
        if self.sessions:
            log.warning("drain time over: closing %d session(s) mid-turn", len(self.sessions))
        else:
            log.info("drained in %.1f s", time.monotonic() - started)

    async def stop(self) -> None:
        for session in list(self.sessions):
            await session.close()
        await self.dialogues.close()
        for task in self._tasks:
            task.cancel()
        if self.directory is not None:
            await self.directory.close()
        if self.nats is not None and self.nats.is_connected:
            await self.nats.close()

    def missing(self) -> list[str]:
        if self.directory is None or self.nats is None or not self.nats.is_connected:
            return ["nats"]
        return self.directory.missing()

    def troubled(self) -> dict[str, dict[str, object]]:
        return self.directory.troubled() if self.directory is not None else {}

    async def converse(self, websocket: WebSocket) -> None:
        await websocket.accept()
        if self.draining:
            await websocket.send_json(error_event(ErrorCode.GATEWAY_DRAINING, "this gateway is restarting; reconnect"))
            await websocket.close(CLOSE_SERVICE_RESTART, "gateway restarting; reconnect")
            return
        outbox = Outbox(websocket, self.monitor.observe)
        session: ConversationSession | None = None
        pinger = asyncio.create_task(self._ping(outbox))
        try:
            while True:
                message = await websocket.receive()
                if message["type"] == "websocket.disconnect":
                    break
                try:
                    session = await self._handle(message, session, outbox)
                    if session is not None and session not in self.connections and session in self.sessions:
                        self.connections[session] = (websocket, outbox)
                except ProtocolError as exc:
                    outbox.send(error_event(exc.code, exc.message))
                    if exc.code in (ErrorCode.TOO_MANY_SESSIONS, ErrorCode.GATEWAY_DRAINING):
                        break
                except _EndSession:
                    break
                except Exception:
                    # A bug must not end the conversation: say so, keep the session.
                    log.exception("error handling a client message")
                    outbox.send(
                        error_event(ErrorCode.INTERNAL_ERROR, "the server failed on that event; it was dropped")
                    )
        except WebSocketDisconnect:
            pass
        finally:
            pinger.cancel()
            if session is not None:
                await session.close()
                self.sessions.discard(session)
                self.connections.pop(session, None)
                SESSIONS_ACTIVE.dec()
                log.info("session %s closed", session.id)
            await outbox.close()
            if websocket.application_state == WebSocketState.CONNECTED:
                with contextlib.suppress(Exception):
                    await websocket.close()

    async def _handle(
        self, message: MutableMapping[str, Any], session: ConversationSession | None, outbox: Outbox
    ) -> ConversationSession | None:
        """One client frame; returns the session (opened by this frame if it was session.start)."""
        if message.get("bytes") is not None:
            if session is None:
                raise ProtocolError(ErrorCode.SESSION_NOT_STARTED, "send session.start before audio")
            session.on_audio(message["bytes"])
            return session
        s = self.settings
        client_event = parse_client_event(message.get("text") or "", s.max_event_bytes, s.max_event_depth)
        if isinstance(client_event, SessionStart):
            if session is not None:
                raise ProtocolError(ErrorCode.SESSION_ALREADY_STARTED, "this connection already has a session")
            return await self._open_session(client_event, outbox)
        if session is None:
            raise ProtocolError(ErrorCode.SESSION_NOT_STARTED, "send session.start first")
        if isinstance(client_event, TextInput):
            session.on_text(client_event.text)
        elif isinstance(client_event, InputCommit):
            session.on_commit()
        elif isinstance(client_event, ResponseCancel):
            session.on_cancel()
        elif isinstance(client_event, AudioPlaying):
            session.on_audio_playing(client_event.response_id)
        elif isinstance(client_event, AudioPlayed):
            session.on_audio_played(client_event)
        elif isinstance(client_event, SessionEnd):
            outbox.send(event("session.ended", session_id=session.id))
            raise _EndSession
        return session

    async def _open_session(self, start: SessionStart, outbox: Outbox) -> ConversationSession:
        if self.draining:
            raise ProtocolError(ErrorCode.GATEWAY_DRAINING, "this gateway is restarting; reconnect")
        if len(self.sessions) >= self.settings.max_sessions:
            raise ProtocolError(
                ErrorCode.TOO_MANY_SESSIONS, f"the gateway is at its limit of {self.settings.max_sessions} sessions"
            )
        if self.services is None:
            raise ProtocolError(ErrorCode.SERVICE_UNAVAILABLE, "the gateway is not connected to NATS yet")
        voice = start.voice or self.settings.voice
        if voice:
            known = await self.services.voices()
            if known is not None and voice not in known:
                known = await self.services.voices(fresh=True)
            # None: no TTS instance can say right now; the first reply will tell.
            if known is not None and voice not in known:
                raise ProtocolError(
                    ErrorCode.UNKNOWN_VOICE, f"unknown voice {voice!r}; the TTS service has: {', '.join(sorted(known))}"
                )
            if known is not None and not known[voice]:
                raise ProtocolError(
                    ErrorCode.VOICE_UNAVAILABLE,
                    f"{voice!r} is a cloned voice and no running TTS engine can clone: cloning needs the "
                    "fireredtts2 engine (PARLEY_TTS_ENGINES=piper,fireredtts2, on a GPU)",
                )
        session = ConversationSession(self.settings, self.services, outbox.send, start)
        self.sessions.add(session)
        SESSIONS_TOTAL.inc()
        SESSIONS_ACTIVE.inc()
        log.info("session %s started", session.id)
        outbox.send(
            event(
                "session.started",
                session_id=session.id,
                output_sample_rate=self.settings.output_sample_rate,
                input_sample_rate=start.input_sample_rate,
            )
        )
        return session

    async def _ping(self, outbox: Outbox) -> None:
        # Proxies (RunPod's Cloudflare) drop sockets idle for ~100 s.
        while True:
            await asyncio.sleep(self.settings.ping_interval_s)
            outbox.send(event("ping"))


def create_app(settings: GatewaySettings) -> FastAPI:
    gateway = Gateway(settings)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await gateway.start()
        yield
        await gateway.stop()

    app = FastAPI(title="Parley gateway", lifespan=lifespan)
    app.state.gateway = gateway
    api_errors.install(app)
    app.add_middleware(AccessMiddleware, access=gateway.access)
    for area in (auth, speech, transcriptions, voices, dialogues, monitor):
        app.include_router(area.router)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        """503 naming the kinds with no ready instance, and the kinds that crashed or failed to start lately."""
        missing, troubled = gateway.missing(), gateway.troubled()
        body: dict[str, Any] = {"status": "draining" if gateway.draining else "not ready" if missing else "ready"}
        if missing:
            body["missing"] = missing
        if troubled:
            body["crashing"] = troubled
        return JSONResponse(body, status_code=503 if missing or gateway.draining else 200)

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/services")
    async def services() -> dict[str, Any]:
        """Every known model-service instance, its address and its load; and recent crashes by kind."""
        if gateway.directory is None:
            return {}
        return {**gateway.directory.snapshot(), "crashing": gateway.troubled()}

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.websocket("/v1/conversation")
    async def conversation(websocket: WebSocket) -> None:
        await gateway.converse(websocket)

    return app
