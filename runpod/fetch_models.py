#!/usr/bin/env python3
"""Download Parley's bigger models into a models directory, each file checked before it counts.

    runpod/fetch-models                  # every default set into $PARLEY_MODELS_DIR (/workspace/models)
    runpod/fetch-models whisper llm      # only these sets
    runpod/fetch-models --list           # what is there, what is missing (no network)
    runpod/fetch-models --env            # `export PARLEY_...=...` lines for the sets that are there

The sets live in runpod/models.toml (docs/models.md describes them). huggingface_hub moves the
bytes: `hf_hub_download` puts each file into its set's directory (redirects, token, a cut connection
resumed, progress, an atomic move into place). This script decides what to fetch, and checks every
file: against the manifest's sha256 when it has one, else the hub's own checksum (the sha256 of an
LFS file, the git blob id of a small one). A verified file is recorded in
`<models dir>/.fetch-models/<set>/<path>.sha256` with its size and mtime, so later runs skip it
without the network and without hashing gigabytes again.

Exit status: 0 when every file is in place and verified, 1 when some file failed (each is
named at the end), 2 for bad usage or a bad manifest. `--list` exits 1 when a file is missing.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import logging
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
from typing import TYPE_CHECKING, Any, TextIO, TypeVar

try:
    import httpx2  # huggingface_hub's HTTP client: its connection errors are worth another attempt
    from huggingface_hub import get_hf_file_metadata, hf_hub_download, hf_hub_url
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )
    from tqdm import tqdm
except ModuleNotFoundError as missing:  # the operator ran it with a bare python3
    sys.exit(
        f"fetch-models needs huggingface_hub 2.4 or later ({missing.name} is missing): "
        "pip install 'huggingface_hub>=2.4,<3'"
    )

HERE = Path(__file__).resolve().parent
DEFAULT_MANIFEST = HERE / "models.toml"
DEFAULT_MODELS_DIR = "/workspace/models"
DEFAULT_ENDPOINT = "https://huggingface.co"
STATE_DIR = ".fetch-models"  # records and the lock, inside the models dir so they survive with it
HUB_DOWNLOADS = Path(".cache", "huggingface", "download")  # huggingface_hub's own state in a local_dir
CHUNK = 1 << 20
PROGRESS_EVERY_S = 5.0  # plain progress lines (logs, the RunPod web terminal) this often
MAX_RETRY_WAIT_S = 60.0

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_SHA1 = re.compile(r"^[0-9a-f]{40}$")
_SET_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
_ENV_NAME = re.compile(r"^[A-Z_][A-Z0-9_]*$")
_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
_PLACEHOLDERS = ("dir", "models_dir")

T = TypeVar("T")

if TYPE_CHECKING:
    _Tqdm = tqdm[Any]  # generic in its type stubs only
else:
    _Tqdm = tqdm


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


# --- records of verified files -------------------------------------------------------------------


@dataclass(frozen=True)
class Record:
    """A file that was verified: its sha256, the revision it came from, and how to tell it is unchanged."""

    sha256: str
    size: int
    mtime_ns: int
    revision: str


def record_path(models_dir: Path, model_set: ModelSet, model_file: ModelFile) -> Path:
    return models_dir / STATE_DIR / model_set.name / f"{model_file.path}.sha256"


def read_record(path: Path, dest: Path) -> Record | None:
    """The record at `path` if it describes the file `dest` as it is now (same size, same mtime)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        record = Record(str(data["sha256"]), int(data["size"]), int(data["mtime_ns"]), str(data["revision"]))
        stat = dest.stat()
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return record if (record.size, record.mtime_ns) == (stat.st_size, stat.st_mtime_ns) else None


