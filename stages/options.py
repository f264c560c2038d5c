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
  first two become floats, and a boolean given to a text option becomes the matching choice (``no``).

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
import dataclasses
import difflib
import logging
import os
import types
import typing
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml

logger = logging.getLogger(__name__)

T = TypeVar("T")

_METADATA_KEY = "tide_option"
_RENAMED_DEST = "_renamed_options"
_TRUE = ("true", "yes", "on", "1")
_FALSE = ("false", "no", "off", "0")
_NULL = ("null", "none", "~")
_METAVARS = {int: "N", float: "X"}
_NOUNS = {str: "text", int: "an integer", float: "a number", bool: "a boolean (true/false, yes/no, on/off)"}


class OptionsError(ValueError):
    """Option values are unknown, malformed or inconsistent; ``problems`` holds one line per problem."""

    def __init__(self, problems: str | Sequence[str]) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        if len(self.problems) == 1:
            text = self.problems[0]
        else:
            text = f"{len(self.problems)} problems with the options:\n  " + "\n  ".join(self.problems)
        super().__init__(text)


@dataclass(frozen=True)
class OptionInfo:
    """What :func:`option` records in a field's metadata."""

    help: str
    choices: tuple[str, ...] | None = None
    aliases: tuple[str, ...] = ()
    former: tuple[str, ...] = ()
    group: str | None = None
    separators: str = ","
    default_text: str | None = None
    metavar: str | None = None


def option(
    default: Any = dataclasses.MISSING,
    *,
    default_factory: Callable[[], Any] | Any = dataclasses.MISSING,
    help: str,
    choices: Iterable[str] | None = None,
    aliases: Sequence[str] = (),
    former: Sequence[str] = (),
    group: str | None = None,
    separators: str = ",",
    default_text: str | None = None,
    metavar: str | None = None,
) -> Any:
    """A dataclass field that is also a command-line option.

    ``choices`` restricts the value (each item, for a list); ``aliases`` are further flags shown in
    ``--help`` (``-o``, ``--data``); ``former`` are old field names (see the module docstring); ``group``
    heads a section of ``--help``; ``separators`` split one string into list items; ``default_text``
    replaces the shown default (for defaults resolved later, e.g. per pipeline).
    """
    info = OptionInfo(help=help, choices=tuple(choices) if choices is not None else None, aliases=tuple(aliases),
                      former=tuple(former), group=group, separators=separators, default_text=default_text,
                      metavar=metavar)
    return dataclasses.field(default=default, default_factory=default_factory, metadata={_METADATA_KEY: info})


# ----------------------------------------------------------------------------------------------- fields


@dataclass(frozen=True)
class _Spec:
    name: str
    base: type
    is_list: bool
    optional: bool
    info: OptionInfo
    default: Any

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def is_flag(self) -> bool:
        return self.base is bool and not self.is_list


def _type_parts(name: str, hint: Any) -> tuple[type, bool, bool]:
    """(scalar type, is a list, accepts None) of a field annotation."""
    optional = False
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        rest = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(rest) != 1:
            raise TypeError(f"option {name}: unsupported type {hint!r}")
        optional, hint = True, rest[0]
    is_list = typing.get_origin(hint) is list
    base = typing.get_args(hint)[0] if is_list else hint
    if base not in _NOUNS:
        raise TypeError(f"option {name}: unsupported type {hint!r} (str, int, float, bool, lists of them)")
    return base, is_list, optional


def _specs(cls: type) -> list[_Spec]:
    hints = typing.get_type_hints(cls)
    specs = []
    for f in dataclasses.fields(cls):
        info = f.metadata.get(_METADATA_KEY) or OptionInfo(help=f.metadata.get("help", ""))
        base, is_list, optional = _type_parts(f.name, hints[f.name])
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            raise TypeError(f"option {f.name} of {cls.__name__} has no default")
        specs.append(_Spec(f.name, base, is_list, optional, info, default))
    return specs


def field_defaults(cls: type) -> dict[str, Any]:
    """Every option of ``cls`` with its dataclass default."""
    return {spec.name: spec.default for spec in _specs(cls)}


# ----------------------------------------------------------------------------------------------- values


def _convert(spec: _Spec, value: Any) -> Any:
    """``value`` (from a file or a flag) as the field's type; ValueError (without the name) if it is not one."""
    if value is None or (spec.optional and spec.base is not str and isinstance(value, str)
                         and value.strip().lower() in _NULL):
        if spec.optional:
            return None
        raise ValueError(f"expected {'a list' if spec.is_list else _NOUNS[spec.base]}, got null")
    if not spec.is_list:
        if isinstance(value, (list, tuple, dict)):
            raise ValueError(f"expected {_NOUNS[spec.base]}, got {type(value).__name__} {value!r}")
        return _scalar(spec.base, value, spec.info.choices)
    if isinstance(value, dict):
        raise ValueError(f"expected a list, got a mapping {value!r}")
    items: list[Any] = []
    for item in value if isinstance(value, (list, tuple)) else [value]:
        if isinstance(item, str):
            for separator in spec.info.separators[1:]:
                item = item.replace(separator, spec.info.separators[0])
            items.extend(part.strip() for part in item.split(spec.info.separators[0]) if part.strip())
        else:
            items.append(item)
    return [_scalar(spec.base, item, spec.info.choices) for item in items]


def _scalar(base: type, value: Any, choices: tuple[str, ...] | None) -> Any:
    if base is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
            return value.strip().lower() in _TRUE
        raise ValueError(f"expected {_NOUNS[bool]}, got {value!r}")
    if isinstance(value, bool):
        # YAML 1.1 reads an unquoted no/off/yes/on as a boolean; a text option whose choices spell it wins it back
        spellings = _TRUE if value else _FALSE
        match = [choice for choice in choices or () if choice in spellings]
        if base is str and match:
            return match[0]
        raise ValueError(f"expected {_NOUNS[base]}, got the boolean {str(value).lower()} (quote it in YAML)")
    if base is int:
        result = _integer(value)
    elif base is float:
        result = _number(value)
    elif isinstance(value, (str, int, float)):
        result = str(value)
    else:
        raise ValueError(f"expected text, got {value!r}")
    if choices is not None and result not in choices:
        raise ValueError(f"{result!r} is not one of {', '.join(choices)}")
    return result


def _integer(value: Any) -> int:
    if isinstance(value, int):
        return value
    number = value
    if isinstance(value, str):
        text = value.strip()
        try:
            return int(text)
        except ValueError:
            try:
                number = float(text)
            except ValueError:
                raise ValueError(f"expected an integer, got {value!r}") from None
    if isinstance(number, float) and number.is_integer():
        return int(number)
    raise ValueError(f"expected an integer, got {value!r}")


def _number(value: Any) -> float:
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            pass
    raise ValueError(f"expected a number, got {value!r}")


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
    specs = {spec.name: spec for spec in _specs(cls)}
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
            values[spec.name] = _convert(spec, value)
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


def _shown_default(spec: _Spec) -> str | None:
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


def _help_text(spec: _Spec) -> str:
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
    for spec in _specs(cls):
        target: Any = parser
        if spec.info.group:
            if spec.info.group not in groups:
                groups[spec.info.group] = parser.add_argument_group(spec.info.group)
            target = groups[spec.info.group]
        _add_spec(target, spec)


def _add_spec(target: Any, spec: _Spec) -> None:
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
    for spec in _specs(cls):
        if hasattr(namespace, spec.name):
            try:
                values[spec.name] = _convert(spec, getattr(namespace, spec.name))
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
