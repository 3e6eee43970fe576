"""Conventions every side of the project shares, in one place (numpy-free, importable anywhere).

Points are 0-based pixel centres; a face box is the tight box of the 68 points (x0, y0, x1, y1); a
crop is that box made square, enlarged CROP_MARGIN times and warped to S×S
(`data_pipelines.geometry.crop_matrix`).
"""
NUM_LANDMARKS = 68
CROP_MARGIN = 1.25
TRAIN_EXTRA_HINT = "pip install 'cfdrnn-keras[train]'"

__all__ = ["CROP_MARGIN", "NUM_LANDMARKS", "TRAIN_EXTRA_HINT"]
