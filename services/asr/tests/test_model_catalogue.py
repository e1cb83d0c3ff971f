"""The embedded Whisper catalogue: a model directory assembled once from part packages, every file checked."""

from __future__ import annotations

import dataclasses
import hashlib
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from parley.assembly import ModelFileError, PackagedFile
from parley_asr.catalogue import CATALOGUE, DEFAULT_MODEL, EmbeddedWhisper, ModelFile, choose_model, model_directory
from parley_asr.config import AsrSettings

HALVES = [b"CT2\x00" + bytes(range(256)) * 30, b"second half " * 2000]
SMALL = {"config.json": b'{"lang_ids": [1, 2]}', "vocabulary.txt": b"a\nb\n"}


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def packages(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Two installed part packages laid out as the multilingual model's are: small files and half 1, then half 2."""
    site = tmp_path / "site"
    for number, half in enumerate(HALVES, start=1):
        data = site / f"fake_whisper_part{number}" / "data"
        data.mkdir(parents=True)
        (data.parent / "__init__.py").write_text("raise ImportError('a part package is never imported')\n")
        (data / f"model.bin.part{number}").write_bytes(half)
    for name, content in SMALL.items():
        (site / "fake_whisper_part1" / "data" / name).write_bytes(content)
    monkeypatch.syspath_prepend(str(site))
    yield site
    for number in (1, 2):
        sys.modules.pop(f"fake_whisper_part{number}", None)


def fake_model(model_sha256: str = sha(b"".join(HALVES)), in_place: bool = False, parts: int = 2) -> EmbeddedWhisper:
    small = tuple(
        ModelFile(name, sha(content), len(content), (PackagedFile("fake_whisper_part1", f"data/{name}"),))
        for name, content in SMALL.items()
    )
    halves = tuple(PackagedFile(f"fake_whisper_part{n}", f"data/model.bin.part{n}") for n in range(1, parts + 1))
    return EmbeddedWhisper(
        name="fake",
        description="a test model",
        pip_install="fake-whisper-part1 fake-whisper-part2",
        in_place=in_place,
        files=(*small, ModelFile("model.bin", model_sha256, sum(map(len, HALVES)), halves)),
        multilingual=True,
        languages="2 languages",
        licence="test",
    )


def test_the_directory_is_assembled_once_into_the_cache(packages: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    progress: list[tuple[str, int, int]] = []
    directory = model_directory(fake_model(), cache, lambda *report: progress.append(report))
    assert directory == cache / "fake"
    assert (directory / "model.bin").read_bytes() == b"".join(HALVES)
    assert {p.name: p.read_bytes() for p in directory.iterdir() if p.name != "model.bin"} == SMALL
    assert ("joining model.bin", sum(map(len, HALVES)), sum(map(len, HALVES))) in progress
    # From now on the cache alone serves, and is checked at every start.
    for part in packages.glob("*/data/*"):
        part.unlink()
    assert model_directory(fake_model(), cache) == directory
    (directory / "config.json").write_bytes(b'{"lang_ids": [1, 3]}')
    with pytest.raises(ModelFileError, match=r"config\.json is not the pinned model"):
        model_directory(fake_model(), cache)


def test_parts_that_join_into_other_bytes_leave_no_model_file(packages: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    with pytest.raises(ModelFileError, match=f"expected {'0' * 64}: a part is damaged"):
        model_directory(fake_model(model_sha256="0" * 64), cache)
    assert sorted(p.name for p in (cache / "fake").iterdir()) == sorted(SMALL), "no model.bin, no temporary file"


def test_a_missing_part_package_says_what_to_install(packages: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelFileError, match=r"pip install fake-whisper-part1 .*missing: fake_whisper_part3"):
        model_directory(fake_model(parts=3), tmp_path / "cache")


def test_a_whole_directory_in_one_package_is_used_where_it_lies(packages: Path, tmp_path: Path) -> None:
    whole = fake_model(in_place=True)
    small_only = dataclasses.replace(whole, files=whole.files[:-1])
    assert model_directory(small_only, tmp_path / "cache") == packages / "fake_whisper_part1" / "data"
    assert not (tmp_path / "cache").exists()
    (packages / "fake_whisper_part1" / "data" / "vocabulary.txt").write_bytes(b"a\nc\n")
    with pytest.raises(ModelFileError, match=r"vocabulary\.txt is not the pinned model"):
        model_directory(small_only, tmp_path / "cache")


def test_the_model_path_overrides_the_catalogue(tmp_path: Path) -> None:
    # Nothing is looked up or checked for an operator's own directory.
    assert choose_model("no-such-model", tmp_path) == tmp_path
    with pytest.raises(ModelFileError, match=r"no embedded Whisper model 'small'; one of: tiny\.en, base"):
        choose_model("small", None)


def test_the_setting_accepts_exactly_the_catalogue(monkeypatch: pytest.MonkeyPatch) -> None:
    assert AsrSettings().model == DEFAULT_MODEL == "tiny.en"
    monkeypatch.setenv("PARLEY_ASR_MODEL", "base")
    assert AsrSettings().model == "base"
    monkeypatch.setenv("PARLEY_ASR_MODEL", "base.en")
    with pytest.raises(ValueError, match=r"model\n  String should match pattern"):
        AsrSettings()


def test_every_entry_pins_full_sha256s_and_only_the_base_model_is_multilingual() -> None:
    for model in CATALOGUE.values():
        assert {f.name for f in model.files} == {"model.bin", "config.json", "tokenizer.json", "vocabulary.txt"}
        assert all(len(f.sha256) == 64 and int(f.sha256, 16) >= 0 for f in model.files), model.name
    assert {name: model.multilingual for name, model in CATALOGUE.items()} == {"tiny.en": False, "base": True}


def test_the_installed_packages_give_the_pinned_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The entries (parts, order, sizes, sha256s) match the packages `make install` installs."""
    assert (model_directory(CATALOGUE["tiny.en"]) / "model.bin").stat().st_size == 75_537_502
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    base = CATALOGUE["base"]
    directory = choose_model("base", None)  # a fresh cache: assembled from the parts
    assert directory == tmp_path / "parley" / "asr" / "base"
    assert sum(p.stat().st_size for p in directory.iterdir()) == base.size_bytes
    (directory / "model.bin").unlink()  # pytest keeps its last temporary directories: not 145 MB of them
