"""`cfdrnn`: one command with the project's tools as subcommands.

    cfdrnn predict photo.jpg --json out.json --draw out/
    cfdrnn evaluate --data ../300W --json eval.json
    cfdrnn train --data ../shared/data/300w --preset lite --out runs/lite
    cfdrnn export --out exported
    cfdrnn benchmark

A subcommand's module is imported only when it runs (pip's command registry does the same), so
`cfdrnn --help` and `cfdrnn SUB --help` answer at once, before TensorFlow could load. What each
needs beyond the plain install is checked first, by looking for the packages without importing
them, so a missing extra costs one line and no traceback. `tools/*.py` are thin fronts over the same
modules.
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
from dataclasses import dataclass

from .. import __version__
from ..conventions import TRAIN_EXTRA_HINT


@dataclass(frozen=True)
class Command:
    module: str
    summary: str
    needs: tuple = ()  # top-level modules that must be importable (the [train] extra's)
    needs_tensorflow: bool = False  # imported up front, quietly, so its start-up lines stay hidden


COMMANDS = {
    "predict": Command("predict", "landmarks on photos, folders and videos (JSON, drawings)"),
    "evaluate": Command("evaluate", "the 300-W protocol: NME, AUC, failure rate, CED plots", needs=("scipy",)),
    "train": Command("train", "train a CFDRNN network (resumable run folders)",
                     needs=("tensorflow", "keras"), needs_tensorflow=True),
    "export": Command("export", "SavedModel and TFLite files of a .keras model, checked against it",
                      needs=("tensorflow", "keras"), needs_tensorflow=True),
    "benchmark": Command("benchmark", "time the default path: cold start, end to end, the network alone"),
}


def missing_requirements(command: Command) -> list[str]:
    return [name for name in command.needs if importlib.util.find_spec(name) is None]


def requirement_message(name: str, missing: list[str]) -> str:
    what = "TensorFlow" if "tensorflow" in missing else ", ".join(missing)
    return f"cfdrnn {name}: needs {what}: {TRAIN_EXTRA_HINT}"


def usage() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = ["usage: cfdrnn [--version] [--verbose] COMMAND [options]", "",
             "68-point facial landmarks with the CFDRNN network (Mahpod et al.).", "", "commands:"]
    lines += [f"  {name:<{width}}  {command.summary}" for name, command in COMMANDS.items()]
    lines += ["", "options:",
              "  --version  print the version and exit",
              "  --verbose  show TensorFlow's and LiteRT's own log lines (hidden by default; or CFDRNN_VERBOSE=1)",
              "", "`cfdrnn COMMAND --help` describes each command's options."]
    return "\n".join(lines)


def run_command(name: str, argv: list[str], verbose: bool = False) -> int:
    """Run one subcommand's `main(argv)` with its program name set, quiet unless verbose (the global
    flag, or the subcommand's own --verbose; train's --verbose is Keras's progress level instead)."""
    from .. import quiet

    command = COMMANDS[name]
    verbose = verbose or (name != "train" and "--verbose" in argv)
    help_only = any(arg in ("-h", "--help") for arg in argv)
    missing = missing_requirements(command)
    if missing and not help_only:
        print(requirement_message(name, missing), file=sys.stderr)
        return 2
    quiet.quiet_mode(not verbose)
    # The module first: it may set environment TensorFlow reads at import (train turns oneDNN on).
    module = importlib.import_module(f"{__name__}.{command.module}")
    if command.needs_tensorflow and not help_only:
        quiet.import_tensorflow()
    saved = sys.argv[0]
    sys.argv[0] = f"cfdrnn {name}"  # argparse's prog
    try:
        return int(module.main(argv) or 0)
    finally:
        sys.argv[0] = saved


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    verbose = False
    while argv and argv[0].startswith("-"):
        option = argv.pop(0)
        if option in ("-h", "--help"):
            print(usage())
            return 0
        if option == "--version":
            print(f"cfdrnn {__version__}")
            return 0
        if option == "--verbose":
            verbose = True
            continue
        print(f"cfdrnn: unknown option {option}\n\n{usage()}", file=sys.stderr)
        return 2
    if not argv:
        print(usage(), file=sys.stderr)
        return 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"cfdrnn: unknown command {name!r}; commands: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    return run_command(name, rest, verbose=verbose)


def tool_main(name: str) -> int:
    """What `tools/NAME.py` runs: `cfdrnn NAME` with the same arguments."""
    return run_command(name, sys.argv[1:])


__all__ = ["COMMANDS", "Command", "main", "run_command", "tool_main"]
