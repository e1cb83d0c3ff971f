"""runpod/fetch-models against a fake Hugging Face hub served from this process.

The hub (stdlib http.server on 127.0.0.1) answers `/<repo>/resolve/<revision>/<path>` like the real
one: an LFS file is a 302 to `/cdn/<path>` carrying X-Linked-Etag (its sha256) and X-Linked-Size; a
small file is served directly with its git blob id as ETag. It honours `Range` (206), and can be told
to ignore it, to cut a download after N bytes, or to serve corrupted bytes. It logs every request, so
the tests can say which requests a run made.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import os
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

# A fake model: a "weights" file in LFS, big enough to be cut mid-way; two small git files.
WEIGHTS = bytes((i * 7 + i // 251) % 256 for i in range(3 * 1024 * 1024 + 123))
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
    corrupt: set[str] = field(default_factory=set)  # served with one byte flipped, headers unchanged
    ignore_range: bool = False
    linked_headers: bool = True  # False: an LFS redirect without X-Linked-Etag/-Size (a plain mirror)
    cdn_origin: str = ""  # "" redirects to the same host; e.g. http://localhost:PORT for another one
    log: list[Hit] = field(default_factory=list)

    def gets(self, name: str | None = None) -> list[Hit]:
        return [h for h in self.log if h.method == "GET" and (name is None or h.path.endswith("/" + name))]


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
        match = re.fullmatch(rf"/{REPO}/resolve/[^/]+/(.+)", self.path)
        name = match.group(1) if match else ""
        if name not in state.files:
            self._empty(404, **{"X-Error-Code": "EntryNotFound"})
            return
        commit = {"X-Repo-Commit": COMMIT}
        if name in state.lfs:
            linked = {"X-Linked-Etag": f'"{sha256(state.files[name])}"', "X-Linked-Size": str(len(state.files[name]))}
            self._empty(
                302, Location=f"{state.cdn_origin}/cdn/{name}", **commit, **(linked if state.linked_headers else {})
            )
            return
        self._content(name, body, ETag=f'"{git_blob(state.files[name])}"', **commit)

    def _content(self, name: str, body: bool, **headers: str) -> None:
        state = self.server.state
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
        cut = state.cut_after.pop(name, None)
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
    """fetch-models as the operator runs it: a separate process, through the bash wrapper."""
    env = {k: v for k, v in os.environ.items() if k not in ("HF_TOKEN", "HF_ENDPOINT", "PARLEY_MODELS_BASE_URL")}
    env["PARLEY_PYTHON"] = sys.executable
    argv = ["--manifest", str(manifest), "--models-dir", str(models), "--base-url", hub.url, "--retry-wait", "0"]
    return subprocess.run(
        [str(ROOT / "runpod" / "fetch-models"), *argv, *extra],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


def assert_fetched(models: Path) -> None:
    for name, data in FILES.items():
        assert (models / "tiny-model" / name).read_bytes() == data, name
    assert not list(models.rglob("*.part"))


def test_full_fetch_into_an_empty_dir(hub: _Hub, manifest: Path, models: Path) -> None:
    code, out = run_main(hub, manifest, models)

    assert code == 0, out
    assert_fetched(models)
    assert "extra.txt: not in the repository (optional): skipped" in out
    assert out.count(f'note: main is commit {COMMIT} (set revision = "{COMMIT}" to pin it)') == 1
    # Each file verified against the hub's checksum and recorded, so the next run can skip it.
    record = fm.json.loads((models / ".fetch-models" / "tiny" / "model.bin.sha256").read_text())
    assert record["sha256"] == sha256(WEIGHTS) and record["size"] == len(WEIGHTS)
    assert (models / ".fetch-models" / "tiny" / "tok" / "tokenizer.json.sha256").is_file()
    # The LFS file came through the redirect; nothing was sent twice.
    assert [h.path for h in hub.state.gets("model.bin")] == [f"/{REPO}/resolve/main/model.bin", "/cdn/model.bin"]


def test_resume_after_an_interruption(hub: _Hub, manifest: Path, models: Path) -> None:
    hub.state.cut_after["model.bin"] = 1_000_000
    first = run_script(hub, manifest, models, "--retries", "0")

    assert first.returncode == 1, first.stdout + first.stderr
    assert "FAILED tiny/model.bin" in first.stdout and "run again to resume" in first.stdout
    part = models / "tiny-model" / "model.bin.part"
    kept = part.stat().st_size
    assert 0 < kept <= 1_000_000
    assert not (models / "tiny-model" / "model.bin").exists()
    assert (models / "tiny-model" / "config.json").read_bytes() == CONFIG  # the other files went on

    hub.state.log.clear()
    second = run_script(hub, manifest, models)

    assert second.returncode == 0, second.stdout + second.stderr
    assert f"model.bin: resuming at {fm.human_size(kept)}" in second.stdout
    assert [h.range for h in hub.state.gets("model.bin") if h.path.startswith("/cdn/")] == [f"bytes={kept}-"]
    assert_fetched(models)


def test_a_retry_resumes_within_the_same_run(hub: _Hub, manifest: Path, models: Path) -> None:
    hub.state.cut_after["model.bin"] = 2_000_000

    code, out = run_main(hub, manifest, models, "--retries", "2")

    assert code == 0, out
    assert "retry 1 of 2" in out
    ranges = [h.range for h in hub.state.gets("model.bin") if h.path.startswith("/cdn/")]
    assert ranges[0] is None and ranges[1] is not None and ranges[1].startswith("bytes=")
    assert int(ranges[1].removeprefix("bytes=").rstrip("-")) > 0
    assert_fetched(models)


@pytest.mark.parametrize(("name", "kind"), [("model.bin", "sha256"), ("config.json", "git blob")])
def test_a_checksum_mismatch_is_refused(hub: _Hub, manifest: Path, models: Path, name: str, kind: str) -> None:
    hub.state.corrupt.add(name)

    result = run_script(hub, manifest, models)

    assert result.returncode == 1, result.stdout + result.stderr
    expected = sha256(FILES[name]) if kind == "sha256" else git_blob(FILES[name])
    failure = next(line for line in result.stdout.splitlines() if line.startswith(f"  FAILED tiny/{name}:"))
    assert f"checksum mismatch: expected {kind} {expected}" in failure and "got " in failure
    assert not (models / "tiny-model" / name).exists()
    assert not (models / "tiny-model" / f"{name}.part").exists()
    assert not (models / ".fetch-models" / "tiny" / f"{name}.sha256").exists()
    # The files after it were still fetched.
    assert (models / "tiny-model" / "tok" / "tokenizer.json").read_bytes() == TOKENIZER


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
    assert "model.bin: the file in place does not match" in out
    assert len(hub.state.gets("model.bin")) == 2
    assert_fetched(models)


def test_a_server_that_ignores_range_restarts_from_zero(hub: _Hub, manifest: Path, models: Path) -> None:
    hub.state.ignore_range = True
    part = models / "tiny-model" / "model.bin.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(b"junk that must not stay in front of the file")

    code, out = run_main(hub, manifest, models)

    assert code == 0, out
    assert "model.bin: the server ignored the resume request (HTTP 200): starting over" in out
    assert [h.range for h in hub.state.gets("model.bin") if h.path.startswith("/cdn/")] == ["bytes=44-"]
    assert_fetched(models)


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
    assert "it needs 3.0 MiB, 1000 B free" in out
    assert hub.state.gets("model.bin") == []


def test_the_token_goes_to_the_hub_only(
    hub: _Hub, manifest: Path, models: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    hub.state.cdn_origin = f"http://localhost:{hub.server_address[1]}"  # the storage is another host

    code, out = run_main(hub, manifest, models)

    assert code == 0, out
    assert all(h.authorization == "Bearer hf_secret" for h in hub.state.log if "/resolve/" in h.path)
    assert [h.authorization for h in hub.state.log if h.path.startswith("/cdn/")] == [None]


def test_without_a_checksum_a_file_is_accepted_by_size_with_a_warning(
    hub: _Hub, manifest: Path, models: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    hub.state.linked_headers = False  # so the HEAD probe follows the redirect to the storage host itself
    hub.state.cdn_origin = f"http://localhost:{hub.server_address[1]}"

    code, out = run_main(hub, manifest, models)

    assert code == 0, out
    assert "model.bin: warning: no checksum known (manifest or hub): accepted by its size" in out
    assert_fetched(models)
    storage = [h for h in hub.state.log if h.path.startswith("/cdn/")]
    assert [h.method for h in storage] == ["HEAD", "GET"]
    assert [h.authorization for h in storage] == [None, None]


def test_a_required_file_missing_upstream_fails(hub: _Hub, manifest: Path, models: Path) -> None:
    del hub.state.files["tok/tokenizer.json"]

    code, out = run_main(hub, manifest, models)

    assert code == 1
    assert "FAILED tiny/tok/tokenizer.json: not in acme/tiny at revision main (HTTP 404 EntryNotFound)" in out
    assert (models / "tiny-model" / "model.bin").read_bytes() == WEIGHTS


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


def test_list_shows_present_partial_and_missing(hub: _Hub, manifest: Path, models: Path) -> None:
    def listing() -> tuple[int, str]:
        out = io.StringIO()
        return fm.main(["--manifest", str(manifest), "--models-dir", str(models), "--list"], out=out), out.getvalue()

    code, out = listing()
    assert code == 1
    assert re.search(r"missing\s+\?\s+model\.bin", out) and re.search(r"missing \(optional\)\s+\?\s+extra\.txt", out)

    hub.state.cut_after["model.bin"] = 1_000_000
    assert run_main(hub, manifest, models, "--retries", "0")[0] == 1
    code, out = listing()
    assert code == 1
    assert re.search(r"partial\s+976\.6 KiB of \?\s+model\.bin", out)
    assert re.search(rf"present, verified\s+{len(CONFIG)} B\s+config\.json", out)

    assert run_main(hub, manifest, models)[0] == 0
    code, out = listing()
    assert code == 0
    assert re.search(r"present, verified\s+3\.0 MiB\s+model\.bin", out)
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
