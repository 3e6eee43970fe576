"""Fit (again) the per-point uncertainty and face-score calibration of a model (issue 17).

    python tools/fit_uncertainty.py --model fast                  # the packaged model
    python tools/fit_uncertainty.py --model accurate              # whichever is packaged next
    python tools/fit_uncertainty.py --model runs/x/best.keras --held-out runs/x/split.json

Writes NAME.uncertainty.json beside the .keras file (or --out), which `build_test_time_model` reads
(through KerasBackend, tools/export.py, evaluate and predict), so every export made afterwards
outputs `uncertainty` and `face_score`. Re-export the LiteRT file afterwards (docs/MODEL_CARD.md).

Validation faces: the model's held-out faces — by default the split tools/train.py makes (split
`train` of --data, --seed 0, --val-fraction 0.1: the first round(10 %) of the faces shuffled by
random.Random(seed + 1)), or a run's split.json (--held-out). Per ensemble (flip test on/off × four
stages/last) the features are computed once, the calibration is measured cross-fitted (2 folds over
the faces: fit on one half, measure on the other) and then fitted on all of them.

Fusion (cfdrnn_keras/model/fusion.py; --no-fusion to skip): per ensemble, per-point weights over
the (network, stage) estimates and per-point offsets, fitted on the TRAINING faces (the split's other
90 %, which the networks learned from), never on the validation faces; the uncertainty is then fitted
for the fused landmarks. Stored in each ensemble's entry as "fusion".

Face score: logistic regression on crops of --face-score-faces 300-W training photos (never the
validation faces nor the sample photos): each face crop against up to 3 boxes with no overlap with
the face (small boxes on the background, face-sized boxes shifted off the face).

--confirm DIR (default ../shared/data/samples when present) measures the result on photos that took
no part in the fit: their annotated faces, and face-sized boxes off every face.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import numpy as np

ENSEMBLE_KEYS = ("flip+all", "flip+last", "noflip+all", "noflip+last")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="fast", help="a packaged model's name or a .keras file (default: fast)")
    parser.add_argument("--data", default=None,
                        help="the 300-W training folder (default: ../shared/data/300w or $CFDRNN_DATA/300w)")
    parser.add_argument("--held-out", default=None, metavar="SPLIT.json",
                        help="the validation faces of a training run (its split.json) instead of the seed-0 split")
    parser.add_argument("--seed", type=int, default=0, help="the training split's seed (default: 0)")
    parser.add_argument("--val-fraction", type=float, default=0.1, help="the training split's fraction (default: 0.1)")
    parser.add_argument("--ensembles", default=",".join(ENSEMBLE_KEYS),
                        help=f"which ensembles to fit (default: all: {','.join(ENSEMBLE_KEYS)})")
    parser.add_argument("--face-score-faces", type=int, default=150,
                        help="300-W training photos for the face-score fit (default: 150)")
    parser.add_argument("--confirm", default=None, metavar="DIR",
                        help="annotated photos to confirm on (default: ../shared/data/samples if present; 'none' to skip)")
    parser.add_argument("--out", default=None, help="where to write the JSON (default: beside the .keras file)")
    parser.add_argument("--fusion", action=argparse.BooleanOptionalAction, default=True,
                        help="also fit how the ensemble's estimates are fused (per-point weights over networks "
                             "and stages, and per-point offsets) on the training faces (default: on; "
                             "cfdrnn_keras/model/fusion.py)")
    parser.add_argument("--batch-size", type=int, default=16)
    return parser.parse_args(argv)


def validation_faces(args):
    """The held-out faces, as cli/train.py's select_faces makes them (or as a split.json lists them)."""
    from data_pipelines.discovery import find_faces, load_split

    if args.held_out:
        split = json.loads(Path(args.held_out).read_text())
        return find_faces(split["validation"], check=False), None
    faces = list(load_split("train", [args.data]).faces)
    count = max(1, int(round(len(faces) * args.val_fraction)))
    order = list(range(len(faces)))
    random.Random(args.seed + 1).shuffle(order)
    held = set(order[:count])
    return [f for i, f in enumerate(faces) if i in held], [f for i, f in enumerate(faces) if i not in held]


