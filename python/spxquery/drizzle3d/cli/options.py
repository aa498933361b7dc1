"""The options of ``spxdrizzle run`` that set configuration fields, and the config they give.

Every option comes from a field description (:mod:`..settings`): flag, metavar, type and
allowed range, help text and default. ``--size`` is the one option that is not a field: it
sets ``width`` and ``height`` together.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Dict, List, Optional, Type

from ..config import DETECTOR_ALL, GROUPS, Drizzle3DConfig
from ..settings import TAKES_ARGUMENT, Choice, Described, described, format_value, groups_in_order
from ..yaml_limits import load_yaml_file
from .common import CLIError, usage_error

REGION = "target region (required without CONFIG.yaml)"
DRIZZLE = "drizzle settings (override the YAML; defaults are the config's)"
ARCHIVE = "archive and output"
OTHER = "other settings"
#: The ``run --help`` section of each setting group (other groups: OTHER).
SECTIONS = {
    "region": REGION, "detector": REGION, "shrink": DRIZZLE, "grid": DRIZZLE, "preprocess": DRIZZLE,
    "accumulate": DRIZZLE, "archive": ARCHIVE, "output": ARCHIVE,
}
#: The size option (argparse dest ``size``): a square region, sets width and height.
SIZE_FLAG = "--size"
SIZE_HELP = "side of a square region [arcmin] (sets width and height)"


def option_help(d: Described) -> str:
    """``--help`` text of the option of field ``d``: help, unit, range, default."""
    s = d.setting
    cli = s.cli
    assert cli is not None
    if cli.store is TAKES_ARGUMENT:
        text = s.help + (f" [{s.unit}]" if s.unit else "") if _choices(d) else d.summary()
    else:
        text = ("do not " if cli.store is False else "") + s.help
    if cli.note:
        text += f"; {cli.note}"
    default = _default_words(d)
    if default:
        text += f" (default {default})"
    return text.replace("%", "%%")


def _default_words(d: Described) -> str:
    cli = d.setting.cli
    assert cli is not None
    if cli.store is not TAKES_ARGUMENT or d.required:
        return ""
    if cli.run_default is not None:
        return cli.run_default[0]
    if cli.words is not None:
        return next((w for w, v in cli.words.items() if v == d.default), "")
    if d.default is None:
        return ""
    plain = d.setting.rule.plain(d.default)
    return "none" if plain == [] else format_value(plain)


def _choices(d: Described) -> List[str]:
    """The words the option accepts, if it takes one of a fixed set (else [])."""
    cli = d.setting.cli
    if cli is not None and cli.words is not None:
        return list(cli.words)
    rule = d.setting.rule
    return list(rule.options) if isinstance(rule, Choice) else []


def add_option(group: Any, d: Described) -> None:
    """Add the option of field ``d`` (argparse dest = the field name; None when not given)."""
    cli = d.setting.cli
    assert cli is not None
    kw: Dict[str, Any] = {"dest": d.name, "help": option_help(d)}
    if cli.store is not TAKES_ARGUMENT:
        kw.update(action="store_const", const=cli.store, default=None)
    else:
        choices = _choices(d)
        if choices:
            kw["choices"] = choices
        else:
            kw["type"] = cli.type or d.setting.rule.parse_arg
        if cli.metavar is not None:
            kw["metavar"] = cli.metavar
        if cli.nargs is not None:
            kw["nargs"] = cli.nargs
    group.add_argument(cli.flag, **kw)


def add_config_options(parser: argparse.ArgumentParser,
                       config_cls: Type[Drizzle3DConfig] = Drizzle3DConfig) -> Dict[str, Any]:
    """Add an option for every field of ``config_cls`` described with one, in sections by
    group; returns the argument groups by title (so a command can add its own options)."""
    sections: Dict[str, Any] = {}
    for group, fields in groups_in_order(config_cls, list(GROUPS)):
        for d in fields:
            if d.setting.cli is None:
                continue
            title = SECTIONS.get(group, OTHER)
            if title not in sections:
                sections[title] = parser.add_argument_group(title)
            if d.name == "width":
                sections[title].add_argument(SIZE_FLAG, dest="size", type=d.setting.rule.parse_arg, metavar="ARCMIN",
                                             help=SIZE_HELP)
            add_option(sections[title], d)
    return sections


def changes_from_args(args: argparse.Namespace, parser: Optional[argparse.ArgumentParser] = None,
                      config_cls: Type[Drizzle3DConfig] = Drizzle3DConfig) -> Dict[str, Any]:
    """The field values given on the command line, by field name."""
    changes: Dict[str, Any] = {}
    if getattr(args, "size", None) is not None:
        if getattr(args, "width", None) is not None or getattr(args, "height", None) is not None:
            usage_error(parser, "use either --size or --width/--height, not both")
        changes["width"] = changes["height"] = args.size
    for d in described(config_cls):
        cli = d.setting.cli
        v = None if cli is None else getattr(args, d.name, None)
        if cli is None or v is None:
            continue
        if d.name == "detector" and v == DETECTOR_ALL:  # --detector all: one cube of the six
            changes["detector"] = 0
            changes.setdefault("combine_detectors", True)
            continue
        if cli.words is not None:
            v = cli.words[v]
        changes[d.name] = cli.convert(v) if cli.convert is not None else v
    mirror = changes.get("data_mirror")
    if mirror is not None and not isinstance(mirror, str) and not Path(mirror).is_dir():
        raise CLIError(f"--mirror {mirror}: not a directory")
    return changes


def apply_run_defaults(cfg: Any, args: argparse.Namespace) -> Any:
    """``cfg`` with the ``run_default`` of every field that neither its option nor CONFIG.yaml
    set (e.g. the recommended ``exclude_flags``; the Python defaults stay spxquery 0.4.1's)."""
    in_yaml: Dict[str, Any] = {}
    if getattr(args, "config", None) is not None:
        data = load_yaml_file(Path(args.config))  # read fine, within the same bounds, by config_from_args
        in_yaml = data if isinstance(data, dict) else {}
    changes = {}
    for d in described(type(cfg)):
        cli = d.setting.cli
        if cli is None or cli.run_default is None or getattr(args, d.name, None) is not None or d.name in in_yaml:
            continue
        changes[d.name] = cli.run_default[1]()
    return cfg.replace(**changes) if changes else cfg


def _missing_options(changes: Dict[str, Any], config_cls: Type[Drizzle3DConfig]) -> List[str]:
    """Options of the required fields not given (width and height may come from --size)."""
    out = [d.setting.cli.flag for d in described(config_cls)
           if d.required and d.setting.cli is not None and d.name not in changes and d.name not in ("width", "height")]
    if "width" not in changes or "height" not in changes:
        out.append("--size (or --width and --height)")
    return out


def config_from_args(args: argparse.Namespace, parser: Optional[argparse.ArgumentParser] = None,
                     config_cls: Type[Drizzle3DConfig] = Drizzle3DConfig) -> Any:
    """The config of a ``run`` invocation: CONFIG.yaml (if given) with the options applied.

    Raises CLIError (or calls ``parser.error``) with one clear line on bad input.
    """
    changes = changes_from_args(args, parser, config_cls)
    if getattr(args, "config", None) is not None:
        try:
            cfg = config_cls.from_yaml_file(args.config)
        except FileNotFoundError as exc:  # missing, or a directory, a FIFO, a device: the message says
            raise CLIError(str(exc)[:1].lower() + str(exc)[1:]) from None
        except ValueError as exc:
            if not changes:
                raise CLIError(str(exc)) from None
            # the options may replace the offending value: merge the raw YAML with them, then validate
            return _merge_yaml(args.config, changes, exc, config_cls)
        try:
            return cfg.replace(**changes)
        except ValueError as exc:
            raise CLIError(f"invalid option value: {exc}") from None
    missing = _missing_options(changes, config_cls)
    if missing:
        usage_error(parser, f"without CONFIG.yaml these options are required: {', '.join(missing)}")
    try:
        return config_cls(**changes)
    except ValueError as exc:
        raise CLIError(f"invalid option value: {exc}") from None


def _merge_yaml(path: Path, changes: Dict[str, Any], original: ValueError, config_cls: Type[Drizzle3DConfig]) -> Any:
    """Config from the YAML mapping at ``path`` updated with ``changes`` (CLIError if invalid)."""
    try:
        data = load_yaml_file(Path(path))  # the same bounds as the first reading
    except (OSError, ValueError):
        raise CLIError(str(original)) from None
    if not isinstance(data, dict):
        raise CLIError(str(original))
    data.update(changes)
    try:
        return config_cls.from_dict(data)
    except (ValueError, TypeError) as exc:
        raise CLIError(f"{path} with the command-line options: {exc}") from None
