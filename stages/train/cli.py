"""``tide-train``: train the student from a logits cache.

Option values come from, in increasing priority: the defaults (the settings every paper variant shares), a
YAML file given with ``--config`` (a paper variant: ``configs/train/<pipeline>/<variant>.yaml``, or a run's
own ``train_config.json``), and the command line. ``--help`` lists every option with its default.

A mistake (a wrong path, a mode the cache cannot serve, a changed setting on resume, a non-finite loss) ends
the run with one line on stderr naming the input and what to do, and exit code 1 (2 for malformed
options); ``--debug`` shows the traceback instead.

Environment: ``TIDE_TRAIN_KILL_AFTER_STEP=N`` kills the process with SIGKILL right after optimizer step N
and its checkpoint, if one is due (a crash drill for resume; never set it in production).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys

from stages.cli_support import EXIT_USAGE, add_version, debug_requested, run_reporting_errors
from stages.options import OptionsError, options_from_args, options_parser
from stages.train.config import TrainConfig

KILL_AFTER_ENV = "TIDE_TRAIN_KILL_AFTER_STEP"


def build_parser() -> argparse.ArgumentParser:
    parser = options_parser(
        TrainConfig,
        prog="tide-train",
        description=(
            "Train a block-diffusion student from a TIDE logits cache (no teacher is loaded). Modes: ce, kl, "
            "reverse_kl, tidal (vocabulary, 'shared' caches); calm, reverse_calm, tidal_calm, "
            "reverse_tidal_calm (chunk, 'cross' caches); compose with '+', e.g. 'tidal+kl'. "
            "Paper variants: --config configs/train/llada2/<variant>.yaml (TIDE-Cross = tide_cross) or "
            "configs/train/wedlm/<variant>.yaml (TIDE-Shared = tide_shared)."
        ),
    )
    add_version(parser)
    return parser


def config_from_args(argv: list[str] | None = None) -> TrainConfig:
    """Parse ``argv`` (YAML file first, then explicit flags) into a validated :class:`TrainConfig`.

    Raises :class:`~stages.options.OptionsError` listing every problem at once.
    """
    return options_from_args(TrainConfig, build_parser().parse_args(argv), finish=TrainConfig.validate)


def kill_after_hook(value: str):
    """The crash drill's ``after_step``: SIGKILL this process once step ``value`` is done."""
    if not value.isdigit() or int(value) < 1:
        raise OptionsError(f"{KILL_AFTER_ENV}={value!r}: expected a positive integer")
    target = int(value)

    def after_step(step: int) -> None:
        if step >= target:
            os.kill(os.getpid(), signal.SIGKILL)

    return after_step


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = config_from_args(argv)
        kill = os.environ.get(KILL_AFTER_ENV)
        after_step = kill_after_hook(kill) if kill else None
    except OptionsError as exc:
        print(f"tide-train: error: {exc}", file=sys.stderr)
        return EXIT_USAGE

    def run() -> int:
        from stages.train.loop import train

        result = train(config, after_step=after_step)
        print(f"done: {result.steps}/{result.total_steps} optimizer steps; student saved to {result.output}")
        return 0

    from cache_schema.errors import CacheError

    return run_reporting_errors("tide-train", run, debug=config.debug or debug_requested(argv),
                                expected=(ValueError, OSError, RuntimeError, CacheError))


if __name__ == "__main__":
    sys.exit(main())
