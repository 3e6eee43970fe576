"""`cfdrnn predict` from a checkout: 68 facial landmarks for every face in photos, folders of photos and videos.

The code is in cfdrnn_keras/cli/predict.py; `python tools/predict.py --help` lists the options.
"""
from _front import run

if __name__ == "__main__":
    run("predict")
