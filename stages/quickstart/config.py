"""What a quickstart run is: its sizes (:class:`QuickstartConfig`), its training runs (:data:`TRAIN_RUNS`)
and where it writes everything (:class:`Layout`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

EVAL_TASK = "tide_quickstart_shift"
BLOCK_SIZE = 32
# The layout the caches query each teacher with (passed to tide-cache build) and the one it pre-trains in:
# they must be the same, or the cache would hold a teacher asked a question it was never trained on.
TEACHER_REGIME = "paper"


@dataclass
class QuickstartConfig:
    """Sizes of the quickstart run; the defaults finish in about five minutes on 2 CPU cores."""

    output: Path = Path("quickstart_out")
    task_train: int = 1200
    cache_rows: int = 400
    heldout: int = 64
    # opt-in: 4 HumanEval chats among 1,200 cut the WeDLM teacher's held-out exact match at 600 steps from
    # 0.52 to 0.05 (code rows dominate the per-token loss of the batches they are in)
    humaneval: int = 0
    eval_docs: int = 8
    vocab: int = 1024
    max_length: int = 256
    teacher_max_length: int = 320
    replicas: int = 2
    teacher_steps: int = 1200
    teacher_lr: float = 3e-3
    steps: int = 120
    batch_size: int = 16
    lr: float = 3e-3
    seed: int = 0
    evaluate: bool = True
    eval_baselines: bool = False

    def check(self) -> None:
        """Raise ValueError naming the first setting out of range."""
        positive = ("task_train", "cache_rows", "heldout", "eval_docs", "max_length", "teacher_max_length",
                    "replicas", "teacher_steps", "steps", "batch_size")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.humaneval < 0:
            raise ValueError(f"--humaneval must be >= 0, got {self.humaneval}")
        if self.cache_rows > self.task_train:
            raise ValueError(f"--cache-rows ({self.cache_rows}) must be <= --task-train ({self.task_train}): the "
                             "cache holds a part of the teachers' training chats")
        if self.vocab < 512:
            raise ValueError(f"--vocab must be >= 512 (256 bytes plus merges), got {self.vocab}")
        if self.max_length % BLOCK_SIZE:
            raise ValueError(f"--max-length must be a multiple of the block size {BLOCK_SIZE}, got {self.max_length}")
        for name in ("lr", "teacher_lr"):
            if not getattr(self, name) > 0:
                raise ValueError(f"--{name.replace('_', '-')} must be > 0, got {getattr(self, name)}")


@dataclass(frozen=True)
class TrainRun:
    """One ``tide-train`` run of the quickstart."""

    pipeline: str
    mode: str
    role: str  # "native", "baseline" or "CE only"
    comp_demo: bool = False

    @property
    def name(self) -> str:
        return f"{self.pipeline}-{self.mode}{'-compdemo' if self.comp_demo else ''}"


TRAIN_RUNS: tuple[TrainRun, ...] = (
    TrainRun("shared", "ce", "CE only"),
    TrainRun("cross", "reverse_calm", "native"),
    TrainRun("cross", "calm", "baseline"),
    TrainRun("shared", "tidal", "native", comp_demo=True),
    TrainRun("shared", "kl", "baseline"),
)


@dataclass
class Layout:
    """Every path the quickstart writes, relative to nothing: all under ``root``."""

    root: Path

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def student(self) -> Path:
        return self.models / "student"

    def tokenizer(self, name: str) -> Path:
        """``small`` (student), ``shared`` (small vocabulary, WeDLM-style template), ``large`` (cross teacher)."""
        return self.models / "tokenizers" / name

    def teacher_init(self, pipeline: str) -> Path:
        return self.models / "init" / ("llada2_teacher" if pipeline == "cross" else "wedlm_teacher")

    def teacher(self, pipeline: str) -> Path:
        return self.models / ("llada2_teacher" if pipeline == "cross" else "wedlm_teacher")

    @property
    def pretrain_data(self) -> Path:
        return self.root / "data" / "pretrain.jsonl"

    @property
    def chat_data(self) -> Path:
        return self.root / "data" / "chat.jsonl"

    @property
    def eval_task_dir(self) -> Path:
        return self.root / "data" / "eval_task"

    def cache(self, pipeline: str) -> Path:
        return self.root / "caches" / pipeline

    def run(self, run: TrainRun) -> Path:
        return self.root / "runs" / run.name

    def eval(self, run: TrainRun) -> Path:
        return self.root / "eval" / run.name

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"
