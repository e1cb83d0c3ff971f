"""The shared model-file assembly (parley.assembly), under the name the LLM service has always used."""

from __future__ import annotations

from parley.assembly import (
    ModelFileError,
    PackagedFile,
    Progress,
    assembled,
    installed_path,
    join_parts,
    log_progress,
    sha256_of,
    verify,
)

__all__ = [
    "ModelFileError",
    "PackagedFile",
    "Progress",
    "assembled",
    "installed_path",
    "join_parts",
    "log_progress",
    "sha256_of",
    "verify",
]
