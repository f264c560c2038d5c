"""What a quickstart run is: its sizes (:class:`QuickstartConfig`), its training runs (:data:`TRAIN_RUNS`)
and where it writes everything (:class:`Layout`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

EVAL_TASK = "tide_quickstart_arith"


@dataclass
class QuickstartConfig:
    """Sizes of the quickstart run; the defaults finish in a few minutes on 2 CPU cores."""

    output: Path = Path("quickstart_out")
    humaneval: int = 12
    synthetic: int = 24
    eval_docs: int = 4
    max_length: int = 256
    teacher_max_length: int = 320
    replicas: int = 2
    k: int = 64
    steps: int = 6
    batch_size: int = 4
    lr: float = 1e-3
    seed: int = 0
    evaluate: bool = True
    eval_baselines: bool = False

    def check(self) -> None:
        """Raise ValueError naming the first setting out of range."""
        positive = ("humaneval", "eval_docs", "max_length", "teacher_max_length", "replicas", "k", "steps", "batch_size")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.synthetic < 0:
            raise ValueError(f"--synthetic must be >= 0, got {self.synthetic}")
        if self.max_length % 32:
            raise ValueError(f"--max-length must be a multiple of the block size 32, got {self.max_length}")
        if not self.lr > 0:
            raise ValueError(f"--lr must be > 0, got {self.lr}")


@dataclass(frozen=True)
class TrainRun:
    """One ``tide-train`` run of the quickstart."""

    pipeline: str
    mode: str
    role: str  # "native" or "baseline"
    comp_demo: bool = False

    @property
    def name(self) -> str:
        return f"{self.pipeline}-{self.mode}{'-compdemo' if self.comp_demo else ''}"


TRAIN_RUNS: tuple[TrainRun, ...] = (
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

    def teacher(self, pipeline: str) -> Path:
        return self.models / ("llada2_teacher" if pipeline == "cross" else "wedlm_teacher")

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
