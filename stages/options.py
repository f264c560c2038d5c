"""Options of every command: one dataclass per command, read from flags and from a YAML file.

A command's settings are the fields of one dataclass; each field declares its help text, and where it has
them its choices and extra flag names, with :func:`option`. From that dataclass this module makes

* the command line: one dashed flag per field (``--max-steps``); the underscore spelling
  (``--max_steps``) is accepted too but not listed in ``--help``; booleans are ``--x`` / ``--no-x``; a list
  field takes several values, space- or comma-separated, and repeating its flag adds to the list;
* the file format: a YAML mapping whose keys are the field names (``max_steps``; ``max-steps`` is
  accepted). JSON is YAML, so a run's own saved config reads back;
* typed values: every value, from a file or a flag, is converted by the field's type. PyYAML reads
  ``5e-5`` and ``1e-3`` as strings (YAML 1.1 floats need a dot), and ``no`` / ``off`` as False; here the
  first two become floats, and a boolean given to a text option becomes the matching choice (``no``)
  (the fields and the conversion: :mod:`stages.option_fields`).

Values come from the dataclass defaults, then ``--config FILE``, then the flags. Every problem (an unknown
key, a value of the wrong type, a value outside the choices, the dataclass's own validation) is collected
and raised as one :class:`OptionsError`, one line per problem naming the option.

A field renamed later lists its old name in ``former``: a file key of the old name is read as the new
field, so configs saved by earlier runs still load; the old flag is refused with a message naming the new
one, so that a habit from another command (whose flag of that name means something else) does not silently
take a different meaning.
"""

from __future__ import annotations

import argparse
import difflib
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml

from stages.option_fields import FieldSpec, convert, field_defaults, field_specs, option

__all__ = [
    "OptionsError", "add_options", "field_defaults", "option", "options_from_args", "options_from_file",
    "options_parser", "parse_options", "read_options_file",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")

_RENAMED_DEST = "_renamed_options"
_METAVARS = {int: "N", float: "X"}


class OptionsError(ValueError):
    """Option values are unknown, malformed or inconsistent; ``problems`` holds one line per problem."""

    def __init__(self, problems: str | Sequence[str]) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        if len(self.problems) == 1:
            text = self.problems[0]
        else:
            text = f"{len(self.problems)} problems with the options:\n  " + "\n  ".join(self.problems)
        super().__init__(text)


# ----------------------------------------------------------------------------------------------- files


def read_options_file(cls: type, path: str | os.PathLike, problems: list[str] | None = None) -> dict[str, Any]:
    """The typed values of a YAML (or JSON) options file for ``cls``.

    Appends each problem to ``problems`` when given (so the caller reports them with others), else
    raises :class:`OptionsError` listing them.
    """
    own = problems is None
    found: list[str] = [] if own else problems
    values = _read_file(cls, Path(path), found)
    if own and found:
        raise OptionsError(found)
    return values


def _read_file(cls: type, path: Path, problems: list[str]) -> dict[str, Any]:
    where = f"--config {path}"
    if not path.is_file():
        problems.append(f"{where}: file not found")
        return {}
    try:
        with open(path, encoding="utf-8") as handle:
            payload = yaml.safe_load(handle)
    except yaml.YAMLError as exc:
        problems.append(f"{where}: not valid YAML ({' '.join(str(exc).split())})")
        return {}
    if payload is None:
        return {}
    if not isinstance(payload, dict):
        problems.append(f"{where}: expected a mapping of option names to values, got {type(payload).__name__}")
        return {}
    specs = {spec.name: spec for spec in field_specs(cls)}
    former = {old: spec for spec in specs.values() for old in spec.info.former}
    values: dict[str, Any] = {}
    seen: dict[str, str] = {}
    for key, value in payload.items():
        name = str(key).replace("-", "_")
        spec = specs.get(name)
        if spec is None and name in former:
            spec = former[name]
            logger.warning("%s: key %s is the former name of %s; read as %s", where, key, spec.name, spec.name)
        if spec is None:
            close = difflib.get_close_matches(name, list(specs), n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            problems.append(f"{where}: unknown option {key!r}{hint}")
            continue
        if spec.name in seen:
            problems.append(f"{where}: {spec.name} is given twice (as {seen[spec.name]!r} and {key!r})")
            continue
        seen[spec.name] = str(key)
        try:
            values[spec.name] = convert(spec, value)
        except ValueError as exc:
            problems.append(f"{where}: {spec.name}: {exc}")
    return values


# ----------------------------------------------------------------------------------------------- command line


class _BoolFlag(argparse.Action):
    """``--x`` stores True, each of ``negatives`` (``--no-x``) stores False."""

    def __init__(self, option_strings: Sequence[str], dest: str, negatives: Sequence[str] = (), **kwargs: Any):
        self.negatives = frozenset(negatives)
        super().__init__(option_strings, dest, nargs=0, **kwargs)

    def __call__(self, parser: Any, namespace: Any, values: Any, option_string: str | None = None) -> None:
        setattr(namespace, self.dest, option_string not in self.negatives)


class _Renamed(argparse.Action):
    """A former flag: records a problem naming the new flag (reported with the others)."""

    def __init__(self, option_strings: Sequence[str], dest: str, new_flag: str = "", **kwargs: Any):
        self.new_flag = new_flag
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser: Any, namespace: Any, values: Any, option_string: str | None = None) -> None:
        found = list(getattr(namespace, _RENAMED_DEST, None) or [])
        found.append(f"{option_string} was renamed {self.new_flag} (see --help)")
        setattr(namespace, _RENAMED_DEST, found)


def _shown_default(spec: FieldSpec) -> str | None:
    if spec.info.default_text is not None:
        return spec.info.default_text
    value = spec.default
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, list):
        return ",".join(str(v) for v in value) if value else "none"
    return str(value)


