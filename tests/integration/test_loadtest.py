"""A short Locust run of loadtests/locustfile.py against the stack: every user kind works, nothing fails.

Locust runs as a subprocess: it monkey-patches the whole process for gevent, which must not
happen to pytest's own process (its asyncio tests and gRPC clients).
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from loadtests.endpoints import conversation_url, discover_tts
from tests.stack import Stack

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
# Every entry the three user kinds report: (Locust's request type, name).
EXPECTED = {
    ("WS", "connect"),
    ("WS", "voice_to_voice"),
    ("WS", "turn"),
    ("gRPC", "tts_first_audio"),
    ("gRPC", "tts_total"),
    ("POST", "speech_first_byte"),
    ("POST", "speech_total"),
    ("POST", "transcription"),
}


def test_endpoints_of_the_stack(stack: Stack) -> None:
    assert discover_tts(stack.url, "") == f"127.0.0.1:{stack.ports['tts']}"
    assert conversation_url(stack.url) == stack.ws_url
    assert conversation_url("https://pod.example:8443", "t.k") == "wss://pod.example:8443/v1/conversation?token=t.k"


def test_locust_mix_runs_without_failures(stack: Stack, tmp_path: Path) -> None:
    samples = tmp_path / "samples.jsonl"
    command = [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(ROOT / "loadtests" / "locustfile.py"),
        "--headless",
        "--host",
        stack.url,
        # Weights 2:1:1, so 4 users are 2 conversations, 1 REST client and 1 gRPC client.
        "--users",
        "4",
        "--spawn-rate",
        "4",
        "--run-time",
        "30s",
        # Turns under way at the end finish, so even a slow first turn is counted.
        "--stop-timeout",
        "90",
        "--samples-file",
        str(samples),
        "--csv",
        str(tmp_path / "run"),
        "--only-summary",
        "ConversationUser",
        "RestUser",
        "TtsGrpcUser",
    ]
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=240, check=False)
    output = result.stdout[-3000:] + result.stderr[-6000:]
    with (tmp_path / "run_stats.csv").open() as stats_file:
        rows = [row for row in csv.DictReader(stats_file) if row["Name"] != "Aggregated"]
    stats = {(row["Type"], row["Name"]): row for row in rows}
    failures = {key: int(row["Failure Count"]) for key, row in stats.items() if int(row["Failure Count"])}
    errors = [json.loads(line) for line in samples.read_text().splitlines() if not json.loads(line)["ok"]]
    assert not failures, f"{failures}\n{errors}\n{output}"
    # An exception escaping a task is no failure to Locust, only a line in this file.
    with (tmp_path / "run_exceptions.csv").open() as exceptions_file:
        exceptions = list(csv.DictReader(exceptions_file))
    assert not exceptions, f"{exceptions}\n{output}"
    missing = {key for key in EXPECTED if int(stats.get(key, {}).get("Request Count", 0)) == 0}
    assert not missing, f"never ran: {missing}\n{output}"
    assert result.returncode == 0, output
    # A conversation over loopback answers in seconds even with everything else running.
    assert float(stats[("WS", "voice_to_voice")]["Max Response Time"]) < 20000, output
