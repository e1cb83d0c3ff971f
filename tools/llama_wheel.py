"""Build llama-cpp-python once per flag set, for a portable CPU baseline, and install it.

    python tools/llama_wheel.py install [--profile cpu] [--python .venv/bin/python]
    python tools/llama_wheel.py build   [--profile cpu]     # only fill the cache
    python tools/llama_wheel.py show    [--profile cpu]     # the cache key and wheel path

The flags live in deploy/llama-cpp.toml, the version is the pin in
services/llm/pyproject.toml. A wheel is compiled into
`<cache>/llama-cpp-python/<version>-<profile>-<hash of the flags>/` and reused from
there, never from pip's own cache (keyed by the sdist alone, it would hand back a
wheel compiled with other flags, or for another CPU). `install` puts it into the
target environment unless that exact build is already there, and records which
build it is in `<env>/parley-llama-cpp-build.json` (services/llm/tests/test_build.py
checks the library against it).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "deploy" / "llama-cpp.toml"
PIN_FILE = ROOT / "services" / "llm" / "pyproject.toml"
MARKER = "parley-llama-cpp-build.json"
PROGRESS_EVERY_S = 20.0


@dataclass(frozen=True)
class Build:
    version: str
    profile: str
    cmake_args: tuple[str, ...]
    features: tuple[str, ...]

    @property
    def key(self) -> str:
        flags = hashlib.sha256("\n".join(self.cmake_args).encode()).hexdigest()[:12]
        return f"{self.version}-{self.profile}-{flags}"

    def record(self) -> dict[str, object]:
        return {
            "version": self.version,
            "profile": self.profile,
            "key": self.key,
            "cmake_args": list(self.cmake_args),
            "features": list(self.features),
        }


def pinned_version() -> str:
    match = re.search(r'"llama-cpp-python==([^"]+)"', PIN_FILE.read_text())
    if match is None:
        raise SystemExit(f"no llama-cpp-python==X pin in {PIN_FILE}")
    return match.group(1)


def load_build(profile: str) -> Build:
    profiles = tomllib.loads(CONFIG.read_text())["profiles"]
    if profile not in profiles:
        raise SystemExit(f"unknown profile {profile!r}; {CONFIG.name} has {', '.join(sorted(profiles))}")
    spec = profiles[profile]
    machine = platform.machine()
    if machine not in spec["machines"]:
        raise SystemExit(
            f"profile {profile!r} is for {', '.join(spec['machines'])}, this machine is {machine}: "
            f"add a portable profile for it to {CONFIG}"
        )
    return Build(pinned_version(), profile, tuple(spec["cmake_args"]), tuple(spec["features"]))


@contextlib.contextmanager
def locked(directory: Path) -> Iterator[None]:
    """One build of a key at a time, even from two `make` runs."""
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def cached_wheel(directory: Path) -> Path | None:
    wheels = sorted(directory.glob("llama_cpp_python-*.whl"))
    return wheels[-1] if wheels else None


def _report_progress(log_path: Path, started: float, done: threading.Event) -> None:
    step = re.compile(rb"\[(\d+)/(\d+)\]")
    while not done.wait(PROGRESS_EVERY_S):
        found = step.findall(log_path.read_bytes()[-20_000:]) if log_path.exists() else []
        where = f"step {found[-1][0].decode()}/{found[-1][1].decode()}" if found else "preparing"
        print(f"  ... compiling llama.cpp: {where}, {time.monotonic() - started:.0f} s", flush=True)


def build_wheel(build: Build, cache: Path, python: str) -> Path:
    directory = cache / "llama-cpp-python" / build.key
    with locked(directory):
        wheel = cached_wheel(directory)
        if wheel is not None:
            return wheel
        print(
            f"Compiling llama-cpp-python {build.version} for profile {build.profile!r} (once; ~5-10 min on 2 cores)",
            flush=True,
        )
        env = dict(os.environ)
        env.update(
            CMAKE_ARGS=" ".join(build.cmake_args),
            FORCE_CMAKE="1",
            CMAKE_BUILD_PARALLEL_LEVEL=env.get("CMAKE_BUILD_PARALLEL_LEVEL") or str(os.cpu_count() or 2),
        )
        log_path = directory / "build.log"
        started = time.monotonic()
        done = threading.Event()
        reporter = threading.Thread(target=_report_progress, args=(log_path, started, done), daemon=True)
        with tempfile.TemporaryDirectory(dir=directory) as out, open(log_path, "wb") as log:
            reporter.start()
            try:
                result = subprocess.run(
                    [
                        python, "-m", "pip", "wheel", "--verbose", "--no-deps", "--no-cache-dir",
                        "--no-binary", "llama-cpp-python", "--wheel-dir", out, f"llama-cpp-python=={build.version}",
                    ],
                    env=env, stdout=log, stderr=subprocess.STDOUT, check=False,
                )  # fmt: skip
            finally:
                done.set()
            if result.returncode != 0:
                tail = log_path.read_text(errors="replace")[-4000:]
                raise SystemExit(f"llama-cpp-python failed to build (full log: {log_path}):\n{tail}")
            [built] = Path(out).glob("llama_cpp_python-*.whl")
            wheel = directory / built.name
            shutil.move(built, wheel)
        (directory / "build.json").write_text(json.dumps(build.record(), indent=2) + "\n")
        print(f"Built {wheel.name} in {time.monotonic() - started:.0f} s -> {directory}", flush=True)
        return wheel


def environment_prefix(python: str) -> Path:
    out = subprocess.run([python, "-c", "import sys; print(sys.prefix)"], capture_output=True, text=True, check=True)
    return Path(out.stdout.strip())


def install(build: Build, cache: Path, python: str) -> None:
    marker = environment_prefix(python) / MARKER
    installed = json.loads(marker.read_text()) if marker.exists() else {}
    wheel = build_wheel(build, cache, python)
    if installed.get("key") == build.key:
        return
    print(f"Installing {wheel.name} ({build.key})", flush=True)
    subprocess.run(
        [python, "-m", "pip", "install", "--quiet", "--no-deps", "--force-reinstall", str(wheel)], check=True
    )
    marker.write_text(json.dumps(build.record(), indent=2) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["install", "build", "show"])
    parser.add_argument("--profile", default="cpu", help="a [profiles.X] of deploy/llama-cpp.toml")
    parser.add_argument("--python", default=sys.executable, help="the environment to install into")
    parser.add_argument("--cache", type=Path, default=ROOT / ".parley" / "wheels", help="where built wheels are kept")
    args = parser.parse_args()
    build = load_build(args.profile)
    cache = args.cache.resolve()
    if args.command == "show":
        directory = cache / "llama-cpp-python" / build.key
        print(json.dumps({**build.record(), "wheel": str(cached_wheel(directory) or "")}, indent=2))
    elif args.command == "build":
        build_wheel(build, cache, args.python)
    else:
        install(build, cache, args.python)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
