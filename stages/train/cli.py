"""``tide-train``: train the student from a logits cache.

Option values come from, in increasing priority: the defaults (paper settings), a YAML file given with
``--config``, and the command line. ``--help`` lists every option with its default.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys

from stages.train.config import TrainConfig, config_fields, load_yaml_config

_TYPES = {"str": str, "float": float, "int": int}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tide-train",
        description=(
            "Train a block-diffusion student from a TIDE logits cache (no teacher is loaded). Modes: ce, kl, "
            "reverse_kl, tidal (vocabulary, 'shared' caches); calm, reverse_calm, tidal_calm, "
            "reverse_tidal_calm (chunk, 'cross' caches); compose with '+', e.g. 'tidal+kl'. "
            "Paper variants: TIDE-Cross = reverse_calm; TIDE-Shared = tidal --comp_demo; BD3LM baseline = ce."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        argument_default=argparse.SUPPRESS,
    )
    parser.add_argument("--config", help="YAML file of options (names as below, without dashes); "
                                         "command-line options override it")
    defaults = TrainConfig()
    for f in config_fields():
        help_text = f.metadata.get("help", "")
        default = getattr(defaults, f.name)
        flag = f"--{f.name}"
        if f.type == "bool":
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, help=f"{help_text} (default: {default})")
        elif f.type == "list[int]":
            parser.add_argument(flag, type=int, nargs="*", metavar="R", help=f"{help_text} (default: {default})")
        else:
            parser.add_argument(flag, type=_TYPES[f.type], help=f"{help_text} (default: {default!r})")
    return parser


def config_from_args(argv: list[str] | None = None) -> TrainConfig:
    """Parse ``argv`` (YAML file first, then explicit flags) into a validated :class:`TrainConfig`."""
    args = vars(build_parser().parse_args(argv))
    values: dict = {}
    config_file = args.pop("config", None)
    if config_file:
        values.update(load_yaml_config(config_file))
    values.update(args)
    config = dataclasses.replace(TrainConfig(), **values)
    config.validate()
    return config


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = config_from_args(argv)
    except (ValueError, FileNotFoundError) as exc:
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
