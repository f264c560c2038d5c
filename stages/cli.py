"""The ``tide-cache`` command: ``build`` (stage one) next to ``inspect`` and ``validate`` (the format).

The format commands live in ``cache_schema.cli`` so they run without any model code; only ``build``
pulls in the teacher stack, and only when it is the command being run.
"""

from __future__ import annotations

import argparse
import logging
import sys

from cache_schema import cli as format_cli

FORMAT_COMMANDS = ("inspect", "validate")


def build_parser(*, build_options: bool = True) -> argparse.ArgumentParser:
    """The ``tide-cache`` parser. ``build_options=False`` lists ``build`` without its options, which are
    declared by the build config and so import torch (its dtype choices): the format commands skip that."""
    parser = argparse.ArgumentParser(
        prog="tide-cache",
        description="Build, inspect and validate TIDE logits caches (zstd Parquet shards + manifest.json).",
    )
    from stages.cache_build.cli import BUILD_HELP, register_build_command
    from stages.cli_support import add_version

    add_version(parser)
    subparsers = parser.add_subparsers(dest="command", required=True)

    if build_options:
        register_build_command(subparsers)
    else:
        subparsers.add_parser("build", help=BUILD_HELP)
    format_cli.register_commands(subparsers)
    return parser


def tide_cache_main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    words = sys.argv[1:] if argv is None else argv
    args = build_parser(build_options=not (words and words[0] in FORMAT_COMMANDS)).parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(tide_cache_main())
