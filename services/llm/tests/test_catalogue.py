"""The embedded-model catalogue: parts found through their packages, joined once, checked, never half-written."""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from parley import assembly
from parley.assembly import ModelFileError, PackagedFile
from parley_llm import catalogue
from parley_llm.catalogue import CATALOGUE, DEFAULT_MODEL, EmbeddedModel, choose_model, model_file
from parley_llm.config import LlmSettings

PART_BYTES = [b"GGUF" + bytes(range(256)) * 40, b"middle part " * 3000, b"the end"]
WHOLE = b"".join(PART_BYTES)


@pytest.fixture
def packages(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Three installed part packages (fake_model_part1..3, each data/partN.bin) on sys.path."""
    site = tmp_path / "site"
    for number, data in enumerate(PART_BYTES, start=1):
        package = site / f"fake_model_part{number}"
        (package / "data").mkdir(parents=True)
        (package / "__init__.py").write_text("raise ImportError('a part package is never imported')\n")
        (package / "data" / f"part{number}.bin").write_bytes(data)
    monkeypatch.syspath_prepend(str(site))
    yield site
    for number in range(1, len(PART_BYTES) + 1):
        sys.modules.pop(f"fake_model_part{number}", None)


def fake_model(sha256: str = hashlib.sha256(WHOLE).hexdigest(), parts: int = len(PART_BYTES)) -> EmbeddedModel:
    return EmbeddedModel(
        name="fake-model",
        description="a test model",
        pip_install="fake-model-part1 fake-model-part2 fake-model-part3",
        file_name="fake.gguf",
        sha256=sha256,
        size_bytes=len(WHOLE),
        parts=tuple(PackagedFile(f"fake_model_part{n}", f"data/part{n}.bin") for n in range(1, parts + 1)),
        prompt_format="chat",
        licence="test",
    )


def test_parts_are_joined_in_order_into_the_cache(packages: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    progress: list[tuple[str, int, int]] = []
    path = model_file(fake_model(), cache, lambda *report: progress.append(report))
    assert path == cache / "fake.gguf"
    assert path.read_bytes() == WHOLE
    assert progress[-1] == ("joining fake.gguf", len(WHOLE), len(WHOLE))
    assert [p.name for p in cache.iterdir()] == ["fake.gguf"], "no temporary file is left behind"


def test_a_joined_file_is_reused_and_checked_every_time(packages: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    path = model_file(fake_model(), cache)
    for part in packages.glob("*/data/*.bin"):
        part.unlink()  # the cache alone serves from now on
    assert model_file(fake_model(), cache) == path
    path.write_bytes(WHOLE[:-1] + b"X")
    with pytest.raises(ModelFileError, match="not the pinned model"):
        model_file(fake_model(), cache)


def test_parts_that_join_into_other_bytes_are_refused_and_leave_nothing(packages: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    with pytest.raises(ModelFileError, match=f"expected {'0' * 64}: a part is damaged"):
        model_file(fake_model(sha256="0" * 64), cache)
    assert list(cache.iterdir()) == []


def test_an_interrupted_join_never_leaves_a_file_under_the_final_name(
    packages: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    monkeypatch.setattr(assembly, "BLOCK_BYTES", 1024)  # many blocks, so the join is cut part-way

    seen_under_final_name: list[int] = []

    def interrupted(action: str, done: int, total: int) -> None:
        # A kill -9 here would run no clean-up: the final name must not exist at any point before the end.
        if (cache / "fake.gguf").exists():
            seen_under_final_name.append(done)
        if done > len(PART_BYTES[0]):
            raise KeyboardInterrupt  # as a Ctrl-C or a stop signal would

    monkeypatch.setattr(assembly, "PROGRESS_EVERY_S", 0.0)
    with pytest.raises(KeyboardInterrupt):
        model_file(fake_model(), cache, interrupted)
    assert seen_under_final_name == []
    assert list(cache.iterdir()) == []
    # The next start joins it whole.
    assert model_file(fake_model(), cache).read_bytes() == WHOLE


def test_a_missing_part_package_says_what_to_install(packages: Path, tmp_path: Path) -> None:
    model = fake_model(parts=4)  # fake_model_part4 is not installed
    with pytest.raises(ModelFileError, match=r"pip install fake-model-part1 .*missing: fake_model_part4"):
        model_file(model, tmp_path / "cache")


def test_a_single_file_model_is_used_where_it_lies(packages: Path, tmp_path: Path) -> None:
    whole = PART_BYTES[0]
    model = fake_model(sha256=hashlib.sha256(whole).hexdigest(), parts=1)
    assert model_file(model, tmp_path / "cache") == packages / "fake_model_part1" / "data" / "part1.bin"
    assert not (tmp_path / "cache").exists()
    with pytest.raises(ModelFileError, match="not the pinned model"):
        model_file(fake_model(sha256="1" * 64, parts=1), tmp_path / "cache")


def test_the_model_path_overrides_the_catalogue_and_keeps_its_prompt_format(tmp_path: Path) -> None:
    gguf = tmp_path / "any.gguf"
    # Nothing is looked up or checked for an operator's own file: it need not be in the catalogue.
    choice = choose_model("no-such-model", gguf, "auto")
    assert (choice.path, choice.prompt_format) == (gguf, "auto")
    assert choose_model(DEFAULT_MODEL, gguf, "transcript").prompt_format == "transcript"


def test_each_embedded_model_is_prompted_its_own_way(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(catalogue, "model_file", lambda model, cache_dir=None, progress=None: tmp_path / "m.gguf")
    formats = {name: choose_model(name, None, "auto").prompt_format for name in CATALOGUE}
    # The base model has no chat template: it continues a transcript; instruct models use their template.
    assert formats == {
        "gemma3-270m-base": "transcript",
        "smollm2-135m-instruct": "chat",
        "qwen2.5-coder-0.5b-instruct": "chat",
        "qwen2.5-coder-1.5b-instruct": "chat",
    }
    assert choose_model("gemma3-270m-base", None, "chat").prompt_format == "chat", "an explicit format wins"
    with pytest.raises(ModelFileError, match="no embedded model 'gpt'"):
        choose_model("gpt", None, "auto")


def test_the_setting_accepts_exactly_the_catalogue(monkeypatch: pytest.MonkeyPatch) -> None:
    assert LlmSettings().model == DEFAULT_MODEL in CATALOGUE
    monkeypatch.setenv("PARLEY_LLM_MODEL", "smollm2-135m-instruct")
    assert LlmSettings().model == "smollm2-135m-instruct"
    monkeypatch.setenv("PARLEY_LLM_MODEL", "qwen2.5-coder-0.5b-instruct-x")
    with pytest.raises(ValueError, match=r"model\n  String should match pattern"):
        LlmSettings()


def test_every_catalogue_entry_pins_a_full_sha256_and_numbered_parts() -> None:
    for model in CATALOGUE.values():
        assert len(model.sha256) == 64 and int(model.sha256, 16) >= 0, model.name
        assert len({part.module for part in model.parts}) == len(model.parts), model.name


def test_the_default_models_installed_parts_join_into_its_pinned_file(tmp_path: Path) -> None:
    """The catalogue entry (parts, order, sha256) matches the packages `make install` installs."""
    model = CATALOGUE[DEFAULT_MODEL]
    joined = model_file(model, tmp_path)  # a fresh directory: joined from the parts, not the cache
    assert joined.stat().st_size == model.size_bytes
    joined.unlink()  # pytest keeps its last temporary directories: not 491 MB of them
