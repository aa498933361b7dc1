"""``spxdrizzle init``: write a commented YAML configuration template."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

from ..config import YAML_PREAMBLE, Drizzle3DConfig
from ..flags import FLAG_DESCRIPTIONS, INFORMATIONAL_FLAGS, RECOMMENDED_EXCLUDE_FLAGS
from .common import DEMO_DEC, DEMO_RA, PROG, CLIError, add_command, setting_type

_HEAD = (
    "# spxdrizzle configuration. Edit center_ra/center_dec/width/height (and detector), then:\n"
    "#     spxdrizzle run THIS_FILE.yaml\n"
    "# With tap_url: null and data_mirror: null the run queries IRSA and downloads the frames\n"
    "# (cutouts for small regions) into output_dir/images/. Command-line flags override values here.\n"
)


def _exclude_flags_block() -> str:
    """``exclude_flags`` as a block list of the recommended flags, one commented line each."""
    width = max(len(n) for n in RECOMMENDED_EXCLUDE_FLAGS) + 3
    lines = [
        "# The recommended set: pixels flagged with any of these are dropped. Delete a line to keep",
        "# those pixels; add bit numbers (0-31) or names (GHOST* = all GHOST bits).",
        f"# Not listed on purpose: {', '.join(INFORMATIONAL_FLAGS)} are informational (SOURCE marks",
        "# 40-70% of all pixels); excluding them throws away good data.",
        "exclude_flags:",
    ]
    for name in RECOMMENDED_EXCLUDE_FLAGS:
        lines.append(f"  - {name:<{width}}# {FLAG_DESCRIPTIONS.get(name, '')}".rstrip())
    return "\n".join(lines) + "\n"


def template_text(ra: float = DEMO_RA, dec: float = DEMO_DEC, size: float = 10.0, detector: int = 3) -> str:
    """YAML text of a commented configuration template with the recommended ``exclude_flags``."""
    cfg = Drizzle3DConfig(center_ra=ra, center_dec=dec, width=size, height=size, detector=detector,
                          exclude_flags=list(RECOMMENDED_EXCLUDE_FLAGS))
    text = cfg.yaml_text(preamble=_HEAD + YAML_PREAMBLE, blocks={"exclude_flags": _exclude_flags_block()})
    with tempfile.TemporaryDirectory() as tmp:  # the template must load back as the same config
        p = Path(tmp) / "check.yaml"
        p.write_text(text, encoding="utf-8")
        if Drizzle3DConfig.from_yaml_file(p) != cfg:
            raise RuntimeError("the YAML template does not load back as the intended configuration")
    return text


def cmd_init(args: argparse.Namespace) -> int:
    path: Path = args.path
    if path.is_dir():
        raise CLIError(f"{path} is a directory; give a file name such as {path / 'config.yaml'}")
    if path.exists() and not args.force:
        raise CLIError(f"{path} already exists (use --force to overwrite it)")
    text = template_text(args.ra, args.dec, args.size, args.detector)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    print(f"wrote {path}")
    print(f"next: edit center_ra/center_dec/width/height, then: {PROG} run {path}")
    return 0


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    """The ``init`` command."""
    p = add_command(
        sub, common, "init",
        usage="%(prog)s CONFIG.yaml [--force] [--ra DEG --dec DEG --size ARCMIN --detector N]",
        help="write a commented YAML config template",
        description="Write a commented YAML configuration (with the recommended exclude_flags) to CONFIG.yaml.",
        epilog=f"example:\n  {PROG} init m51.yaml --ra 202.4696 --dec 47.1952 --size 10 --detector 3\n"
               f"  {PROG} run m51.yaml",
    )
    p.add_argument("path", type=Path, metavar="CONFIG.yaml", help="file to write")
    p.add_argument("--force", action="store_true", help="overwrite an existing file (default: refuse)")
    p.add_argument("--ra", type=setting_type("center_ra"), default=DEMO_RA, metavar="DEG",
                   help=f"centre RA written to the template [deg] (default {DEMO_RA})")
    p.add_argument("--dec", type=setting_type("center_dec"), default=DEMO_DEC, metavar="DEG",
                   help=f"centre Dec written to the template [deg] (default {DEMO_DEC})")
    p.add_argument("--size", type=setting_type("width"), default=10.0, metavar="ARCMIN",
                   help="region side written to the template [arcmin] (default 10)")
    p.add_argument("--detector", type=setting_type("detector"), default=3, metavar="N",
                   help="detector written to the template, 0 = all six (default 3)")
    p.set_defaults(func=cmd_init)
