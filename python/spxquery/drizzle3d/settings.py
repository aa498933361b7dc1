"""A configuration setting described once, and what follows from the description.

Each field of :class:`~.config.Drizzle3DConfig` carries a :class:`Setting` in its dataclass
``metadata`` (``field(default=..., metadata=setting(...))``): its group, help text, unit, the
:class:`Rule` its values follow, the FITS keyword recording it in a cube's PRIMARY header (or
why none does) and its option of ``spxdrizzle run`` (or None: config file only). The default
and the type come from the dataclass field itself; a default of None means "None allowed".

Everything else is derived from that description: validation (:func:`validate`), the YAML
template (:meth:`.config.Drizzle3DConfig.yaml_text`), the command line (:mod:`.cli.options`),
the cube header (:func:`header_cards`, written by :mod:`.cubefile`) and the README's
configuration table (:func:`reference_table`). Adding a setting is one described field plus
the code that uses it.
"""

from __future__ import annotations

import abc
import argparse
import dataclasses
import math
import numbers
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from .textlimits import short_repr

# ── rules: which values a setting takes ──────────────────────────────────────


def is_real(value: Any) -> bool:
    """A real number, booleans excluded."""
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def is_int(value: Any) -> bool:
    """An integer, booleans excluded."""
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def _fmt(v: float) -> str:
    return f"{v:g}"


class Rule(abc.ABC):
    """Which values a setting takes: ``check`` returns the normalised value or raises
    ValueError naming the field, the value and the allowed range."""

    @abc.abstractmethod
    def kind(self) -> str:
        """The type in words, as the documentation shows it (``float``, ``list of float``)."""

    def range(self) -> str:
        """The allowed values in words (``"in [0, 360)"``, ``"> 0"``), "" when the type says all."""
        return ""

    @abc.abstractmethod
    def check(self, name: str, value: Any, unit: str, none_ok: bool) -> Any:
        """The normalised ``value`` of field ``name``; ValueError naming field, value and range."""

    def from_text(self, value: Any) -> Any:
        """Undo YAML 1.1 reading numbers as strings (``1e10``); other values unchanged."""
        return value

    def plain(self, value: Any) -> Any:
        """``value`` as plain JSON/YAML types."""
        return value

    def parse_arg(self, text: str) -> Any:
        """An argparse ``type``: command-line text -> value (ArgumentTypeError when invalid)."""
        return text


@dataclass(frozen=True)
class Real(Rule):
    """A finite float within optional bounds (open or closed)."""

    lo: Optional[float] = None
    hi: Optional[float] = None
    lo_open: bool = False
    hi_open: bool = False

    def kind(self) -> str:
        return "float"

    def range(self) -> str:
        lo, hi = self.lo, self.hi
        if lo is not None and hi is not None:
            return f"in {'(' if self.lo_open else '['}{_fmt(lo)}, {_fmt(hi)}{')' if self.hi_open else ']'}"
        if lo is not None:
            return f"{'>' if self.lo_open else '>='} {_fmt(lo)}"
        if hi is not None:
            return f"{'<' if self.hi_open else '<='} {_fmt(hi)}"
        return "(any finite value)"

    def inside(self, v: float) -> bool:
        ok = math.isfinite(v)
        if ok and self.lo is not None:
            ok = v > self.lo if self.lo_open else v >= self.lo
        if ok and self.hi is not None:
            ok = v < self.hi if self.hi_open else v <= self.hi
        return ok

    def check(self, name: str, value: Any, unit: str, none_ok: bool) -> float:
        rng = ("None or " if none_ok else "") + self.range()
        rule = f"{unit} {rng}".strip()
        if not is_real(value):
            raise ValueError(f"{name} must be a number ({rule}), got {short_repr(value)}")
        v = float(value)
        if math.isnan(v):
            raise ValueError(f"{name} must be a number ({rule}), got NaN")
        if not math.isfinite(v):
            raise ValueError(f"{name} must be finite ({rule}), got {v}")
        if not self.inside(v):
            raise ValueError(f"{name} must be {rng}{' ' + unit if unit else ''}, got {v}")
        return v

    def from_text(self, value: Any) -> Any:
        return _float_text(value)

    def parse_arg(self, text: str) -> float:
        return _parse_number(text, float, f"a number {self.range()}", self.inside)


