"""What kind of thing a path is, found without opening it: a regular file, or a directory,
a FIFO, a device, a socket, a dangling link. Opening a FIFO blocks and reading ``/dev/zero``
never ends, so every untrusted path (mirror files, configuration files) is looked at first."""

from __future__ import annotations

import os
import stat
from pathlib import Path

_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def not_a_regular_file(path: Path) -> str | None:
    """Why ``path`` cannot be read as a file (missing, a directory, a FIFO, a device, a
    socket; through a symbolic link it says where the link points), or None for a regular
    file. Never opens the path, so a FIFO or ``/dev/zero`` is never read."""
    path = Path(path)
    link = ""
    if path.is_symlink():
        try:
            link = f" (a symbolic link to {os.readlink(path)})"
        except OSError:
            link = " (a symbolic link)"
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return f"does not exist{link}"
    except OSError as exc:
        return f"cannot be examined{link}: {exc.strerror or exc}"
    if stat.S_ISREG(mode):
        return None
    for test, what in _KINDS:
        if test(mode):
            return f"is {what}{link}, not a file"
    return f"is not a regular file{link}"