def face_crops(faces, size: int):
    """(crops uint8, ground truth crop px, crop scales, inter-ocular px) for annotated faces (gt box)."""
    from data_pipelines import geometry
    from data_pipelines.images import read_image
    from data_pipelines.pts import read_pts

    crops, truth, scales, iods = [], [], [], []
    for face in faces:
        image, points = read_image(face.image_path), read_pts(face.pts_path)
        matrix = geometry.crop_matrix(geometry.face_box_from_points(points), size, 1.25)
        crops.append(geometry.warp_to_crop(image, matrix, size))
        truth.append(geometry.transform_points(matrix, points))
        scales.append(matrix[0, 0])
        iods.append(np.linalg.norm(points[36] - points[45]))
    return np.stack(crops), np.stack(truth), np.array(scales), np.array(iods)


def _disjoint(a, b) -> bool:
    return min(a[2], b[2]) <= max(a[0], b[0]) or min(a[3], b[3]) <= max(a[1], b[1])


def off_face_crops(faces, size: int, count: int, seed: int = 0):
    """(face crops, off-face crops) from `count` photos: for each, its face and ≤ 3 boxes of IoU 0
    with it — small ones (0.3–0.6 × the face) inside the photo, face-sized ones shifted 1.05–1.6 face
    sides away (their centre in the photo; what falls outside is black, as in the runtime)."""
    from data_pipelines import geometry
    from data_pipelines.images import read_image
    from data_pipelines.pts import read_pts

    rng = np.random.default_rng(seed)
    picks = rng.choice(len(faces), min(count, len(faces)), replace=False)
    positive, negative = [], []
    for index in picks:
        image, points = read_image(faces[index].image_path), read_pts(faces[index].pts_path)
        box = np.array(geometry.face_box_from_points(points))
        side = max(box[2] - box[0], box[3] - box[1])
        positive.append(geometry.warp_to_crop(image, geometry.crop_matrix(box, size, 1.25), size))
        height, width = image.shape[:2]
        found = 0
        for attempt in range(60):
            if found >= 3:
                break
            if attempt % 2 == 0:
                s = rng.uniform(0.3, 0.6) * side
                x0, y0 = rng.uniform(0, max(1, width - s)), rng.uniform(0, max(1, height - s))
                other = np.array([x0, y0, x0 + s, y0 + s])
            else:
                angle, distance = rng.uniform(0, 2 * np.pi), rng.uniform(1.05, 1.6) * side
                shift = np.array([np.cos(angle), np.sin(angle)]) * distance
                other = box + np.r_[shift, shift]
                centre = (other[:2] + other[2:]) / 2
                if not (0 <= centre[0] < width and 0 <= centre[1] < height):
                    continue
            if not _disjoint(other, box):
                continue
            negative.append(geometry.warp_to_crop(image, geometry.crop_matrix(other, size, 1.25), size))
            found += 1
    return np.stack(positive), np.stack(negative)


