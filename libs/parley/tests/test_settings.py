from __future__ import annotations

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
