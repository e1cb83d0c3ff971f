#!/usr/bin/env python3
"""Download Parley's bigger models into a models directory, checked and resumable.

    runpod/fetch-models                  # every default set into $PARLEY_MODELS_DIR (/workspace/models)
    runpod/fetch-models whisper llm      # only these sets
    runpod/fetch-models --list           # what is there, what is missing (no network)
    runpod/fetch-models --env            # `export PARLEY_...=...` lines for the sets that are there

The sets live in runpod/models.toml (docs/models.md describes them). Each file streams into
`<file>.part`; an interrupted download resumes from there (HTTP Range), on the next retry or
the next run. Nothing goes into place before its checksum is verified: the manifest's sha256
when it has one, else the hub's own (X-Linked-Etag: the sha256 of an LFS file; ETag: the git
blob id of a small file). A verified file is recorded in
`<models dir>/.fetch-models/<set>/<path>.sha256` with its size and mtime, so later runs skip it
without hashing gigabytes again.

Exit status: 0 when every file is in place and verified, 1 when some file failed (each is
named at the end), 2 for bad usage or a bad manifest. `--list` exits 1 when a file is missing.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import re
import shlex
import shutil
import sys
import time
import tomllib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import ParamSpec, Protocol, TextIO, TypeVar
from urllib.parse import quote

try:
    import httpx
    import tenacity
    from tqdm import tqdm
except ModuleNotFoundError as missing:  # the operator ran it with a bare python3
    sys.exit(
        f"fetch-models needs httpx, tenacity and tqdm ({missing.name} is missing): pip install httpx tenacity tqdm"
    )

HERE = Path(__file__).resolve().parent
DEFAULT_MANIFEST = HERE / "models.toml"
DEFAULT_MODELS_DIR = "/workspace/models"
DEFAULT_BASE_URL = "https://huggingface.co"
STATE_DIR = ".fetch-models"  # sidecars and the lock, inside the models dir so they survive with it
CHUNK = 1 << 20
PROGRESS_EVERY_S = 5.0  # plain progress lines (logs, the RunPod web terminal) this often
MAX_RETRY_WAIT_S = 60.0
MAX_REDIRECTS = 5

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_SHA1 = re.compile(r"^[0-9a-f]{40}$")
_SET_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
_ENV_NAME = re.compile(r"^[A-Z_][A-Z0-9_]*$")
_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
_PLACEHOLDERS = ("dir", "models_dir")

P = ParamSpec("P")
T = TypeVar("T")


# --- the manifest --------------------------------------------------------------------------------


class ManifestError(Exception):
    """The manifest cannot be read or says something impossible (exit status 2)."""


@dataclass(frozen=True)
class ModelFile:
    path: str  # inside the repository, and under the set's target directory
    sha256: str | None = None
    size: int | None = None
    optional: bool = False  # a 404 for it is a note, not a failure


@dataclass(frozen=True)
class ModelSet:
    name: str
    target: str  # directory under the models dir
    repo: str
    revision: str
    files: tuple[ModelFile, ...]
    settings: Mapping[str, str] = field(default_factory=dict)
    description: str = ""
    default: bool = True  # fetched when no set is named

    def directory(self, models_dir: Path) -> Path:
        return models_dir / self.target

    def environment(self, models_dir: Path) -> dict[str, str]:
        """The settings with {dir} and {models_dir} filled in."""
        values = {"dir": str(self.directory(models_dir)), "models_dir": str(models_dir)}
        return {key: _PLACEHOLDER.sub(lambda m: values[m.group(1)], raw) for key, raw in self.settings.items()}


def load_manifest(path: Path) -> dict[str, ModelSet]:
    """Every set of the manifest, in its order; ManifestError names what is wrong and where."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise ManifestError(f"cannot read the manifest {path}: {error.strerror or error}") from error
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise ManifestError(f"{path} is not valid TOML: {error}") from error
    tables = data.get("sets")
    if not isinstance(tables, dict) or not tables:
        raise ManifestError(f"{path}: no [sets.<name>] tables")
    return {name: _parse_set(f"{path}: sets.{name}", name, table) for name, table in tables.items()}


