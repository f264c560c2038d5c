"""Training configuration: one dataclass, filled from defaults, an optional YAML file and the CLI.

Paper defaults (DESIGN.md §6–§7): lr 5e-5, 10 epochs, cosine schedule, TIDAL λ0 0.1 → λmax 0.9 on both
axes with the midrange weight, temperature 5.0 for chunk (CALM-family) modes and 2.0 for vocabulary modes.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

CHUNK_TEMPERATURE_DEFAULT = 5.0
VOCAB_TEMPERATURE_DEFAULT = 2.0

TIDAL_AXES = ("both", "training_only", "timestep_only")
TIDAL_DECAYS = ("cosine", "linear")
TIDAL_WEIGHTS = ("midrange", "uniform")
LR_SCHEDULES = ("cosine", "linear", "constant")
MIXED_PRECISION = ("auto", "no", "bf16", "fp16")


@dataclass
class TrainConfig:
    """Every option of ``tide-train``; field docs are the ``--help`` texts."""

    cache: str = field(default="", metadata={"help": "cache directory (manifest.json + shards)"})
    student: str = field(default="", metadata={"help": "student checkpoint directory (model + tokenizer)"})
    output: str = field(default="", metadata={"help": "output directory: checkpoints, logs, final student"})
    mode: str = field(
        default="ce",
        metadata={"help": "loss mode; '+' composes terms over one forward pass (e.g. 'tidal', 'reverse_calm', 'kl+calm')"},
    )
    comp_demo: bool = field(
        default=False, metadata={"help": "use the CompDemo teacher targets instead of the plain-pass ones"}
    )
    lr: float = field(default=5e-5, metadata={"help": "peak learning rate (AdamW)"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay"})
    adam_beta1: float = field(default=0.9, metadata={"help": "AdamW beta1"})
    adam_beta2: float = field(default=0.999, metadata={"help": "AdamW beta2"})
    adam_eps: float = field(default=1e-8, metadata={"help": "AdamW epsilon"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping norm (<= 0 disables)"})
    lr_schedule: str = field(default="cosine", metadata={"help": f"learning-rate decay after warm-up: {LR_SCHEDULES}"})
    warmup_steps: int = field(default=0, metadata={"help": "linear warm-up optimizer steps (overrides --warmup_ratio)"})
    warmup_ratio: float = field(default=0.03, metadata={"help": "warm-up as a share of all optimizer steps"})
    epochs: int = field(default=10, metadata={"help": "passes over the cache (one replica per epoch)"})
    max_steps: int = field(default=0, metadata={"help": "stop after this many optimizer steps (0: run all epochs)"})
    batch_size: int = field(default=8, metadata={"help": "rows per process per micro-batch"})
    grad_accum: int = field(default=1, metadata={"help": "micro-batches per optimizer step"})
    max_length: int = field(
        default=0, metadata={"help": "truncate student rows to this many tokens (multiple of the block size; 0: as stored)"}
    )
    temperature: float = field(
        default=0.0,
        metadata={"help": f"distillation temperature (0: {CHUNK_TEMPERATURE_DEFAULT} for chunk modes, "
                          f"{VOCAB_TEMPERATURE_DEFAULT} for vocabulary modes); vocabulary modes need it stored in the cache"},
    )
    tidal_axis: str = field(default="both", metadata={"help": f"TIDAL interpolation axis: {TIDAL_AXES}"})
    tidal_decay: str = field(default="cosine", metadata={"help": f"TIDAL λ progress curve: {TIDAL_DECAYS}"})
    tidal_weight: str = field(default="midrange", metadata={"help": f"TIDAL per-timestep weight: {TIDAL_WEIGHTS}"})
    lambda0: float = field(default=0.1, metadata={"help": "TIDAL λ at the start of training (λ0)"})
    lambda_max: float = field(default=0.9, metadata={"help": "TIDAL λ at the end of training (λmax)"})
    distill_weight: float = field(default=1.0, metadata={"help": "weight of the distillation terms added to the CE term"})
    ce_weight: float = field(default=1.0, metadata={"help": "weight of the BD3LM CE term in distillation modes"})
    seed: int = field(default=0, metadata={"help": "seed of the data order and of torch"})
    replica_cycle: list[int] = field(
        default_factory=list, metadata={"help": "replicas to train on, epoch e uses entry e mod len (default: e mod R)"}
    )
    shuffle_window: int = field(default=4, metadata={"help": "row groups whose rows are shuffled together"})
    save_every: int = field(default=0, metadata={"help": "checkpoint every N optimizer steps (0: only at the end)"})
    keep_checkpoints: int = field(default=2, metadata={"help": "checkpoints to keep (0: all)"})
    resume: bool = field(default=False, metadata={"help": "resume from the latest checkpoint under --output"})
    log_every: int = field(default=10, metadata={"help": "log every N optimizer steps (JSONL + TensorBoard)"})
    mixed_precision: str = field(default="auto", metadata={"help": f"{MIXED_PRECISION}; auto = bf16 where supported"})
    gradient_checkpointing: bool = field(default=False, metadata={"help": "gradient checkpointing on the student"})
    attn_implementation: str = field(
        default="sdpa", metadata={"help": "student attention: sdpa (boolean BD3LM mask), eager (additive mask)"}
    )
    loss_chunk_size: int = field(
        default=4096, metadata={"help": "masked positions per LM-head chunk (bounds the logits memory)"}
    )

    def validate(self) -> None:
        """Raise ValueError naming the first inconsistent option."""
        for name in ("cache", "student", "output"):
            if not getattr(self, name):
                raise ValueError(f"--{name} is required")
        checks = [
            ("lr", self.lr > 0, "must be > 0"),
            ("epochs", self.epochs >= 1, "must be >= 1"),
            ("max_steps", self.max_steps >= 0, "must be >= 0"),
            ("batch_size", self.batch_size >= 1, "must be >= 1"),
            ("grad_accum", self.grad_accum >= 1, "must be >= 1"),
            ("max_length", self.max_length >= 0, "must be >= 0"),
            ("temperature", self.temperature >= 0, "must be >= 0 (0 picks the mode default)"),
            ("warmup_steps", self.warmup_steps >= 0, "must be >= 0"),
            ("warmup_ratio", 0 <= self.warmup_ratio < 1, "must be in [0, 1)"),
            ("lambda0", 0 <= self.lambda0 <= 1, "must be in [0, 1]"),
            ("lambda_max", 0 <= self.lambda_max <= 1, "must be in [0, 1]"),
            ("distill_weight", self.distill_weight >= 0, "must be >= 0"),
            ("ce_weight", self.ce_weight >= 0, "must be >= 0"),
            ("seed", self.seed >= 0, "must be >= 0"),
            ("shuffle_window", self.shuffle_window >= 1, "must be >= 1"),
            ("save_every", self.save_every >= 0, "must be >= 0"),
            ("keep_checkpoints", self.keep_checkpoints >= 0, "must be >= 0"),
            ("log_every", self.log_every >= 1, "must be >= 1"),
            ("loss_chunk_size", self.loss_chunk_size >= 1, "must be >= 1"),
            ("tidal_axis", self.tidal_axis in TIDAL_AXES, f"must be one of {TIDAL_AXES}"),
            ("tidal_decay", self.tidal_decay in TIDAL_DECAYS, f"must be one of {TIDAL_DECAYS}"),
            ("tidal_weight", self.tidal_weight in TIDAL_WEIGHTS, f"must be one of {TIDAL_WEIGHTS}"),
            ("lr_schedule", self.lr_schedule in LR_SCHEDULES, f"must be one of {LR_SCHEDULES}"),
            ("mixed_precision", self.mixed_precision in MIXED_PRECISION, f"must be one of {MIXED_PRECISION}"),
            ("attn_implementation", self.attn_implementation in ("sdpa", "eager"), "must be sdpa or eager"),
        ]
        for name, ok, why in checks:
            if not ok:
                raise ValueError(f"--{name}={getattr(self, name)!r} {why}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def config_fields() -> list[dataclasses.Field]:
    return list(dataclasses.fields(TrainConfig))


def load_yaml_config(path: str | os.PathLike) -> dict[str, Any]:
    """Read a YAML mapping of option names (as in ``--help``, without dashes) to values."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--config {path}: no such file")
    with path.open() as handle:
        payload = yaml.safe_load(handle) or {}
    if not isinstance(payload, dict):
        raise ValueError(f"--config {path}: expected a mapping of option names to values, got {type(payload).__name__}")
    known = {f.name for f in config_fields()}
    unknown = sorted(set(payload) - known)
    if unknown:
        raise ValueError(f"--config {path}: unknown options {unknown}; known options are {sorted(known)}")
    return payload
