"""Declared settings: dataclasses whose fields carry their default and help text.

The config sections and each loss's own knobs are declared this way, so the flag, the YAML key, the --help line and
the check of a setting all come from one declaration. A loss declares `Settings`, a subclass of `Settings` here,
in its own file; `forgetune.config` turns every registered loss's fields into flags of its section.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from forgetune.errors import ForgetuneError


def option(default: Any, help: str) -> Any:
    """A dataclass field with its help text: the same text serves --help and the docs."""
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class FieldInfo:
    section: str | None  # None for top-level fields (output, preset)
    name: str
    type: type  # scalar type: `int | None` -> int
    default: Any
    help: str
    holder: str | None = None  # a loss's setting: the section field that holds it (objective_args, method_args)
    optional: bool = False  # None is a value of it (`float | None`)


def field_infos(cls: type, section: str | None, holder: str | None = None) -> list[FieldInfo]:
    """The scalar fields of dataclass `cls` (a dict-valued field holds declared settings: not a flag itself)."""
    hints = typing.get_type_hints(cls)
    infos = []
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        optional = isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union
        if optional:
            hint = next(a for a in typing.get_args(hint) if a is not type(None))
        if typing.get_origin(hint) is dict or hint is dict:
            continue
        infos.append(FieldInfo(section, f.name, hint, f.default, f.metadata.get("help", ""), holder, optional))
    return infos


@dataclass
class Settings:
    """A loss's declared settings (none here). Subclasses add fields with `option(default, help)` and check them in
    `validate`, which raises ForgetuneError naming the setting."""

    def validate(self) -> None:
        """Nothing to check."""


def at_least(name: str, value: float, low: float = 0.0, *, strict: bool = False) -> None:
    """`value` is a finite number >= low (> low with strict), else one line naming the setting."""
    if not (isinstance(value, int | float) and math.isfinite(value) and (value > low if strict else value >= low)):
        raise ForgetuneError(f"{name} must be a finite number {'>' if strict else '>='} {low:g}, got {value}")


def one_of(name: str, value: Any, allowed: typing.Sequence[Any], lead: str | None = None) -> None:
    if value not in allowed:
        if lead:
            raise ForgetuneError(f"{lead} {value!r}; choose one of {', '.join(allowed)}")
        raise ForgetuneError(f"{name} must be {', '.join(allowed[:-1])} or {allowed[-1]}, got {value!r}")


def declared(cls: type, values: dict[str, Any], kind: str) -> Settings:
    """`cls.Settings` filled with `values` and checked: an unknown key is one line listing the loss's settings."""
    known = [f.name for f in dataclasses.fields(cls.Settings)]
    unknown = sorted(set(values) - set(known))
    if unknown:
        has = ", ".join(known) if known else "none"
        raise ForgetuneError(f"{kind} {cls.name} has no setting {', '.join(unknown)} (its settings: {has})")
    settings = cls.Settings(**values)
    settings.validate()
    return settings
