"""Checks that run before training starts: can this cache serve this mode for this student?

Every refusal names what the cache holds and what the run asked for, so the fix is obvious: the wrong
cache, the wrong student, or a mode / temperature the cache was not built for.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cache_schema.directory import BUILD_CONFIG_FILE
from cache_schema.manifest import MANIFEST_FILE, Manifest
from cache_schema.store import open_store
from stages.train.pipelines import CrossPipeline, SharedPipeline, train_pipeline
from tide.losses import LOSSES, parse_mode, required_targets


class CacheMismatchError(ValueError):
    """The cache cannot serve the requested run (mode, pass, temperature, tokenizer, layout)."""


class InputPathError(ValueError):
    """``--cache`` or ``--student`` does not name what it must."""


def check_cache_path(cache: str) -> str:
    """``--cache`` must be a finished cache directory (a path or a URL); say which of the likely mistakes it is."""
    store = open_store(cache)
    if store.is_file(MANIFEST_FILE):
        return cache
    if store.is_file(BUILD_CONFIG_FILE):
        raise InputPathError(f"--cache {cache}: the build in this directory has not finished (no {MANIFEST_FILE} "
                             "yet); rerun its tide-cache build command to complete it")
    if not store.is_local:
        raise InputPathError(f"--cache {cache}: no {MANIFEST_FILE} there; give the URL tide-cache build or push "
                             "wrote the cache to (it holds manifest.json)")
    path = store.local_path()
    if not path.exists():
        raise InputPathError(f"--cache {cache}: no such directory; give the directory tide-cache build wrote "
                             "(it holds manifest.json)")
    if not path.is_dir():
        raise InputPathError(f"--cache {cache} is a file; give the cache directory (it holds manifest.json)")
    inner = sorted(p.parent.name for p in path.glob(f"*/{MANIFEST_FILE}"))
    hint = f" (it holds the caches {', '.join(inner)})" if inner else ""
    raise InputPathError(f"--cache {cache} is not a cache directory: no {MANIFEST_FILE}{hint}")


def cache_fingerprint(cache: str | Path) -> str:
    """The fingerprint of a cache: the SHA-256 of its manifest, which lists every shard's SHA-256."""
    return "sha256:" + open_store(cache).sha256(MANIFEST_FILE)


def check_student_path(student: str) -> None:
    """``--student`` must be a checkpoint directory (config.json) or a model in the local Hub cache."""
    path = Path(student)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise InputPathError(f"--student {student}: the directory has no config.json, so it is not a model "
                                 "checkpoint; give the student's directory (config.json, weights, tokenizer)")
        return
    if path.exists():
        raise InputPathError(f"--student {student} is a file; give the student's checkpoint directory")
    from huggingface_hub import try_to_load_from_cache

    try:
        cached = try_to_load_from_cache(student, "config.json")
    except ValueError:  # not even a well-formed repository id
        cached = None
    if not isinstance(cached, str):
        raise InputPathError(f"--student {student}: no such directory, and no model of that name in the local "
                             "Hugging Face cache; give the student's checkpoint directory")


@dataclass(frozen=True)
class RunPlan:
    """What the data pipeline must deliver: the cache's training pipeline (None when the mode needs no
    teacher targets), the teacher pass, the distillation temperature (None for ``ce``) and the cache's
    stored temperatures."""

    pipeline: SharedPipeline | CrossPipeline | None
    target_pass: str
    temperature: float | None
    temperatures: tuple[float, ...]


TARGET_WORDS = {"vocab": "vocabulary (top-k)", "chunk": "chunk"}


def _modes_for(kind: str) -> str:
    return ", ".join(name for name, entry in LOSSES.items() if entry.targets == kind)


def plan_run(manifest: Manifest, *, mode: str, comp_demo: bool, temperature: float | None,
             cache_dir: str | Path | None = None, teacher_targets: str = "auto") -> RunPlan:
    """Refuse a mode the cache cannot serve; otherwise say which targets to read.

    ``temperature`` None means the mode's default (its loss-registry entry's). ``cache_dir`` and
    ``teacher_targets``: see :func:`stages.train.pipelines.train_pipeline` (exact targets read the cache's
    LM-head file)."""
    try:
        entries = parse_mode(mode)
    except ValueError as exc:
        raise CacheMismatchError(f"--mode {mode!r}: {exc}") from None
    kind = required_targets(entries)
    pipeline = train_pipeline(manifest, cache_dir, teacher_targets)
    passes = list(manifest.targets.passes)
    if kind != "none" and kind != pipeline.target_kind:
        raise CacheMismatchError(
            f"--mode {mode!r} needs {TARGET_WORDS[kind]} targets, but the cache is pipeline {pipeline.name!r} "
            f"({TARGET_WORDS[pipeline.target_kind]} targets); use one of its modes "
            f"({_modes_for(pipeline.target_kind)}) or a cache with {TARGET_WORDS[kind]} targets"
        )
    target_pass = "compdemo" if comp_demo else "plain"
    if kind != "none" and target_pass not in passes:
        if comp_demo:
            raise CacheMismatchError(
                f"--comp_demo asks for CompDemo targets, but the cache holds only the passes {passes}; "
                "rebuild the cache with CompDemo targets or drop --comp_demo"
            )
        raise CacheMismatchError(
            f"the cache holds no plain-pass targets (passes {passes}); add --comp_demo to train on them"
        )
    temperatures = tuple(float(t) for t in manifest.targets.temperatures)
    if kind == "none":
        return RunPlan(pipeline=None, target_pass=target_pass, temperature=None, temperatures=temperatures)
    entry = next(e for e in entries if e.targets == kind)
    chosen = float(temperature) if temperature else float(entry.default_temperature)
    if kind == "vocab" and chosen not in temperatures and not pipeline.any_temperature:
        raise CacheMismatchError(
            f"temperature {chosen} is not stored in the cache (stored: {list(temperatures)}); vocabulary "
            "modes need the log-partition at their temperature: pick one of the stored temperatures or "
            "rebuild the cache with this one"
        )
    return RunPlan(pipeline=pipeline, target_pass=target_pass, temperature=chosen, temperatures=temperatures)


def check_student_tokenizer(manifest: Manifest, fingerprint: str, *, student: str) -> None:
    """Refuse a cache built for another student tokenizer (ids would mean different tokens)."""
    cached = manifest.student.tokenizer_fingerprint
    if cached != fingerprint:
        raise CacheMismatchError(
            f"student tokenizer mismatch: the cache was built for tokenizer fingerprint {cached}, but the "
            f"student at {student} has {fingerprint}; train the student the cache was built for or rebuild it"
        )


def check_student_layout(manifest: Manifest, *, mask_token_id: int | None, vocab_rows: int, max_length: int) -> None:
    """Mask id, vocabulary width and length options must agree with the cache."""
    info = manifest.student
    if mask_token_id is not None and mask_token_id != info.mask_token_id:
        raise CacheMismatchError(
            f"mask token mismatch: the cache uses student mask id {info.mask_token_id}, the student "
            f"tokenizer's mask id is {mask_token_id}"
        )
    if (manifest.teacher.shared_vocab_size or 0) > vocab_rows:
        raise CacheMismatchError(
            f"the cache compares the first {manifest.teacher.shared_vocab_size} ids, but the student has only "
            f"{vocab_rows} vocabulary rows"
        )
    if info.mask_token_id >= vocab_rows:
        raise CacheMismatchError(
            f"the cache's mask id {info.mask_token_id} is outside the student's {vocab_rows} vocabulary rows"
        )
    if max_length and max_length % info.block_size:
        raise CacheMismatchError(
            f"--truncate-length {max_length} is not a multiple of the cache's block size {info.block_size}"
        )
