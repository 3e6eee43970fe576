"""Read and write 300-W / iBUG `.pts` landmark files.

On disk the coordinates are 1-based (the markup was made in MATLAB); in memory they are 0-based
pixel centres, so `read_pts` subtracts 1 and `write_pts` adds it back. A malformed file raises
`PtsFormatError`, whose one-line message names the file and the line, because a silent bad
annotation poisons training far more than a skipped face.

Format (the one every 300-W file uses)::

    version: 1
    n_points: 68
    {
    x y
    ...
    }
"""
from __future__ import annotations

import math
import os
import re
from pathlib import Path

import numpy as np

_HEADER_RE = re.compile(r"^\s*([A-Za-z_]+)\s*:\s*(\S+)\s*$")


class PtsFormatError(ValueError):
    """A .pts file that cannot be read; the message names the file and (where known) the line."""

    def __init__(self, path, problem: str, line: int | None = None):
        self.path = str(path)
        self.problem = problem
        self.line = line
        where = f"{self.path}:{line}" if line is not None else self.path
        super().__init__(f"{where}: {problem}")


def read_pts(path) -> np.ndarray:
    """Points of a .pts file as an (N, 2) float32 array of 0-based (x, y) pixel centres.

    The header needs `n_points` (other `key: value` lines such as `version` are accepted and
    ignored); then `{`, exactly N lines of two finite numbers, and `}`. Blank lines are allowed
    anywhere; nothing but blank lines may follow the closing brace.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise PtsFormatError(path, "file not found") from None
    except IsADirectoryError:
        raise PtsFormatError(path, "is a directory, not a .pts file") from None
    except OSError as error:
        raise PtsFormatError(path, f"cannot read: {error.strerror or error}") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise PtsFormatError(path, "not a text file (not UTF-8/ASCII)") from None
    lines = text.splitlines()
    if not any(line.strip() for line in lines):
        raise PtsFormatError(path, "empty file")

    count = None
    index = 0
    # Header: `key: value` lines up to the opening brace.
    while index < len(lines):
        line = lines[index].strip()
        index += 1
        if not line:
            continue
        if line == "{":
            break
        match = _HEADER_RE.match(line)
        if not match:
            raise PtsFormatError(path, f"expected a 'key: value' header line or '{{', got {line[:40]!r}", index)
        if match.group(1).lower() == "n_points":
            try:
                count = int(match.group(2))
            except ValueError:
                raise PtsFormatError(path, f"n_points is not an integer: {match.group(2)!r}", index) from None
            if count <= 0:
                raise PtsFormatError(path, f"n_points must be positive, got {count}", index)
    else:
        raise PtsFormatError(path, "no '{' opening the point list", len(lines))
    if count is None:
        raise PtsFormatError(path, "header has no n_points line", index)

    points = []
    closed = False
    while index < len(lines):
        line = lines[index].strip()
        index += 1
        if not line:
            continue
        if line == "}":
            closed = True
            break
        fields = line.split()
        if len(fields) != 2:
            raise PtsFormatError(path, f"expected two numbers 'x y', got {line[:40]!r}", index)
        try:
            x, y = float(fields[0]), float(fields[1])
        except ValueError:
            raise PtsFormatError(path, f"not a number in {line[:40]!r}", index) from None
        if not (math.isfinite(x) and math.isfinite(y)):
            raise PtsFormatError(path, f"non-finite coordinate in {line[:40]!r}", index)
        if len(points) == count:
            raise PtsFormatError(path, f"more than n_points = {count} points (missing '}}'?)", index)
        points.append((x, y))
    if not closed:
        raise PtsFormatError(path, "no '}' closing the point list", len(lines))
    if len(points) != count:
        raise PtsFormatError(path, f"n_points says {count} but the list has {len(points)} points", index)
    for rest in range(index, len(lines)):
        if lines[rest].strip():
            raise PtsFormatError(path, f"unexpected text after '}}': {lines[rest].strip()[:40]!r}", rest + 1)
    return (np.asarray(points, dtype=np.float64) - 1.0).astype(np.float32)


def write_pts(path, points) -> None:
    """Write (N, 2) 0-based points as a standard 1-based .pts file (atomically: temp file + rename)."""
    points = np.asarray(points, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != 2 or len(points) == 0:
        raise ValueError(f"{path}: points must have shape (N, 2) with N > 0, got {points.shape}")
    if not np.all(np.isfinite(points)):
        raise ValueError(f"{path}: points contain NaN or infinity")
    body = "".join(f"{x + 1.0:.3f} {y + 1.0:.3f}\n" for x, y in points)
    text = f"version: 1\nn_points: {len(points)}\n{{\n{body}}}\n"
    path = Path(path)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(text, encoding="ascii")
    os.replace(temporary, path)
