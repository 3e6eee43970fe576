"""Quiet by default: the native libraries' start-up lines, hidden unless asked for.

Importing TensorFlow prints half a dozen lines from C++ before its own log settings apply (absl's
"All log messages before absl::InitializeLog()", oneDNN, "Could not find cuda drivers", and on the
first op "failed call to cuInit", which looks like an error on every CPU-only machine), and LiteRT
prints "INFO: Created TensorFlow Lite XNNPACK delegate" for every interpreter. None of them can be
turned off by a setting, so while they are written the process's stderr file descriptor points at
/dev/null. Python's own errors are raised after it is restored, so nothing a user needs is lost.

The command-line tools call `quiet_mode()` unless given --verbose (or CFDRNN_VERBOSE=1); the library
leaves the process alone unless the application calls it.
"""
from __future__ import annotations

import contextlib
import os
import sys

_QUIET_ENV = "CFDRNN_QUIET_NATIVE"


def verbose_requested() -> bool:
    return os.environ.get("CFDRNN_VERBOSE", "") not in ("", "0")


def quiet_mode(enabled: bool = True) -> None:
    """Hide native start-up logs from now on in this process (and its children), unless verbose."""
    if not enabled or verbose_requested():
        os.environ.pop(_QUIET_ENV, None)
        return
    os.environ[_QUIET_ENV] = "1"
    # Set, not defaulted: quiet means quiet even where a parent left TF_CPP_MIN_LOG_LEVEL=2, which
    # still lets "failed call to cuInit" through; --verbose is the way to see TensorFlow's lines.
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    os.environ["ABSL_MIN_LOG_LEVEL"] = "3"


def is_quiet() -> bool:
    return os.environ.get(_QUIET_ENV) == "1"


@contextlib.contextmanager
def native_stderr_silenced(enabled: bool | None = None):
    """While inside, file descriptor 2 goes to /dev/null (when quiet mode is on, or enabled=True)."""
    if enabled is None:
        enabled = is_quiet()
    if not enabled:
        yield
        return
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real stderr (an embedded interpreter): nothing to hide
        yield
        return
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            try:
                yield
            finally:
                os.dup2(saved, 2)
    finally:
        os.close(saved)


def import_tensorflow():
    """`import tensorflow` with its start-up lines hidden in quiet mode; returns the module."""
    with native_stderr_silenced():
        import tensorflow as tf
    if is_quiet():
        tf.get_logger().setLevel("ERROR")
        with contextlib.suppress(Exception):
            import absl.logging

            absl.logging.set_verbosity(absl.logging.ERROR)
    return tf


__all__ = ["import_tensorflow", "is_quiet", "native_stderr_silenced", "quiet_mode", "verbose_requested"]
