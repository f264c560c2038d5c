"""What every command line shares: ``--version``, and a mistake reported as one line instead of a traceback.

A command's own mistakes (a wrong path, a typo in a name, an option the data cannot serve) are raised as
exceptions whose message names the input and what to do; :func:`run_reporting_errors` prints that message
as ``<prog>: error: ...`` and returns a non-zero exit code. ``--debug`` (or ``TIDE_DEBUG=1``) shows the
full traceback instead.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version

DISTRIBUTION = "tide-offline"
DEBUG_ENV = "TIDE_DEBUG"
# Exit codes: 1 a run stopped on bad input or data, 2 the options themselves are wrong (argparse's code).
EXIT_ERROR = 1
EXIT_USAGE = 2


def package_version() -> str:
    try:
        return version(DISTRIBUTION)
    except PackageNotFoundError:  # a source tree that was never installed
        return "unknown (not installed)"


def add_version(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")


def debug_requested(argv: list[str] | None) -> bool:
    words = sys.argv[1:] if argv is None else argv
    return "--debug" in words or os.environ.get(DEBUG_ENV, "") not in ("", "0")


def one_line(exc: BaseException) -> str:
    """The message of ``exc`` on one line (multi-line messages are joined with '; ')."""
    text = str(exc).strip() or type(exc).__name__
    if isinstance(exc, KeyError) and len(exc.args) == 1:
        text = f"missing key {exc.args[0]!r}"
    return "; ".join(part.strip() for part in text.splitlines() if part.strip())


def run_reporting_errors(prog: str, body: Callable[[], int], *, debug: bool,
                         expected: tuple[type[BaseException], ...] = (ValueError, OSError, RuntimeError)) -> int:
    """Run ``body``; an ``expected`` exception becomes ``<prog>: error: <message>`` on stderr (exit 1) unless
    ``debug``, where it propagates with its traceback."""
    try:
        return body()
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except expected as exc:
        if debug:
            raise
        logging.getLogger(prog).debug("error", exc_info=True)
        print(f"{prog}: error: {one_line(exc)}", file=sys.stderr)
        return EXIT_ERROR
