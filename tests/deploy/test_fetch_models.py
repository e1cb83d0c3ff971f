"""runpod/fetch-models against a fake Hugging Face hub served from this process.

The hub (stdlib http.server on 127.0.0.1) answers what huggingface_hub asks of the real one,
`HEAD`/`GET /<repo>/resolve/<revision>/<path>`, with X-Repo-Commit on every answer. An LFS file is a
302 carrying X-Linked-Etag (its sha256) and X-Linked-Size to `/cdn/<path>` on another origin
(http://localhost:<same port>), as the hub redirects to its storage; a small file is served directly
with its git blob id as ETag. The storage honours `Range` (206), and can be told to ignore it, to cut
a download after N bytes, to answer an HTTP error first, or to serve corrupted bytes. Every request
is logged, so the tests can say which requests a run made.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import os
import random
import re
import shlex
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "runpod" / "fetch_models.py"
REPO = "acme/tiny"
COMMIT = "0123456789abcdef0123456789abcdef01234567"  # what "main" resolves to


def _load_module() -> ModuleType:
    # runpod/ is not a package (a `runpod` package would shadow RunPod's own SDK): load the file.
    spec = importlib.util.spec_from_file_location("fetch_models", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["fetch_models"] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


fm: Any = _load_module()

# A fake model: a "weights" file in LFS, two small git files. huggingface_hub writes what it receives
# in 10 MiB pieces, so the weights are bigger than one piece for a cut download to keep something.
PIECE = 10 * 1024 * 1024
WEIGHTS = random.Random(15).randbytes(PIECE + 2 * 1024 * 1024 + 123)
CONFIG = b'{"model_type": "tiny", "layers": 2}\n'
TOKENIZER = b'{"version": "1.0", "vocab": {"a": 0, "b": 1}}\n'
FILES = {"config.json": CONFIG, "model.bin": WEIGHTS, "tok/tokenizer.json": TOKENIZER}
LFS = {"model.bin"}


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def git_blob(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data, usedforsecurity=False).hexdigest()


@dataclass
class Hit:
    method: str
    path: str
    range: str | None
    authorization: str | None


@dataclass
class HubState:
    files: dict[str, bytes] = field(default_factory=lambda: dict(FILES))
    lfs: set[str] = field(default_factory=lambda: set(LFS))
    cut_after: dict[str, int] = field(default_factory=dict)  # path -> bytes sent before cutting (once)
    always_cut: set[str] = field(default_factory=set)  # cut after a few bytes, every time
    errors_first: dict[str, list[int]] = field(default_factory=dict)  # path -> statuses answered before the file
    corrupt: set[str] = field(default_factory=set)  # served with one byte flipped, headers unchanged
    ignore_range: bool = False
    opaque_etags: bool = False  # a mirror: every file served directly, ETags that are no checksum
    commit_header: bool = True  # False: not a hub at all (no X-Repo-Commit)
    token: str | None = None  # the token the repository needs (a gated or private one)
    log: list[Hit] = field(default_factory=list)

    def gets(self, name: str | None = None) -> list[Hit]:
        return [h for h in self.log if h.method == "GET" and (name is None or h.path.endswith("/" + name))]

    def ranges(self, name: str) -> list[str | None]:
        """The Range header of each download of `name` from the storage."""
        return [h.range for h in self.gets(name) if h.path.startswith("/cdn/")]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Hub

    def log_message(self, format: str, *args: object) -> None:  # keep pytest's output quiet
        pass

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def do_GET(self) -> None:
        self._serve(body=True)

    def _serve(self, body: bool) -> None:
        state = self.server.state
        state.log.append(Hit(self.command, self.path, self.headers.get("Range"), self.headers.get("Authorization")))
        if self.path.startswith("/cdn/"):
            # Storage has ETags of its own, which are not git blob ids: a client must not take them for one.
            name = self.path.removeprefix("/cdn/")
            other = hashlib.sha1(b"storage" + state.files[name], usedforsecurity=False).hexdigest()
            self._content(name, body, ETag=f'"{other}"')
            return
        commit = {"X-Repo-Commit": COMMIT} if state.commit_header else {}
        if state.token is not None and self.headers.get("Authorization") != f"Bearer {state.token}":
            self._empty(401, **commit)
            return
        match = re.fullmatch(rf"/{REPO}/resolve/([^/]+)/(.+)", self.path)
        revision, name = match.groups() if match else ("", "")
        if revision not in ("main", COMMIT):
            self._empty(404, **{"X-Error-Code": "RevisionNotFound"}, **commit)
            return
        if name not in state.files:
            self._empty(404, **{"X-Error-Code": "EntryNotFound"}, **commit)
            return
        if state.opaque_etags:
            self._content(name, body, ETag=f'W/"{len(state.files[name]):x}-5f3c"', **commit)
            return
        if name in state.lfs:
            digest = f'"{sha256(state.files[name])}"'
            storage = f"http://localhost:{self.server.server_address[1]}/cdn/{name}"
            linked = {"X-Linked-Etag": digest, "X-Linked-Size": str(len(state.files[name]))}
            self._empty(302, Location=storage, ETag=digest, **linked, **commit)
            return
        self._content(name, body, ETag=f'"{git_blob(state.files[name])}"', **commit)

    def _content(self, name: str, body: bool, **headers: str) -> None:
        state = self.server.state
        if body and (statuses := state.errors_first.get(name)):
            self._empty(statuses.pop(0))
            return
        data = state.files[name]
        if name in state.corrupt:
            data = data[:10] + bytes([data[10] ^ 0xFF]) + data[11:]
        start, status = 0, 200
        requested = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        if requested and not state.ignore_range:
            start, status = int(requested.group(1)), 206
            if start >= len(data):
                self._empty(416, **{"Content-Range": f"bytes */{len(data)}"})
                return
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        payload = data[start:]
        self.send_response(status)
        for key, value in {"Content-Length": str(len(payload)), "Accept-Ranges": "bytes", **headers}.items():
            self.send_header(key, value)
        self.end_headers()
        if not body:
            return
        cut = 100 if name in state.always_cut else state.cut_after.pop(name, None)
        if cut is not None and cut < len(payload):
            self.wfile.write(payload[:cut])
            self.wfile.flush()
            self.close_connection = True  # the socket closes with the body short of Content-Length
            return
        self.wfile.write(payload)

    def _empty(self, status: int, **headers: str) -> None:
        self.send_response(status)
        for key, value in {"Content-Length": "0", **headers}.items():
            self.send_header(key, value)
        self.end_headers()


class _Hub(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.state = HubState()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


@pytest.fixture
def hub() -> Iterator[_Hub]:
    server = _Hub()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


MANIFEST = """
[sets.tiny]
description = "a tiny fake model"
target = "tiny-model"
repo = "acme/tiny"
revision = "main"
files = [
  { path = "config.json" },
  { path = "model.bin" },
  { path = "tok/tokenizer.json" },
  { path = "extra.txt", optional = true },
]

