"""``tide-cache build``: stage one from the command line (YAML ``--config`` plus flags; flags win).

Imports stay light here: the teacher stack is imported by the handler only when ``build`` runs.

Environment: ``TIDE_BUILD_FAIL_AFTER_SHARDS=N`` makes the run stop with an error right after the N-th
shard it completes (a crash drill for resume; never set it in production).
"""

from __future__ import annotations

import argparse
import logging
import os
from typing import Any

logger = logging.getLogger(__name__)

FAIL_AFTER_ENV = "TIDE_BUILD_FAIL_AFTER_SHARDS"


class InjectedFailure(RuntimeError):
    """Raised by the crash drill hook (``TIDE_BUILD_FAIL_AFTER_SHARDS``)."""


def _float_list(text: str) -> list[float]:
    try:
        return [float(part) for part in text.replace(" ", "").split(",") if part]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from exc


class _Flatten(argparse.Action):
    """Store ``nargs='+'`` values that are themselves lists as one flat list."""

    def __call__(self, parser: Any, namespace: Any, values: Any, option_string: Any = None) -> None:
        setattr(namespace, self.dest, [item for value in values for item in value])


def _name_list(text: str) -> list[str]:
    return [part for part in text.replace("+", ",").replace(" ", "").split(",") if part]


def add_build_arguments(parser: argparse.ArgumentParser) -> None:
    """Every build setting as a flag; defaults are None so that only given flags override the YAML."""
    s = argparse.SUPPRESS
    parser.add_argument("--config", help="YAML file with build settings (keys as the flags, '_' for '-')")
    group = parser.add_argument_group("models and data")
    group.add_argument("--teacher", default=s, help="teacher checkpoint directory (kind autodetected from config.json)")
    group.add_argument("--teacher-tokenizer", dest="teacher_tokenizer", default=s,
                       help="teacher tokenizer directory (default: the teacher directory)")
    group.add_argument("--student-tokenizer", dest="student_tokenizer", default=s,
                       help="student tokenizer directory (must have a mask token)")
    group.add_argument("--sources", "--data", dest="sources", default=s,
                       help="data sources joined with '+': file.jsonl|.json|.parquet (globs allowed), "
                            "or a Hugging Face dataset NAME[@CONFIG][:SPLIT]")
    group.add_argument("--max-samples", dest="max_samples", type=int, default=s,
                       help="use at most this many prepared samples")
    group.add_argument("--output", "-o", default=s, help="cache output directory (resumed if it exists)")
    group = parser.add_argument_group("sequences and targets")
    group.add_argument("--pipeline", choices=["auto", "cross", "shared"], default=s,
                       help="cross (A: chunk log-probs) or shared (B: top-k); default auto from the teacher")
    group.add_argument("--max-length", dest="max_length", type=int, default=s,
                       help="student max length (default 512)")
    group.add_argument("--teacher-max-length", dest="teacher_max_length", type=int, default=s,
                       help="teacher max length (default 1024 for cross, 768 for shared)")
    group.add_argument("--block-size", dest="block_size", type=int, default=s, help="block size (default 32)")
    group.add_argument("--k", type=int, default=s, help="top-k entries per target position, shared only (default 64)")
    group.add_argument("--temperatures", type=_float_list, nargs="+", action=_Flatten, default=s,
                       help="stored temperatures, starting with 1.0, space- or comma-separated "
                            "(default 1.0 2.0 shared; 1.0 cross)")
    group.add_argument("--passes", type=_name_list, default=s,
                       help="teacher passes to store: plain, compdemo or plain,compdemo (default both)")
    group.add_argument("--demo-ratio", dest="demo_ratio", type=float, default=s,
                       help="CompDemo share of group A (default 0.5)")
    group.add_argument("--regime", choices=["paper", "native"], default=s, help="teacher attention regime")
    group.add_argument("--value-dtype", dest="value_dtype", choices=["float16", "float32"], default=s,
                       help="storage type of top-k values (default float16)")
    group.add_argument("--student-vocab-size", dest="student_vocab_size", type=int, default=s,
                       help="student vocabulary size recorded in the manifest (default: tokenizer size)")
    group = parser.add_argument_group("noise")
    group.add_argument("--replicas", type=int, default=s, help="noise replicas per sample (default 1)")
    group.add_argument("--seed", type=int, default=s, help="global noise seed (default 0)")
    group.add_argument("--eps", type=float, default=s, help="minimum timestep (default 1e-3)")
    group = parser.add_argument_group("execution")
    group.add_argument("--batch-tokens", dest="batch_tokens", type=int, default=s,
                       help="teacher tokens per forward batch, padding included (default 16384)")
    group.add_argument("--batch-rows", dest="batch_rows", type=int, default=s,
                       help="at most this many sequences per teacher batch")
    group.add_argument("--rows-per-shard", dest="rows_per_shard", type=int, default=s,
                       help="cache rows per shard (default 1024)")
    group.add_argument("--rows-per-row-group", dest="rows_per_row_group", type=int, default=s,
                       help="rows per Parquet row group (default 256)")
    group.add_argument("--lm-head-chunk", dest="lm_head_chunk", type=int, default=s,
                       help="positions per LM-head chunk (default 1024)")
    group.add_argument("--device", default=s, help="auto, cpu, cuda, cuda:N (default auto)")
    group.add_argument("--dtype", choices=["auto", "bfloat16", "float16", "float32"], default=s,
                       help="teacher dtype (auto: bf16 on GPU, fp32 on CPU)")
    group.add_argument("--no-progress", dest="progress", action="store_false", default=s,
                       help="no progress bar")


