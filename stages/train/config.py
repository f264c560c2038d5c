"""Training configuration: one dataclass whose fields are ``tide-train``'s options and YAML keys.

The defaults are the settings every paper variant shares (docs/design.md#paper-settings): lr 5e-5, 10 epochs, cosine
schedule, TIDAL λ0 0.1 → λmax 0.9 on both axes with the midrange weight, and temperature 0, which picks
the mode's own default (5.0 for chunk modes, 2.0 for vocabulary modes, owned by ``tide.losses``). What
makes a variant (its mode, CompDemo targets) is in ``configs/train/<pipeline>/<variant>.yaml``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from stages.options import OptionsError, option
from tide.losses.calm import DEFAULT_CHUNK_TEMPERATURE
from tide.losses.registry import DEFAULT_VOCAB_TEMPERATURE
from tide.losses.tidal import AXES, DECAYS, WEIGHTINGS
from tide.runtime import MIXED_PRECISION_CHOICES
from tide.targets import TAIL_KINDS

LR_SCHEDULES = ("cosine", "linear", "constant")
ATTN_IMPLEMENTATIONS = ("sdpa", "eager")

_DATA = "data"
_OBJECTIVE = "objective"
_OPTIM = "optimisation"
_MODEL = "model"
_RUN = "run"


@dataclass
class TrainConfig:
    """Every option of ``tide-train``; the ``help`` of each field is its ``--help`` text."""

    cache: str = option("", group=_DATA, help="cache directory (manifest.json + shards); required")
    student: str = option("", group=_MODEL, help="student checkpoint directory (model + tokenizer); required")
    output: str = option("", group=_RUN, help="output directory: checkpoints, logs, final student; required")
    mode: str = option("ce", group=_OBJECTIVE,
                       help="loss mode; '+' composes terms over one forward pass (e.g. 'tidal', 'reverse_calm', "
                            "'kl+calm')")
    comp_demo: bool = option(False, group=_OBJECTIVE,
                             help="use the CompDemo teacher targets instead of the plain-pass ones")
    lr: float = option(5e-5, group=_OPTIM, help="peak learning rate (AdamW)")
    weight_decay: float = option(0.0, group=_OPTIM, help="AdamW weight decay")
    adam_beta1: float = option(0.9, group=_OPTIM, help="AdamW beta1")
    adam_beta2: float = option(0.999, group=_OPTIM, help="AdamW beta2")
    adam_eps: float = option(1e-8, group=_OPTIM, help="AdamW epsilon")
    max_grad_norm: float = option(1.0, group=_OPTIM, help="gradient clipping norm (<= 0 disables)")
    lr_schedule: str = option("cosine", group=_OPTIM, choices=LR_SCHEDULES, help="learning-rate decay after warm-up")
    warmup_steps: int = option(0, group=_OPTIM,
                               help="linear warm-up optimizer steps (when > 0, overrides --warmup-ratio)")
    warmup_ratio: float = option(0.03, group=_OPTIM, help="warm-up as a share of all optimizer steps")
    epochs: int = option(10, group=_OPTIM, help="passes over the cache (one replica per epoch)")
    max_steps: int = option(0, group=_OPTIM, help="stop after this many optimizer steps (0: run all epochs)")
    batch_size: int = option(8, group=_DATA, help="rows per process per micro-batch")
    grad_accum: int = option(1, group=_OPTIM, help="micro-batches per optimizer step")
    truncate_length: int = option(
        0, group=_DATA, former=("max_length",),
        help="truncate the cached student rows to this many tokens (a multiple of the block size; 0: as stored); "
             "the sequence length itself is chosen when the cache is built",
    )
    temperature: float = option(
        0.0, group=_OBJECTIVE,
        help=f"distillation temperature (0: the mode's default, {DEFAULT_CHUNK_TEMPERATURE} for chunk modes, "
             f"{DEFAULT_VOCAB_TEMPERATURE} for vocabulary modes); vocabulary modes need it stored in the cache",
    )
    tidal_axis: str = option("both", group=_OBJECTIVE, choices=AXES, help="TIDAL interpolation axis")
    tidal_decay: str = option("cosine", group=_OBJECTIVE, choices=DECAYS, help="TIDAL λ progress curve")
    tidal_weight: str = option("midrange", group=_OBJECTIVE, choices=WEIGHTINGS, help="TIDAL per-timestep weight")
    lambda0: float = option(0.1, group=_OBJECTIVE, help="TIDAL λ at the start of training (λ0)")
    lambda_max: float = option(0.9, group=_OBJECTIVE, help="TIDAL λ at the end of training (λmax)")
    tail: str = option("student", group=_OBJECTIVE, choices=TAIL_KINDS,
                       help="how vocabulary modes share the teacher's mass off the cached ids: like the student's "
                            "own probabilities there (student), uniformly (uniform), or --tail-uniform-share of it "
                            "uniformly and the rest like the student (mixture)")
    tail_uniform_share: float = option(0.1, group=_OBJECTIVE,
                                       help="the uniform share of the teacher's unstored mass under --tail mixture")
    distill_weight: float = option(1.0, group=_OBJECTIVE,
                                   help="weight of the distillation terms added to the CE term")
    ce_weight: float = option(1.0, group=_OBJECTIVE, help="weight of the BD3LM CE term in distillation modes")
    seed: int = option(0, group=_DATA, help="seed of the data order and of torch")
    replica_cycle: list[int] = option(default_factory=list, group=_DATA, metavar="R", default_text="epoch mod R",
                                      help="replicas to train on; epoch e uses entry e mod the list's length")
    shuffle_window: int = option(4, group=_DATA, help="row groups whose rows are shuffled together")
    save_every: int = option(0, group=_RUN, help="checkpoint every N optimizer steps (0: only at the end)")
    keep_checkpoints: int = option(2, group=_RUN, help="checkpoints to keep (0: all)")
    resume: bool = option(False, group=_RUN, help="resume from the latest checkpoint under --output")
    log_every: int = option(10, group=_RUN, help="log every N optimizer steps (JSONL + TensorBoard)")
    mixed_precision: str = option("auto", group=_MODEL, choices=MIXED_PRECISION_CHOICES,
                                  help="autocast precision; auto = bf16 where supported")
    gradient_checkpointing: bool = option(False, group=_MODEL, help="gradient checkpointing on the student")
    attn_implementation: str = option("sdpa", group=_MODEL, choices=ATTN_IMPLEMENTATIONS,
                                      help="student attention: sdpa (boolean BD3LM mask), eager (additive mask)")
    loss_chunk_size: int = option(4096, group=_MODEL,
                                  help="masked positions per LM-head chunk (bounds the logits memory)")

    def problems(self) -> list[str]:
        """One line per inconsistent option, each naming its flag."""
        found = [f"--{name} is required" for name in ("cache", "student", "output") if not getattr(self, name)]
        checks = [
            ("lr", self.lr > 0, "must be > 0"),
            ("epochs", self.epochs >= 1, "must be >= 1"),
            ("max_steps", self.max_steps >= 0, "must be >= 0"),
            ("batch_size", self.batch_size >= 1, "must be >= 1"),
            ("grad_accum", self.grad_accum >= 1, "must be >= 1"),
            ("truncate_length", self.truncate_length >= 0, "must be >= 0"),
            ("temperature", self.temperature >= 0, "must be >= 0 (0 picks the mode default)"),
            ("warmup_steps", self.warmup_steps >= 0, "must be >= 0"),
            ("warmup_ratio", 0 <= self.warmup_ratio < 1, "must be in [0, 1)"),
            ("lambda0", 0 <= self.lambda0 <= 1, "must be in [0, 1]"),
            ("lambda_max", 0 <= self.lambda_max <= 1, "must be in [0, 1]"),
            ("distill_weight", self.distill_weight >= 0, "must be >= 0"),
            ("tail", self.tail in TAIL_KINDS, f"must be one of {TAIL_KINDS}"),
            ("tail_uniform_share", 0 < self.tail_uniform_share < 1, "must be in (0, 1)"),
            ("ce_weight", self.ce_weight >= 0, "must be >= 0"),
            ("seed", self.seed >= 0, "must be >= 0"),
            ("shuffle_window", self.shuffle_window >= 1, "must be >= 1"),
            ("save_every", self.save_every >= 0, "must be >= 0"),
            ("keep_checkpoints", self.keep_checkpoints >= 0, "must be >= 0"),
            ("log_every", self.log_every >= 1, "must be >= 1"),
            ("loss_chunk_size", self.loss_chunk_size >= 1, "must be >= 1"),
            ("tidal_axis", self.tidal_axis in AXES, f"must be one of {AXES}"),
            ("tidal_decay", self.tidal_decay in DECAYS, f"must be one of {DECAYS}"),
            ("tidal_weight", self.tidal_weight in WEIGHTINGS, f"must be one of {WEIGHTINGS}"),
            ("lr_schedule", self.lr_schedule in LR_SCHEDULES, f"must be one of {LR_SCHEDULES}"),
            ("mixed_precision", self.mixed_precision in MIXED_PRECISION_CHOICES,
             f"must be one of {MIXED_PRECISION_CHOICES}"),
            ("attn_implementation", self.attn_implementation in ATTN_IMPLEMENTATIONS,
             f"must be one of {ATTN_IMPLEMENTATIONS}"),
        ]
        found += [f"--{name.replace('_', '-')}={getattr(self, name)!r} {why}" for name, ok, why in checks if not ok]
        return found

    def validate(self) -> TrainConfig:
        """Raise :class:`OptionsError` (a ValueError) listing every inconsistent option; else return self."""
        found = self.problems()
        if found:
            raise OptionsError(found)
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
