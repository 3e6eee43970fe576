"""`cfdrnn benchmark` from a checkout: the path users run (cold start, end to end per face, the network alone).

The code is in cfdrnn_keras/cli/benchmark.py; `python tools/benchmark.py --help` lists the options.
"""
from _front import run

if __name__ == "__main__":
    run("benchmark")
