"""The gateway's HTTP and WebSocket surface."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, MutableMapping
from pathlib import Path
from typing import Any

from fastapi import FastAPI, WebSocket
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from nats.aio.client import Client as NatsClient
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.websockets import WebSocketDisconnect, WebSocketState

from parley.registry import connect, keep_trying
from parley_gateway.access import Access, AccessMiddleware
from parley_gateway.api import auth, dialogues, monitor, speech, transcriptions, voices
from parley_gateway.api import errors as api_errors
from parley_gateway.audit import AuditLog, AuditMiddleware
from parley_gateway.clients import GrpcServices, ServiceError
from parley_gateway.config import GatewaySettings
from parley_gateway.dialogues import DialogueJobs
from parley_gateway.discovery import ServiceDirectory
from parley_gateway.guard import ConnectionGuard
from parley_gateway.history import History
from parley_gateway.limits import ClientIds, ErrorThrottle, RateLimitMiddleware, RequestLimits, SessionSlots
from parley_gateway.metrics import ERRORS_TOTAL, LIMITED_TOTAL, SESSIONS_ACTIVE, SESSIONS_TOTAL
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
from parley_gateway.session_store import (
    SessionRecord,
    SessionStore,
    StoredSession,
    new_resume_token,
    new_session_id,
)

log = logging.getLogger(__name__)
STATIC_DIR = Path(__file__).parent / "static"
# "Service restart": the client should reconnect (elsewhere, behind a load balancer).
CLOSE_SERVICE_RESTART = 1012
CLOSE_WAIT_S = 5.0  # longest wait to get the close frame out
RESUME_STORE_WAIT_S = 5.0  # longest wait for the session store before a resume is answered (within the start deadline)


class Outbox:
    """The single writer of one WebSocket, so events keep the order they were queued in.

    Bounded: past `max_bytes` waiting to be sent the client is taken as not reading; what waits
    is dropped and `on_overflow` ends the connection. Error events pass `errors` (at most so
    many a second, then one `errors_suppressed` summary a second).
    """

    def __init__(
        self,
        websocket: WebSocket,
        observer: Callable[[dict[str, Any]], None] | None = None,
        max_bytes: int = 0,
        errors: ErrorThrottle | None = None,
        on_overflow: Callable[[], None] | None = None,
    ) -> None:
        self.websocket = websocket
        self.observer = observer  # sees every event (the monitor keeps turns' timings and errors)
        self.max_bytes = max_bytes  # 0: unbounded
        self.errors = errors
        self.on_overflow = on_overflow
        self.queue: asyncio.Queue[str | bytes | None] = asyncio.Queue()
        self.queued_bytes = 0
        self.overflowed = False
        self._summary: asyncio.TimerHandle | None = None
        self.task = asyncio.create_task(self._run())

    def send(self, message: dict[str, Any] | bytes) -> None:
        errors = self.errors
        if isinstance(message, dict) and message.get("type") == "error" and errors and not errors.admit():
            if self._summary is None:  # one summary a second says how many were held back
                delay = errors.summary_in() or 0.0
                self._summary = asyncio.get_running_loop().call_later(delay, self._send_summary)
            return
        self.send_now(message)

    def send_now(self, message: dict[str, Any] | bytes) -> None:
        """Queue `message` past the error throttle (a limit's own last word before it closes the socket)."""
        if self.overflowed:
            return
        if isinstance(message, dict):
            if message.get("type") == "error":
                ERRORS_TOTAL.labels(message.get("code", "")).inc()
            if self.observer is not None:
                self.observer(message)
            data: str | bytes = json.dumps(message, ensure_ascii=False, separators=(",", ":"))
        else:
            data = message
        self.queued_bytes += len(data)
        # Past the bound with more than this message waiting: the writer is behind (one big message is not).
        if self.max_bytes and self.queued_bytes > max(self.max_bytes, len(data)):
            self._overflow()
            return
        self.queue.put_nowait(data)

    def _send_summary(self) -> None:
        self._summary = None
        assert self.errors is not None
        count = self.errors.summary()
        if count:
            LIMITED_TOTAL.labels(ErrorCode.ERRORS_SUPPRESSED.value).inc(count)
            message = f"{count} more error(s) were not sent: at most {self.errors.per_second} a second"
            self.send_now({**error_event(ErrorCode.ERRORS_SUPPRESSED, message), "count": count})

    def _overflow(self) -> None:
        """The client does not read: drop what waits, stop writing, and have the connection ended."""
        self.overflowed = True
        LIMITED_TOTAL.labels("not_reading").inc()
        log.warning("a client does not read: over %d bytes wait to be sent to it; disconnecting", self.max_bytes)
        while not self.queue.empty():
            self.queue.get_nowait()
        self.queued_bytes = 0
        self.task.cancel()
        if self.on_overflow is not None:
            self.on_overflow()

    async def _run(self) -> None:
        while (message := await self.queue.get()) is not None:
            self.queued_bytes -= len(message)
            if isinstance(message, bytes):
                await self.websocket.send_bytes(message)
            else:
                await self.websocket.send_text(message)

    async def close(self) -> None:
        """Deliver what is queued (errors held back included in a last summary), then stop."""
        if self._summary is not None:
            self._summary.cancel()
            self._send_summary()
        if self.overflowed or self.task.done():
            return
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
        self.access = Access(
            settings.key_list(), settings.origin_list(), settings.token_ttl_s, allowed_hosts=settings.host_list()
        )
        # Limits per client and per gateway (limits.py), and the audit log.
        self.clients = ClientIds(self.access, settings.proxy_list())
        self.slots = SessionSlots(settings.max_sessions, settings.max_sessions_per_client)
        self.request_limits = RequestLimits(settings.api_requests_per_minute, settings.api_uploads_per_minute)
        self.audit = AuditLog(settings.audit_log_path, settings.audit_content)
        self.id = f"gw_{uuid.uuid4().hex[:12]}"
        self.store = SessionStore(settings.session_ttl_s)
        self.stored: dict[ConversationSession, StoredSession] = {}
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
        self._tasks.append(asyncio.create_task(keep_trying(self.store.bind, self.nats, "binding the session store")))
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
                await self._end_connection(session, "gateway_draining", CLOSE_SERVICE_RESTART)
            await asyncio.sleep(0.1)
        if self.sessions:
            log.warning("drain time over: closing %d session(s) mid-turn", len(self.sessions))
        else:
            log.info("drained in %.1f s", time.monotonic() - started)

    async def _end_connection(self, session: ConversationSession, reason: str, code: int = 1000) -> None:
        """Say `session.ended` with `reason` and close the session's socket (its loop then cleans up)."""
        pair = self.connections.pop(session, None)
        if pair is None:
            return
        websocket, outbox = pair
        outbox.send(event("session.ended", session_id=session.id, reason=reason))
        await outbox.close()
        with contextlib.suppress(Exception):  # the client may be gone already
            await asyncio.wait_for(websocket.close(code, reason), timeout=5)  # a client that never reads

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
        """Kinds with no routable instance (NATS itself only before the first connection)."""
        if self.directory is None:
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
        client = self.clients.of(websocket.scope)
        guard = ConnectionGuard(websocket, client, self.settings, self.slots, self.audit, self.monitor.observe)
        if not await guard.open():
            return
        outbox = Outbox(websocket, guard.observe, self.settings.max_outbound_bytes, guard.errors, guard.not_reading)
        guard.watch(outbox.send_now)
        session: ConversationSession | None = None
        pinger = asyncio.create_task(self._ping(outbox))
        try:
            while True:
                message = await guard.receive()
                if message["type"] == "websocket.disconnect":
                    break
                try:
                    if not guard.admit(message, session):
                        continue
                    session = guard.session = await self._handle(message, session, outbox)
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
            guard.close()
            if session is not None:
                await session.close()
                self.sessions.discard(session)
                self.connections.pop(session, None)
                stored = self.stored.pop(session, None)
                if stored is not None:
                    await stored.flush()
                SESSIONS_ACTIVE.dec()
                log.info("session %s closed", session.id)
            await outbox.close()
            if websocket.application_state == WebSocketState.CONNECTED:
                with contextlib.suppress(Exception):
                    # Bounded: a client that does not read never lets the close frame out.
                    await asyncio.wait_for(websocket.close(guard.close_code, guard.close_reason), CLOSE_WAIT_S)

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
            stored = self.stored.pop(session, None)
            if stored is not None:
                stored.retire()
                with contextlib.suppress(Exception):  # NATS away: it expires on its own
                    await self.store.delete(session.id)
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
        resumed = await self._resumable(start) if start.session_id else None
        options = start if resumed is None else start.over(resumed[0].options)
        await self._check_voice(options.voice or self.settings.voice)
        s = self.settings
        if resumed is None:
            session_id, token = new_session_id(), new_resume_token()
            history = History(s.history_max_turns, s.history_max_tokens)
            stored = StoredSession.new(
                self.store, session_id, token, options.conversation_options(), history, owner=self.id
            )
        else:
            record, revision, history = resumed
            session_id, token = record.id, start.resume_token or ""
            record.owner, record.options = self.id, options.conversation_options()
            stored = StoredSession(self.store, record, revision, history, on_lost=lambda: None)
        session = ConversationSession(
            s,
            self.services,
            outbox.send,
            options,
            session_id=session_id,
            history=history,
            on_history_change=stored.changed,
        )
        stored.on_lost = lambda: self._taken_over(session)
        stored.changed()  # a new session is resumable at once; a resumed one now belongs here
        self.stored[session] = stored
        self.sessions.add(session)
        SESSIONS_TOTAL.inc()
        SESSIONS_ACTIVE.inc()
        log.info("session %s %s", session.id, "resumed" if resumed else "started")
        extra: dict[str, Any] = {}
        if resumed is not None:
            extra["history"] = [{"role": t.role, "content": t.content} for t in history]
        outbox.send(
            event(
                "session.started",
                session_id=session.id,
                resume_token=token,
                resumed=resumed is not None,
                output_sample_rate=s.output_sample_rate,
                input_sample_rate=options.input_sample_rate,
                **extra,
            )
        )
        return session

    async def _resumable(self, start: SessionStart) -> tuple[SessionRecord, int | None, History]:
        """The session `start` resumes: live here (its socket is closed), or from the store; else refused."""
        assert start.session_id is not None
        token = start.resume_token or ""
        refused = ProtocolError(
            ErrorCode.SESSION_NOT_FOUND,
            f"no session {start.session_id} to resume (unknown, expired, or another resume_token); "
            "send session.start without session_id for a new one",
        )
        live = next((x for x in self.sessions if x.id == start.session_id and x in self.stored), None)
        if live is not None:
            stored = self.stored[live]
            if not stored.record.token_matches(token):
                raise refused
            # The client came back before its old socket was noticed gone: that one ends here.
            await self._end_connection(live, "resumed_elsewhere")
            await stored.flush()
            stored.retire()  # the old copy writes no more
            self.stored.pop(live, None)
            return stored.record, stored.revision, live.history
        # A client that reconnects to a gateway just restarted may come before its store is bound: it
        # waits for it rather than being told its conversation is gone.
        await self.store.wait_bound(RESUME_STORE_WAIT_S)
        found = await self.store.load(start.session_id)
        if found is None or not found[0].token_matches(token):
            raise refused
        record, revision = found
        s = self.settings
        return record, revision, History(s.history_max_turns, s.history_max_tokens, record.turns, record.next_seq)

    def _taken_over(self, session: ConversationSession) -> None:
        task = asyncio.get_running_loop().create_task(self._end_connection(session, "taken_over"))
        self._tasks.append(task)

    async def _check_voice(self, voice: str) -> None:
        if not voice or self.services is None:
            return
        known = await self.services.voices()
        if known is not None and voice not in known:
            known = await self.services.voices(fresh=True)
        # None: no TTS instance can say right now; the first reply will tell.
        if known is not None and voice not in known:
            raise ProtocolError(
                ErrorCode.UNKNOWN_VOICE, f"unknown voice {voice!r}; the TTS service has: {', '.join(sorted(known))}"
            )
        try:  # a TTS instance that can speak it is up (the same check that routes its replies)
            await self.services.tts_engines([voice])
        except ServiceError as exc:
            raise ProtocolError(exc.code, exc.message) from None

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
    # The last added runs first: audit (sees every answer), then the key check, then the rate limits.
    app.add_middleware(RateLimitMiddleware, limits=gateway.request_limits, clients=gateway.clients)
    app.add_middleware(AccessMiddleware, access=gateway.access)
    app.add_middleware(AuditMiddleware, audit=gateway.audit, clients=gateway.clients)
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
        if gateway.nats is not None and not gateway.nats.is_connected:
            body["nats"] = "reconnecting: routing to the instances known, checked over gRPC health"
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