def sample_photos(root, size: int, avoid_detected: bool = True):
    """Faces of annotated photos (gt boxes) and face-sized boxes with IoU 0 with every annotated face,
    on a grid of 0.9 face-side steps, inside the photo — and, with `avoid_detected`, with IoU 0 with
    every face the package's face detector finds too (a photo may hold faces nobody annotated:
    breakingbad.jpg has a second one)."""
    from data_pipelines import geometry
    from data_pipelines.discovery import find_faces
    from data_pipelines.images import read_image
    from data_pipelines.pts import read_pts

    faces = find_faces(root, check=False)
    by_image = {}
    for face in faces:
        by_image.setdefault(face.image_path, []).append(face)
    off = []
    for path, group in by_image.items():
        image = read_image(path)
        boxes = [geometry.face_box_from_points(read_pts(face.pts_path)) for face in group]
        avoid = list(boxes)
        if avoid_detected:
            from ..runtime.face_detector import default_detector

            avoid += [tuple(b[:4]) for b in default_detector().detect(image)]
        height, width = image.shape[:2]
        for box in boxes:
            side = max(box[2] - box[0], box[3] - box[1])
            for dx in range(-2, 3):
                for dy in range(-2, 3):
                    if (dx, dy) == (0, 0):
                        continue
                    other = np.array(box) + np.r_[dx, dy, dx, dy] * side * 0.9
                    if other[0] < 0 or other[1] < 0 or other[2] > width or other[3] > height:
                        continue
                    if all(_disjoint(other, b) for b in avoid):
                        off.append(geometry.warp_to_crop(image, geometry.crop_matrix(other, size, 1.25), size))
    return faces, (np.stack(off) if off else np.zeros((0, size, size, 3), np.uint8))


def run_features(model, crops, batch_size: int, keys=("landmarks", "uncertainty_features", "face_features")):
    """The model's outputs `keys` for uint8 crops, batch by batch, as float64 arrays."""
    out = {key: [] for key in keys}
    for start in range(0, len(crops), batch_size):
        batch = crops[start:start + batch_size].astype(np.float32) / 255.0 - 0.5
        result = model.predict_on_batch(batch)
        for key in out:
            out[key].append(np.asarray(result[key], np.float64))
    return {key: np.concatenate(value) for key, value in out.items()}


def fit_fusions(network, crops, truth, keys, batch_size: int) -> dict:
    """{ensemble key: fusion entry} for `keys`, fitted on the training faces' crops (`truth` in crop
    pixels), with each entry's 5-fold cross-validated NME against the plain mean. One pass per
    flip setting: the last-stage ensembles' estimates are a subset of the four-stage ones."""
    from ..ensemble_options import EnsembleOptions
    from ..metrics import nme
    from ..model import fusion as fusions
    from ..model.ensemble import build_test_time_model, stage_keys
    from data_pipelines.geometry import MIRROR_PERMUTATION_68

    size = int(network.inputs[0].shape[1])
    target = truth / size
    permutation = MIRROR_PERMUTATION_68 if truth.shape[1] == len(MIRROR_PERMUTATION_68) else None
    entries = {}
    for flip in sorted({key.startswith("flip+") for key in keys}, reverse=True):
        options = EnsembleOptions(flip=flip, stages="all")
        model = build_test_time_model(network, options, fusion="features")
        estimates = run_features(model, crops, batch_size, keys=("estimates",))["estimates"]  # (B, K, N, 2)
        estimates = estimates.transpose(1, 0, 2, 3)
        every = stage_keys(network, options)
        for key in keys:
            if key.startswith("flip+") != flip:
                continue
            stages = key.split("+")[1]
            used = stage_keys(network, EnsembleOptions(flip=flip, stages=stages))
            rows = estimates[[every.index(pair) for pair in used]]
            weights, offsets = fusions.fit_fusion(rows, target, permutation)
            entry = fusions.fusion_entry(weights, offsets, used, subpixel=options.subpixel)
            held = fusions.cross_validated(rows, target, permutation=permutation)
            entry["training_faces"] = len(crops)
            entry["cross_validated_nme_io_percent"] = {
                "mean": round(100 * float(nme(rows.mean(0), target).mean()), 4),
                "fused": round(100 * float(nme(held, target).mean()), 4)}
            entries[key] = entry
    return entries


def measure(u_crop, landmarks_px, truth, scales, iods) -> dict:
    from ..uncertainty_metrics import uncertainty_summary

    error_crop = np.linalg.norm(landmarks_px - truth, axis=-1)
    return uncertainty_summary(u_crop / scales[:, None], error_crop / scales[:, None], iods, uncertainty_crop=u_crop)


