"""``tide-cache build``: stage one from the command line (YAML ``--config`` plus flags; flags win).

Imports stay light here: the teacher stack is imported by the handler only when ``build`` runs.

Environment: ``TIDE_BUILD_FAIL_AFTER_SHARDS=N`` makes the run stop with an error right after the N-th
shard it completes (a crash drill for resume; never set it in production).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any

from stages.cli_support import EXIT_USAGE, debug_requested, run_reporting_errors
from stages.options import OptionsError, add_options, options_from_args

FAIL_AFTER_ENV = "TIDE_BUILD_FAIL_AFTER_SHARDS"
BUILD_HELP = "stage one: run the teacher and write a logits cache"


class InjectedFailure(RuntimeError):
    """Raised by the crash drill hook (``TIDE_BUILD_FAIL_AFTER_SHARDS``)."""


def add_build_arguments(parser: argparse.ArgumentParser) -> None:
    """``--config`` and one flag per :class:`BuildConfig` field (only given flags override the YAML)."""
    from stages.cache_build.config import BuildConfig

    add_options(parser, BuildConfig)
    parser.add_argument("--dry-run", action="store_true",
                        help="read and align the data, count rows, masked positions, teacher forwards and tokens, "
                             "estimate teacher FLOPs and cache bytes; load no teacher, write nothing")
    parser.add_argument("--debug", action="store_true", help="show the full traceback when the build fails")


def config_from_args(args: argparse.Namespace) -> Any:
    """The resolved BuildConfig of a parsed command line: defaults, then the YAML (if any), then the flags.

    Raises :class:`BuildConfigError` listing every malformed or invalid setting at once.
    """
    from stages.cache_build.config import BuildConfig, BuildConfigError

    return options_from_args(BuildConfig, args, finish=lambda config: config.resolve(), error=BuildConfigError)


def fail_after_hook(count: int) -> Any:
    """A BuildHooks whose ``after_shard`` raises :class:`InjectedFailure` after ``count`` shards."""
    from stages.cache_build.run import BuildHooks

    done = []

    def after_shard(shard: int) -> None:
        done.append(shard)
        if len(done) >= count:
            raise InjectedFailure(f"{FAIL_AFTER_ENV}={count}: stopping after shard {shard} as asked")

    return BuildHooks(after_shard=after_shard)


def run_build_command(args: argparse.Namespace) -> int:
    """``build`` (or ``build --dry-run``): a mistake is one line on stderr unless ``--debug``."""
    from cache_schema.errors import CacheError

    return run_reporting_errors("tide-cache build", lambda: _build(args),
                                debug=getattr(args, "debug", False) or debug_requested(None),
                                expected=(ValueError, OSError, RuntimeError, CacheError))


def check_local_sources(spec: str | None) -> None:
    """Catch a mistyped file name before it is taken for a Hugging Face dataset name (and looked up on the
    network): a source whose directory exists here, or whose suffix is close to a data file's, must be a file."""
    import difflib
    import glob
    from pathlib import Path

    from stages.cache_build.sources import LOCAL_SUFFIXES

    for part in (p.strip() for p in (spec or "").split("+")):
        if not part or part.startswith("builtin:") or part.lower().endswith(LOCAL_SUFFIXES):
            continue
        path = Path(part.partition(":")[0])
        suffix = path.suffix.lower()
        near = difflib.get_close_matches(suffix, LOCAL_SUFFIXES, n=1, cutoff=0.6) if suffix else []
        in_local_dir = str(path.parent) not in ("", ".") and path.parent.is_dir()
        if (near or in_local_dir) and not path.exists() and not glob.glob(part):
            hint = f" (did you mean {path.with_suffix(near[0])}?)" if near else ""
            raise FileNotFoundError(f"--sources {part}: no such file{hint}; local sources end in "
                                    f"{', '.join(LOCAL_SUFFIXES)}, a Hugging Face dataset is NAME[@CONFIG][:SPLIT]")


def _dry_run(config: Any) -> int:
    from stages.cache_build.dry_run import dry_run

    for line in dry_run(config).lines():
        print(line)
    return 0


def _build(args: argparse.Namespace) -> int:
    from stages.cache_build.config import BuildConfigError
    from stages.cache_build.run import run_build

    try:
        config = config_from_args(args)
        check_local_sources(config.sources)
        if getattr(args, "dry_run", False):
            return _dry_run(config)
        hooks = None
        fail_after = os.environ.get(FAIL_AFTER_ENV)
        if fail_after:
            if not fail_after.isdigit() or int(fail_after) < 1:
                raise BuildConfigError(f"{FAIL_AFTER_ENV}={fail_after!r}: expected a positive integer")
            hooks = fail_after_hook(int(fail_after))
        manifest = run_build(config, hooks=hooks)
    except OptionsError as exc:  # BuildConfigError included: malformed options, or a changed setting on resume
        print(f"tide-cache build: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if manifest is not None:
        print(f"cache written: {config.output}")
    return 0


def register_build_command(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``build`` to the ``tide-cache`` subcommands."""
    parser = subparsers.add_parser(
        "build", allow_abbrev=False,
        help=BUILD_HELP,
        description="Build a TIDE logits cache: prepare the data, draw seeded noise, run the teacher at masked "
                    "positions and write zstd Parquet shards plus manifest.json. Re-running the same command "
                    "resumes; a changed setting or input against an existing output is refused, and so is an "
                    "output holding files no build of this configuration wrote (--overwrite starts again). "
                    "docs/reliability.md lists every guarantee. The paper's builds: "
                    "--config configs/cache/llada2.yaml (pipeline A) or configs/cache/wedlm.yaml (B).",
    )
    add_build_arguments(parser)
    parser.set_defaults(func=run_build_command)
    return parser


def main(argv: list[str] | None = None) -> int:
    """``python -m stages.cache_build.cli ...`` (same flags as ``tide-cache build``)."""
    parser = argparse.ArgumentParser(prog="tide-cache build", allow_abbrev=False)
    add_build_arguments(parser)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return run_build_command(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
