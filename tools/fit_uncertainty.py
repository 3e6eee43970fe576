"""Fit the per-point uncertainty and face-score calibration of a model again (issue 17):

    python tools/fit_uncertainty.py --model fast

The code is in cfdrnn_keras/cli/fit_uncertainty.py; `python tools/fit_uncertainty.py --help` lists the options.
"""
import sys

import _front  # noqa: F401  (puts the checkout on the import path)

if __name__ == "__main__":
    from cfdrnn_keras.cli.fit_uncertainty import main

    sys.exit(main())
