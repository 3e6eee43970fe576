"""Shared by the thin fronts in tools/: run a `cfdrnn` subcommand from a checkout.

Python puts a script's own folder first on sys.path, where `tools/export.py` would shadow the
`export` package: it is taken off, and the checkout put on, so the fronts also run uninstalled.
"""
import sys
from pathlib import Path

TOOLS = Path(__file__).resolve().parent
sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != TOOLS]
if str(TOOLS.parent) not in sys.path:
    sys.path.insert(0, str(TOOLS.parent))


def run(name: str) -> None:
    from cfdrnn_keras.cli import tool_main

    sys.exit(tool_main(name))
