"""Files written through a temporary name get the permissions a plain `open(path, "w")` would give them.

Why: `tempfile.mkstemp` creates its file readable by its owner only (0600) and `os.replace` keeps that
mode, so a report, a drawing's JSON or a saved network written atomically would be unreadable to the
group and to others (a web server, a colleague) where a plain `open` would not. A new file gets 0666
less the process umask; a file that is replaced keeps the mode it had, as `open` would keep it.
Standard library only: both the inference side and the training side write this way.
"""
from __future__ import annotations

import os


def current_umask() -> int:
    """The process umask, read without changing it where Linux says it (/proc), else set and restored."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def mode_for(path) -> int:
    """The permission bits `open(path, "w")` would leave: the existing file's, else 0666 less the umask."""
    try:
        return os.stat(path).st_mode & 0o7777
    except OSError:
        return 0o666 & ~current_umask()


def match_plain_open(descriptor: int, path) -> None:
    """Give the temporary file open on `descriptor`, which will replace `path`, the mode `open` would."""
    if hasattr(os, "fchmod"):  # POSIX (Windows has no such modes to set)
        os.fchmod(descriptor, mode_for(path))


__all__ = ["current_umask", "match_plain_open", "mode_for"]
