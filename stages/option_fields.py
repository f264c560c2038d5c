"""What an option is: a dataclass field with help and choices (:func:`option`), its type, and the
conversion of a value from a file or a flag to that type.

Conversion is by the field's annotation, not by what the YAML parser guessed: PyYAML reads ``5e-5`` and
``1e-3`` as strings (YAML 1.1 floats need a dot) and ``no`` / ``off`` as False, so a float field turns the
first two into numbers, and a text field whose choices include ``no`` gets ``"no"`` back.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

_METADATA_KEY = "tide_option"
_TRUE = ("true", "yes", "on", "1")
_FALSE = ("false", "no", "off", "0")
_NULL = ("null", "none", "~")
NOUNS = {str: "text", int: "an integer", float: "a number", bool: "a boolean (true/false, yes/no, on/off)"}


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
    ``--help`` (``-o``, ``--data``); ``former`` are old field names (see :mod:`stages.options`); ``group``
    heads a section of ``--help``; ``separators`` split one string into list items; ``default_text``
    replaces the shown default (for defaults resolved later, e.g. per pipeline).
    """
    info = OptionInfo(help=help, choices=tuple(choices) if choices is not None else None, aliases=tuple(aliases),
                      former=tuple(former), group=group, separators=separators, default_text=default_text,
                      metavar=metavar)
    return dataclasses.field(default=default, default_factory=default_factory, metadata={_METADATA_KEY: info})


@dataclass(frozen=True)
class FieldSpec:
    """One option: its field name, scalar type, list-ness, whether it takes None, metadata, default."""

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
    if base not in NOUNS:
        raise TypeError(f"option {name}: unsupported type {hint!r} (str, int, float, bool, lists of them)")
    return base, is_list, optional


def field_specs(cls: type) -> list[FieldSpec]:
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
        specs.append(FieldSpec(f.name, base, is_list, optional, info, default))
    return specs


def field_defaults(cls: type) -> dict[str, Any]:
    """Every option of ``cls`` with its dataclass default."""
    return {spec.name: spec.default for spec in field_specs(cls)}


# ----------------------------------------------------------------------------------------------- values


def convert(spec: FieldSpec, value: Any) -> Any:
    """``value`` (from a file or a flag) as the field's type; ValueError (without the name) if it is not one."""
    if value is None or (spec.optional and spec.base is not str and isinstance(value, str)
                         and value.strip().lower() in _NULL):
        if spec.optional:
            return None
        raise ValueError(f"expected {'a list' if spec.is_list else NOUNS[spec.base]}, got null")
    if not spec.is_list:
        if isinstance(value, (list, tuple, dict)):
            raise ValueError(f"expected {NOUNS[spec.base]}, got {type(value).__name__} {value!r}")
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
        raise ValueError(f"expected {NOUNS[bool]}, got {value!r}")
    if isinstance(value, bool):
        # YAML 1.1 reads an unquoted no/off/yes/on as a boolean; a text option whose choices spell it wins it back
        spellings = _TRUE if value else _FALSE
        match = [choice for choice in choices or () if choice in spellings]
        if base is str and match:
            return match[0]
        raise ValueError(f"expected {NOUNS[base]}, got the boolean {str(value).lower()} (quote it in YAML)")
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
