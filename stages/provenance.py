"""Where a result came from: the fingerprint of a checkpoint's weights and the versions of the libraries.

One definition for every stage, so that the teacher fingerprint a cache's manifest records, the student
fingerprint an evaluation records and any later check of a checkpoint directory give the same value for
the same files.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
from pathlib import Path

from cache_schema.files import sha256_of_file

PROJECT_DISTRIBUTION = "tide-offline"
WEIGHT_SUFFIXES = (".safetensors", ".bin")
# The libraries whose versions decide a cache, a training run or an evaluation score.
RECORDED_LIBRARIES = (PROJECT_DISTRIBUTION, "torch", "transformers", "accelerate", "pyarrow", "numpy", "lm_eval")


def weight_files(checkpoint: str | os.PathLike) -> list[Path]:
    """The checkpoint directory's weight files (``*.safetensors``, ``*.bin``), in name order."""
    root = Path(checkpoint)
    return sorted(p for p in root.iterdir() if p.suffix in WEIGHT_SUFFIXES and p.is_file()) if root.is_dir() else []


def weights_fingerprint(checkpoint: str | os.PathLike) -> str | None:
    """``sha256:<hex>`` of the lines ``<file name> <sha256 of the file>`` over the checkpoint's weight files
    in name order, or None when the directory holds none.

    Independent of paths and modification times; the per-file digests are the ones the Hugging Face Hub
    lists for large files, so a remote checkpoint's fingerprint can be checked without downloading it."""
    files = weight_files(checkpoint)
    if not files:
        return None
    outer = hashlib.sha256()
    for path in files:
        outer.update(f"{path.name} {sha256_of_file(path)}\n".encode())
    return "sha256:" + outer.hexdigest()


def library_versions() -> dict[str, str | None]:
    """Installed versions of :data:`RECORDED_LIBRARIES` (None for one that is not installed)."""
    versions: dict[str, str | None] = {}
    for name in RECORDED_LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions
