"""Stage-one build settings: one dataclass, YAML loading, CLI overrides, resolution and comparison.

The resolved configuration is stored in the output directory when a build starts
(``build_config.json``); a later run against the same directory must resolve to the same *content*
settings or it is refused with a message naming every differing setting. Runtime-only settings (where
the output lives, which device, how rows are batched through the teacher) may change between runs.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cache_schema.directory import CacheDirectory

PIPELINES = ("cross", "shared")
PASSES = ("plain", "compdemo")
REGIMES = ("paper", "native")
VALUE_DTYPES = ("float16", "float32")
DTYPES = ("auto", "bfloat16", "float16", "float32")

# Teacher config ``model_type`` → pipeline (DESIGN.md §2, §5).
TEACHER_PIPELINES = {"llada2_moe": "cross", "wedlm": "shared"}

# Paper defaults per pipeline (DESIGN.md §7): teacher length and stored temperatures.
PIPELINE_DEFAULTS: dict[str, dict[str, Any]] = {
    "cross": {"teacher_max_length": 1024, "temperatures": [1.0]},
    "shared": {"teacher_max_length": 768, "temperatures": [1.0, 2.0]},
}

# Settings that never change what a shard contains; every other setting must match on resume.
RUNTIME_KEYS = frozenset({"output", "device", "batch_tokens", "batch_rows", "lm_head_chunk", "progress"})


class BuildConfigError(ValueError):
    """A build setting is missing, malformed, or differs from the one an output directory was built with."""


@dataclass
class BuildConfig:
    """Every setting of ``tide-cache build``; field names are the YAML keys and (with ``-``) the CLI flags."""

    teacher: str | None = None
    student_tokenizer: str | None = None
    sources: str | None = None
    output: str | None = None
    teacher_tokenizer: str | None = None
    pipeline: str = "auto"
    max_length: int = 512
    teacher_max_length: int | None = None
    block_size: int = 32
    k: int = 64
    temperatures: list[float] | None = None
    replicas: int = 1
    seed: int = 0
    eps: float = 1e-3
    passes: list[str] = field(default_factory=lambda: ["plain", "compdemo"])
    demo_ratio: float = 0.5
    regime: str = "paper"
    max_samples: int | None = None
    batch_tokens: int = 16384
    batch_rows: int | None = None
    rows_per_shard: int = 1024
    rows_per_row_group: int = 256
    value_dtype: str = "float16"
    device: str = "auto"
    dtype: str = "auto"
    lm_head_chunk: int = 1024
    student_vocab_size: int | None = None
    progress: bool = True

    # ------------------------------------------------------------------ construction

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_dict(cls, values: dict[str, Any], *, origin: str = "config") -> BuildConfig:
        unknown = sorted(set(values) - set(cls.field_names()))
        if unknown:
            raise BuildConfigError(
                f"{origin}: unknown setting(s) {unknown}; valid settings are {sorted(cls.field_names())}"
            )
        return cls(**values)

    @classmethod
    def from_yaml(cls, path: str | os.PathLike) -> BuildConfig:
        import yaml

        path = Path(path)
        if not path.is_file():
            raise BuildConfigError(f"--config {path}: file not found")
        with open(path, encoding="utf-8") as handle:
            values = yaml.safe_load(handle) or {}
        if not isinstance(values, dict):
            raise BuildConfigError(f"--config {path}: expected a mapping of settings, got {type(values).__name__}")
        return cls.from_dict(values, origin=str(path))

    def with_overrides(self, overrides: dict[str, Any]) -> BuildConfig:
        """A copy with every non-None override applied (CLI flags over YAML)."""
        values = dataclasses.asdict(self)
        for key, value in overrides.items():
            if key not in values:
                raise BuildConfigError(f"unknown setting {key!r}")
            if value is not None:
                values[key] = value
        return BuildConfig(**values)

    # ------------------------------------------------------------------ resolution

    def resolve(self, *, teacher_model_type: str | None = None) -> BuildConfig:
        """Fill pipeline-dependent defaults and validate every setting.

        ``teacher_model_type`` (the teacher config's ``model_type``) decides ``pipeline="auto"``; pass it
        when the teacher directory is not readable here (tests), else it is read from ``config.json``.
        """
        for name in ("teacher", "student_tokenizer", "sources", "output"):
            if not getattr(self, name):
                raise BuildConfigError(f"setting {name!r} is required (YAML key {name} or flag --{name.replace('_', '-')})")
        values = dataclasses.asdict(self)
        if values["teacher_tokenizer"] is None:
            values["teacher_tokenizer"] = values["teacher"]
        pipeline = values["pipeline"]
        if pipeline == "auto":
            model_type = teacher_model_type or read_teacher_model_type(values["teacher"])
            if model_type not in TEACHER_PIPELINES:
                raise BuildConfigError(
                    f"teacher {values['teacher']}: model_type {model_type!r} has no known pipeline "
                    f"(known: {sorted(TEACHER_PIPELINES)}); set pipeline: cross|shared explicitly"
                )
            pipeline = TEACHER_PIPELINES[model_type]
        if pipeline not in PIPELINES:
            raise BuildConfigError(f"pipeline={pipeline!r}: expected one of {PIPELINES} or 'auto'")
        values["pipeline"] = pipeline
        defaults = PIPELINE_DEFAULTS[pipeline]
        if values["teacher_max_length"] is None:
            values["teacher_max_length"] = defaults["teacher_max_length"]
        if values["temperatures"] is None:
            values["temperatures"] = list(defaults["temperatures"])
        values["temperatures"] = [float(t) for t in values["temperatures"]]
        if isinstance(values["passes"], str):
            values["passes"] = [p for p in values["passes"].replace("+", ",").split(",") if p]
        if set(values["passes"]) <= set(PASSES):
            values["passes"] = [p for p in PASSES if p in values["passes"]]  # canonical order
        resolved = BuildConfig(**values)
        resolved._validate()
        return resolved

    def _validate(self) -> None:
        def need(condition: bool, message: str) -> None:
            if not condition:
                raise BuildConfigError(message)

        need(self.pipeline in PIPELINES, f"pipeline={self.pipeline!r}: expected one of {PIPELINES}")
        need(bool(self.passes) and set(self.passes) <= set(PASSES),
             f"passes={self.passes!r}: expected a non-empty subset of {PASSES}")
        need(self.regime in REGIMES, f"regime={self.regime!r}: expected one of {REGIMES}")
        need(self.value_dtype in VALUE_DTYPES, f"value_dtype={self.value_dtype!r}: expected one of {VALUE_DTYPES}")
        need(self.dtype in DTYPES, f"dtype={self.dtype!r}: expected one of {DTYPES}")
        need(self.block_size > 0, f"block_size={self.block_size}: must be positive")
        need(self.max_length > 0 and self.max_length % self.block_size == 0,
             f"max_length={self.max_length}: must be a positive multiple of block_size={self.block_size}")
        need(self.teacher_max_length is not None and self.teacher_max_length > 0,
             f"teacher_max_length={self.teacher_max_length}: must be positive")
        need(self.k > 0, f"k={self.k}: must be positive")
        need(bool(self.temperatures) and self.temperatures[0] == 1.0 and all(t > 0 for t in self.temperatures),
             f"temperatures={self.temperatures}: must be positive and start with 1.0")
        need(len(set(self.temperatures)) == len(self.temperatures),
             f"temperatures={self.temperatures}: contains duplicates")
        need(self.replicas >= 1, f"replicas={self.replicas}: must be at least 1")
        need(self.seed >= 0, f"seed={self.seed}: must be non-negative")
        need(0.0 < self.eps < 1.0, f"eps={self.eps}: must lie in (0, 1)")
        need(0.0 <= self.demo_ratio <= 1.0, f"demo_ratio={self.demo_ratio}: must lie in [0, 1]")
        need(self.max_samples is None or self.max_samples > 0, f"max_samples={self.max_samples}: must be positive")
        need(self.batch_tokens > 0, f"batch_tokens={self.batch_tokens}: must be positive")
        need(self.batch_rows is None or self.batch_rows > 0, f"batch_rows={self.batch_rows}: must be positive")
        need(self.rows_per_shard > 0, f"rows_per_shard={self.rows_per_shard}: must be positive")
        need(self.rows_per_row_group > 0, f"rows_per_row_group={self.rows_per_row_group}: must be positive")
        need(self.lm_head_chunk > 0, f"lm_head_chunk={self.lm_head_chunk}: must be positive")

    # ------------------------------------------------------------------ comparison and storage

    def content_dict(self) -> dict[str, Any]:
        """The settings that decide shard content (everything but ``RUNTIME_KEYS``)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in RUNTIME_KEYS}

    def differences(self, stored: dict[str, Any]) -> list[str]:
        """Human-readable lines, one per content setting whose value differs from ``stored``."""
        current = self.content_dict()
        lines = []
        for key in sorted(set(current) | {k for k in stored if k not in RUNTIME_KEYS}):
            old, new = stored.get(key, "<absent>"), current.get(key, "<absent>")
            if _normalise(old) != _normalise(new):
                lines.append(f"{key}: output directory was built with {old!r}, this run has {new!r}")
        return lines

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)


def _normalise(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_normalise(v) for v in value]
    if isinstance(value, list):
        return [_normalise(v) for v in value]
    if isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def read_teacher_model_type(teacher_path: str) -> str:
    """The ``model_type`` of a teacher checkpoint directory's ``config.json``."""
    config_file = Path(teacher_path) / "config.json"
    if not config_file.is_file():
        raise BuildConfigError(
            f"teacher {teacher_path}: no config.json found, so the teacher kind cannot be detected; "
            "pass a checkpoint directory or set pipeline explicitly"
        )
    with open(config_file, encoding="utf-8") as handle:
        model_type = json.load(handle).get("model_type")
    if not model_type:
        raise BuildConfigError(f"teacher {config_file}: config.json has no model_type")
    return str(model_type)


def check_or_store_config(config: BuildConfig, directory: CacheDirectory) -> None:
    """Refuse a content change against an existing output directory; store the config on first use.

    Raises ``BuildConfigError`` naming every differing setting.
    """
    stored = directory.read_build_config()
    if stored is not None:
        diffs = config.differences(stored)
        if diffs:
            raise BuildConfigError(
                f"{directory.root} holds a build with different settings; refusing to mix them. "
                "Use a new --output, or rerun with the original settings to resume:\n  " + "\n  ".join(diffs)
            )
        return
    directory.write_build_config(json.loads(config.to_json()))
