"""The installed llama.cpp is the portable build deploy/llama-cpp.toml describes, whatever CPU built it."""

from __future__ import annotations

import json
import re
import sys
import tomllib
from pathlib import Path

import llama_cpp

ROOT = Path(__file__).resolve().parents[3]
# What a build for the machine's own CPU could add (AVX-512 and AMX crashed a "same kind" machine).
NEVER = {"AVX512", "AVX512_VBMI", "AVX512_VNNI", "AVX512_BF16", "AMX_INT8", "AMX_BF16", "AMX_TILE", "AVX_VNNI"}


def installed_build() -> dict[str, object]:
    marker = Path(sys.prefix) / "parley-llama-cpp-build.json"
    assert marker.is_file(), f"llama-cpp-python was not installed by tools/llama_wheel.py (no {marker})"
    return dict(json.loads(marker.read_text()))


def cpu_features() -> set[str]:
    info = llama_cpp.llama_print_system_info().decode()
    cpu = next(part for part in info.split("\n") if part.strip().startswith("CPU"))
    return {name for name, on in re.findall(r"(\w+) = (\d)", cpu) if on == "1"}


def test_the_library_reports_exactly_the_configured_baseline() -> None:
    build = installed_build()
    profile = tomllib.loads((ROOT / "deploy" / "llama-cpp.toml").read_text())["profiles"][build["profile"]]
    assert build["cmake_args"] == profile["cmake_args"], "installed with other flags than the profile now says"
    features = cpu_features()
    assert features == set(profile["features"]), f"compiled features {sorted(features)}"
    assert not features & NEVER


def test_the_installed_version_is_the_pinned_one() -> None:
    pin = re.search(r'"llama-cpp-python==([^"]+)"', (ROOT / "services" / "llm" / "pyproject.toml").read_text())
    assert pin is not None
    assert llama_cpp.__version__ == pin.group(1) == installed_build()["version"]
