from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError
from pydantic_settings import SettingsConfigDict

from parley.settings import ServiceSettings


class ExampleSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="PARLEY_EXAMPLE_", extra="ignore", populate_by_name=True)
    port: int = 50099


def test_shared_values_keep_one_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PARLEY_NATS_URL", "nats://10.0.0.5:4222")
    monkeypatch.setenv("PARLEY_EXAMPLE_PORT", "6000")
    settings = ExampleSettings()
    assert settings.nats_url == "nats://10.0.0.5:4222"
    assert settings.port == 6000


def test_invalid_values_fail_at_start_up(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PARLEY_EXAMPLE_PORT", "not-a-port")
    with pytest.raises(ValidationError):
        ExampleSettings()
    monkeypatch.setenv("PARLEY_EXAMPLE_PORT", "1")
    monkeypatch.setenv("PARLEY_LOG_LEVEL", "chatty")
    with pytest.raises(ValidationError):
        ExampleSettings()


def test_advertised_address() -> None:
    assert ExampleSettings(host="127.0.0.1").advertised_address(5) == "127.0.0.1:5"
    assert ExampleSettings(host="0.0.0.0", advertise_host="pod-1.runpod.internal").advertised_address(5) == (
        "pod-1.runpod.internal:5"
    )
    assert not ExampleSettings(host="0.0.0.0").advertised_address(5).startswith("0.0.0.0")


def test_an_advertised_address_can_name_another_port(monkeypatch: pytest.MonkeyPatch) -> None:
    """RunPod remaps TCP ports: the bound 50053 is reached as <public ip>:40123."""
    settings = ExampleSettings(host="0.0.0.0", advertise_address="203.0.113.7:40123")
    assert settings.advertised_address(50053) == "203.0.113.7:40123"
    monkeypatch.setenv("PARLEY_ADVERTISE_ADDRESS", "pod-b.runpod.internal:50053")
    assert ExampleSettings().advertised_address(1) == "pod-b.runpod.internal:50053"
    monkeypatch.setenv("PARLEY_EXAMPLE_ADVERTISE_ADDRESS", "[::1]:7")
    assert ExampleSettings().advertised_address(1) == "[::1]:7"  # the service's own name wins
    for bad in ("no-port", "host:port", "a b:1"):
        with pytest.raises(ValidationError, match="advertise_address"):
            ExampleSettings(advertise_address=bad)


def test_nats_credentials_and_tls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert ExampleSettings().nats_options() == {}
    monkeypatch.setenv("PARLEY_NATS_TOKEN", "s3cret")
    settings = ExampleSettings()
    assert settings.nats_options() == {"token": "s3cret"}
    assert "s3cret" not in repr(settings)  # never in a log line
    creds = tmp_path / "parley.creds"
    creds.write_text("-----BEGIN NATS USER JWT-----\n")
    monkeypatch.setenv("PARLEY_NATS_CREDS", str(creds))
    with pytest.raises(ValidationError, match="one of"):
        ExampleSettings()
    monkeypatch.delenv("PARLEY_NATS_TOKEN")
    assert ExampleSettings().nats_options() == {"user_credentials": str(creds)}
    monkeypatch.setenv("PARLEY_NATS_TLS_CA", str(tmp_path / "missing.pem"))
    with pytest.raises(ValidationError, match="not a readable file"):
        ExampleSettings()


def test_tls_certificate_and_key_go_together(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cert = tmp_path / "cert.pem"
    cert.write_text("x")
    monkeypatch.setenv("PARLEY_GRPC_TLS_CERT", str(cert))
    with pytest.raises(ValidationError, match="go together"):
        ExampleSettings()
    monkeypatch.delenv("PARLEY_GRPC_TLS_CERT")
    assert ExampleSettings().grpc_server_credentials() is None