def main(argv=None) -> int:
    args = parse_args(argv)
    from export import default_calibration_root

    args.data = args.data or default_calibration_root()
    from ..runtime.packaged import network_files

    for path in network_files(args.model):
        if not path.is_file() or path.suffix.lower() != ".keras":
            print(f"fit_uncertainty: {path}: not a .keras file", file=sys.stderr)
            return 2
    if not args.data or not Path(args.data).is_dir():
        print("fit_uncertainty: no 300-W training folder (pass --data DIR)", file=sys.stderr)
        return 2
    keys = [key.strip() for key in args.ensembles.split(",") if key.strip()]
    if not keys or set(keys) - set(ENSEMBLE_KEYS):
        print(f"fit_uncertainty: --ensembles must be some of {','.join(ENSEMBLE_KEYS)}", file=sys.stderr)
        return 2
    confirm = args.confirm
    if confirm is None:
        default = Path(args.data).parent / "samples"
        confirm = str(default) if default.is_dir() else "none"

    from ..quiet import native_stderr_silenced

    with native_stderr_silenced():  # Keras imports TensorFlow, which prints its start-up lines
        from ..model import loading  # registers the layers
    from ..ensemble_options import EnsembleOptions
    from ..model import uncertainty as unc
    from ..model.ensemble import build_test_time_model, stage_count
    from ..runtime import packaged

    started = time.time()
    source = packaged.packaged_name(args.model) or args.model  # a packaged model's networks averaged, or the file
    network = loading.load_network(source)
    size = int(network.inputs[0].shape[1])
    validation, training = validation_faces(args)
    crops, truth, scales, iods = face_crops(validation, size)
    print(f"{len(validation)} validation faces; crops of {size} px", file=sys.stderr)
    if training is None:
        from data_pipelines.discovery import load_split

        names = {face.pts_path for face in validation}
        training = [f for f in load_split("train", [args.data]).faces if f.pts_path not in names]
    positive, negative = off_face_crops(training, size, args.face_score_faces)
    print(f"face score: {len(positive)} face crops, {len(negative)} off-face crops (300-W training photos)",
          file=sys.stderr)
    samples = None
    if confirm != "none":
        sample_faces, sample_off = sample_photos(confirm, size)
        samples = (face_crops(sample_faces, size), sample_off)

    fusions = {}
    if args.fusion and stage_count(network):
        train_crops, train_truth, _, _ = face_crops(training, size)
        print(f"fusion: fitting on {len(training)} training faces", file=sys.stderr)
        fusions = fit_fusions(network, train_crops, train_truth, keys, args.batch_size)
        for key, fused in fusions.items():
            cv = fused["cross_validated_nme_io_percent"]
            print(f"{key:12s} fusion, training faces, 5-fold cross-validated NME: mean {cv['mean']:.3f} % → "
                  f"fused {cv['fused']:.3f} %")
    folds = np.array_split(np.random.default_rng(0).permutation(len(crops)), 2)
    result = {"format": unc.FORMAT, "model": Path(loading.describe(source)).name,
              "model_sha256": loading.network_sha256(source),
              "fitted": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
              "method": "log u_k = a_k + b1 log p_k + b2 mean_j log p_j (p: heat-map peak); exponential "
                        "likelihood (IRLS); face_score = sigmoid(w . [mean log p, mean log mirror gap] + c)",
              "units": "uncertainty: crop pixels in the graph, photo pixels in FaceLandmarks",
              "validation_faces": len(validation), "ensembles": {}}
    for key in keys:
        options = EnsembleOptions(flip=key.startswith("flip+"), stages=key.split("+")[1])
        model = build_test_time_model(network, options, uncertainty="features", fusion=fusions.get(key))
        out = run_features(model, crops, args.batch_size)
        landmarks = out["landmarks"] * size
        errors = np.linalg.norm(landmarks - truth, axis=-1)
        features = out["uncertainty_features"]
        cross = np.zeros(errors.shape)
        for i in range(2):
            a, b = unc.fit_point_calibration(features[folds[1 - i]], errors[folds[1 - i]])
            cross[folds[i]] = unc.predict_point(a, b, features[folds[i]])
        intercepts, slopes = unc.fit_point_calibration(features, errors)
        fitted = unc.predict_point(intercepts, slopes, features)
        face_pos = run_features(model, positive, args.batch_size)["face_features"]
        face_neg = run_features(model, negative, args.batch_size)["face_features"]
        weights, bias = unc.fit_face_score(np.r_[face_pos, face_neg], np.r_[np.ones(len(face_pos)), np.zeros(len(face_neg))])
        fit_scores = unc.face_score_numpy(weights, bias, np.r_[face_pos, face_neg])
        labels = np.r_[np.ones(len(face_pos), bool), np.zeros(len(face_neg), bool)]
        entry = {
            "ensemble": options.to_dict(), "point_features": list(unc.POINT_FEATURES),
            "face_features": list(unc.FACE_FEATURES_FLIP if options.flip else unc.FACE_FEATURES_NO_FLIP),
            "intercepts": [round(float(v), 6) for v in intercepts], "slopes": [round(float(v), 6) for v in slopes],
            "face_weights": [round(float(v), 6) for v in weights], "face_bias": round(float(bias), 6),
            "validation": {"nme_io_percent": float(100 * (errors / scales[:, None] / iods[:, None]).mean()),
                           "cross_fitted": measure(cross, landmarks, truth, scales, iods),
                           "fitted_on_all": measure(fitted, landmarks, truth, scales, iods)},
            "face_score_fit": {"faces": len(face_pos), "off_face": len(face_neg),
                               "auroc": unc.auroc(fit_scores, labels)},
        }
        if key in fusions:
            entry["fusion"] = fusions[key]
        if samples is not None:
            (s_crops, s_truth, s_scales, s_iods), s_off = samples
            s_out = run_features(model, s_crops, args.batch_size)
            s_u = unc.predict_point(intercepts, slopes, s_out["uncertainty_features"])
            s_face = unc.face_score_numpy(weights, bias, s_out["face_features"])
            s_offs = unc.face_score_numpy(weights, bias, run_features(model, s_off, args.batch_size)["face_features"])
            entry["confirmation"] = {
                "photos": str(confirm), "faces": len(s_crops), "off_face_boxes": len(s_off),
                **measure(s_u, s_out["landmarks"] * size, s_truth, s_scales, s_iods),
                "face_score_auroc": unc.auroc(np.r_[s_face, s_offs], np.r_[np.ones(len(s_face), bool), np.zeros(len(s_offs), bool)]),
                "face_score_faces_min": float(s_face.min()), "face_score_off_max": float(s_offs.max()) if len(s_offs) else None,
            }
        result["ensembles"][key] = entry
        c = entry["validation"]["cross_fitted"]
        line = (f"{key:12s} NME {entry['validation']['nme_io_percent']:.2f} %  cross-fitted: Spearman {c['spearman']:.3f} "
                f"AUROC {c['auroc_off_008']:.3f} fifths " + " ".join(f"{r:.2f}" for r in c["fifth_ratios"]))
        if samples is not None:
            k = entry["confirmation"]
            line += (f" | samples: Spearman {k['spearman']:.3f} AUROC {k['auroc_off_008']:.3f} fifths "
                     + " ".join(f"{r:.2f}" for r in k["fifth_ratios"]) + f" face_score AUROC {k['face_score_auroc']:.4f}")
        print(line)
    out_path = Path(args.out) if args.out else loading.calibration_file(source)
    if out_path.is_file() and args.ensembles != ",".join(ENSEMBLE_KEYS):  # keep the other ensembles' entries
        previous = json.loads(out_path.read_text())
        if previous.get("model_sha256") == result["model_sha256"]:
            result["ensembles"] = {**previous.get("ensembles", {}), **result["ensembles"]}
    out_path.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out_path} ({time.time() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
