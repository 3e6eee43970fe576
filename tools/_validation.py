"""What the measuring tools share: the held-out validation faces of a run's split, cut at the model's
input size, and the inter-ocular NME of predictions on those crops."""
from __future__ import annotations


def add_split_arguments(parser) -> None:
    parser.add_argument("--model", default=None, help="a packaged model's name or a model path (default: the default)")
    parser.add_argument("--data", default=None, help="the training faces' folder (default: ../shared/data/300w)")
    parser.add_argument("--seed", type=int, default=0, help="the split's seed (default: 0)")
    parser.add_argument("--val-fraction", type=float, default=0.1, help="the split's fraction (default: 0.1)")


def validation_crops(args):
    """(detector, faces, crops, truth, scales, iods): `LandmarkDetector(args.model)` (crops only: no face
    detector) and the validation faces of the seed's split as uint8 crops with their points in crop pixels."""
    from cfdrnn_keras.cli.fit_uncertainty import face_crops, validation_faces
    from cfdrnn_keras.cli.train import default_data_dir
    from cfdrnn_keras.runtime.landmarker import LandmarkDetector

    args.data, args.held_out = args.data or default_data_dir(), None
    faces, _ = validation_faces(args)
    detector = LandmarkDetector(model=args.model, detector=lambda image: [])
    crops, truth, scales, iods = face_crops(faces, detector.input_size)
    return detector, faces, crops, truth, scales, iods


def crop_nme(prediction, truth, scales, iods, size: int, points=slice(None)) -> float:
    """Mean inter-ocular NME in % of `prediction.landmarks` (normalised crop coordinates) over `points`."""
    import numpy as np

    errors = np.linalg.norm(np.asarray(prediction.landmarks) * size - truth, axis=-1)[:, points]
    return 100 * float((errors.mean(1) / scales / iods).mean())
