"""Everything between annotated photos on disk and the tensors `model.fit` consumes.

Modules, in the order data flows (docs/DATA.md explains the design and its figures):

- `pts`: 300-W `.pts` files (1-based on disk, 0-based in memory).
- `images`: any photo → H×W×3 uint8 RGB, with one-line errors.
- `discovery`: faces under one or more folders; 300-W parts and splits.
- `geometry`: crop matrices (photo ↔ 256² crop), warps, the mirror permutation.
- `augment`: random affine + colour augmentation in the tf.data graph (and a numpy twin).
- `dataset`: `make_dataset` (tf.data), `load_examples` (numpy), `make_pydataset` (keras PyDataset).
- `tfrecords`: sharded TFRecords of crops, and a reader with `make_dataset`'s stream.

Only `augment`, `dataset` and `tfrecords` use TensorFlow (imported inside the functions that need
it); the readers and the geometry need numpy and OpenCV alone.
"""
from .discovery import SPLITS, Face, find_faces, load_split, subset_of
from .geometry import crop_matrix, face_box_from_points, invert, transform_points, warp_to_crop
from .images import ImageReadError, read_image
from .pts import PtsFormatError, read_pts, write_pts

__all__ = [
    "SPLITS",
    "Face",
    "ImageReadError",
    "PtsFormatError",
    "crop_matrix",
    "face_box_from_points",
    "find_faces",
    "invert",
    "load_split",
    "read_image",
    "read_pts",
    "subset_of",
    "transform_points",
    "warp_to_crop",
    "write_pts",
]
