"""`python -m parley_gateway`: serve the web page, the WebSocket API and health.

SIGTERM drains (no new session, live ones finish their turn, `PARLEY_GATEWAY_DRAIN_S` at most)
before uvicorn's own shutdown, which would cut every socket at once; a second SIGTERM, or
SIGINT (Ctrl-C), stops at once.
"""

from __future__ import annotations

import asyncio
import signal
from types import FrameType

import uvicorn

from parley.logs import setup_logging
from parley_gateway.app import Gateway, create_app
from parley_gateway.config import GatewaySettings


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, gateway: Gateway) -> None:
        super().__init__(config)
        self.gateway = gateway
        self._draining = False
        self._drain: asyncio.Task[None] | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if sig != signal.SIGTERM or self._draining or self.should_exit:
            super().handle_exit(sig, frame)
            return
        self._draining = True
        # A signal handler runs between two steps of the loop: schedule, never run, the drain here.
        asyncio.get_running_loop().call_soon_threadsafe(self._start_drain)

    def _start_drain(self) -> None:
        async def drain_then_exit() -> None:
            try:
                await self.gateway.drain()
            finally:
                self.should_exit = True

        self._drain = asyncio.get_running_loop().create_task(drain_then_exit())


def main() -> None:
    settings = GatewaySettings()
    setup_logging("gateway", settings.log_level)
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,  # keep our log format
        access_log=settings.access_log,
        ws_max_size=settings.max_message_bytes,
        ws_ping_interval=settings.ping_interval_s,
        timeout_graceful_shutdown=5,
    )
    DrainingServer(config, app.state.gateway).run()


if __name__ == "__main__":
    main()
