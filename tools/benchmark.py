"""`cfdrnn benchmark` from a checkout: Inference speed per face: Keras fp32 / bf16, SavedModel and each TFLite file, at 1 and 2 threads.

The code is in cfdrnn_keras/cli/benchmark.py; `python tools/benchmark.py --help` lists the options.
"""
from _front import run

if __name__ == "__main__":
    run("benchmark")