def _parse_set(where: str, name: str, table: object) -> ModelSet:
    if not _SET_NAME.match(name):
        raise ManifestError(f"{where}: a set name is lower-case letters, digits, '.', '_' or '-'")
    if not isinstance(table, dict):
        raise ManifestError(f"{where} is not a table")
    known = {"description", "target", "repo", "revision", "files", "settings", "default"}
    if unknown := sorted(set(table) - known):
        raise ManifestError(f"{where}: unknown keys {unknown}")
    repo = _string(table, "repo", where)
    if repo.count("/") != 1 or not all(repo.split("/")):
        raise ManifestError(f"{where}: repo must be <owner>/<name>, not {repo!r}")
    files = table.get("files")
    if not isinstance(files, list) or not files:
        raise ManifestError(f"{where}: files must be a non-empty list")
    parsed = tuple(_parse_file(f"{where}: files[{i}]", entry) for i, entry in enumerate(files))
    paths = [model_file.path for model_file in parsed]
    if duplicates := sorted({p for p in paths if paths.count(p) > 1}):
        raise ManifestError(f"{where}: files listed twice: {duplicates}")
    default = table.get("default", True)
    if not isinstance(default, bool):
        raise ManifestError(f"{where}: default must be true or false")
    description = table.get("description", "")
    if not isinstance(description, str):
        raise ManifestError(f"{where}: description must be a string")
    return ModelSet(
        name=name,
        target=_relative(_string(table, "target", where), f"{where}: target"),
        repo=repo,
        revision=_string(table, "revision", where),
        files=parsed,
        settings=_parse_settings(where, table.get("settings", {})),
        description=description,
        default=default,
    )


def _parse_file(where: str, entry: object) -> ModelFile:
    if not isinstance(entry, dict):
        raise ManifestError(f'{where} must be a table such as {{ path = "model.bin" }}')
    if unknown := sorted(set(entry) - {"path", "sha256", "size", "optional"}):
        raise ManifestError(f"{where}: unknown keys {unknown}")
    sha256 = entry.get("sha256")
    if sha256 is not None and (not isinstance(sha256, str) or not _SHA256.match(sha256)):
        raise ManifestError(f"{where}: sha256 must be 64 lower-case hex digits")
    size = entry.get("size")
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 0):
        raise ManifestError(f"{where}: size must be a whole number of bytes")
    optional = entry.get("optional", False)
    if not isinstance(optional, bool):
        raise ManifestError(f"{where}: optional must be true or false")
    return ModelFile(_relative(_string(entry, "path", where), f"{where}: path"), sha256, size, optional)


def _parse_settings(where: str, settings: object) -> dict[str, str]:
    if not isinstance(settings, dict):
        raise ManifestError(f'{where}: settings must be a table of NAME = "value"')
    for key, value in settings.items():
        if not _ENV_NAME.match(key) or not isinstance(value, str):
            raise ManifestError(f"{where}: settings.{key} must be an upper-case variable with a string value")
        if bad := [p for p in _PLACEHOLDER.findall(value) if p not in _PLACEHOLDERS]:
            raise ManifestError(
                f"{where}: settings.{key}: unknown placeholder {{{bad[0]}}} (use {{dir}}, {{models_dir}})"
            )
    return dict(settings)


def _string(table: Mapping[str, object], key: str, where: str) -> str:
    value = table.get(key)
    if not isinstance(value, str) or not value.strip():
        raise ManifestError(f"{where}: {key} must be a non-empty string")
    return value


def _relative(value: str, where: str) -> str:
    """A relative path that stays inside its directory (the manifest decides where files are written)."""
    path = PurePosixPath(value)
    if "\\" in value or path.is_absolute() or not path.parts or ".." in path.parts or path.parts == (".",):
        raise ManifestError(f"{where}: {value!r} must be a relative path without '..'")
    return str(path)


# --- checksums -----------------------------------------------------------------------------------


class Sha256Progress:
    """The sha256 of a .part file's first `offset` bytes, kept up to date as the file grows.

    A download that resumes hashes what the earlier attempts wrote once, then each new chunk as it is
    written, so a multi-gigabyte file is not read back in full after it arrives.
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._hash = hashlib.sha256()
        self.offset = 0

    def update(self, chunk: bytes) -> None:
        self._hash.update(chunk)
        self.offset += len(chunk)

    def catch_up(self, path: Path) -> None:
        """Hash the bytes of `path` past `offset`; start over if the file is shorter than what was hashed."""
        size = path.stat().st_size if path.exists() else 0
        if size < self.offset:
            self.reset()
        if size == self.offset:
            return
        with path.open("rb") as stream:
            stream.seek(self.offset)
            while chunk := stream.read(CHUNK):
                self.update(chunk)

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


def file_sha256(path: Path, progress: Progress | None = None) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(CHUNK):
            digest.update(chunk)
            if progress is not None:
                progress.update(len(chunk))
    return digest.hexdigest()


def git_blob_sha1(path: Path) -> str:
    """The id git gives the file's content: what the hub sends as ETag for a file not stored in LFS."""
    digest = hashlib.sha1(f"blob {path.stat().st_size}\0".encode(), usedforsecurity=False)
    with path.open("rb") as stream:
        while chunk := stream.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _etag_value(header: str | None, pattern: re.Pattern[str]) -> str | None:
    """The hex digest in an (X-Linked-)ETag header, or None when it is not a digest of this kind."""
    if not header:
        return None
    value = header.strip().removeprefix("W/").strip('"').lower()
    return value if pattern.match(value) else None


