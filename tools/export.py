"""`cfdrnn export` from a checkout: Export a CFDRNN model for serving and devices: SavedModel (TF Serving) and TFLite files.

The code is in cfdrnn_keras/cli/export.py; `python tools/export.py --help` lists the options.
"""
from _front import run

if __name__ == "__main__":
    run("export")
