"""`cfdrnn train` from a checkout: train a CFDRNN landmark network (resumable run folders; docs/TRAINING.md).

The code is in cfdrnn_keras/cli/train.py; `python tools/train.py --help` lists the options.
"""
from _front import run

if __name__ == "__main__":
    run("train")