def _parse_number(text: str, convert: Callable[[str], Any], what: str, inside: Callable[[Any], bool]) -> Any:
    """An argparse type's work: ``convert(text)`` inside the range, else ArgumentTypeError
    saying ``must be <what>, got <text>``."""
    try:
        v = convert(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {what}, got {short_repr(text)}") from None
    if not inside(v):
        raise argparse.ArgumentTypeError(f"must be {what}, got {text}")
    return v


def _float_text(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value  # the rule reports it, naming the field
    return value


@dataclass(frozen=True)
class Int(Rule):
    """An integer in ``[lo, hi]`` (``hi`` None: no upper bound); ``text`` words the range."""

    lo: int
    hi: Optional[int] = None
    text: str = ""

    def kind(self) -> str:
        return "int"

    def range(self) -> str:
        return self.text or (f"{self.lo}-{self.hi}" if self.hi is not None else f">= {self.lo}")

    def inside(self, v: int) -> bool:
        return v >= self.lo and (self.hi is None or v <= self.hi)

    def check(self, name: str, value: Any, unit: str, none_ok: bool) -> int:
        if not is_int(value) or not self.inside(int(value)):
            none = "None or " if none_ok else ""
            raise ValueError(f"{name} must be {none}an integer {self.range()}, got {short_repr(value)}")
        return int(value)

    def parse_arg(self, text: str) -> int:
        return _parse_number(text, int, f"an integer {self.range()}", self.inside)


class Bool(Rule):
    """True or false (numpy booleans accepted)."""

    def kind(self) -> str:
        return "bool"

    def check(self, name: str, value: Any, unit: str, none_ok: bool) -> bool:
        if not isinstance(value, (bool, np.bool_)):
            raise ValueError(f"{name} must be {'None, ' if none_ok else ''}true or false, got {short_repr(value)}")
        return bool(value)


class PathRule(Rule):
    """A non-empty path (str or os.PathLike), normalised to :class:`~pathlib.Path`."""

    def kind(self) -> str:
        return "path"

    def check(self, name: str, value: Any, unit: str, none_ok: bool) -> Path:
        if isinstance(value, (str, os.PathLike)) and str(value).strip() != "":
            return Path(value)
        raise ValueError(f"{name} must be {'None or ' if none_ok else ''}a non-empty path, got {short_repr(value)}")

    def plain(self, value: Any) -> Any:
        return str(value)

    def parse_arg(self, text: str) -> Path:
        return Path(text)


class PathOrUrl(PathRule):
    """A path, normalised to :class:`~pathlib.Path`, or a URL (``scheme://...``, e.g.
    ``s3://bucket/prefix``) kept as a string."""

    def kind(self) -> str:
        return "path or URL"

    def check(self, name: str, value: Any, unit: str, none_ok: bool) -> Any:
        if isinstance(value, str) and _URL_SCHEME.match(value.strip()):
            return value.strip()
        return super().check(name, value, unit, none_ok)

    def parse_arg(self, text: str) -> Any:
        return text.strip() if _URL_SCHEME.match(text.strip()) else Path(text)


_URL_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://\S")


@dataclass(frozen=True)
class Choice(Rule):
    """One of ``options`` (case-insensitive, surrounding blanks ignored)."""

    options: Tuple[str, ...]

    def kind(self) -> str:
        return "str"

    def range(self) -> str:
        return "one of " + ", ".join(self.options)

    def check(self, name: str, value: Any, unit: str, none_ok: bool) -> str:
        if not isinstance(value, str) or value.strip().lower() not in self.options:
            raise ValueError(f"{name} must be one of {list(self.options)}, got {short_repr(value)}")
        return value.strip().lower()


class Url(Rule):
    """An http(s) URL (surrounding blanks removed)."""

    def kind(self) -> str:
        return "str"

    def range(self) -> str:
        return "an http(s) URL"

    def check(self, name: str, value: Any, unit: str, none_ok: bool) -> str:
        if not isinstance(value, str) or not value.strip().lower().startswith(("http://", "https://")):
            raise ValueError(f"{name} must be {'None or ' if none_ok else ''}an http(s) URL, got {short_repr(value)}")
        return value.strip()


@dataclass(frozen=True)
class Checked(Rule):
    """A rule given by a function ``check(name, value) -> normalised value`` (ValueError
    naming the field otherwise), for values that are lists or pairs of numbers or names."""

    func: Callable[[str, Any], Any]
    type_text: str
    text: str = ""
    #: Convert strings inside a list to floats when reading YAML (``[1e10, 2e10]``).
    numbers: bool = False

    def kind(self) -> str:
        return self.type_text

    def range(self) -> str:
        return self.text

    def check(self, name: str, value: Any, unit: str, none_ok: bool) -> Any:
        return self.func(name, value)

    def from_text(self, value: Any) -> Any:
        if self.numbers and isinstance(value, list):
            return [_float_text(x) for x in value]
        return value

    def plain(self, value: Any) -> Any:
        if isinstance(value, (np.ndarray, tuple, list)):
            return [float(x) if self.numbers else x for x in value]
        return value


# ── the description ───────────────────────────────────────────────────────────


@dataclass(frozen=True)
class Fits:
    """The PRIMARY header keyword recording a setting: ``keyword = value / comment``.

    ``value(config)`` gives what is written when it is not the field's own value (e.g. the
    effective spectral shrink when ``z_shrink`` is None).
    """

    keyword: str
    comment: str
    value: Optional[Callable[[Any], Any]] = None


@dataclass(frozen=True)
class NoHeader:
    """Why a setting is not written to the cube header."""

    reason: str


class _TakesArgument:
    def __repr__(self) -> str:
        return "TAKES_ARGUMENT"


#: ``Cli.store`` of an option that takes an argument.
TAKES_ARGUMENT: Any = _TakesArgument()


@dataclass(frozen=True)
class Cli:
    """The option of ``spxdrizzle run`` that sets a field.

    ``metavar``/``nargs``/``type`` as in argparse (``type`` defaults to the rule's parser);
    ``words`` maps each accepted word to the field value it stands for (argparse choices);
    ``store``: the option takes no argument and sets this value (``--overwrite`` -> True; an
    option storing False reads "do not <help>", so its help should start with a verb);
    ``convert`` turns the parsed value(s) into the field value; ``note`` adds words for the
    command line only (e.g. keywords it accepts); ``run_default`` = (words for ``--help``, a
    function giving the value) that ``run`` uses when neither the option nor CONFIG.yaml sets
    the field (None: the field's own default).
    """

    flag: str
    metavar: Union[str, Tuple[str, ...], None] = None
    nargs: Union[int, str, None] = None
    type: Optional[Callable[[str], Any]] = None
    words: Optional[Mapping[str, Any]] = None
    store: Any = TAKES_ARGUMENT
    convert: Optional[Callable[[Any], Any]] = None
    note: str = ""
    run_default: Optional[Tuple[str, Callable[[], Any]]] = None


@dataclass(frozen=True)
class Setting:
    """The description of one configuration field (see the module docstring)."""

    group: str
    help: str
    rule: Rule
    header: Union[Fits, NoHeader]
    cli: Optional[Cli] = None
    unit: str = ""


def setting(*, group: str, help: str, rule: Rule, header: Union[Fits, NoHeader], cli: Optional[Cli] = None,
            unit: str = "") -> Dict[str, Setting]:
    """``metadata`` of a described dataclass field: ``field(default=..., metadata=setting(...))``."""
    if not isinstance(header, (Fits, NoHeader)) or (isinstance(header, NoHeader) and not header.reason.strip()):
        raise TypeError("header must be Fits(keyword, comment) or NoHeader(reason) with a reason")
    return {"setting": Setting(group=group, help=help, rule=rule, header=header, cli=cli, unit=unit)}


@dataclass(frozen=True)
class Described:
    """One described field: its name, its default (``MISSING`` when required) and its setting."""

    name: str
    default: Any
    setting: Setting

    @property
    def required(self) -> bool:
        return self.default is dataclasses.MISSING

    @property
    def optional(self) -> bool:
        """None is allowed (the default is None)."""
        return self.default is None

    def check(self, value: Any) -> Any:
        """The normalised value, or ValueError naming the field, the value and the range."""
        if value is None and self.optional:
            return None
        return self.setting.rule.check(self.name, value, self.setting.unit, self.optional)

    def kind(self) -> str:
        return self.setting.rule.kind() + (" or None" if self.optional else "")

    def summary(self, unit: bool = True) -> str:
        """Help text, unit (``[deg]``) and allowed range in one phrase."""
        s = self.setting
        text = s.help + (f" [{s.unit}]" if unit and s.unit else "")
        rng = s.rule.range()
        return f"{text}; {rng}" if rng else text

    def default_text(self) -> str:
        return "required" if self.required else format_value(self.setting.rule.plain(self.default))


def format_value(value: Any) -> str:
    """A default as the documentation shows it (``1e10``, ``square``, ``[]``, ``None``)."""
    if isinstance(value, float):
        s = repr(value)
        if "e" not in s and len(s) > 8:
            s = f"{value:.0e}".replace("e+", "e")
        return s
    if isinstance(value, (str, Path)):
        return str(value)
    return repr(value)


def described(config: Any) -> List[Described]:
    """The described init fields of a config class or instance, in constructor order."""
    cls = config if isinstance(config, type) else type(config)
    out = []
    for f in dataclasses.fields(cls):
        if not f.init or "setting" not in f.metadata:
            continue
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = dataclasses.MISSING
        out.append(Described(f.name, default, f.metadata["setting"]))
    return out


# ── what follows from it ──────────────────────────────────────────────────────


def validate(config: Any) -> None:
    """Check and normalise every described field of ``config`` in place (first failure raises)."""
    for d in described(config):
        setattr(config, d.name, d.check(getattr(config, d.name)))


def header_cards(config: Any) -> List[Tuple[str, Any, str]]:
    """``(keyword, value, comment)`` of every setting recorded in the cube header, field order."""
    cards = []
    for d in described(config):
        h = d.setting.header
        if isinstance(h, Fits):
            v = h.value(config) if h.value is not None else getattr(config, d.name)
            if isinstance(v, (bool, np.bool_)):
                v = bool(v)
            elif is_int(v):
                v = int(v)
            elif is_real(v):
                v = float(v)
            cards.append((h.keyword, v, h.comment))
    return cards


def reference_table(config_cls: Any) -> str:
    """The README's configuration table: field, type, default, unit, meaning (Markdown)."""
    rows = ["| field | type | default | unit | meaning |", "|---|---|---|---|---|"]
    for d in described(config_cls):
        default = d.default_text()
        default = default if d.required else f"`{default}`"
        rows.append(f"| `{d.name}` | {d.kind()} | {default} | {d.setting.unit} | {d.summary(unit=False)} |")
    return "\n".join(rows) + "\n"


def by_name(config: Any) -> Dict[str, Described]:
    """:func:`described` keyed by field name."""
    return {d.name: d for d in described(config)}


def groups_in_order(config: Any, order: Sequence[str]) -> List[Tuple[str, List[Described]]]:
    """The described fields by group: groups in ``order`` (unknown groups after them, in field
    order), fields in constructor order; empty groups left out."""
    found: Dict[str, List[Described]] = {}
    for d in described(config):
        found.setdefault(d.setting.group, []).append(d)
    keys = [g for g in order if g in found] + [g for g in found if g not in order]
    return [(g, found[g]) for g in keys]


__all__ = [
    "Rule", "Real", "Int", "Bool", "PathRule", "PathOrUrl", "Choice", "Url", "Checked",
    "Fits", "NoHeader", "Cli", "TAKES_ARGUMENT", "Setting", "setting", "Described", "described", "by_name",
    "validate", "header_cards", "reference_table", "groups_in_order", "format_value", "is_real", "is_int",
]