def config_from_args(args: argparse.Namespace) -> Any:
    """The BuildConfig of a parsed command line: YAML (if any) with the given flags on top."""
    from stages.cache_build.config import BuildConfig

    config = BuildConfig.from_yaml(args.config) if getattr(args, "config", None) else BuildConfig()
    names = set(BuildConfig.field_names())
    overrides = {key: value for key, value in vars(args).items() if key in names}
    return config.with_overrides(overrides)


def fail_after_hook(count: int) -> Any:
    """A BuildHooks whose ``after_shard`` raises :class:`InjectedFailure` after ``count`` shards."""
    from stages.cache_build.loop import BuildHooks

    done = []

    def after_shard(shard: int) -> None:
        done.append(shard)
        if len(done) >= count:
            raise InjectedFailure(f"{FAIL_AFTER_ENV}={count}: stopping after shard {shard} as asked")

    return BuildHooks(after_shard=after_shard)


def run_build_command(args: argparse.Namespace) -> int:
    from stages.cache_build.config import BuildConfigError
    from stages.cache_build.loop import run_build

    try:
        config = config_from_args(args)
        hooks = None
        fail_after = os.environ.get(FAIL_AFTER_ENV)
        if fail_after:
            if not fail_after.isdigit() or int(fail_after) < 1:
                raise BuildConfigError(f"{FAIL_AFTER_ENV}={fail_after!r}: expected a positive integer")
            hooks = fail_after_hook(int(fail_after))
        manifest = run_build(config, hooks=hooks)
    except BuildConfigError as exc:
        logger.error("%s", exc)
        return 2
    if manifest is not None:
        print(f"cache written: {manifest.parent}")
    return 0


def register_build_command(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``build`` to the ``tide-cache`` subcommands."""
    parser = subparsers.add_parser(
        "build",
        help="stage one: run the teacher and write a logits cache",
        description="Build a TIDE logits cache: prepare the data, draw seeded noise, run the teacher at masked "
                    "positions and write zstd Parquet shards plus manifest.json. Re-running the same command "
                    "resumes; a changed setting against an existing output is refused.",
    )
    add_build_arguments(parser)
    parser.set_defaults(func=run_build_command)
    return parser


def main(argv: list[str] | None = None) -> int:
    """``python -m stages.cache_build.cli ...`` (same flags as ``tide-cache build``)."""
    parser = argparse.ArgumentParser(prog="tide-cache build")
    add_build_arguments(parser)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return run_build_command(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