def _help_text(spec: FieldSpec) -> str:
    text = spec.info.help
    shown = _shown_default(spec)
    if shown:
        text = f"{text} (default: {shown})"
    return text.replace("%", "%%")


def _spellings(name: str) -> list[str]:
    return list(dict.fromkeys(["--" + name.replace("_", "-"), "--" + name]))


def add_options(parser: argparse.ArgumentParser, cls: type, *, config_file: bool = True) -> None:
    """Add ``--config FILE`` and one flag per field of ``cls`` to ``parser``.

    Every flag defaults to "absent" (argparse.SUPPRESS), so the namespace holds only what was given and
    :func:`options_from_args` can layer it over the file.
    """
    if config_file:
        parser.add_argument("--config", metavar="FILE", default=None,
                            help="YAML (or JSON) file of options, keys as the flags with '_' for '-'; "
                                 "flags given here override it")
    groups: dict[str, Any] = {}
    for spec in field_specs(cls):
        target: Any = parser
        if spec.info.group:
            if spec.info.group not in groups:
                groups[spec.info.group] = parser.add_argument_group(spec.info.group)
            target = groups[spec.info.group]
        _add_spec(target, spec)


def _add_spec(target: Any, spec: FieldSpec) -> None:
    primary, *hidden = _spellings(spec.name)
    common: dict[str, Any] = {"dest": spec.name, "default": argparse.SUPPRESS}
    if spec.is_flag:
        negative = "--no-" + primary[2:]
        target.add_argument(primary, *spec.info.aliases, negative, action=_BoolFlag, negatives=[negative],
                            help=_help_text(spec), **common)
        hidden_negatives = [s for s in (f"--no_{spec.name}", f"--no-{spec.name}") if s != negative]
        target.add_argument(*hidden, *hidden_negatives, action=_BoolFlag, negatives=hidden_negatives,
                            help=argparse.SUPPRESS, **common)
    else:
        metavar = spec.info.metavar or _METAVARS.get(spec.base)
        if spec.info.choices and not spec.info.metavar:
            metavar = "{" + ",".join(spec.info.choices) + "}"
        if spec.is_list:
            common.update(nargs="*", action="extend")
        if metavar:
            common["metavar"] = metavar
        target.add_argument(primary, *spec.info.aliases, help=_help_text(spec), **common)
        if hidden:
            target.add_argument(*hidden, help=argparse.SUPPRESS, **common)
    for old in spec.info.former:
        strings = _spellings(old)
        if spec.is_flag:
            strings += [f"--no-{old.replace('_', '-')}", f"--no_{old}"]
        target.add_argument(*dict.fromkeys(strings), action=_Renamed, new_flag=primary, dest=_RENAMED_DEST,
                            default=argparse.SUPPRESS, nargs=0 if spec.is_flag else "*", help=argparse.SUPPRESS)


def options_from_args(cls: type[T], namespace: argparse.Namespace, *, finish: Callable[[T], T] | None = None,
                      error: type[OptionsError] = OptionsError) -> T:
    """The ``cls`` of a parsed command line: defaults, then ``--config`` (if given), then the flags given.

    ``finish`` (validation or resolution) may raise :class:`OptionsError`; its problems are reported
    together with those found while reading the values, as one ``error`` (a command's own subclass).
    """
    problems = list(getattr(namespace, _RENAMED_DEST, None) or [])
    values: dict[str, Any] = {}
    config_file = getattr(namespace, "config", None)
    if config_file:
        values.update(read_options_file(cls, config_file, problems))
    for spec in field_specs(cls):
        if hasattr(namespace, spec.name):
            try:
                values[spec.name] = convert(spec, getattr(namespace, spec.name))
            except ValueError as exc:
                problems.append(f"{spec.flag}: {exc}")
    return _construct(cls, values, problems, finish, error)


def options_from_file(cls: type[T], path: str | os.PathLike, *, finish: Callable[[T], T] | None = None,
                      error: type[OptionsError] = OptionsError) -> T:
    """The ``cls`` of an options file alone (defaults, then the file)."""
    problems: list[str] = []
    values = read_options_file(cls, path, problems)
    return _construct(cls, values, problems, finish, error)


def _construct(cls: type[T], values: dict[str, Any], problems: list[str], finish: Callable[[T], T] | None,
               error: type[OptionsError]) -> T:
    # values that failed to convert keep their defaults, so validation still runs and reports the rest
    config = cls(**values)
    if finish is not None:
        try:
            config = finish(config)
        except OptionsError as exc:
            problems.extend(exc.problems)
    if problems:
        raise error(problems)
    return config


def options_parser(cls: type, **parser_kwargs: Any) -> argparse.ArgumentParser:
    """An ArgumentParser with :func:`add_options` for ``cls`` (abbreviated flags off: with two spellings of
    every flag a prefix is easily ambiguous, and a silent prefix match hides typos)."""
    parser = argparse.ArgumentParser(allow_abbrev=False, **parser_kwargs)
    add_options(parser, cls)
    return parser


def parse_options(cls: type[T], argv: Sequence[str] | None = None, *, finish: Callable[[T], T] | None = None,
                  **parser_kwargs: Any) -> T:
    """Parse ``argv`` into a ``cls`` (see :func:`options_from_args`)."""
    namespace = options_parser(cls, **parser_kwargs).parse_args(argv)
    return options_from_args(cls, namespace, finish=finish)
