"""Settings shared by every Parley process.

Every knob is an environment variable starting with PARLEY_. Each service
subclasses `ServiceSettings` with its own prefix (PARLEY_ASR_, PARLEY_TTS_, ...);
the few values all processes share (NATS address, log level, state directory)
keep one name everywhere through validation aliases.
"""

from __future__ import annotations

import os
import re
import socket
import ssl
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol, Self

import grpc
from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def _shared(name: str) -> AliasChoices:
    """A field read from one PARLEY_ variable whatever the subclass prefix."""
    return AliasChoices(f"PARLEY_{name}")


class _Described(Protocol):
    @property
    def description(self) -> str: ...


def catalogue_choice(catalogue: Mapping[str, _Described], default: str, lead: str, tail: str) -> Any:
    """A setting that names one entry of a catalogue: only its names pass, and its help lists them all."""
    return Field(
        default=default,
        pattern=f"^({'|'.join(map(re.escape, catalogue))})$",
        description=lead + "; ".join(f"{name}: {entry.description}" for name, entry in catalogue.items()) + tail,
    )


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

    # Who may talk to NATS. Without credentials anything that reaches the server can register a
    # fake model service or read every event: any NATS reachable beyond loopback needs them.
    nats_token: SecretStr = Field(
        default=SecretStr(""),
        validation_alias=_shared("NATS_TOKEN"),
        description="NATS token (the server runs with `--auth <token>`); empty means none.",
    )
    nats_creds: Path | None = Field(
        default=None,
        validation_alias=_shared("NATS_CREDS"),
        description="NATS credentials file (JWT + nkey seed, decentralised auth).",
    )
    nats_nkey_seed: Path | None = Field(
        default=None,
        validation_alias=_shared("NATS_NKEY_SEED"),
        description="File holding an nkey seed (`SU...`), for servers configured with nkey users.",
    )
    nats_tls_ca: Path | None = Field(
        default=None,
        validation_alias=_shared("NATS_TLS_CA"),
        description="CA bundle that signed the NATS server's certificate; setting it turns TLS on.",
    )
    nats_tls_cert: Path | None = Field(
        default=None, validation_alias=_shared("NATS_TLS_CERT"), description="Client certificate for NATS mutual TLS."
    )
    nats_tls_key: Path | None = Field(
        default=None, validation_alias=_shared("NATS_TLS_KEY"), description="Private key of `PARLEY_NATS_TLS_CERT`."
    )
    # gRPC between the gateway and the model services. Plain text by default (loopback, one pod,
    # a compose network); TLS when services are reached over a network others share.
    grpc_tls_cert: Path | None = Field(
        default=None,
        validation_alias=_shared("GRPC_TLS_CERT"),
        description="A model service's gRPC certificate (PEM); with `PARLEY_GRPC_TLS_KEY` it serves TLS only.",
    )
    grpc_tls_key: Path | None = Field(
        default=None, validation_alias=_shared("GRPC_TLS_KEY"), description="Private key of `PARLEY_GRPC_TLS_CERT`."
    )
    grpc_tls_ca: Path | None = Field(
        default=None,
        validation_alias=_shared("GRPC_TLS_CA"),
        description="CA bundle the gateway trusts for services that serve TLS; empty means the system roots.",
    )

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        upper = value.upper()
        if upper not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
            raise ValueError("must be DEBUG, INFO, WARNING or ERROR")
        return upper

    @field_validator(
        "nats_creds",
        "nats_nkey_seed",
        "nats_tls_ca",
        "nats_tls_cert",
        "nats_tls_key",
        "grpc_tls_cert",
        "grpc_tls_key",
        "grpc_tls_ca",
    )
    @classmethod
    def _readable_file(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"{value} is not a readable file")
        return value

    @model_validator(mode="after")
    def _pairs_complete(self) -> Self:
        if (self.nats_tls_cert is None) != (self.nats_tls_key is None):
            raise ValueError("PARLEY_NATS_TLS_CERT and PARLEY_NATS_TLS_KEY go together")
        if (self.grpc_tls_cert is None) != (self.grpc_tls_key is None):
            raise ValueError("PARLEY_GRPC_TLS_CERT and PARLEY_GRPC_TLS_KEY go together")
        if sum(bool(x) for x in (self.nats_token.get_secret_value(), self.nats_creds, self.nats_nkey_seed)) > 1:
            raise ValueError("set one of PARLEY_NATS_TOKEN, PARLEY_NATS_CREDS, PARLEY_NATS_NKEY_SEED")
        return self

    def nats_options(self) -> dict[str, Any]:
        """Keyword arguments for `nats.connect`: credentials and TLS."""
        options: dict[str, Any] = {}
        if token := self.nats_token.get_secret_value():
            options["token"] = token
        if self.nats_creds is not None:
            options["user_credentials"] = str(self.nats_creds)
        if self.nats_nkey_seed is not None:
            options["nkeys_seed"] = str(self.nats_nkey_seed)
        if self.nats_tls_ca is not None or self.nats_tls_cert is not None:
            context = ssl.create_default_context(cafile=str(self.nats_tls_ca) if self.nats_tls_ca else None)
            if self.nats_tls_cert is not None and self.nats_tls_key is not None:
                context.load_cert_chain(str(self.nats_tls_cert), str(self.nats_tls_key))
            options["tls"] = context
        return options

    def grpc_channel_credentials(self) -> grpc.ChannelCredentials:
        """What the gateway trusts when a service says it serves TLS."""
        roots = self.grpc_tls_ca.read_bytes() if self.grpc_tls_ca is not None else None
        return grpc.ssl_channel_credentials(root_certificates=roots)


class ServiceSettings(CommonSettings):
    """Settings of a gRPC model service; subclasses set env_prefix and `port`."""

    host: str = Field(default="127.0.0.1", description="Address the gRPC server binds.")
    port: int = Field(default=0, ge=0, le=65535, description="gRPC port.")
    advertise_host: str = Field(
        default="",
        description="Host other processes use to reach this one; empty means the bind "
        "host, or this machine's hostname when binding every interface.",
    )
    advertise_address: str = Field(
        default="",
        pattern=r"^$|^[^\s:]+:\d{1,5}$|^\[[0-9a-fA-F:.]+\]:\d{1,5}$",
        description="`host:port` other processes use, when the port they reach is not the bound one (a "
        "remapped RunPod TCP port, a NAT); overrides `advertise_host`. `PARLEY_ADVERTISE_ADDRESS` sets it "
        "for a process that runs one service (a container, a pod).",
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

    @model_validator(mode="before")
    @classmethod
    def _process_wide_address(cls, data: Any) -> Any:
        # A container runs one service: let it say PARLEY_ADVERTISE_ADDRESS whatever the service.
        shared = os.environ.get("PARLEY_ADVERTISE_ADDRESS", "")
        if shared and isinstance(data, dict) and not data.get("advertise_address"):
            data = {**data, "advertise_address": shared}
        return data

    def grpc_server_credentials(self) -> grpc.ServerCredentials | None:
        """TLS for the gRPC server when a certificate is set; None serves plain text."""
        if self.grpc_tls_cert is None or self.grpc_tls_key is None:
            return None
        return grpc.ssl_server_credentials([(self.grpc_tls_key.read_bytes(), self.grpc_tls_cert.read_bytes())])

    def advertised_address(self, bound_port: int) -> str:
        if self.advertise_address:
            return self.advertise_address
        host = self.advertise_host or self.host
        if host in {"0.0.0.0", "::", ""}:
            host = socket.gethostname()
        return f"{host}:{bound_port}"
