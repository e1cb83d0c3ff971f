"""Settings shared by every Parley process.

Every knob is an environment variable starting with PARLEY_. Each service
subclasses `ServiceSettings` with its own prefix (PARLEY_ASR_, PARLEY_TTS_, ...);
the few values all processes share (NATS address, log level, state directory)
keep one name everywhere through validation aliases.
"""

from __future__ import annotations

import socket
from pathlib import Path

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def _shared(name: str) -> AliasChoices:
    """A field read from one PARLEY_ variable whatever the subclass prefix."""
    return AliasChoices(f"PARLEY_{name}")


class CommonSettings(BaseSettings):
    """Values every process reads under the same variable name."""

    model_config = SettingsConfigDict(env_prefix="PARLEY_", extra="ignore", populate_by_name=True)

    nats_url: str = Field(
        default="nats://127.0.0.1:4222",
        validation_alias=_shared("NATS_URL"),
        description="NATS server(s), comma-separated.",
    )
    log_level: str = Field(
        default="INFO", validation_alias=_shared("LOG_LEVEL"), description="DEBUG, INFO, WARNING or ERROR."
    )
    state_dir: Path = Field(
        default=Path(".parley"),
        validation_alias=_shared("STATE_DIR"),
        description="Where local state lives (NATS JetStream data, logs, caches).",
    )

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        upper = value.upper()
        if upper not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
            raise ValueError("must be DEBUG, INFO, WARNING or ERROR")
        return upper


class ServiceSettings(CommonSettings):
    """Settings of a gRPC model service; subclasses set env_prefix and `port`."""

    host: str = Field(default="127.0.0.1", description="Address the gRPC server binds.")
    port: int = Field(default=0, ge=0, le=65535, description="gRPC port.")
    advertise_host: str = Field(
        default="",
        description="Host other processes use to reach this one; empty means the bind "
        "host, or this machine's hostname when binding every interface.",
    )
    metrics_port: int = Field(default=0, ge=0, le=65535, description="Prometheus /metrics port; 0 turns it off.")
    max_queue: int = Field(
        default=16,
        ge=0,
        description="Streams admitted beyond those being served, waiting in order for a free model; "
        "past that an instance refuses (RESOURCE_EXHAUSTED) and the gateway tries another.",
    )
    queue_timeout_s: float = Field(
        default=30.0, gt=0, description="Longest a stream waits for a free model before it is refused."
    )
    grace_s: float = Field(default=5.0, ge=0, description="Seconds running streams get to finish on SIGTERM.")

    def advertised_address(self, bound_port: int) -> str:
        host = self.advertise_host or self.host
        if host in {"0.0.0.0", "::", ""}:
            host = socket.gethostname()
        return f"{host}:{bound_port}"
