"""One-line error messages, shared by every side (no imports beyond the standard library).

The project's rule for bad input is one line that names the file and the problem, never a
traceback; these are the pieces every reader, loader and command builds those lines from.
"""
from __future__ import annotations

import errno
import json
from pathlib import Path

_OS_ERROR_WORDS = {
    errno.ENOSPC: "no space left on device", errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied", errno.EPERM: "operation not permitted",
    errno.ENOTDIR: "a part of the path is a file, not a folder", errno.EDQUOT: "disk quota exceeded",
    errno.EFBIG: "file too large", errno.EIO: "input/output error",
}


def one_line(error: BaseException) -> str:
    """The first line of an exception's message (its type's name when it has none)."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def describe_os_error(error: OSError) -> str:
    """A few words for an OSError: "no space left on device", "read-only file system", ..."""
    return _OS_ERROR_WORDS.get(getattr(error, "errno", None)) or (error.strerror or one_line(error)).splitlines()[0]


def read_json_object(path, what: str = "", error_type: type[Exception] = ValueError) -> dict:
    """A JSON file that must hold an object, as a dict; `error_type` with one line naming the file
    (and `what` it is, e.g. "split") where it cannot be read, is not JSON or is not an object."""
    the, corrupt = (f" the {what}", f"corrupt {what}") if what else ("", "corrupt")
    try:
        value = json.loads(Path(path).read_bytes().decode("utf-8"))
    except OSError as error:
        raise error_type(f"{path}: cannot read{the}: {describe_os_error(error)}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise error_type(f"{path}: {corrupt}: not valid JSON ({error})") from None
    if not isinstance(value, dict):
        raise error_type(f"{path}: {corrupt}: expected a JSON object, found {type(value).__name__}")
    return value


__all__ = ["describe_os_error", "one_line", "read_json_object"]
