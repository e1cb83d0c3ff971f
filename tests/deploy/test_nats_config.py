"""The nats-server config `make run` and the RunPod image write (deploy/run_stack.py)."""

from __future__ import annotations

import subprocess
from pathlib import Path
from types import ModuleType

import pytest

from parley.settings import CommonSettings
from tests.deploy.scripts import deploy_module
from tests.stack import NATS_SERVER


def run_stack() -> ModuleType:
    return deploy_module("run_stack")


def test_the_token_goes_into_a_private_config_that_nats_server_accepts(tmp_path: Path) -> None:
    settings = CommonSettings(nats_url="nats://127.0.0.1:4333", nats_token="s3cret")  # type: ignore[arg-type]
    path = run_stack().write_nats_config(settings, tmp_path, "0.0.0.0")
    text = path.read_text()
    assert 'listen: "0.0.0.0:4333"' in text and 'token: "s3cret"' in text
    assert path.stat().st_mode & 0o077 == 0  # only its owner reads the token
    checked = subprocess.run([NATS_SERVER, "-c", str(path), "-t"], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr


def test_nats_is_never_opened_beyond_loopback_without_credentials(tmp_path: Path) -> None:
    settings = CommonSettings(nats_url="nats://127.0.0.1:4333")
    assert "authorization" not in run_stack().write_nats_config(settings, tmp_path, "").read_text()
    with pytest.raises(SystemExit, match="PARLEY_NATS_TOKEN"):
        run_stack().write_nats_config(settings, tmp_path, "0.0.0.0")
