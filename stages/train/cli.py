"""``tide-train``: train the student from a logits cache.

Option values come from, in increasing priority: the defaults (the settings every paper variant shares), a
YAML file given with ``--config`` (a paper variant: ``configs/train/<pipeline>/<variant>.yaml``, or a run's
own ``train_config.json``), and the command line. ``--help`` lists every option with its default.
"""

from __future__ import annotations

import argparse
import logging
import sys

from stages.options import OptionsError, options_from_args, options_parser
from stages.train.config import TrainConfig


def build_parser() -> argparse.ArgumentParser:
    return options_parser(
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


def config_from_args(argv: list[str] | None = None) -> TrainConfig:
    """Parse ``argv`` (YAML file first, then explicit flags) into a validated :class:`TrainConfig`.

    Raises :class:`~stages.options.OptionsError` listing every problem at once.
    """
    return options_from_args(TrainConfig, build_parser().parse_args(argv), finish=TrainConfig.validate)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = config_from_args(argv)
    except OptionsError as exc:
        print(f"tide-train: error: {exc}", file=sys.stderr)
        return 2
    from stages.train.loop import train

    try:
        result = train(config)
    except ValueError as exc:
        print(f"tide-train: error: {exc}", file=sys.stderr)
        return 2
    print(f"done: {result.steps}/{result.total_steps} optimizer steps; student saved to {result.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
