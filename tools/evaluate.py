"""`cfdrnn evaluate` from a checkout: the 300-W protocol (NME, AUC_0.08, failure rate, CED plots).

The code is in cfdrnn_keras/cli/evaluate.py; `python tools/evaluate.py --help` lists the options.
"""
from _front import run

if __name__ == "__main__":
    run("evaluate")
