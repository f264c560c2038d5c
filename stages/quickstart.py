"""The quickstart: both pipelines end to end on tiny local models, driven through the real CLIs.

``bash scripts/quickstart.sh`` runs ``python -m stages.quickstart``, which, under one output directory
(``quickstart_out/`` by default):

1. builds the tiny models with :mod:`tide.testing.tiny_models` — the student (``a2d-qwen3``, Qwen vocabulary),
   a LLaDA2-MoE teacher with the Llama-3 tokenizer (the foreign teacher of pipeline A, ``cross``) and a
   WeDLM teacher (Qwen3 weights, Qwen vocabulary, another chat template; pipeline B, ``shared``);
2. writes the chat data as JSONL: HumanEval problems with their solutions plus a small generated set
   (:func:`tide.testing.chat_data.humaneval_chat`), and a held-out evaluation task (generated arithmetic
   questions, lm-eval YAML + JSONL, scored offline by exact match of the last number of the answer);
3. runs ``tide-cache build`` once per pipeline and ``tide-cache inspect`` on each cache;
4. runs ``tide-train`` for a few steps of each pipeline's native mode and of its baseline (A: ``reverse_calm``
   = TIDE-Cross vs ``calm``; B: ``tidal --comp_demo`` = TIDE-Shared vs ``kl``);
5. runs ``tide-eval run`` on the evaluation task for the native-mode students (``--eval-baselines``: the
   baseline students too);
6. prints where the caches, checkpoints, loss curves and results are, a table of the runs, and a pandas
   one-liner to open a shard; the same summary is written to ``summary.json``.

Every CLI runs as a subprocess (its full output goes to ``logs/<step>.log``); the command lines are printed,
so each step can be re-run by hand.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger("tide.quickstart")

EVAL_TASK = "tide_quickstart_arith"
LOG_TAIL_LINES = 40
MARKER = ".tide-quickstart"
# What a quickstart run writes under its output directory; a new run replaces these (models are reused).
GENERATED = ("data", "caches", "runs", "eval", "logs", "summary.json")


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


@dataclass
class RunSummary:
    """What one training run produced, for the final table."""

    name: str
    pipeline: str
    mode: str
    role: str
    student: str
    steps: int
    first_loss: float | None
    last_loss: float | None
    loss_curve: str | None
    metrics: str
    eval_score: float | None = None
    eval_metric: str | None = None
    eval_dir: str | None = None


@dataclass
class Summary:
    """The whole run: paths, caches, training runs, elapsed seconds."""

    output: str
    seconds: float
    models: dict[str, str]
    data: dict[str, Any]
    caches: dict[str, dict[str, Any]]
    runs: list[RunSummary] = field(default_factory=list)
    shard_example: str | None = None


# ----------------------------------------------------------------------------------------------- data


def write_chat_data(path: Path, humaneval: int, synthetic: int) -> int:
    """Write HumanEval chat pairs (the first ``humaneval``) plus ``synthetic`` generated pairs as JSONL rows
    ``{"messages": [...]}``; returns the number of rows."""
    from tide.testing.chat_data import humaneval_chat, write_chat_jsonl

    conversations = humaneval_chat(humaneval, synthetic)
    write_chat_jsonl(path, conversations)
    return len(conversations)


def eval_task_yaml(data_file: Path, max_gen_toks: int = 32) -> str:
    """lm-eval task config for :data:`EVAL_TASK`: local JSONL, greedy, exact match of the last number."""
    return "\n".join([
        "# Written by stages/quickstart.py: held-out generated additions, scored offline.",
        f"task: {EVAL_TASK}",
        "dataset_path: json",
        "dataset_kwargs:",
        "  data_files:",
        f"    test: {json.dumps(str(data_file.resolve()))}",
        "test_split: test",
        "output_type: generate_until",
        'doc_to_text: "{{question}}"',
        'doc_to_target: "{{answer}}"',
        "generation_kwargs:",
        "  until: []",
        f"  max_gen_toks: {max_gen_toks}",
        "  do_sample: false",
        "filter_list:",
        "  - name: last-number",
        "    filter:",
        "      - function: regex",
        '        regex_pattern: "(-?[0-9]+)"',
        "        group_select: -1",
        '        fallback: "[invalid]"',
        "      - function: take_first",
        "metric_list:",
        "  - metric: exact_match",
        "    aggregation: mean",
        "    higher_is_better: true",
        "num_fewshot: 0",
        "metadata:",
        "  version: 1.0",
        "",
    ])


def write_eval_task(directory: Path, count: int) -> Path:
    """Write the evaluation task (YAML + JSONL) into ``directory``; returns the directory."""
    directory.mkdir(parents=True, exist_ok=True)
    data_file = directory / f"{EVAL_TASK}.jsonl"
    from tide.testing.chat_data import arithmetic_docs

    with data_file.open("w", encoding="utf-8") as handle:
        for doc in arithmetic_docs(count):
            handle.write(json.dumps(doc) + "\n")
    (directory / f"{EVAL_TASK}.yaml").write_text(eval_task_yaml(data_file), encoding="utf-8")
    return directory


# ----------------------------------------------------------------------------------------------- models


def build_models(layout: Layout, seed: int) -> dict[str, str]:
    """The three tiny checkpoints (each with its tokenizer), built once and reused on a re-run."""
    from tide.testing.tiny_models import build_tiny_model

    kinds = {
        "student": (layout.student, "student"),
        "cross teacher (LLaDA2-MoE, Llama-3 tokenizer)": (layout.teacher("cross"), "llada2"),
        "shared teacher (WeDLM / Qwen3, Qwen vocabulary)": (layout.teacher("shared"), "wedlm"),
    }
    out = {}
    for label, (path, kind) in kinds.items():
        if not (path / "config.json").is_file() or not (path / "tokenizer_config.json").is_file():
            logger.info("building the tiny %s in %s", label, path)
            build_tiny_model(kind, path, seed=seed)
        out[label] = str(path)
    return out


# ----------------------------------------------------------------------------------------------- CLIs


def cli_path(name: str) -> str:
    """The console script ``name`` next to the running interpreter (the venv's), else on PATH."""
    local = Path(sys.executable).parent / name
    return str(local) if local.is_file() else name


def run_cli(argv: Sequence[str], log_file: Path, *, echo: bool = False) -> str:
    """Run one CLI command, writing its output to ``log_file``; returns the output.

    Raises RuntimeError with the command and the last lines of its output when it fails.
    """
    log_file.parent.mkdir(parents=True, exist_ok=True)
    print(f"$ {shlex.join(argv)}", flush=True)
    started = time.perf_counter()
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", TQDM_DISABLE="1")
    proc = subprocess.run(list(argv), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    log_file.write_text(proc.stdout, encoding="utf-8")
    if proc.returncode != 0:
        tail = "\n".join(proc.stdout.splitlines()[-LOG_TAIL_LINES:])
        raise RuntimeError(
            f"command failed with exit code {proc.returncode}: {shlex.join(argv)}\n"
            f"(full output in {log_file})\n{tail}"
        )
    if echo:
        print(proc.stdout.rstrip(), flush=True)
    print(f"  ok in {time.perf_counter() - started:.0f} s (log: {log_file})", flush=True)
    return proc.stdout


def build_command(config: QuickstartConfig, layout: Layout, pipeline: str) -> list[str]:
    """``tide-cache build`` for one pipeline."""
    argv = [
        cli_path("tide-cache"), "build",
        "--teacher", str(layout.teacher(pipeline)),
        "--student-tokenizer", str(layout.student),
        "--sources", str(layout.chat_data),
        "--output", str(layout.cache(pipeline)),
        "--pipeline", pipeline,
        "--max-length", str(config.max_length),
        "--teacher-max-length", str(config.teacher_max_length),
        "--replicas", str(config.replicas),
        "--seed", str(config.seed),
        "--passes", "plain,compdemo",
        "--rows-per-shard", "4096",
        "--rows-per-row-group", "16",
        "--device", "cpu",
        "--no-progress",
    ]
    if pipeline == "shared":
        argv += ["--k", str(config.k)]
    return argv


def train_command(config: QuickstartConfig, layout: Layout, run: TrainRun) -> list[str]:
    """``tide-train`` for one quickstart run."""
    argv = [
        cli_path("tide-train"),
        "--cache", str(layout.cache(run.pipeline)),
        "--student", str(layout.student),
        "--output", str(layout.run(run)),
        "--mode", run.mode,
        "--max_steps", str(config.steps),
        "--batch_size", str(config.batch_size),
        "--lr", str(config.lr),
        "--warmup_steps", "0",
        "--log_every", "1",
        "--seed", str(config.seed),
        "--mixed_precision", "no",
    ]
    if run.comp_demo:
        argv.append("--comp_demo")
    return argv


def eval_command(config: QuickstartConfig, layout: Layout, run: TrainRun) -> list[str]:
    """``tide-eval run`` of the offline task on one trained student."""
    return [
        cli_path("tide-eval"), "run",
        "--model", str(layout.run(run)),
        "--tasks", EVAL_TASK,
        "--include-path", str(layout.eval_task_dir),
        "--output", str(layout.eval(run)),
        "--limit", str(config.eval_docs),
        "--block-size", "32",
        "--device", "cpu",
        "--seed", str(config.seed),
    ]


# ----------------------------------------------------------------------------------------------- results


def read_losses(metrics_file: Path) -> tuple[int, float | None, float | None]:
    """(last logged step, first ``loss``, last ``loss``) of a ``metrics.jsonl`` (None where absent)."""
    if not metrics_file.is_file():
        raise FileNotFoundError(f"{metrics_file}: the training run wrote no metrics file")
    records = [json.loads(line) for line in metrics_file.read_text(encoding="utf-8").splitlines() if line.strip()]
    losses = [float(r["loss"]) for r in records if isinstance(r.get("loss"), (int, float))]
    last_step = max((int(r.get("step", 0)) for r in records), default=0)
    return last_step, (losses[0] if losses else None), (losses[-1] if losses else None)


def read_eval_score(eval_dir: Path) -> tuple[str | None, float | None]:
    """(metric, score) of the quickstart task from a ``tide-eval run`` output directory's ``summary.json``."""
    path = eval_dir / "summary.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: tide-eval wrote no summary")
    summary = json.loads(path.read_text(encoding="utf-8"))
    for entry in summary.get("tasks", []):
        if entry.get("task") == EVAL_TASK:
            return entry.get("metric"), float(entry["score"])
    raise KeyError(f"{path}: no result for task {EVAL_TASK!r}")


def cache_facts(cache: Path) -> dict[str, Any]:
    """Rows, bytes, target items and the first shard of a built cache, from its manifest."""
    manifest = json.loads((cache / "manifest.json").read_text(encoding="utf-8"))
    shards = manifest["shards"]
    return {
        "path": str(cache),
        "pipeline": manifest["pipeline"],
        "rows": sum(s["rows"] for s in shards),
        "bytes": sum(s["bytes"] for s in shards),
        "target_items": sum(s["num_targets"] for s in shards),
        "passes": manifest["targets"]["passes"],
        "first_shard": str(cache / shards[0]["file"]) if shards else None,
    }


def _fmt(value: float | None, spec: str = ".4f") -> str:
    return "-" if value is None else format(value, spec)


def format_summary(summary: Summary) -> str:
    """The closing text: where everything is, a table of the runs, and how to open a shard."""
    root = summary.output
    lines = [
        "",
        f"== TIDE quickstart finished in {summary.seconds:.0f} s; everything is under {root}/ ==",
        "",
        *(f"model        {path}  ({label})" for label, path in summary.models.items()),
        f"data         {summary.data['chat']} ({summary.data['rows']} conversations: HumanEval + generated)",
        f"eval task    {summary.data['eval_task']}",
    ]
    for pipeline, facts in summary.caches.items():
        lines.append(
            f"cache        {facts['path']}  ({pipeline}: {facts['rows']} rows, {facts['target_items']} target items, "
            f"{facts['bytes']:,} bytes, passes {'+'.join(facts['passes'])})"
        )
    for run in summary.runs:
        lines.append(f"checkpoint   {run.student}  (trained student; resumable state in {run.student}/checkpoints)")
    for run in summary.runs:
        lines.append(f"loss curve   {run.loss_curve or '-'}  (metrics: {run.metrics})")
    for run in summary.runs:
        if run.eval_dir:
            lines.append(f"results      {run.eval_dir}/summary.json")
    lines += ["", f"{'run':<28} {'role':<9} {'steps':>5} {'first loss':>11} {'last loss':>10} {'eval':>8}"]
    for run in summary.runs:
        lines.append(
            f"{run.name:<28} {run.role:<9} {run.steps:>5} {_fmt(run.first_loss):>11} {_fmt(run.last_loss):>10} "
            f"{_fmt(run.eval_score, '.3f'):>8}"
        )
    if any(r.eval_score is not None for r in summary.runs):
        lines.append(f"(eval: exact match on {EVAL_TASK}; tiny untrained-scale models score about 0 — the point is the path)")
    if summary.shard_example:
        lines += [
            "",
            "open a shard with pandas:",
            f"  .venv/bin/python -c \"import pandas as pd; df = pd.read_parquet('{summary.shard_example}'); "
            "print(df.dtypes); print(df.head())\"",
        ]
    lines.append(f"summary      {root}/summary.json")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------- driver


def prepare_output(root: Path) -> None:
    """Make ``root`` ready for a fresh run: create it (with a marker file), or clear what an earlier
    quickstart wrote there. A non-empty directory without the marker is refused, never cleared."""
    if root.exists():
        if not root.is_dir():
            raise ValueError(f"--output {root} exists and is not a directory")
        if any(root.iterdir()) and not (root / MARKER).is_file():
            raise ValueError(
                f"--output {root} is a non-empty directory that no quickstart wrote (no {MARKER} file); "
                "choose another --output"
            )
    root.mkdir(parents=True, exist_ok=True)
    (root / MARKER).write_text("written by python -m stages.quickstart\n", encoding="utf-8")
    for name in GENERATED:
        path = root / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def run_quickstart(config: QuickstartConfig) -> Summary:
    """Run every step; returns the summary (also written to ``summary.json``)."""
    config.check()
    started = time.perf_counter()
    layout = Layout(Path(config.output))
    prepare_output(layout.root)

    print("[1/5] tiny models", flush=True)
    models = build_models(layout, config.seed)

    print("[2/5] chat data and evaluation task", flush=True)
    rows = write_chat_data(layout.chat_data, config.humaneval, config.synthetic)
    write_eval_task(layout.eval_task_dir, config.eval_docs)

    print("[3/5] caches (tide-cache build, tide-cache inspect)", flush=True)
    caches = {}
    for pipeline in ("cross", "shared"):
        run_cli(build_command(config, layout, pipeline), layout.logs / f"build-{pipeline}.log")
        run_cli([cli_path("tide-cache"), "inspect", str(layout.cache(pipeline)), "--rows", "1"],
                layout.logs / f"inspect-{pipeline}.log", echo=True)
        caches[pipeline] = cache_facts(layout.cache(pipeline))

    print("[4/5] training (tide-train)", flush=True)
    runs = []
    for run in TRAIN_RUNS:
        run_cli(train_command(config, layout, run), layout.logs / f"train-{run.name}.log")
        metrics = layout.run(run) / "logs" / "metrics.jsonl"
        steps, first, last = read_losses(metrics)
        curve = layout.run(run) / "logs" / "loss_curve.png"
        runs.append(RunSummary(
            name=run.name, pipeline=run.pipeline, mode=run.mode + (" --comp_demo" if run.comp_demo else ""),
            role=run.role, student=str(layout.run(run)), steps=steps, first_loss=first, last_loss=last,
            loss_curve=str(curve) if curve.is_file() else None, metrics=str(metrics),
        ))

    if config.evaluate:
        print("[5/5] evaluation (tide-eval run, offline task)", flush=True)
        for run, entry in zip(TRAIN_RUNS, runs, strict=True):
            if run.role != "native" and not config.eval_baselines:
                continue
            run_cli(eval_command(config, layout, run), layout.logs / f"eval-{run.name}.log")
            entry.eval_metric, entry.eval_score = read_eval_score(layout.eval(run))
            entry.eval_dir = str(layout.eval(run))
    else:
        print("[5/5] evaluation skipped (--no-eval)", flush=True)

    summary = Summary(
        output=str(layout.root),
        seconds=time.perf_counter() - started,
        models=models,
        data={"chat": str(layout.chat_data), "rows": rows, "eval_task": str(layout.eval_task_dir)},
        caches=caches,
        runs=runs,
        shard_example=caches["shared"]["first_shard"],
    )
    layout.summary.write_text(json.dumps(asdict(summary), indent=2) + "\n", encoding="utf-8")
    return summary


def build_parser() -> argparse.ArgumentParser:
    defaults = QuickstartConfig()
    parser = argparse.ArgumentParser(
        prog="python -m stages.quickstart",
        description="Run both TIDE pipelines end to end on tiny local models (no downloads).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--output", type=Path, default=defaults.output, help="output directory")
    parser.add_argument("--humaneval", type=int, default=defaults.humaneval, help="HumanEval conversations")
    parser.add_argument("--synthetic", type=int, default=defaults.synthetic, help="generated conversations")
    parser.add_argument("--eval-docs", type=int, default=defaults.eval_docs, help="evaluation questions")
    parser.add_argument("--max-length", type=int, default=defaults.max_length, help="student max length")
    parser.add_argument("--teacher-max-length", type=int, default=defaults.teacher_max_length,
                        help="teacher max length")
    parser.add_argument("--replicas", type=int, default=defaults.replicas, help="noise replicas per sample")
    parser.add_argument("--k", type=int, default=defaults.k, help="top-k of the shared cache")
    parser.add_argument("--steps", type=int, default=defaults.steps, help="optimizer steps per training run")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size, help="rows per step")
    parser.add_argument("--lr", type=float, default=defaults.lr, help="learning rate")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="seed of models, noise and training")
    parser.add_argument("--eval", dest="evaluate", action=argparse.BooleanOptionalAction, default=True,
                        help="run the short evaluation")
    parser.add_argument("--eval-baselines", action="store_true",
                        help="evaluate the baseline students too (default: native modes only)")
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = vars(build_parser().parse_args(argv))
    config = QuickstartConfig(**args)
    try:
        summary = run_quickstart(config)
    except (RuntimeError, ValueError, FileNotFoundError, KeyError) as exc:
        print(f"quickstart: error: {exc}", file=sys.stderr)
        return 1
    print(format_summary(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
