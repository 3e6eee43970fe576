"""Every format's speed (Keras fp32/bf16, SavedModel, each TFLite file) at 1 and 2 threads: a
developer's comparison; `cfdrnn benchmark` (tools/benchmark.py) times the path users run.

The code is in cfdrnn_keras/cli/benchmark_formats.py; `--help` lists the options. Needs the [train] extra.
"""
import sys

import _front  # noqa: F401  (puts the checkout, not tools/, on the import path)

if __name__ == "__main__":
    from cfdrnn_keras import quiet
    from cfdrnn_keras.cli import benchmark_formats

    quiet.quiet_mode()
    sys.exit(benchmark_formats.main(sys.argv[1:]))
