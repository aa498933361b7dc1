"""Reading an untrusted YAML file within bounds: size, encoding, nesting depth and the size
of the document with its aliases expanded, each checked before anything is built from it.

``yaml.safe_load`` alone accepts a 421-byte alias bomb (``&a [x, x] ... [*a, *a]`` nine levels
deep: a billion-item value once printed in an error message), and builds deeply nested
documents recursively (RecursionError). Here the event stream (parsed without recursion) is
measured first: depth, events, and for each anchor the expanded size of its node, so an
alias costs what it stands for. Every error names the file. Sizes in bytes or nodes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List

import yaml

from .filekind import not_a_regular_file
from .textlimits import short_text

#: Largest configuration file read (bytes).
MAX_FILE_BYTES = 1 << 20
#: Deepest nesting of lists and mappings.
MAX_DEPTH = 32
#: Most nodes of the document with every alias expanded.
MAX_EXPANDED_NODES = 100_000
#: libyaml's safe loader when PyYAML was built with it (the wheels are): the pure-Python one
#: takes ~10 s on a 1 MB file of 20,000 keys, libyaml ~0.1 s. Same documents, same values.
_SAFE_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _too_deep(source: Path) -> ValueError:
    return ValueError(f"{source}: YAML nested deeper than {MAX_DEPTH} levels; a configuration "
                      "needs a few (is this the right file?)")


def _measure(text: str, source: Path) -> None:
    """ValueError naming ``source`` when the document nests deeper than :data:`MAX_DEPTH`
    or expands to more than :data:`MAX_EXPANDED_NODES` nodes."""
    sizes: Dict[str, int] = {}
    stack: List[List[Any]] = [[None, 0]]  # [anchor, expanded size] per open collection
    total = 0
    for event in yaml.parse(text, Loader=_SAFE_LOADER):
        if isinstance(event, (yaml.SequenceStartEvent, yaml.MappingStartEvent)):
            if len(stack) > MAX_DEPTH:
                raise _too_deep(source)
            stack.append([event.anchor, 1])
            continue
        if isinstance(event, (yaml.SequenceEndEvent, yaml.MappingEndEvent)):
            anchor, size = stack.pop()
            if anchor is not None:
                sizes[anchor] = size
            stack[-1][1] += size
        elif isinstance(event, yaml.ScalarEvent):
            if event.anchor is not None:
                sizes[event.anchor] = 1
            stack[-1][1] += 1
        elif isinstance(event, yaml.AliasEvent):
            stack[-1][1] += sizes.get(event.anchor or "", 1)
        else:
            continue
        total = stack[0][1]
        if total > MAX_EXPANDED_NODES or stack[-1][1] > MAX_EXPANDED_NODES:
            raise ValueError(f"{source}: YAML document expands to more than {MAX_EXPANDED_NODES} values "
                             "(aliases of aliases, an 'alias bomb'?); a configuration holds a few dozen")


def load_yaml_file(path: Path) -> Any:
    """The document in the YAML file ``path`` (``yaml.safe_load``), after the checks above.

    FileNotFoundError when ``path`` is not a file (a directory, a FIFO, a device are named as
    such); ValueError naming the file when it is larger than :data:`MAX_FILE_BYTES`, not
    UTF-8 (with the byte offset), not YAML, too deep or too large once expanded.
    """
    path = Path(path)
    odd = not_a_regular_file(path)
    if odd is not None:
        where = f"Config file not found: {path}" if odd.startswith("does not exist") else f"Config file {path} {odd}"
        raise FileNotFoundError(where)
    with open(path, "rb") as f:
        raw = f.read(MAX_FILE_BYTES + 1)
    if len(raw) > MAX_FILE_BYTES:
        raise ValueError(f"{path}: larger than {MAX_FILE_BYTES} bytes; a configuration file is a few kB")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start}); "
                         "save the configuration as UTF-8") from None
    try:
        _measure(text, path)
        return yaml.load(text, Loader=_SAFE_LOADER)  # noqa: S506 (a safe loader)
    except yaml.YAMLError as exc:
        if "maximum nesting depth" in str(exc):  # libyaml's own limit (1000) met before ours
            raise _too_deep(path) from None
        raise ValueError(f"{path}: invalid YAML: {short_text(exc, 400)}") from None
    except RecursionError:
        raise ValueError(f"{path}: YAML nested too deeply") from None