[sets.tiny.settings]
PARLEY_TEST_MODEL_DIR = "{dir}"
PARLEY_TEST_WEIGHTS = "{dir}/model.bin"
"""


@pytest.fixture
def manifest(tmp_path: Path) -> Path:
    path = tmp_path / "models.toml"
    path.write_text(MANIFEST)
    return path


@pytest.fixture
def models(tmp_path: Path) -> Path:
    return tmp_path / "models"


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HF_TOKEN", "HF_ENDPOINT", "PARLEY_MODELS_BASE_URL", "PARLEY_MODELS_DIR"):
        monkeypatch.delenv(name, raising=False)


def run_main(hub: _Hub, manifest: Path, models: Path, *extra: str) -> tuple[int, str]:
    """fetch-models in this process (fast), with retries that do not wait."""
    out = io.StringIO()
    argv = ["--manifest", str(manifest), "--models-dir", str(models), "--base-url", hub.url, "--retry-wait", "0"]
    code = fm.main([*argv, *extra], out=out)
    return code, out.getvalue()


def run_script(hub: _Hub, manifest: Path, models: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """fetch-models as the operator runs it: a separate process, through the bash wrapper, the hub in HF_ENDPOINT."""
    env = {k: v for k, v in os.environ.items() if k not in ("HF_TOKEN", "PARLEY_MODELS_BASE_URL")}
    env |= {"PARLEY_PYTHON": sys.executable, "HF_ENDPOINT": hub.url}
    argv = ["--manifest", str(manifest), "--models-dir", str(models), "--retry-wait", "0"]
    return subprocess.run(
        [str(ROOT / "runpod" / "fetch-models"), *argv, *extra],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def assert_fetched(models: Path) -> None:
    for name, data in FILES.items():
        assert (models / "tiny-model" / name).read_bytes() == data, name
    assert not list(models.rglob("*.incomplete"))


def test_full_fetch_into_an_empty_dir(hub: _Hub, manifest: Path, models: Path) -> None:
    code, out = run_main(hub, manifest, models)

    assert code == 0, out
    assert_fetched(models)
    assert "extra.txt: not in the repository (optional): skipped" in out
    assert out.count(f'note: main is commit {COMMIT} (set revision = "{COMMIT}" to pin it)') == 1
    # Each file verified against the hub's checksum and recorded, so the next run can skip it.
    record = fm.json.loads((models / ".fetch-models" / "tiny" / "model.bin.sha256").read_text())
    assert record["sha256"] == sha256(WEIGHTS) and record["size"] == len(WEIGHTS)
    assert record["revision"] == "main"
    assert (models / ".fetch-models" / "tiny" / "tok" / "tokenizer.json.sha256").is_file()
    # One look at the branch, then huggingface_hub downloads that very commit from the storage.
    assert [(h.method, h.path) for h in hub.state.log if h.path.endswith("/model.bin")] == [
        ("HEAD", f"/{REPO}/resolve/main/model.bin"),
        ("HEAD", f"/{REPO}/resolve/{COMMIT}/model.bin"),
        ("GET", "/cdn/model.bin"),
    ]


def test_a_cut_connection_resumes_where_it_stopped(hub: _Hub, manifest: Path, models: Path) -> None:
    hub.state.cut_after["model.bin"] = PIECE + 500_000

    result = run_script(hub, manifest, models, "--retries", "0")

    assert result.returncode == 0, result.stdout + result.stderr
    assert hub.state.ranges("model.bin") == [None, f"bytes={PIECE}-"]  # the first piece was kept
    assert "huggingface_hub: Error while downloading" in result.stdout  # the library's note, in the output
    assert_fetched(models)


def test_a_download_that_keeps_failing_is_retried_then_named(
    hub: _Hub, manifest: Path, models: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fm.time, "sleep", lambda seconds: None)  # huggingface_hub's pauses between its tries too
    hub.state.always_cut.add("model.bin")

    code, out = run_main(hub, manifest, models, "--retries", "1")

    assert code == 1, out
    assert "model.bin: connection failed: " in out and "retry 1 of 1 in 0 s" in out
    failure = next(line for line in out.splitlines() if line.startswith("  FAILED tiny/model.bin:"))
    assert "gave up after 2 attempt(s): connection failed" in failure
    assert not (models / "tiny-model" / "model.bin").exists()
    assert not list(models.rglob("*.incomplete"))  # nothing half-written left behind
    assert (models / "tiny-model" / "config.json").read_bytes() == CONFIG  # the other files went on


def test_a_hub_error_is_retried(hub: _Hub, manifest: Path, models: Path) -> None:
    hub.state.errors_first["model.bin"] = [503]

    code, out = run_main(hub, manifest, models, "--retries", "2")

    assert code == 0, out
    assert "model.bin: HTTP 503 from localhost; retry 1 of 2 in 0 s" in out
    assert len(hub.state.ranges("model.bin")) == 2
    assert_fetched(models)


@pytest.mark.parametrize(("name", "kind"), [("model.bin", "sha256"), ("config.json", "git blob")])
def test_a_checksum_mismatch_is_refused(hub: _Hub, manifest: Path, models: Path, name: str, kind: str) -> None:
    hub.state.corrupt.add(name)

    result = run_script(hub, manifest, models)

    assert result.returncode == 1, result.stdout + result.stderr
    expected = sha256(FILES[name]) if kind == "sha256" else git_blob(FILES[name])
    failure = next(line for line in result.stdout.splitlines() if line.startswith(f"  FAILED tiny/{name}:"))
    assert f"checksum mismatch: expected {kind} {expected} (hub), got " in failure
    assert failure.endswith("; the download was deleted")
    assert not (models / "tiny-model" / name).exists()
    assert not list(models.rglob("*.incomplete"))
    assert not (models / ".fetch-models" / "tiny" / f"{name}.sha256").exists()
    # The files after it were still fetched.
    assert (models / "tiny-model" / "tok" / "tokenizer.json").read_bytes() == TOKENIZER
    # --env leaves the set out: a service must not be pointed at it.
    env = subprocess.run(
        [str(ROOT / "runpod" / "fetch-models"), "--manifest", str(manifest), "--models-dir", str(models), "--env"],
        capture_output=True,
        text=True,
        env=os.environ | {"PARLEY_PYTHON": sys.executable},
        check=True,
    )
    assert "export" not in env.stdout and f"# tiny: not fetched yet (missing {name})" in env.stdout


def test_a_pinned_sha256_is_checked_too(hub: _Hub, tmp_path: Path, models: Path) -> None:
    pinned = tmp_path / "pinned.toml"
    pinned.write_text(
        f'[sets.tiny]\ntarget = "tiny-model"\nrepo = "{REPO}"\nrevision = "{COMMIT}"\n'
        f'files = [{{ path = "config.json", sha256 = "{sha256(CONFIG)}", size = {len(CONFIG)} }}]\n'
    )
    hub.state.corrupt.add("config.json")

    code, out = run_main(hub, pinned, models)

    assert code == 1
    assert f"FAILED tiny/config.json: checksum mismatch: expected sha256 {sha256(CONFIG)} (manifest), got" in out
    assert not (models / "tiny-model" / "config.json").exists()

    hub.state.corrupt.clear()
    code, out = run_main(hub, pinned, models)
    assert code == 0, out
    assert "note: " not in out  # a pinned commit needs no note
    hub.state.log.clear()
    assert "config.json: present (verified earlier)" in run_main(hub, pinned, models)[1]
    assert hub.state.log == []  # a pinned set in place needs no network at all


def test_present_files_are_skipped(hub: _Hub, manifest: Path, models: Path) -> None:
    assert run_main(hub, manifest, models)[0] == 0
    hub.state.log.clear()

    code, out = run_main(hub, manifest, models)

    assert code == 0, out
    assert out.count("present (verified earlier)") == 3
    assert hub.state.gets() == []
    assert all(h.path.endswith("/extra.txt") for h in hub.state.log)  # only the optional one is asked for


def test_a_file_in_place_without_a_record_is_checked_once(hub: _Hub, manifest: Path, models: Path) -> None:
    assert run_main(hub, manifest, models)[0] == 0
    (models / ".fetch-models" / "tiny" / "model.bin.sha256").unlink()
    hub.state.log.clear()

    code, out = run_main(hub, manifest, models)

    assert code == 0, out
    assert "model.bin: present (verified now)" in out
    assert hub.state.gets() == []  # hashed here against the hub's X-Linked-Etag, not downloaded again
    assert (models / ".fetch-models" / "tiny" / "model.bin.sha256").is_file()
    hub.state.log.clear()
    assert "model.bin: present (verified earlier)" in run_main(hub, manifest, models)[1]
    assert all(h.path.endswith("/extra.txt") for h in hub.state.log)


def test_a_changed_file_in_place_is_fetched_again(hub: _Hub, manifest: Path, models: Path) -> None:
    assert run_main(hub, manifest, models)[0] == 0
    weights = models / "tiny-model" / "model.bin"
    weights.write_bytes(WEIGHTS[:-1] + b"\x00")  # same size, new mtime: the record no longer applies
    hub.state.log.clear()

    code, out = run_main(hub, manifest, models)

    assert code == 0, out
    assert f"model.bin: the file in place does not match (checksum mismatch: expected sha256 {sha256(WEIGHTS)}" in out
    assert len(hub.state.gets("model.bin")) == 1
    assert_fetched(models)


def test_a_server_that_ignores_range_restarts_from_zero(hub: _Hub, manifest: Path, models: Path) -> None:
    hub.state.ignore_range = True
    hub.state.cut_after["model.bin"] = PIECE + 500_000

    code, out = run_main(hub, manifest, models)

    assert code == 0, out
    assert hub.state.ranges("model.bin") == [None, f"bytes={PIECE}-"]  # asked to resume, got the whole file
    assert_fetched(models)  # and the first piece is not left in front of it


def test_the_manifest_pin_wins_over_the_hub(hub: _Hub, tmp_path: Path, models: Path) -> None:
    pinned = tmp_path / "pinned.toml"
    wrong = "0" * 64
    pinned.write_text(
        f'[sets.tiny]\ntarget = "tiny-model"\nrepo = "{REPO}"\nrevision = "main"\n'
        f'files = [{{ path = "model.bin", sha256 = "{wrong}" }}, {{ path = "config.json", size = 3 }}]\n'
    )

    code, out = run_main(hub, pinned, models)

    assert code == 1
    assert f"FAILED tiny/model.bin: the manifest pins sha256 {wrong} but the hub has {sha256(WEIGHTS)}" in out
    assert f"FAILED tiny/config.json: the manifest says 3 bytes but the hub has {len(CONFIG)}" in out
    assert hub.state.gets() == []  # refused before downloading anything


def test_not_enough_disk_space(hub: _Hub, manifest: Path, models: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fm.shutil, "disk_usage", lambda path: fm.shutil._ntuple_diskusage(10**9, 10**9 - 1000, 1000))

    code, out = run_main(hub, manifest, models, "tiny")

    assert code == 1
    assert "FAILED tiny/model.bin: not enough disk space in" in out
    assert "it needs 12.0 MiB, 1000 B free" in out
    assert hub.state.gets("model.bin") == []


def test_the_token_goes_to_the_hub_only(
    hub: _Hub, manifest: Path, models: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hub.state.token = "hf_secret"

    code, out = run_main(hub, manifest, models)

    assert code == 1
    assert "FAILED tiny/model.bin: access denied (HTTP 401): set HF_TOKEN if the repository is gated or private" in out
    assert hub.state.gets() == []

    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    hub.state.log.clear()
    code, out = run_main(hub, manifest, models)

    assert code == 0, out
    assert all(h.authorization == "Bearer hf_secret" for h in hub.state.log if "/resolve/" in h.path)
    assert [h.authorization for h in hub.state.log if h.path.startswith("/cdn/")] == [None]  # not to the storage
    assert_fetched(models)


def test_without_a_checksum_a_file_is_accepted_by_size_with_a_warning(hub: _Hub, manifest: Path, models: Path) -> None:
    hub.state.opaque_etags = True

    code, out = run_main(hub, manifest, models)

    assert code == 0, out
    assert "model.bin: warning: no checksum known (manifest or hub): accepted by its size" in out
    assert_fetched(models)


def test_a_server_that_is_no_hub_is_named(hub: _Hub, manifest: Path, models: Path) -> None:
    hub.state.commit_header = False

    code, out = run_main(hub, manifest, models)

    assert code == 1
    assert f"FAILED tiny/model.bin: {hub.url} does not answer like a Hugging Face hub (no X-Repo-Commit" in out


def test_a_required_file_missing_upstream_fails(hub: _Hub, manifest: Path, models: Path) -> None:
    del hub.state.files["tok/tokenizer.json"]

    code, out = run_main(hub, manifest, models)

    assert code == 1
    assert "FAILED tiny/tok/tokenizer.json: not in acme/tiny at revision main (HTTP 404 EntryNotFound)" in out
    assert (models / "tiny-model" / "model.bin").read_bytes() == WEIGHTS


def test_an_unknown_revision_is_named(hub: _Hub, manifest: Path, models: Path) -> None:
    manifest.write_text(MANIFEST.replace('revision = "main"', 'revision = "v9"'))

    code, out = run_main(hub, manifest, models)

    assert code == 1
    assert "FAILED tiny/config.json: acme/tiny has no revision v9 (HTTP 404 RevisionNotFound)" in out


def test_progress_is_plain_lines_in_a_log(
    hub: _Hub, manifest: Path, models: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fm, "PROGRESS_EVERY_S", 0.0)

    code, out = run_main(hub, manifest, models, "tiny")

    assert code == 0, out
    assert "\r" not in out
    assert re.search(r"^    model\.bin: 12\.0 MiB of 12\.0 MiB \(100%\), ", out, re.MULTILINE)
    assert re.search(r"^    model\.bin \(verifying\): 12\.0 MiB of 12\.0 MiB \(100%\)", out, re.MULTILINE)


def test_env_prints_exports_for_sets_in_place(hub: _Hub, manifest: Path, tmp_path: Path) -> None:
    models = tmp_path / "my models"  # a space: the values must come out shell-quoted

    before = io.StringIO()
    assert fm.main(["--manifest", str(manifest), "--models-dir", str(models), "--env"], out=before) == 0
    assert not [line for line in before.getvalue().splitlines() if line.startswith("export")]
    assert "# tiny: not fetched yet (missing config.json, model.bin, tok/tokenizer.json)" in before.getvalue()

    assert run_main(hub, manifest, models)[0] == 0
    after = io.StringIO()
    assert fm.main(["--manifest", str(manifest), "--models-dir", str(models), "--env"], out=after) == 0

    exports = [line for line in after.getvalue().splitlines() if line.startswith("export ")]
    assert [shlex.split(line)[1] for line in exports] == [
        f"PARLEY_TEST_MODEL_DIR={models}/tiny-model",
        f"PARLEY_TEST_WEIGHTS={models}/tiny-model/model.bin",
    ]


def test_list_shows_present_and_missing(hub: _Hub, manifest: Path, models: Path) -> None:
    def listing() -> tuple[int, str]:
        out = io.StringIO()
        return fm.main(["--manifest", str(manifest), "--models-dir", str(models), "--list"], out=out), out.getvalue()

    code, out = listing()
    assert code == 1
    assert re.search(r"missing\s+\?\s+model\.bin", out) and re.search(r"missing \(optional\)\s+\?\s+extra\.txt", out)

    del hub.state.files["model.bin"]
    assert run_main(hub, manifest, models)[0] == 1
    code, out = listing()
    assert code == 1
    assert re.search(r"missing\s+\?\s+model\.bin", out)
    assert re.search(rf"present, verified\s+{len(CONFIG)} B\s+config\.json", out)

    # A killed run leaves huggingface_hub's partial download behind: --list shows it, the next run removes it.
    leftover = models / "tiny-model" / ".cache" / "huggingface" / "download" / "abc.def.12345678.incomplete"
    leftover.parent.mkdir(parents=True, exist_ok=True)
    leftover.write_bytes(b"x" * 2048)
    assert "an interrupted download left 2.0 KiB in " in listing()[1]
    hub.state.files["model.bin"] = WEIGHTS
    code, out = run_main(hub, manifest, models)
    assert code == 0, out
    assert "removed an interrupted download (2.0 KiB): abc.def.12345678.incomplete" in out
    assert not leftover.exists()

    code, out = listing()
    assert code == 0
    assert re.search(r"present, verified\s+12\.0 MiB\s+model\.bin", out)
    (models / ".fetch-models" / "tiny" / "model.bin.sha256").unlink()
    assert re.search(r"present, not verified yet\s+12\.0 MiB\s+model\.bin", listing()[1])
    hub.state.log.clear()
    listing()
    assert hub.state.log == []  # --list never asks the hub


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[sets.x]\ntarget = '../up'\nrepo = 'a/b'\nrevision = 'main'\nfiles = [{ path = 'f' }]\n", "without '..'"),
        ("[sets.x]\ntarget = 't'\nrepo = 'a/b'\nrevision = 'main'\nfiles = [{ path = 'f', sha256 = 'x' }]\n", "sha256"),
        ("[sets.x]\ntarget = 't'\nrepo = 'ab'\nrevision = 'main'\nfiles = [{ path = 'f' }]\n", "<owner>/<name>"),
        (
            "[sets.x]\ntarget = 't'\nrepo = 'a/b'\nrevision = 'main'\nfiles = [{ path = 'f' }]\n"
            "[sets.x.settings]\nPARLEY_X = '{where}'\n",
            "unknown placeholder {where}",
        ),
        ("not toml [", "not valid TOML"),
    ],
)
def test_a_bad_manifest_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, message: str) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(text)

    assert fm.main(["--manifest", str(bad), "--models-dir", str(tmp_path), "--list"]) == 2
    assert message in capsys.readouterr().err


def test_an_unknown_set_exits_2(manifest: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert fm.main(["--manifest", str(manifest), "--models-dir", str(tmp_path), "nosuch"]) == 2
    assert "unknown set(s) nosuch; the manifest has tiny" in capsys.readouterr().err


def test_the_shipped_manifest_is_valid() -> None:
    sets = fm.load_manifest(fm.DEFAULT_MANIFEST)

    assert {"fireredtts2", "whisper", "llm"} <= set(sets)
    assert [s.name for s in fm.select_sets(sets, [])] == ["fireredtts2", "whisper", "llm"]
    models = Path("/workspace/models")
    assert sets["whisper"].environment(models) == {"PARLEY_ASR_MODEL_PATH": "/workspace/models/whisper-small.en"}
    assert sets["llm"].environment(models)["PARLEY_LLM_MODEL_PATH"] == (
        "/workspace/models/llm/qwen2.5-1.5b-instruct-q4_k_m.gguf"
    )
    # What the FireRedTTS2 engine checks for is all there.
    tts = {f.path for f in sets["fireredtts2"].files if not f.optional}
    assert {"config_llm.json", "llm_posttrain.pt", "config_codec.json", "codec.pt"} <= tts
    assert "Qwen2.5-1.5B/tokenizer.json" in tts
    assert (
        sets["fireredtts2"].environment(models)["PARLEY_TTS_FIREREDTTS2_MODELS_DIR"] == "/workspace/models/FireRedTTS2"
    )
