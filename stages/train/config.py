"""Training configuration: one dataclass whose fields are ``tide-train``'s options and YAML keys.

The defaults are the settings every paper variant shares (docs/design.md#paper-settings, docs/training.md):
lr 5e-5, 10 epochs (the paper's table; the original's launch scripts ran 2 and 3), warm-up over 10% of
the steps then cosine decay, TIDAL λ0 0.1 → λmax 0.9 on both axes, the original's CALM clamp, a full
permutation of the rows every epoch, and temperature 0, which picks the mode's own default (5.0 for chunk
modes, 2.0 for vocabulary modes, owned by ``tide.losses``). Two defaults depend on the cache's pipeline,
as the original's two launch scripts differ (``PIPELINE_DEFAULTS``, filled by :meth:`TrainConfig.for_pipeline`):
the per-process batch (8 for pipeline A, 10 for B) and the TIDAL timestep weight (uniform for A, midrange
for B). What makes a variant (its mode, CompDemo targets) is in ``configs/train/<pipeline>/<variant>.yaml``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from cache_schema.schemas import PIPELINE_CROSS, PIPELINE_SHARED, PIPELINES
from stages.options import OptionsError, option
from stages.train.exact_pipeline import TEACHER_TARGETS
from stages.train.resume_check import RunFacts
from tide.losses.calm import CALM_CLAMP, DEFAULT_CHUNK_TEMPERATURE
from tide.losses.registry import DEFAULT_VOCAB_TEMPERATURE
from tide.losses.tidal import AXES, DECAYS, WEIGHTINGS
from tide.runtime import MIXED_PRECISION_CHOICES
from tide.targets import TAIL_KINDS

LR_SCHEDULES = ("cosine", "linear", "constant")
ATTN_IMPLEMENTATIONS = ("sdpa", "eager")
# Where metrics go: our JSONL file, or one of accelerate's trackers.
REPORT_TO = ("jsonl", "tensorboard", "wandb", "mlflow", "aim")
# The linear and MLP projections of a Qwen3 decoder layer: the default LoRA targets.
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
MODE_REQUIRED = ("--mode is required: ce (no teacher), or a distillation mode of the cache's pipeline "
                 "(the paper's methods: reverse_calm on a cross cache, tidal --comp-demo on a shared cache)")

# fp32: fp32 weights and AdamW states under bf16 autocast (an fp32 master copy); bf16: bf16 weights and
# states with no master copy, as the original's one-click scripts trained (HF Trainer, --bf16, bf16 model).
WEIGHTS_DTYPES = ("fp32", "bf16")

# The original's launch scripts per pipeline: distill_llada2.sh (A) and distill_wedlm.sh (B).
PIPELINE_DEFAULTS: dict[str, dict[str, Any]] = {
    PIPELINE_CROSS: {"batch_size": 8, "tidal_weight": "uniform"},  # the script passes no timestep weight
    PIPELINE_SHARED: {"batch_size": 10, "tidal_weight": "midrange"},
}


def _per_pipeline(key: str) -> str:
    return "; ".join(f"{PIPELINE_DEFAULTS[p][key]} for {p}" for p in PIPELINES)

_DATA = "data"
_OBJECTIVE = "objective"
_OPTIM = "optimisation"
_MODEL = "model"
_RUN = "run"
_TRACKING = "progress and tracking"
_VALIDATION = "validation"
_LORA = "LoRA (needs the lora extra: pip install 'tide-offline[lora]')"
_HUB = "Hugging Face Hub"


@dataclass
class TrainConfig:
    """Every option of ``tide-train``; the ``help`` of each field is its ``--help`` text."""

    cache: str = option("", group=_DATA, help="cache directory or URL (s3://, gs://, hf://datasets/..., file://; "
                                              "manifest.json + data/ shards, streamed); required")
    verify_checksums: bool = option(False, group=_DATA,
                                    help="hash every shard of the cache before the first step (default: each shard "
                                         "is hashed the first time this process reads it; start-up reads only sizes "
                                         "and Parquet footers)")
    student: str = option("", group=_MODEL, help="student checkpoint directory (model + tokenizer); required")
    output: str = option("", group=_RUN, help="output directory: checkpoints, logs, final student; required")
    mode: str = option("", group=_OBJECTIVE,
                       help="loss mode, required: 'ce' (no teacher) or a distillation mode; '+' composes terms "
                            "over one forward pass (e.g. 'tidal', 'reverse_calm', 'kl+calm')")
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
    warmup_ratio: float = option(0.1, group=_OPTIM, help="warm-up as a share of all optimizer steps")
    epochs: int = option(10, group=_OPTIM,
                         help="passes over the cache (one replica per epoch): the paper's 10; the original's "
                              "launch scripts ran 2 (pipeline A) and 3 (pipeline B)")
    max_steps: int = option(0, group=_OPTIM, help="stop after this many optimizer steps (0: run all epochs)")
    batch_size: int | None = option(None, group=_DATA, default_text=_per_pipeline("batch_size"),
                                    help="rows per process per micro-batch (the original: 8 GPUs, so a global "
                                         "batch of 64 for A and 80 for B; match it with --grad-accum elsewhere)")
    grad_accum: int = option(1, group=_OPTIM, help="micro-batches per optimizer step")
    truncate_length: int = option(
        0, group=_DATA, former=("max_length",),
        help="truncate the cached student rows to this many tokens (a multiple of the block size; 0: as stored); "
             "the sequence length itself is chosen when the cache is built",
    )
    temperature: float = option(
        0.0, group=_OBJECTIVE,
        help=f"distillation temperature (0: the mode's default, {DEFAULT_CHUNK_TEMPERATURE} for chunk modes, "
             f"{DEFAULT_VOCAB_TEMPERATURE} for vocabulary modes); vocabulary modes need it stored in the cache, "
             "unless they train on exact targets (any temperature)",
    )
    tidal_axis: str = option("both", group=_OBJECTIVE, choices=AXES, help="TIDAL interpolation axis")
    tidal_decay: str = option("cosine", group=_OBJECTIVE, choices=DECAYS, help="TIDAL λ progress curve")
    tidal_weight: str | None = option(None, group=_OBJECTIVE, choices=WEIGHTINGS,
                                      default_text=_per_pipeline("tidal_weight"), help="TIDAL per-timestep weight")
    lambda0: float = option(0.1, group=_OBJECTIVE, help="TIDAL λ at the start of training (λ0)")
    lambda_max: float = option(0.9, group=_OBJECTIVE, help="TIDAL λ at the end of training (λmax)")
    tail: str = option("student", group=_OBJECTIVE, choices=TAIL_KINDS,
                       help="how vocabulary modes share the teacher's mass off the cached ids: like the student's "
                            "own probabilities there (student), uniformly (uniform), or --tail-uniform-share of it "
                            "uniformly and the rest like the student (mixture)")
    tail_uniform_share: float = option(0.1, group=_OBJECTIVE,
                                       help="the uniform share of the teacher's unstored mass under --tail mixture")
    teacher_targets: str = option("auto", group=_OBJECTIVE, choices=TEACHER_TARGETS,
                                  help="the targets of a shared cache that vocabulary modes train on: exact (the "
                                       "teacher's hidden states and LM head: its whole distribution, at any "
                                       "temperature), sparse (the top entries and their tail masses); auto: exact "
                                       "where the cache stores them")
    distill_weight: float = option(1.0, group=_OBJECTIVE,
                                   help="weight of the distillation terms added to the CE term")
    ce_weight: float = option(1.0, group=_OBJECTIVE, help="weight of the BD3LM CE term in distillation modes")
    calm_clamp: float | None = option(
        CALM_CLAMP, group=_OBJECTIVE, metavar="EPS",
        help="chunk modes: clamp chunk probabilities to [EPS, 1 - EPS] in fp32 as the original did (no gradient "
             "where clamped); none = the unclamped log-space form")
    seed: int = option(0, group=_DATA, help="seed of the data order and of torch")
    replica_cycle: list[int] = option(default_factory=list, group=_DATA, metavar="R", default_text="epoch mod R",
                                      help="replicas to train on; epoch e uses entry e mod the list's length")
    data_workers: int = option(1, group=_DATA,
                               help="DataLoader worker processes that read, decode and collate batches ahead of "
                                    "the training thread (0: read on the training thread)")
    shuffle_window: int = option(0, group=_DATA,
                                 help="0: a full permutation of the epoch's rows (the original's sampler); N >= 1: "
                                      "rows shuffled within windows of N row groups (reads stay local)")
    save_every: int = option(500, group=_RUN, help="checkpoint every N optimizer steps (0: not by steps)")
    save_every_minutes: float = option(30.0, group=_RUN,
                                       help="also checkpoint when this many minutes have passed since the last "
                                            "checkpoint (0: not by time)")
    keep_checkpoints: int = option(2, group=_RUN,
                                   help="checkpoints of this run to keep, the newest (0: all); older runs' are "
                                        "never deleted")
    resume: bool = option(False, group=_RUN, help="resume from the latest checkpoint under --output")
    resume_from: str = option("", group=_RUN, metavar="CHECKPOINT",
                              help="resume from this checkpoint directory (.../checkpoints/step-N)")
    overwrite: bool = option(False, group=_RUN,
                             help="delete an earlier tide-train run in --output and start again")
    allow_changed: list[str] = option(default_factory=list, group=_RUN, metavar="OPTION",
                                      help="options that may differ from the resumed checkpoint's (e.g. "
                                           "max_steps); any other difference refuses the resume")
    log_every: int = option(10, group=_TRACKING, help="log every N optimizer steps")
    report_to: list[str] = option(default_factory=lambda: ["jsonl", "tensorboard"], group=_TRACKING,
                                  choices=REPORT_TO,
                                  help="where metrics go: jsonl (logs/metrics.jsonl), and accelerate's trackers "
                                       "tensorboard, wandb, mlflow, aim (each needs its package)")
    project: str = option("tide-train", group=_TRACKING, help="tracker project name (W&B project, ...)")
    run_name: str = option("", group=_TRACKING, default_text="the output directory's name",
                           help="tracker run name")
    progress: bool = option(True, group=_TRACKING, help="progress bar (main process)")
    debug: bool = option(False, group=_RUN, help="show the full traceback when the run stops on an error")
    val_fraction: float | None = option(None, group=_VALIDATION, metavar="X",
                                        default_text="the cache's held-out split, if it has one",
                                        help="share of the cache's samples held out for validation, chosen by "
                                             "sample key (0: none)")
    val_every: int = option(500, group=_VALIDATION, help="validation loss every N optimizer steps (0: never)")
    val_batches: int = option(0, group=_VALIDATION, help="validation batches per evaluation (0: all)")
    eval_tasks: str = option("", group=_VALIDATION, metavar="TASKS",
                             help="lm-eval tasks run by tide-eval on each checkpoint (comma-separated; "
                                  "needs the eval extra)")
    eval_limit: float | None = option(None, group=_VALIDATION, metavar="N",
                                      help="documents per task for --eval-tasks")
    lora_r: int = option(0, group=_LORA, help="LoRA rank (0: train every parameter)")
    lora_alpha: float = option(16.0, group=_LORA, help="LoRA alpha (the update is scaled by alpha / r)")
    lora_dropout: float = option(0.0, group=_LORA, help="dropout on the LoRA input")
    lora_targets: list[str] = option(default_factory=lambda: list(LORA_TARGETS), group=_LORA, metavar="MODULE",
                                     help="module names that get adapters")
    push_to_hub: bool = option(False, group=_HUB, help="upload the final student and its model card")
    hub_model_id: str = option("", group=_HUB, metavar="OWNER/NAME", help="Hub repository for --push-to-hub")
    hub_private: bool = option(False, group=_HUB, help="create the Hub repository as private")
    mixed_precision: str = option("auto", group=_MODEL, choices=MIXED_PRECISION_CHOICES,
                                  help="autocast precision; auto = bf16 where supported")
    weights_dtype: str = option("fp32", group=_MODEL, choices=WEIGHTS_DTYPES,
                                help="student weights and optimizer states: fp32 (a master copy under autocast) or "
                                     "bf16 (no master copy, as the original's scripts; updates below half a bf16 "
                                     "spacing are lost)")
    gradient_checkpointing: bool = option(False, group=_MODEL, help="gradient checkpointing on the student")
    attn_implementation: str = option("sdpa", group=_MODEL, choices=ATTN_IMPLEMENTATIONS,
                                      help="student attention: sdpa (boolean BD3LM mask), eager (additive mask)")
    loss_chunk_size: int = option(4096, group=_MODEL,
                                  help="masked positions per LM-head chunk (bounds the logits memory)")

    def problems(self) -> list[str]:
        """One line per inconsistent option, each naming its flag."""
        found = [f"--{name} is required" for name in ("cache", "student", "output") if not getattr(self, name)]
        if not self.mode:
            found.append(MODE_REQUIRED)
        if self.resume and self.resume_from:
            found.append("--resume and --resume-from exclude each other: give one")
        if self.overwrite and (self.resume or self.resume_from):
            found.append("--overwrite starts again; it cannot be combined with --resume / --resume-from")
        if self.push_to_hub and not self.hub_model_id:
            found.append("--push-to-hub needs --hub-model-id OWNER/NAME")
        known = {f.name for f in dataclasses.fields(self)} | {f.name for f in dataclasses.fields(RunFacts)}
        found += [f"--allow-changed {name!r} is neither an option of tide-train nor a checked fact" for name in self.allow_changed
                  if name.replace("-", "_") not in known]
        checks = [
            ("lr", self.lr > 0, "must be > 0"),
            ("epochs", self.epochs >= 1, "must be >= 1"),
            ("max_steps", self.max_steps >= 0, "must be >= 0"),
            ("batch_size", self.batch_size is None or self.batch_size >= 1, "must be >= 1"),
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
            ("teacher_targets", self.teacher_targets in TEACHER_TARGETS, f"must be one of {TEACHER_TARGETS}"),
            ("ce_weight", self.ce_weight >= 0, "must be >= 0"),
            ("seed", self.seed >= 0, "must be >= 0"),
            ("shuffle_window", self.shuffle_window >= 0, "must be >= 0 (0: a full permutation)"),
            ("data_workers", self.data_workers >= 0, "must be >= 0 (0: no worker processes)"),
            ("calm_clamp", self.calm_clamp is None or 0 < self.calm_clamp < 0.5, "must lie in (0, 0.5) or be none"),
            ("save_every", self.save_every >= 0, "must be >= 0"),
            ("save_every_minutes", self.save_every_minutes >= 0, "must be >= 0"),
            ("val_fraction", self.val_fraction is None or 0 <= self.val_fraction < 1, "must be in [0, 1)"),
            ("val_every", self.val_every >= 0, "must be >= 0"),
            ("val_batches", self.val_batches >= 0, "must be >= 0"),
            ("lora_r", self.lora_r >= 0, "must be >= 0"),
            ("lora_alpha", self.lora_alpha > 0, "must be > 0"),
            ("lora_dropout", 0 <= self.lora_dropout < 1, "must be in [0, 1)"),
            ("lora_targets", bool(self.lora_targets) or not self.lora_r, "must name at least one module"),
            ("keep_checkpoints", self.keep_checkpoints >= 0, "must be >= 0"),
            ("log_every", self.log_every >= 1, "must be >= 1"),
            ("loss_chunk_size", self.loss_chunk_size >= 1, "must be >= 1"),
            ("tidal_axis", self.tidal_axis in AXES, f"must be one of {AXES}"),
            ("tidal_decay", self.tidal_decay in DECAYS, f"must be one of {DECAYS}"),
            ("tidal_weight", self.tidal_weight is None or self.tidal_weight in WEIGHTINGS,
             f"must be one of {WEIGHTINGS}"),
            ("weights_dtype", self.weights_dtype in WEIGHTS_DTYPES, f"must be one of {WEIGHTS_DTYPES}"),
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

    def for_pipeline(self, pipeline: str) -> TrainConfig:
        """This config with the pipeline-dependent defaults (``PIPELINE_DEFAULTS``) filled where unset."""
        if pipeline not in PIPELINE_DEFAULTS:
            raise ValueError(f"pipeline={pipeline!r}: expected one of {sorted(PIPELINE_DEFAULTS)}")
        unset = {k: v for k, v in PIPELINE_DEFAULTS[pipeline].items() if getattr(self, k) is None}
        return dataclasses.replace(self, **unset)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
