"""`python -m parley_gateway`: serve the web page, the WebSocket API and health."""

from __future__ import annotations

import uvicorn

from parley.logs import setup_logging
from parley_gateway.app import create_app
from parley_gateway.config import GatewaySettings


def main() -> None:
    settings = GatewaySettings()
    setup_logging("gateway", settings.log_level)
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_config=None,  # keep our log format
        access_log=settings.access_log,
        ws_max_size=settings.max_message_bytes,
        ws_ping_interval=settings.ping_interval_s,
        timeout_graceful_shutdown=5,
    )


if __name__ == "__main__":
    main()