def _int_header(value: str | None) -> int | None:
    return int(value) if value is not None and value.strip().isdigit() else None


# --- progress ------------------------------------------------------------------------------------


class Progress(Protocol):
    """A tqdm bar or a LineProgress."""

    def update(self, n: int) -> object: ...

    def close(self) -> None: ...


class LineProgress:
    """A plain line every few seconds: a terminal-less log shows a bar as thousands of updates."""

    def __init__(self, out: TextIO, label: str, total: int | None, initial: int, every_s: float) -> None:
        self.out, self.label, self.total, self.every_s = out, label, total, every_s
        self.done = initial
        self.last = time.monotonic()
        self.last_done = initial
        self.printed = False

    def update(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if now - self.last >= self.every_s:
            self._line(self.done - self.last_done, now - self.last)
            self.last, self.last_done = now, self.done

    def close(self) -> None:
        if self.printed:  # small files finish before the first line: their "ok" line says enough
            now = time.monotonic()
            self._line(self.done - self.last_done, now - self.last)

    def _line(self, delta: int, seconds: float) -> None:
        share = f" ({100 * self.done // self.total}%)" if self.total else ""
        rate = f", {human_size(int(delta / seconds))}/s" if seconds > 0 else ""
        total = f" of {human_size(self.total)}" if self.total is not None else ""
        print(f"    {self.label}: {human_size(self.done)}{total}{share}{rate}", file=self.out, flush=True)
        self.printed = True


def human_size(size: int) -> str:
    if size < 1024:
        return f"{size} B"
    value, unit = size / 1024, "KiB"
    for bigger in ("MiB", "GiB"):
        if value < 1024:
            break
        value, unit = value / 1024, bigger
    return f"{value:.1f} {unit}"


# --- fetching ------------------------------------------------------------------------------------


class FetchError(Exception):
    """One file cannot be fetched or verified; the message is what the operator reads."""


class NotInRepository(FetchError):
    """The hub answers 404 for the file."""


class TransientError(Exception):
    """A failure worth retrying (connection lost, timeout, 5xx, 429): the .part is kept."""


@dataclass(frozen=True)
class Options:
    models_dir: Path
    base_url: str = DEFAULT_BASE_URL
    token: str | None = None
    attempts: int = 6  # the first try and five retries
    retry_wait_s: float = 2.0  # first backoff; doubles up to MAX_RETRY_WAIT_S
    progress_every_s: float = PROGRESS_EVERY_S


@dataclass(frozen=True)
class Expected:
    """What the file must be: the manifest's pins, else what the hub says about it."""

    sha256: str | None
    git_sha1: str | None
    size: int | None
    source: str  # "manifest", "hub" or "" (nothing known)


@dataclass(frozen=True)
class Record:
    """A sidecar: the sha256 a file in place had when it was verified, and how to tell it is unchanged."""

    sha256: str
    size: int
    mtime_ns: int
    file: str
    url: str


@dataclass
class Job:
    model_set: ModelSet
    file: ModelFile
    dest: Path
    part: Path
    sidecar: Path
    url: str
    hasher: Sha256Progress = field(default_factory=Sha256Progress)
    expected: Expected | None = None

    @property
    def label(self) -> str:
        return self.file.path


def make_job(model_set: ModelSet, model_file: ModelFile, models_dir: Path, base_url: str) -> Job:
    dest = model_set.directory(models_dir) / model_file.path
    sidecar = models_dir / STATE_DIR / model_set.name / f"{model_file.path}.sha256"
    revision = quote(model_set.revision, safe="")  # a revision such as refs/pr/1 is one URL segment
    url = f"{base_url}/{model_set.repo}/resolve/{revision}/{quote(model_file.path)}"
    return Job(model_set, model_file, dest, dest.with_name(dest.name + ".part"), sidecar, url)


@dataclass(frozen=True)
class Failure:
    set_name: str
    path: str
    reason: str


class Fetcher:
    """Fetches model sets one file at a time, reporting on `out`."""

    def __init__(self, client: httpx.Client, options: Options, out: TextIO) -> None:
        self.client, self.options, self.out = client, options, out
        self.tty = out.isatty()
        self.base_host = httpx.URL(options.base_url).host
        self.commits_noted: set[str] = set()

    def run(self, sets: Sequence[ModelSet]) -> list[Failure]:
        failures: list[Failure] = []
        for model_set in sets:
            failures.extend(self.fetch_set(model_set))
        return failures

    def fetch_set(self, model_set: ModelSet) -> list[Failure]:
        directory = model_set.directory(self.options.models_dir)
        self._say(f"== {model_set.name}: {model_set.repo} @ {model_set.revision} -> {directory}")
        failures = []
        for model_file in model_set.files:
            job = make_job(model_set, model_file, self.options.models_dir, self.options.base_url)
            try:
                self._say(f"  {job.label}: {self._fetch(job)}")
            except NotInRepository as error:
                if not model_file.optional:
                    failures.append(Failure(model_set.name, model_file.path, str(error)))
                    self._say(f"  {job.label}: FAILED: {error}")
                else:
                    self._say(f"  {job.label}: not in the repository (optional): skipped")
            except (FetchError, OSError) as error:  # OSError: the disk, e.g. a rename or a record that failed
                failures.append(Failure(model_set.name, model_file.path, str(error)))
                self._say(f"  {job.label}: FAILED: {error}")
        return failures

    def _fetch(self, job: Job) -> str:
        """Make the file right and say how; FetchError when it cannot be."""
        if job.dest.is_file():
            record = read_record(job)
            pinned = job.file.sha256
            if record is not None and (record.sha256 == pinned if pinned else record.url == job.url):
                return "present (verified earlier)"
            if self._in_place_is_right(job, record):
                job.part.unlink(missing_ok=True)  # left by an earlier attempt to replace it
                return "present (verified now)"
        self._download(job)
        return f"downloaded and verified ({human_size(job.dest.stat().st_size)})"

    # --- a file already in place ---

    def _in_place_is_right(self, job: Job, record: Record | None) -> bool:
        """Check a file in place once (hashing it unless a valid sidecar knows its sha256) and record it."""
        size = job.dest.stat().st_size
        if job.file.sha256:  # the manifest's pin needs no network
            expected = Expected(job.file.sha256, None, job.file.size, "manifest")
        else:
            try:
                expected = self._expected(job)
            except NotInRepository:
                self._say(f"  {job.label}: warning: the hub has no such file any more; keeping the one in place")
                return True
        if expected.size is not None and size != expected.size:
            self._say(f"  {job.label}: the file in place has {size} bytes, not {expected.size}: fetching it again")
            return False
        sha256 = record.sha256 if record is not None else self._hash_in_place(job, size)
        if expected.sha256 is not None and sha256 != expected.sha256:
            self._say(f"  {job.label}: the file in place does not match (sha256 {sha256}, expected {expected.sha256})")
            return False
        if expected.sha256 is None and expected.git_sha1 is not None and git_blob_sha1(job.dest) != expected.git_sha1:
            self._say(f"  {job.label}: the file in place does not match the hub's git blob id {expected.git_sha1}")
            return False
        if expected.sha256 is None and expected.git_sha1 is None:
            self._say(f"  {job.label}: warning: no checksum known; keeping the file in place ({size} bytes)")
        write_record(job, sha256)
        return True

    def _hash_in_place(self, job: Job, size: int) -> str:
        self._say(f"  {job.label}: checking the file in place ({human_size(size)})")
        progress = self._progress(f"{job.label} (checking)", size, 0)
        try:
            return file_sha256(job.dest, progress)
        finally:
            progress.close()

    # --- what the file must be ---

    def _expected(self, job: Job) -> Expected:
        """The manifest's pins, completed by the hub's checksum and size (probed once per file)."""
        if job.expected is None:
            sha256, git_sha1, size = self._retrying(job.label, self._probe, job)
            pinned = job.file
            if pinned.sha256 and sha256 and pinned.sha256 != sha256:
                raise FetchError(
                    f"the manifest pins sha256 {pinned.sha256} but the hub has {sha256} at revision "
                    f"{job.model_set.revision}: fix runpod/models.toml"
                )
            if pinned.size is not None and size is not None and pinned.size != size:
                raise FetchError(
                    f"the manifest says {pinned.size} bytes but the hub has {size}: fix runpod/models.toml"
                )
            if pinned.sha256:
                job.expected = Expected(
                    pinned.sha256, None, pinned.size if pinned.size is not None else size, "manifest"
                )
            else:
                source = "hub" if sha256 or git_sha1 else ""
                job.expected = Expected(sha256, git_sha1, pinned.size if pinned.size is not None else size, source)
        return job.expected

    def _probe(self, job: Job) -> tuple[str | None, str | None, int | None]:
        """(sha256, git blob id, size) from HEAD requests on the resolve URL, redirects followed by hand.

        The hub answers an LFS file with a redirect to its storage that carries X-Linked-Etag (the
        sha256) and X-Linked-Size; a small file with 200 and its git blob id as ETag. The storage's own
        ETag means something else, so an ETag counts only from the hub's host.
        """
        url = job.url
        for _ in range(MAX_REDIRECTS + 1):
            try:
                response = self.client.head(url, headers=self._auth(url), follow_redirects=False)
            except httpx.TransportError as error:
                raise TransientError(f"HEAD {url}: {error or type(error).__name__}") from error
            self._raise_for_status(job, response)
            self._note_commit(job, response.headers.get("x-repo-commit"))
            sha256 = _etag_value(response.headers.get("x-linked-etag"), _SHA256)
            size = _int_header(response.headers.get("x-linked-size"))
            if sha256 is not None:
                return sha256, None, size
            if response.is_redirect and "location" in response.headers:
                url = str(response.url.join(response.headers["location"]))
                continue
            if not response.is_success:  # a mirror without HEAD: go on with the manifest's pins only
                self._say(f"  {job.label}: note: HEAD answered HTTP {response.status_code}; no checksum from the hub")
                return None, None, None
            from_hub = response.url.host == self.base_host
            git_sha1 = _etag_value(response.headers.get("etag"), _SHA1) if from_hub else None
            if size is None and "content-encoding" not in response.headers:
                size = _int_header(response.headers.get("content-length"))
            return None, git_sha1, size
        raise FetchError(f"more than {MAX_REDIRECTS} redirects from {job.url}")

    def _note_commit(self, job: Job, commit: str | None) -> None:
        """Say once which commit a branch revision resolved to: pinning the set is then one edit."""
        revision = job.model_set.revision
        if commit and _SHA1.match(commit) and commit != revision and job.model_set.name not in self.commits_noted:
            self.commits_noted.add(job.model_set.name)
            self._say(f'  note: {revision} is commit {commit} (set revision = "{commit}" to pin it)')

    def _raise_for_status(self, job: Job, response: httpx.Response) -> None:
        status = response.status_code
        if status == 404:
            # The hub says which: RepoNotFound, RevisionNotFound or EntryNotFound.
            code = f" {response.headers['x-error-code']}" if "x-error-code" in response.headers else ""
            raise NotInRepository(f"not in {job.model_set.repo} at revision {job.model_set.revision} (HTTP 404{code})")
        if status in (401, 403):
            hint = "check HF_TOKEN" if self.options.token else "set HF_TOKEN if the repository is gated or private"
            raise FetchError(f"access denied (HTTP {status}): {hint}")
        if status == 429 or status >= 500:
            raise TransientError(f"HTTP {status} from {response.url.host}")

    # --- downloading ---

    def _download(self, job: Job) -> None:
        expected = self._expected(job)
        job.dest.parent.mkdir(parents=True, exist_ok=True)
        self._retrying(job.label, self._download_once, job, expected)
        sha256 = self._verify_part(job, expected)
        os.replace(job.part, job.dest)  # same directory: atomic, so the file in place is never half-written
        write_record(job, sha256)

    def _download_once(self, job: Job, expected: Expected) -> None:
        """One attempt: resume or start the .part and stream the rest into it; TransientError to retry."""
        offset = job.part.stat().st_size if job.part.exists() else 0
        if expected.size is not None and offset > expected.size:
            job.part.unlink()
            offset = 0
        if expected.size is not None and offset == expected.size:
            return  # an earlier run got every byte; verification decides
        self._check_space(job, expected, offset)
        headers = self._auth(job.url) | ({"Range": f"bytes={offset}-"} if offset else {})
        total: int | None = None
        try:
            with self.client.stream("GET", job.url, headers=headers, follow_redirects=True) as response:
                if response.status_code == 416 and offset:
                    if _range_total(response.headers.get("content-range")) == offset:
                        return  # the .part is already the whole file
                    job.part.unlink()
                    raise TransientError("the server cannot resume this .part; starting over")
                self._raise_for_status(job, response)
                if not response.is_success:
                    raise FetchError(f"HTTP {response.status_code} from {response.url.host}")
                mode = "ab"
                if offset and response.status_code == 206:
                    start = _range_start(response.headers.get("content-range"))
                    if start != offset:
                        job.part.unlink()
                        raise TransientError(
                            f"asked to resume at byte {offset}, the server sent {start}; starting over"
                        )
                    job.hasher.catch_up(job.part)
                else:
                    if offset:
                        self._say(f"  {job.label}: the server ignored the resume request (HTTP 200): starting over")
                    offset, mode = 0, "wb"
                    job.hasher.reset()
                total = expected.size if expected.size is not None else _response_total(response)
                if offset == 0:
                    self._say(f"  {job.label}: downloading {human_size(total) if total is not None else ''}".rstrip())
                else:
                    self._say(f"  {job.label}: resuming at {human_size(offset)}")
                self._stream(job, response, mode, total, offset)
        except httpx.TransportError as error:
            raise TransientError(f"connection lost: {error or type(error).__name__}") from error
        got = job.part.stat().st_size
        if total is not None and got < total:
            raise TransientError(f"the connection closed at {got} of {total} bytes")

    def _stream(self, job: Job, response: httpx.Response, mode: str, total: int | None, offset: int) -> None:
        progress = self._progress(job.label, total, offset)
        try:
            with job.part.open(mode) as stream:
                # As received: a chunk size would make httpx hold bytes back, lost if the connection drops.
                for chunk in response.iter_bytes():
                    stream.write(chunk)
                    job.hasher.update(chunk)
                    progress.update(len(chunk))
                stream.flush()
                os.fsync(stream.fileno())  # the pod may be stopped any time: the bytes counted are on disk
        except OSError as error:
            raise FetchError(f"cannot write {job.part}: {error.strerror or error}") from error
        finally:
            progress.close()

    def _check_space(self, job: Job, expected: Expected, offset: int) -> None:
        if expected.size is None:
            return
        needed = expected.size - offset
        free = shutil.disk_usage(job.part.parent).free
        if needed > free:
            raise FetchError(
                f"not enough disk space in {job.part.parent}: it needs {human_size(needed)}, {human_size(free)} free"
            )

    def _verify_part(self, job: Job, expected: Expected) -> str:
        """The sha256 of a complete .part that matches what is expected; else delete it and FetchError."""
        size = job.part.stat().st_size
        if expected.size is not None and size != expected.size:
            job.part.unlink()
            raise FetchError(f"size mismatch: expected {expected.size} bytes, got {size}; the download was deleted")
        job.hasher.catch_up(job.part)
        sha256 = job.hasher.hexdigest()
        if expected.sha256 is not None and sha256 != expected.sha256:
            job.part.unlink()
            raise FetchError(
                f"checksum mismatch: expected sha256 {expected.sha256} ({expected.source}), got {sha256}; "
                "the download was deleted"
            )
        if expected.sha256 is None and expected.git_sha1 is not None:
            got = git_blob_sha1(job.part)
            if got != expected.git_sha1:
                job.part.unlink()
                raise FetchError(
                    f"checksum mismatch: expected git blob {expected.git_sha1} (hub), got {got}; "
                    "the download was deleted"
                )
        if expected.sha256 is None and expected.git_sha1 is None:
            self._say(
                f"  {job.label}: warning: no checksum known (manifest or hub): accepted by its size, {size} bytes"
            )
        return sha256

    # --- helpers ---

    def _retrying(self, label: str, function: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run `function`, retrying TransientError with exponential backoff (each retry resumes the .part)."""

        def before_sleep(state: tenacity.RetryCallState) -> None:
            error = state.outcome.exception() if state.outcome is not None else None
            wait = state.next_action.sleep if state.next_action is not None else 0.0
            self._say(
                f"  {label}: {error}; retry {state.attempt_number} of {self.options.attempts - 1} in {wait:.0f} s"
            )

        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(self.options.attempts),
            wait=tenacity.wait_exponential(multiplier=self.options.retry_wait_s, max=MAX_RETRY_WAIT_S),
            retry=tenacity.retry_if_exception_type(TransientError),
            before_sleep=before_sleep,
            reraise=True,
        )
        try:
            return retrying(function, *args, **kwargs)
        except TransientError as error:
            raise FetchError(
                f"gave up after {self.options.attempts} attempt(s): {error}; run again to resume"
            ) from error

    def _auth(self, url: str) -> dict[str, str]:
        """The token goes to the hub's own host only, never to the storage a download is redirected to."""
        if self.options.token and httpx.URL(url).host == self.base_host:
            return {"Authorization": f"Bearer {self.options.token}"}
        return {}

    def _progress(self, label: str, total: int | None, initial: int) -> Progress:
        if self.tty:
            bar: Progress = tqdm(
                total=total,
                initial=initial,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=f"    {label}",
                file=self.out,
            )
            return bar
        return LineProgress(self.out, label, total, initial, self.options.progress_every_s)

    def _say(self, line: str) -> None:
        print(line, file=self.out, flush=True)


def _range_start(header: str | None) -> int | None:
    match = re.match(r"^bytes (\d+)-\d+/(?:\d+|\*)$", (header or "").strip())
    return int(match.group(1)) if match else None


def _range_total(header: str | None) -> int | None:
    match = re.match(r"^bytes (?:\d+-\d+|\*)/(\d+)$", (header or "").strip())
    return int(match.group(1)) if match else None


def _response_total(response: httpx.Response) -> int | None:
    """The whole file's size from a download response, when the server says it."""
    if response.status_code == 206:
        return _range_total(response.headers.get("content-range"))
    if "content-encoding" in response.headers:  # the length counts encoded bytes
        return None
    return _int_header(response.headers.get("content-length"))


# --- sidecars ------------------------------------------------------------------------------------


def read_record(job: Job) -> Record | None:
    """The sidecar of the file in place, if it describes this very file (same size, same mtime)."""
    try:
        data = json.loads(job.sidecar.read_text(encoding="utf-8"))
        record = Record(
            sha256=str(data["sha256"]),
            size=int(data["size"]),
            mtime_ns=int(data["mtime_ns"]),
            file=str(data["file"]),
            url=str(data["url"]),
        )
        stat = job.dest.stat()
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if (record.size, record.mtime_ns, record.file) != (stat.st_size, stat.st_mtime_ns, _record_name(job)):
        return None
    return record


def _record_name(job: Job) -> str:
    """The file's path under the models dir: records stay valid wherever the volume is mounted."""
    return f"{job.model_set.target}/{job.file.path}"


def write_record(job: Job, sha256: str) -> None:
    stat = job.dest.stat()
    record = {
        "sha256": sha256,
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "file": _record_name(job),
        "url": job.url,
        "verified_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    job.sidecar.parent.mkdir(parents=True, exist_ok=True)
    temporary = job.sidecar.with_name(job.sidecar.name + ".tmp")
    temporary.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    os.replace(temporary, job.sidecar)


# --- --list and --env ----------------------------------------------------------------------------


def list_sets(sets: Sequence[ModelSet], models_dir: Path, out: TextIO) -> int:
    """What is in place, partial or missing, without the network; 1 when a required file is missing."""
    complete = True
    for model_set in sets:
        print(
            f"{model_set.name}: {model_set.directory(models_dir)}  ({model_set.repo} @ {model_set.revision})", file=out
        )
        if model_set.description:
            print(f"  {model_set.description}", file=out)
        for model_file in model_set.files:
            job = make_job(model_set, model_file, models_dir, DEFAULT_BASE_URL)
            expected = human_size(model_file.size) if model_file.size is not None else "?"
            if job.dest.is_file():
                verified = "verified" if read_record(job) is not None else "not verified yet"
                state, size = f"present, {verified}", human_size(job.dest.stat().st_size)
            elif job.part.is_file():
                state, size = "partial", f"{human_size(job.part.stat().st_size)} of {expected}"
                complete = complete and model_file.optional
            else:
                state, size = "missing" + (" (optional)" if model_file.optional else ""), expected
                complete = complete and model_file.optional
            print(f"  {state:<24} {size:>22}  {model_file.path}", file=out)
    return EXIT_OK if complete else EXIT_FAILED


def print_env(sets: Sequence[ModelSet], models_dir: Path, out: TextIO) -> int:
    """`export` lines for the sets whose required files are in place; a comment for the others.

    A start script evals this: pointing a service at a model that is not there would stop it from
    starting, so a missing set keeps the service on its embedded default.
    """
    print(f"# Parley model settings for {models_dir} (runpod/fetch-models --env)", file=out)
    for model_set in sets:
        missing = [
            f.path
            for f in model_set.files
            if not f.optional and not (model_set.directory(models_dir) / f.path).is_file()
        ]
        if missing:
            print(f"# {model_set.name}: not fetched yet (missing {', '.join(missing)})", file=out)
            continue
        for key, value in model_set.environment(models_dir).items():
            print(f"export {key}={shlex.quote(value)}", file=out)
    return EXIT_OK


# --- the command line ----------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="fetch-models",
        description="Download Parley's bigger models (runpod/models.toml) into a models directory: "
        "resumable, checksum-verified, present files skipped. See docs/models.md.",
    )
    parser.add_argument("sets", nargs="*", metavar="SET", help="model sets to fetch (default: every default set)")
    parser.add_argument(
        "--models-dir",
        type=Path,
        default=Path(os.environ.get("PARLEY_MODELS_DIR") or DEFAULT_MODELS_DIR),
        help="where the sets go (default: $PARLEY_MODELS_DIR or %(default)s)",
    )
    parser.add_argument(
        "--base-url",
        default=os.environ.get("PARLEY_MODELS_BASE_URL") or os.environ.get("HF_ENDPOINT") or DEFAULT_BASE_URL,
        help="the hub or a mirror (default: $PARLEY_MODELS_BASE_URL, else $HF_ENDPOINT, else %(default)s)",
    )
    parser.add_argument("--manifest", type=Path, default=DEFAULT_MANIFEST, help="default: %(default)s")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--list", action="store_true", help="show what is there and what is missing (no network)")
    mode.add_argument("--env", action="store_true", help="print export lines for the sets that are in place")
    parser.add_argument("--retries", type=int, default=5, help="retries of a failing file (default: %(default)s)")
    parser.add_argument(
        "--retry-wait", type=float, default=2.0, help="first wait between retries in seconds, doubling (default: 2)"
    )
    args = parser.parse_args(argv)
    if args.retries < 0 or args.retry_wait < 0:
        parser.error("--retries and --retry-wait cannot be negative")
    return args


def select_sets(manifest: Mapping[str, ModelSet], names: Sequence[str]) -> list[ModelSet]:
    if unknown := [name for name in names if name not in manifest]:
        raise ManifestError(f"unknown set(s) {', '.join(unknown)}; the manifest has {', '.join(manifest)}")
    if names:
        return [manifest[name] for name in dict.fromkeys(names)]
    return [model_set for model_set in manifest.values() if model_set.default]


@contextlib.contextmanager
def exclusive(models_dir: Path) -> Iterator[bool]:
    """Hold the models dir's lock (two runs appending to one .part would corrupt it); False if taken."""
    state = models_dir / STATE_DIR
    state.mkdir(parents=True, exist_ok=True)
    with (state / "lock").open("a") as lock:
        try:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            held = True
        except BlockingIOError:
            held = False
        except OSError:  # a network filesystem without locks: go on unguarded
            held = True
        yield held


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    stream = out if out is not None else sys.stdout
    args = parse_args(argv)
    try:
        sets = select_sets(load_manifest(args.manifest), args.sets)
    except ManifestError as error:
        print(f"fetch-models: {error}", file=sys.stderr)
        return EXIT_USAGE
    models_dir: Path = args.models_dir.expanduser().absolute()
    if args.list:
        return list_sets(sets, models_dir, stream)
    if args.env:
        return print_env(sets, models_dir, stream)
    options = Options(
        models_dir=models_dir,
        base_url=args.base_url.rstrip("/"),
        token=os.environ.get("HF_TOKEN") or None,
        attempts=args.retries + 1,
        retry_wait_s=args.retry_wait,
    )
    try:
        with exclusive(models_dir) as locked:
            if not locked:
                print(f"fetch-models: another fetch-models is writing into {models_dir}; wait for it", file=stream)
                return EXIT_FAILED
            failures = fetch(sets, options, stream)
    except KeyboardInterrupt:
        print("\nfetch-models: interrupted; run it again to resume", file=stream)
        return 130
    except OSError as error:
        print(f"fetch-models: {error}", file=stream)
        return EXIT_FAILED
    if failures:
        print(f"\n{len(failures)} file(s) failed:", file=stream)
        for failure in failures:
            print(f"  FAILED {failure.set_name}/{failure.path}: {failure.reason}", file=stream)
        return EXIT_FAILED
    print(f"\nall in place under {models_dir}: {', '.join(s.name for s in sets)}", file=stream)
    return EXIT_OK


def fetch(sets: Sequence[ModelSet], options: Options, out: TextIO) -> list[Failure]:
    # Identity encoding: the bytes on disk must be the file itself, and Range offsets count those bytes.
    timeout = httpx.Timeout(30.0, read=120.0)
    with httpx.Client(
        timeout=timeout, headers={"Accept-Encoding": "identity", "User-Agent": "parley-fetch-models"}
    ) as client:
        return Fetcher(client, options, out).run(sets)


if __name__ == "__main__":
    sys.exit(main())