def write_record(path: Path, dest: Path, sha256: str, revision: str) -> None:
    stat = dest.stat()
    record = {
        "sha256": sha256,
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "revision": revision,
        "verified_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    os.replace(temporary, path)


# --- checksums -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Checksum:
    """What a file's content must hash to."""

    kind: str  # "sha256", or "git blob": sha1("blob <size>\0" + content), a small file's id in git
    value: str
    source: str  # "manifest" or "hub"


def hash_file(path: Path, progress: _Tqdm, git_blob: bool = False) -> tuple[str, str | None]:
    """The file's sha256, and its git blob id when asked for, in one read."""
    sha256 = hashlib.sha256()
    sha1 = hashlib.sha1(f"blob {path.stat().st_size}\0".encode(), usedforsecurity=False) if git_blob else None
    with path.open("rb") as stream:
        while chunk := stream.read(CHUNK):
            sha256.update(chunk)
            if sha1 is not None:
                sha1.update(chunk)
            progress.update(len(chunk))
    return sha256.hexdigest(), sha1.hexdigest() if sha1 is not None else None


def human_size(size: int) -> str:
    if size < 1024:
        return f"{size} B"
    value, unit = size / 1024, "KiB"
    for bigger in ("MiB", "GiB"):
        if value < 1024:
            break
        value, unit = value / 1024, bigger
    return f"{value:.1f} {unit}"


# --- progress ------------------------------------------------------------------------------------


class _FileProgress(_Tqdm):
    """The progress of one file, a class for huggingface_hub's `tqdm_class` (it makes the bar itself)."""

    label = ""
    out: TextIO = sys.stdout

    # huggingface_hub also counts the bytes received apart from the bytes written (Xet storage sends
    # them compressed); the bytes written are the progress that counts, so these two do nothing.
    def update_transfer(self, n: int) -> None:
        pass

    def set_transfer_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        pass


class _TerminalBar(_FileProgress):
    """tqdm's bar, labelled with the file's path."""

    def __init__(self, **kwargs: Any) -> None:  # huggingface_hub passes keywords only
        for theirs in ("bar_format", "position", "name"):
            kwargs.pop(theirs, None)
        kwargs.update(desc=f"    {self.label}", file=self.out, unit_divisor=1024, delay=1.0)  # small files: no bar
        super().__init__(**kwargs)


class _LogLines(_FileProgress):
    """A plain line every few seconds: a log shows a bar as thousands of carriage returns."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs["disable"] = True  # tqdm draws nothing; update() below counts and prints
        super().__init__(**kwargs)
        self.last_time, self.last_n, self.printed, self.finished = time.monotonic(), self.n, False, False

    def update(self, n: float | None = 1) -> bool | None:
        self.n += n or 0  # negative when a server ignored a resume request and the file starts over
        if time.monotonic() - self.last_time >= PROGRESS_EVERY_S:
            self._line()
        return None

    def close(self) -> None:
        if self.printed and not self.finished and self.n != self.last_n:  # small files: done before a first line
            self._line()
        self.finished = True
        super().close()

    def _line(self) -> None:
        now = time.monotonic()
        done, total = int(self.n), int(self.total) if self.total else None
        share = f" ({100 * done // total}%)" if total else ""
        of = f" of {human_size(total)}" if total is not None else ""
        rate = f", {human_size(int((done - self.last_n) / (now - self.last_time)))}/s" if now > self.last_time else ""
        print(f"    {self.label}: {human_size(done)}{of}{share}{rate}", file=self.out, flush=True)
        self.last_time, self.last_n, self.printed = now, done, True


def progress_class(label: str, out: TextIO) -> type[_FileProgress]:
    """The progress class for one file: a bar on a terminal, plain lines anywhere else."""
    base = _TerminalBar if out.isatty() else _LogLines
    made: type[_FileProgress] = type(base.__name__, (base,), {"label": label, "out": out})
    return made


class _HubMessages(logging.Handler):
    """huggingface_hub's log records as lines of the output, each on one line, clear of any bar."""

    def __init__(self, out: TextIO) -> None:
        super().__init__()
        self.out = out

    def emit(self, record: logging.LogRecord) -> None:
        tqdm.write(f"    huggingface_hub: {record.getMessage()}".replace("\n", " "), file=self.out)


@contextlib.contextmanager
def hub_messages(out: TextIO) -> Iterator[None]:
    """huggingface_hub's warnings (a connection resumed, a retry) in this run's output, not on stderr."""
    hub_logger = logging.getLogger("huggingface_hub")
    saved = hub_logger.handlers[:]
    hub_logger.handlers = [_HubMessages(out)]
    try:
        yield
    finally:
        hub_logger.handlers = saved


# --- fetching ------------------------------------------------------------------------------------


def interrupted_downloads(directory: Path) -> list[Path]:
    """The partial files huggingface_hub left in a set's directory when its process was killed."""
    return sorted((directory / HUB_DOWNLOADS).rglob("*.incomplete"))


class FetchError(Exception):
    """One file cannot be fetched or verified; the message is what the operator reads."""


class NotInRepository(FetchError):
    """The hub answers 404 for the file."""


@dataclass(frozen=True)
class Failure:
    set_name: str
    path: str
    reason: str


@dataclass(frozen=True)
class Options:
    models_dir: Path
    endpoint: str = DEFAULT_ENDPOINT
    attempts: int = 6  # the first try and five retries
    retry_wait_s: float = 2.0  # first backoff; doubles up to MAX_RETRY_WAIT_S


@dataclass(frozen=True)
class HubFile:
    """What the hub says about a file at the set's revision."""

    commit: str  # the commit the revision is now
    etag: str  # lower case, "" when none: an LFS file's sha256, a small file's git blob id
    size: int | None


def is_transient(error: BaseException | None) -> bool:
    """Worth another attempt: the connection, a timeout, a hub that is busy (429) or failing (5xx)."""
    if isinstance(error, LocalEntryNotFoundError):  # hf_hub_download's wrapper around a failed HEAD
        return is_transient(error.__cause__)
    if isinstance(error, HfHubHTTPError):
        return error.response.status_code in (408, 429) or error.response.status_code >= 500
    return isinstance(error, httpx2.TransportError)


def explain(error: BaseException, model_set: ModelSet) -> FetchError:
    """The operator's message for what huggingface_hub raised."""
    if isinstance(error, FetchError):
        return error
    if isinstance(error, LocalEntryNotFoundError) and isinstance(error.__cause__, Exception):
        error = error.__cause__  # the HEAD's own error says more than "not in the local cache"
    repo, revision = model_set.repo, model_set.revision
    if isinstance(error, HfHubHTTPError):
        status = error.response.status_code
        if isinstance(error, RevisionNotFoundError):
            return FetchError(f"{repo} has no revision {revision} (HTTP {status} RevisionNotFound)")
        if isinstance(error, GatedRepoError):
            return FetchError(f"{repo} is gated (HTTP {status}): accept its terms on the hub, then set HF_TOKEN")
        if isinstance(error, RepositoryNotFoundError):
            return FetchError(f"no repository {repo}, or a private one (HTTP {status}): check the name or set HF_TOKEN")
        if status == 404:
            code = error.response.headers.get("x-error-code")
            return NotInRepository(f"not in {repo} at revision {revision} (HTTP 404{f' {code}' if code else ''})")
        if status in (401, 403):
            hint = (
                "check HF_TOKEN" if os.environ.get("HF_TOKEN") else "set HF_TOKEN if the repository is gated or private"
            )
            return FetchError(f"access denied (HTTP {status}): {hint}")
        return FetchError(f"HTTP {status} from {error.response.url.host}")
    if isinstance(error, OfflineModeIsEnabled):
        return FetchError("HF_HUB_OFFLINE is set: unset it to download")
    if isinstance(error, httpx2.TransportError):
        return FetchError(f"connection failed: {error or type(error).__name__}")
    if isinstance(error, OSError) and error.strerror:
        return FetchError(f"{error.strerror}: {error.filename}" if error.filename else error.strerror)
    return FetchError(str(error) or type(error).__name__)


class Fetcher:
    """Fetches model sets one file at a time, reporting on `out`."""

    def __init__(self, options: Options, out: TextIO) -> None:
        self.options, self.out = options, out
        self.commits_noted: set[str] = set()

    def run(self, sets: Sequence[ModelSet]) -> list[Failure]:
        failures: list[Failure] = []
        for model_set in sets:
            failures.extend(self.fetch_set(model_set))
        return failures

    def fetch_set(self, model_set: ModelSet) -> list[Failure]:
        directory = model_set.directory(self.options.models_dir)
        self._say(f"== {model_set.name}: {model_set.repo} @ {model_set.revision} -> {directory}")
        self._remove_interrupted(directory)
        failures = []
        for model_file in model_set.files:
            label = model_file.path
            try:
                self._say(f"  {label}: {self.fetch_file(model_set, model_file)}")
            except NotInRepository as error:
                if not model_file.optional:
                    failures.append(Failure(model_set.name, model_file.path, str(error)))
                    self._say(f"  {label}: FAILED: {error}")
                else:
                    self._say(f"  {label}: not in the repository (optional): skipped")
            except (FetchError, OSError) as error:  # OSError: the disk, e.g. a record that cannot be written
                reason = str(explain(error, model_set))
                failures.append(Failure(model_set.name, model_file.path, reason))
                self._say(f"  {label}: FAILED: {reason}")
        return failures

    def fetch_file(self, model_set: ModelSet, model_file: ModelFile) -> str:
        """Make the file right and say how; FetchError when it cannot be."""
        dest = model_set.directory(self.options.models_dir) / model_file.path
        records = record_path(self.options.models_dir, model_set, model_file)
        record = read_record(records, dest)
        if record is not None and record.revision == model_set.revision and model_file.sha256 in (None, record.sha256):
            return "present (verified earlier)"

        hub = self._retrying(model_set, model_file.path, lambda: self._ask_hub(model_set, model_file))
        checksum = self._checksum(model_set, model_file, hub)
        size = model_file.size if model_file.size is not None else hub.size
        if dest.is_file():
            sha256 = self._check_in_place(model_file.path, dest, checksum, size, record)
            if sha256 is not None:
                write_record(records, dest, sha256, model_set.revision)
                return "present (verified now)"

        self._check_space(dest, size)
        self._say(f"  {model_file.path}: downloading {human_size(size) if size is not None else ''}".rstrip())
        replace = dest.exists()  # a file in place that did not match
        self._retrying(model_set, model_file.path, lambda: self._download(model_set, model_file, hub.commit, replace))
        sha256, problem = self._verify(model_file.path, dest, checksum, size)
        if problem:
            dest.unlink()
            raise FetchError(f"{problem}; the download was deleted")
        write_record(records, dest, sha256, model_set.revision)
        return f"downloaded and verified ({human_size(dest.stat().st_size)})"

    # --- the hub, through huggingface_hub ---

    def _ask_hub(self, model_set: ModelSet, model_file: ModelFile) -> HubFile:
        """A HEAD on the file: which commit the revision is, the file's checksum (ETag) and size."""
        endpoint = self.options.endpoint
        url = hf_hub_url(model_set.repo, model_file.path, revision=model_set.revision, endpoint=endpoint)
        metadata = get_hf_file_metadata(url, endpoint=endpoint)
        commit = metadata.commit_hash
        if commit is None:
            raise FetchError(f"{endpoint} does not answer like a Hugging Face hub (no X-Repo-Commit header)")
        if commit != model_set.revision and model_set.name not in self.commits_noted:
            self.commits_noted.add(model_set.name)
            self._say(f'  note: {model_set.revision} is commit {commit} (set revision = "{commit}" to pin it)')
        return HubFile(commit, (metadata.etag or "").lower(), metadata.size)

    def _download(self, model_set: ModelSet, model_file: ModelFile, commit: str, replace: bool) -> None:
        """One attempt; huggingface_hub resumes a connection cut mid-way itself, a few times."""
        hf_hub_download(
            model_set.repo,
            model_file.path,
            revision=commit,  # the commit _ask_hub saw, even if a branch moves meanwhile
            local_dir=model_set.directory(self.options.models_dir),
            endpoint=self.options.endpoint,
            force_download=replace,
            tqdm_class=progress_class(model_file.path, self.out),
        )

    # --- what the file must be ---

    def _checksum(self, model_set: ModelSet, model_file: ModelFile, hub: HubFile) -> Checksum | None:
        """The manifest's sha256, else the hub's; FetchError when the manifest and the hub disagree."""
        hub_sha256 = hub.etag if _SHA256.match(hub.etag) else None
        if model_file.sha256 and hub_sha256 and model_file.sha256 != hub_sha256:
            raise FetchError(
                f"the manifest pins sha256 {model_file.sha256} but the hub has {hub_sha256} at revision "
                f"{model_set.revision}: fix runpod/models.toml"
            )
        if model_file.size is not None and hub.size is not None and model_file.size != hub.size:
            raise FetchError(
                f"the manifest says {model_file.size} bytes but the hub has {hub.size}: fix runpod/models.toml"
            )
        if model_file.sha256:
            return Checksum("sha256", model_file.sha256, "manifest")
        if hub_sha256:
            return Checksum("sha256", hub_sha256, "hub")
        if _SHA1.match(hub.etag):
            return Checksum("git blob", hub.etag, "hub")
        return None

    # --- checking files ---

    def _check_in_place(
        self, label: str, dest: Path, checksum: Checksum | None, size: int | None, record: Record | None
    ) -> str | None:
        """The sha256 of a file in place that is right (hashed unless its record knows it), else None."""
        if size is not None and dest.stat().st_size != size:
            self._say(f"  {label}: the file in place has {dest.stat().st_size} bytes, not {size}: fetching it again")
            return None
        if record is not None and checksum is not None and checksum.kind == "sha256":
            sha256, problem = record.sha256, self._mismatch(checksum, record.sha256, None)
        else:
            self._say(f"  {label}: checking the file in place ({human_size(dest.stat().st_size)})")
            sha256, problem = self._verify(label, dest, checksum, size)
        if problem:
            self._say(f"  {label}: the file in place does not match ({problem}): fetching it again")
            return None
        return sha256

    def _verify(self, label: str, dest: Path, checksum: Checksum | None, size: int | None) -> tuple[str, str | None]:
        """(sha256, what is wrong or None) for a file on disk."""
        got_size = dest.stat().st_size
        if size is not None and got_size != size:
            return "", f"size mismatch: expected {size} bytes, got {got_size}"
        git_blob = checksum is not None and checksum.kind == "git blob"
        with progress_class(f"{label} (verifying)", self.out)(total=got_size, unit="B", unit_scale=True) as progress:
            sha256, sha1 = hash_file(dest, progress, git_blob=git_blob)
        if checksum is None:
            self._say(
                f"  {label}: warning: no checksum known (manifest or hub): accepted by its size, {got_size} bytes"
            )
            return sha256, None
        return sha256, self._mismatch(checksum, sha256, sha1)

    @staticmethod
    def _mismatch(checksum: Checksum, sha256: str, sha1: str | None) -> str | None:
        got = sha1 if checksum.kind == "git blob" else sha256
        if got == checksum.value:
            return None
        return f"checksum mismatch: expected {checksum.kind} {checksum.value} ({checksum.source}), got {got}"

    # --- helpers ---

    def _retrying(self, model_set: ModelSet, label: str, step: Callable[[], T]) -> T:
        """`step()`, again after a transient failure, waiting --retry-wait seconds, then twice that, ..."""
        attempt = 1
        while True:
            try:
                return step()
            except Exception as error:
                if not is_transient(error):
                    raise explain(error, model_set) from error
                if attempt >= self.options.attempts:
                    reason = explain(error, model_set)
                    raise FetchError(f"gave up after {attempt} attempt(s): {reason}; run again to retry") from error
                wait = min(self.options.retry_wait_s * 2 ** (attempt - 1), MAX_RETRY_WAIT_S)
                retries = self.options.attempts - 1
                self._say(f"  {label}: {explain(error, model_set)}; retry {attempt} of {retries} in {wait:.0f} s")
                time.sleep(wait)
                attempt += 1

    def _check_space(self, dest: Path, size: int | None) -> None:
        """FetchError when the file cannot fit (huggingface_hub itself only warns)."""
        if size is None:
            return
        existing = next(p for p in (dest.parent, *dest.parent.parents) if p.exists())
        free = shutil.disk_usage(existing).free
        if dest.is_file():
            free += dest.stat().st_size  # deleted before the new one is downloaded
        if size > free:
            raise FetchError(
                f"not enough disk space in {existing}: it needs {human_size(size)}, {human_size(free)} free"
            )

    def _remove_interrupted(self, directory: Path) -> None:
        """Delete what a killed run left: huggingface_hub never resumes another process's download."""
        for leftover in interrupted_downloads(directory):
            size = leftover.stat().st_size
            leftover.unlink()
            self._say(f"  removed an interrupted download ({human_size(size)}): {leftover.name}")

    def _say(self, line: str) -> None:
        print(line, file=self.out, flush=True)


# --- --list and --env ----------------------------------------------------------------------------


def list_sets(sets: Sequence[ModelSet], models_dir: Path, out: TextIO) -> int:
    """What is in place or missing, without the network; 1 when a required file is missing."""
    complete = True
    for model_set in sets:
        directory = model_set.directory(models_dir)
        print(f"{model_set.name}: {directory}  ({model_set.repo} @ {model_set.revision})", file=out)
        if model_set.description:
            print(f"  {model_set.description}", file=out)
        for model_file in model_set.files:
            dest = directory / model_file.path
            expected = human_size(model_file.size) if model_file.size is not None else "?"
            if dest.is_file():
                record = read_record(record_path(models_dir, model_set, model_file), dest)
                verified = record is not None and record.revision == model_set.revision
                state = "present, " + ("verified" if verified else "not verified yet")
                size = human_size(dest.stat().st_size)
            else:
                state, size = "missing" + (" (optional)" if model_file.optional else ""), expected
                complete = complete and model_file.optional
            print(f"  {state:<26} {size:>10}  {model_file.path}", file=out)
        if left := sum(p.stat().st_size for p in interrupted_downloads(directory)):
            print(f"  an interrupted download left {human_size(left)} in {directory / HUB_DOWNLOADS}", file=out)
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
        "checksum-verified, present files skipped. See docs/models.md.",
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
        default=os.environ.get("PARLEY_MODELS_BASE_URL") or os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT,
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
    """Hold the models dir's lock (one run at a time writes records and cleans up); False if taken."""
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
        endpoint=args.base_url.rstrip("/"),
        attempts=args.retries + 1,
        retry_wait_s=args.retry_wait,
    )
    try:
        with exclusive(models_dir) as locked, hub_messages(stream):
            if not locked:
                print(f"fetch-models: another fetch-models is writing into {models_dir}; wait for it", file=stream)
                return EXIT_FAILED
            failures = Fetcher(options, stream).run(sets)
    except KeyboardInterrupt:
        print("\nfetch-models: interrupted; run it again to go on", file=stream)
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


if __name__ == "__main__":
    sys.exit(main())
