"""Sizes of the replication run: ``full`` (≈ 1 h on 2 CPU cores) and ``quick`` (a minutes-long smoke)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from tide.testing.model_sizes import ModelSize


@dataclass(frozen=True)
class ReplicationConfig:
    """Every size and budget of a run; stored in the output directory and in the report."""

    name: str
    vocab_small: int = 4096
    vocab_large: int = 6144
    block_size: int = 16
    student_max_length: int = 128
    teacher_max_length: int = 160
    max_chars: int = 600
    heldout_percent: int = 10
    train_samples: int = 384          # rows of the caches (before replicas)
    teacher_train_samples: int = 2000  # teacher pre-training pool (the whole fitting train split if fewer)
    eval_samples: int = 160           # held-out stdlib samples for NLL and infilling
    humaneval_samples: int = 48
    replicas: int = 2
    k: int = 64
    student: ModelSize = field(default_factory=lambda: ModelSize(64, 2))
    shared_teacher: ModelSize = field(default_factory=lambda: ModelSize(128, 3))
    cross_teacher: ModelSize = field(default_factory=lambda: ModelSize(128, 3))
    cross_experts: int = 4
    # Long enough for the teachers to sit well below the CE student on held-out NLL (300 steps left a gap
    # of only 0.4 nats/token): the budget that decides whether distillation has anything to transfer.
    teacher_steps: int = 1500
    teacher_batch: int = 16
    teacher_lr: float = 3e-3
    init_steps: int = 150
    init_lr: float = 3e-3
    mode_steps: int = 80
    mode_lr: float = 1e-3
    batch_size: int = 16
    seeds: tuple[int, ...] = (0, 1, 2)
    compare_steps: int = 25
    compare_samples: int = 40
    nll_timesteps: tuple[float, ...] = (0.25, 0.5, 0.75)
    # One intra-op thread: on a shared 2-core machine two OpenMP threads stall on each other's barriers
    # (measured 2-6x slower than one thread while other jobs run).
    threads: int = 1

    def as_dict(self) -> dict:
        return asdict(self)


FULL = ReplicationConfig(name="full")
QUICK = ReplicationConfig(
    name="quick", teacher_batch=8, batch_size=8, train_samples=24, teacher_train_samples=64, eval_samples=16, humaneval_samples=8, replicas=1,
    teacher_steps=4, init_steps=4, mode_steps=4, seeds=(0, 1), compare_steps=3, compare_samples=8,
    shared_teacher=ModelSize(64, 2), cross_teacher=ModelSize(64, 2), student=ModelSize(32, 1),
)
