"""Average trained CFDRNN networks into one `.keras` graph (issue 14's `accurate`):

    python tools/average_networks.py runs/a/best.keras runs/b/best.keras --out runs/average.keras

The code is in cfdrnn_keras/cli/average.py; `python tools/average_networks.py --help` lists the options.
"""
import sys

import _front  # noqa: F401  (puts the checkout on the import path)

if __name__ == "__main__":
    from cfdrnn_keras.cli.average import main

    sys.exit(main())
