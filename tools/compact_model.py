"""Store a `.keras` file's kernels as float16, half its size (how the packaged networks ship):

    python tools/compact_model.py runs/a/best.keras --out cfdrnn_keras/assets/cfdrnn_a.keras

The code is in cfdrnn_keras/cli/compact.py; `python tools/compact_model.py --help` lists the options.
"""
import sys

import _front  # noqa: F401  (puts the checkout on the import path)

if __name__ == "__main__":
    from cfdrnn_keras.cli.compact import main

    sys.exit(main())
