"""Run a landmark model over annotated faces and score it on the 300-W protocol (DESIGN.md section 3).

Each face is read once, cropped (256x256, the box made square and enlarged 1.25x, as in training),
the crops go through the model in batches, and the predictions are mapped back to the ORIGINAL
photo's pixel coordinates (0-based pixel centres) with the inverse crop matrix. Errors are measured
there, against the .pts annotation, so no crop choice can flatter the numbers.

Boxes (`box=`):
* ``"gt"``: the tight box of the 68 annotated points (what HRNet and PIPNet evaluate with).
* ``"detect"``: the package's face detector on the whole photo; the detection that overlaps the
  annotated box most is used. A face with no detection of IoU > 0.3 with its annotated box is
  *missed*: it gets no prediction and the error ``MISSED_FACE_ERROR`` (1.0, i.e. 100 % of the eye
  distance) in both normalisations, so it counts as a failure in CED, AUC and FR and raises the mean.

Models: a Keras model (CFDRNN dict outputs or a single landmarks output, input in [-0.5, 0.5]); an
object with ``predict_crops`` (a ``LandmarkDetector`` or an ``inference`` backend for a .keras file, a
SavedModel folder or a .tflite file); or any callable ``predict(uint8 crops (B, S, S, 3)) ->
normalised landmarks (B, 68, 2)`` (or a dict with ``"landmarks"``). All are scored the same way.
"""
from __future__ import annotations

import contextlib
import io
import sys
import tempfile
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from data_pipelines.discovery import Face, find_faces, subset_of
from data_pipelines.geometry import crop_matrix, face_box_from_points, invert, transform_points, warp_to_crop
from data_pipelines.images import ImageReadError, read_image
from data_pipelines.pts import PtsFormatError, read_pts

from . import metrics
from .conventions import CROP_MARGIN

DEFAULT_INPUT_SIZE = 256
MISSED_FACE_ERROR = 1.0
DETECTION_MIN_IOU = 0.3
BOX_MODES = ("gt", "detect")
# 300-W test groups (DESIGN.md section 3) in the order the paper's tables list them.
TEST_GROUPS = ("common", "challenging", "private")

Predictor = Callable[[np.ndarray], np.ndarray]


class EvaluationError(RuntimeError):
    """A problem that stops an evaluation (no faces, no model); the message is one line."""


# ----------------------------------------------------------------------------------------------
# Models → predictors
# ----------------------------------------------------------------------------------------------
def keras_predictor(model) -> Predictor:
    """uint8 crops → normalised landmarks through a Keras model, fetching only the landmarks output."""
    full = keras_full_predictor(model)
    return lambda crops: full(crops)[0]


def keras_full_predictor(model):
    """uint8 crops → (normalised landmarks, uncertainty in crop pixels or None, face_score or None)
    through a Keras model, fetching only those outputs."""
    import keras

    outputs = model.outputs
    if isinstance(model.output, dict):
        if "landmarks" not in model.output:
            raise EvaluationError(f"model {model.name!r} has no 'landmarks' output (has {sorted(model.output)})")
        outputs = model.output["landmarks"]
    elif len(outputs) == 1:
        outputs = outputs[0]
    else:
        raise EvaluationError(f"model {model.name!r} has {len(outputs)} unnamed outputs; cannot tell the landmarks")
    extras = [name for name in ("uncertainty", "face_score") if isinstance(model.output, dict) and name in model.output]
    landmarks_model = keras.Model(model.inputs, {"landmarks": outputs, **{name: model.output[name] for name in extras}})
    largest = [0]

    def predict(crops: np.ndarray):
        count = len(crops)
        largest[0] = max(largest[0], count)
        if count < largest[0]:  # pad a short last batch: one traced graph instead of a second trace
            crops = np.concatenate([crops, np.zeros((largest[0] - count, *crops.shape[1:]), crops.dtype)])
        images = crops.astype(np.float32) * (1.0 / 255.0) - 0.5
        out = landmarks_model.predict_on_batch(images)
        get = lambda name: np.asarray(out[name])[:count] if name in out else None  # noqa: E731
        return np.asarray(out["landmarks"])[:count], get("uncertainty"), get("face_score")

    return predict


def is_keras_model(model) -> bool:
    """True for a keras.Model, without importing Keras where nothing has (a LiteRT-only evaluation)."""
    keras = sys.modules.get("keras")
    return keras is not None and isinstance(model, keras.Model)


def as_full_predictor(model):
    """As `as_predictor`, but the function gives (landmarks (B, 68, 2), uncertainty (B, 68) in crop
    pixels or None, face_score (B,) or None) — issue 17's outputs where the model has them."""
    if is_keras_model(model):
        return keras_full_predictor(model)
    if hasattr(model, "predict_crops"):
        def predict_crops(crops):
            result = model.predict_crops(crops)
            return (np.asarray(result[0]), getattr(result, "uncertainty", None), getattr(result, "face_score", None))

        return predict_crops
    plain = as_predictor(model)
    return lambda crops: (plain(crops), None, None)


def as_predictor(model) -> Predictor:
    """A Keras model, an object with `predict_crops` (a LandmarkDetector or one of its backends: .keras,
    SavedModel, .tflite) or any `predict(uint8 crops)` callable → a function giving (B, 68, 2) numpy."""
    if is_keras_model(model):
        return keras_predictor(model)
    if hasattr(model, "predict_crops"):
        return lambda crops: np.asarray(model.predict_crops(crops)[0])
    if not callable(model):
        raise EvaluationError(f"cannot evaluate a {type(model).__name__}: pass a Keras model, an object with "
                              "predict_crops, or a callable")

    def predict(crops: np.ndarray) -> np.ndarray:
        result = model(crops)
        if isinstance(result, dict):
            result = result["landmarks"]
        return np.asarray(result)

    return predict


def input_size_of(model) -> int:
    """The crop side a model wants (256 for every CFDRNN preset; read from the model where it says)."""
    if is_keras_model(model):
        size = model.inputs[0].shape[1]
        return int(size) if size else DEFAULT_INPUT_SIZE
    return int(getattr(model, "input_size", DEFAULT_INPUT_SIZE))


def keras_to_tflite(model) -> bytes:
    """The Keras model's landmarks output as an fp32 TFLite model (bytes).

    Why: LiteRT's XNNPACK kernels run the CFDRNN graph on this project's CPUs with about half the
    CPU time of TensorFlow (docs/EVALUATION.md), with the same landmarks to ~1e-7.
    """
    import keras
    import tensorflow as tf

    outputs = model.output["landmarks"] if isinstance(model.output, dict) else model.outputs[0]
    landmarks_model = keras.Model(model.inputs, outputs)
    converter = tf.lite.TFLiteConverter.from_keras_model(landmarks_model)
    with contextlib.redirect_stdout(io.StringIO()):  # Keras prints the temporary SavedModel's signature
        return converter.convert()


ENGINES = ("keras", "tflite")


def prepare_engine(model, engine: str = "keras", num_threads: int | None = None):
    """The model as it will run: unchanged for "keras"; for "tflite" a Keras model is converted and
    run by LiteRT (`runtime.backends.TFLiteBackend`), anything else is left as it is."""
    if engine not in ENGINES:
        raise EvaluationError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    if engine == "keras" or not is_keras_model(model):
        return model
    from .runtime.backends import TFLiteBackend

    folder = tempfile.TemporaryDirectory(prefix="cfdrnn_eval_")
    path = Path(folder.name) / "converted.tflite"
    path.write_bytes(keras_to_tflite(model))
    backend = TFLiteBackend(path, landmark_units="normalised", num_threads=num_threads)
    backend.converted_from = folder  # the file lives as long as the backend
    return backend


def load_model(path=None, ensemble=None, trust_model: bool = False):
    """(model, name) for a packaged model's name or None (the default: its LiteRT file, as
    `LandmarkDetector()` runs it; `NAME:keras` for its float network), a .keras file (a keras.Model),
    a SavedModel folder or a .tflite file (an inference backend). Problems: one-line EvaluationError.

    ensemble: how a .keras CFDRNN network runs (`cfdrnn_keras.ensemble_options.EnsembleOptions`; None:
    the default, flip test and four-stage average). Exported models run as they were exported.
    trust_model: run a SavedModel without checking its graph (`runtime.backends.load_backend`).
    """
    from .runtime import packaged
    from .runtime.backends import ModelLoadError, check_keras_file, load_backend, one_line

    resolved, name = packaged.resolve(path)
    if isinstance(resolved, packaged.PackagedModel):  # NAME:keras: its float networks, as its LiteRT file runs
        try:
            backend = load_backend(name, ensemble)  # its networks averaged where it has several
        except ModelLoadError as error:
            raise EvaluationError(str(error)) from None
        backend.model.cfdrnn_ensemble = backend.ensemble  # how it runs, for the report
        backend.model.cfdrnn_fused = backend.fused
        return backend.model, name
    path = Path(resolved)
    label = name or str(path)
    if not path.exists():
        if name is not None:
            raise EvaluationError(f"{path}: the packaged model {name!r} is missing from this install "
                                  "(reinstall cfdrnn-keras, or pass --model PATH)")
        raise EvaluationError(f"{path}: model not found")
    try:
        if path.suffix.lower() == ".keras" and path.is_file():
            check_keras_file(path)  # a junk or truncated file: say so, not Keras's "File not found"
            from .quiet import native_stderr_silenced

            with native_stderr_silenced():  # Keras imports TensorFlow, which prints its start-up lines
                from .model.backends import KerasBackend

            backend = KerasBackend(path, ensemble)  # loads safely and wraps it as `ensemble` says
            backend.model.cfdrnn_ensemble = backend.ensemble  # how it runs, for the report
            backend.model.cfdrnn_fused = backend.fused
            return backend.model, label
        return load_backend(path, ensemble, trust_model=trust_model), label
    except (ModelLoadError, EvaluationError) as error:
        raise EvaluationError(str(error)) from None
    except ImportError as error:
        raise EvaluationError(f"{path}: needs TensorFlow and Keras ({one_line(error)}): "
                              "pip install 'cfdrnn-keras[train]'") from None
    except Exception as error:  # a corrupt or foreign file: one line, not a traceback
        raise EvaluationError(f"{path}: cannot load the model: {one_line(error)}") from None


# ----------------------------------------------------------------------------------------------
# Subsets
# ----------------------------------------------------------------------------------------------
def row_of(face: Face) -> str:
    """The table row a face belongs to: its 300-W test group, else its part or folder name.

    Training parts (afw, lfpw/trainset, helen/trainset) keep their own names, so evaluating on the
    training data shows each part instead of one "train" row.
    """
    group = subset_of(face)
    return group if group in TEST_GROUPS else face.subset


def subset_members(rows: list[str]) -> dict[str, np.ndarray]:
    """Row name → indices of its faces, in the paper's order: common, challenging, full (when both
    are present; image-weighted, i.e. all their faces pooled), private; then other parts and
    folders by name; then `all`."""
    rows = np.asarray(rows, dtype=object)
    members: dict[str, np.ndarray] = {}
    for group in ("common", "challenging"):
        if np.any(rows == group):
            members[group] = np.flatnonzero(rows == group)
    if len(members) == 2:
        members["full"] = np.flatnonzero((rows == "common") | (rows == "challenging"))
    if np.any(rows == "private"):
        members["private"] = np.flatnonzero(rows == "private")
    for name in sorted(set(rows.tolist()) - set(TEST_GROUPS)):
        members[name] = np.flatnonzero(rows == name)
    members["all"] = np.arange(len(rows))
    return members


# ----------------------------------------------------------------------------------------------
# Results
# ----------------------------------------------------------------------------------------------
@dataclass
class FaceResult:
    """One face: ground truth and prediction in original-photo pixels (pred None when missed)."""

    file: str
    subset: str
    gt: np.ndarray
    pred: np.ndarray | None
    uncertainty: np.ndarray | None = None  # (68,) expected error per point, photo pixels (issue 17)
    face_score: float | None = None
    crop_scale: float | None = None  # crop pixels per photo pixel of the crop the model saw

    @property
    def missed(self) -> bool:
        """No prediction: the detector found no face here, or the model returned NaN/inf."""
        return self.pred is None

    def error(self, normalisation: str = "inter_ocular") -> float:
        if self.pred is None:
            return MISSED_FACE_ERROR
        return float(metrics.nme(self.pred, self.gt, normalisation))


@dataclass
class Evaluation:
    """Per-face results of one run, with the subset table and the JSON report derived from them."""

    model: str
    results: list[FaceResult] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    box: str = "gt"
    ensemble: dict | None = None  # how the model ran (cfdrnn_keras.model.ensemble), where known

    def errors(self, normalisation: str = "inter_ocular") -> np.ndarray:
        return np.array([result.error(normalisation) for result in self.results], dtype=np.float64)

    def members(self) -> dict[str, np.ndarray]:
        return subset_members([result.subset for result in self.results])

    def subsets(self) -> dict[str, dict]:
        """Subset name → {n, nme_io, nme_ip, auc08_io, fr08_io} in percent."""
        if not self.results:
            return {}
        io, ip = self.errors("inter_ocular"), self.errors("inter_pupil")
        return {name: metrics.summarize(io[index], ip[index]) for name, index in self.members().items()}

    def missed(self) -> dict[str, int]:
        """Subset name → faces the detector missed (all zero with gt boxes)."""
        flags = np.array([result.missed for result in self.results], dtype=bool)
        return {name: int(flags[index].sum()) for name, index in self.members().items()}

    def uncertainty(self) -> dict | None:
        """Issue 17's figures over the faces with a prediction and an uncertainty: Spearman, AUROC for
        points off by > 0.08 inter-ocular, per-fifth calibration ratios (`uncertainty_metrics`);
        None when the model gives no uncertainty."""
        from .uncertainty_metrics import uncertainty_summary

        done = [r for r in self.results if r.pred is not None and r.uncertainty is not None]
        if not done:
            return None
        u = np.stack([r.uncertainty for r in done])
        e = np.stack([np.linalg.norm(r.pred - r.gt, axis=-1) for r in done])
        iod = np.array([float(metrics.inter_ocular_distance(r.gt)) for r in done])
        scales = [r.crop_scale for r in done]
        relative = None if any(v is None for v in scales) else u * np.asarray(scales, np.float64)[:, None]
        summary = uncertainty_summary(u, e, iod, uncertainty_crop=relative)  # ranked in crop pixels
        summary["faces"] = len(done)
        scores = [r.face_score for r in done if r.face_score is not None]
        if scores:
            summary["face_score_min"] = float(np.min(scores))
            summary["face_score_median"] = float(np.median(scores))
        return summary

    def to_json(self) -> dict:
        """The report: model, subsets (percent) and per-image errors with points in photo pixels."""
        io = self.errors("inter_ocular")
        return {
            "model": self.model,
            "box": self.box,
            "ensemble": self.ensemble,
            "skipped": list(self.skipped),
            "subsets": self.subsets(),
            "uncertainty": self.uncertainty(),
            "per_image": [
                {
                    "file": result.file,
                    "subset": result.subset,
                    "nme_io": 100.0 * float(error),
                    "pred": [] if result.pred is None else np.asarray(result.pred, dtype=float).tolist(),
                    "gt": np.asarray(result.gt, dtype=float).tolist(),
                    **({} if result.uncertainty is None or result.pred is None else
                       {"uncertainty": np.round(np.asarray(result.uncertainty, dtype=float), 3).tolist()}),
                    **({} if result.face_score is None else {"face_score": round(float(result.face_score), 4)}),
                }
                for result, error in zip(self.results, io)
            ],
        }


# The paper's CFDRNN figures (DESIGN.md section 3; Tables 5-7), percent.
PAPER_CFDRNN = {
    "common": {"nme_io": 3.23, "nme_ip": 4.55},
    "challenging": {"nme_io": 4.24, "nme_ip": 6.05},
    "full": {"nme_io": 3.44, "nme_ip": 4.85},
    "private": {"nme_io": 3.49, "auc08_io": 56.68, "fr08_io": 1.00},
}
TABLE_COLUMNS = (("nme_io", "NME IO"), ("nme_ip", "NME IP"), ("auc08_io", "AUC_0.08"), ("fr08_io", "FR_0.08"))


def markdown_table(subsets: dict, missed: dict | None = None) -> str:
    """The paper-style table: one row per subset, ours beside the paper's CFDRNN figure (percent)."""
    header = ["subset", "n"]
    for _, title in TABLE_COLUMNS:
        header += [f"{title} %", "paper"]
    show_missed = bool(missed) and any(missed.values())
    if show_missed:
        header.append("missed")
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    for name, row in subsets.items():
        paper = PAPER_CFDRNN.get(name, {})
        cells = [name, str(row["n"])]
        for key, _ in TABLE_COLUMNS:
            cells += [f"{row[key]:.2f}", f"{paper[key]:.2f}" if key in paper else "–"]
        if show_missed:
            cells.append(str(missed.get(name, 0)))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------------------------
def box_iou(a, b) -> float:
    """Intersection over union of two (x0, y0, x1, y1) boxes."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def best_detection(boxes, gt_box, min_iou: float = DETECTION_MIN_IOU):
    """The detected box that overlaps the annotated box most, or None if none has IoU > min_iou."""
    best, best_iou = None, min_iou
    for box in boxes:
        box = tuple(float(value) for value in box[:4])
        iou = box_iou(box, gt_box)
        if iou > best_iou:
            best, best_iou = box, iou
    return best


@dataclass
class _Prepared:
    face: Face
    gt: np.ndarray | None = None
    crop: np.ndarray | None = None
    matrix: np.ndarray | None = None
    problem: str | None = None


def _prepare(face: Face, box: str, detector, input_size: int) -> _Prepared:
    """Read one face and cut its crop (runs in worker threads: OpenCV releases the GIL)."""
    try:
        gt = read_pts(face.pts_path).astype(np.float64)
        if gt.shape != (metrics.NUM_LANDMARKS, 2):
            return _Prepared(face, problem=f"{face.pts_path}: has {len(gt)} points, expected 68")
        image = read_image(face.image_path)
    except (PtsFormatError, ImageReadError) as error:
        return _Prepared(face, problem=str(error))
    outside = points_outside_photo(gt, image.shape[1], image.shape[0])
    if outside:
        return _Prepared(face, problem=f"{face.pts_path}: {outside}")
    gt_box = face_box_from_points(gt)
    if box == "detect":
        found = best_detection(detector(image), gt_box)
        if found is None:
            return _Prepared(face, gt=gt)
        gt_box = found
    try:
        matrix = crop_matrix(gt_box, input_size, CROP_MARGIN)
    except ValueError as error:
        return _Prepared(face, problem=f"{face.pts_path}: {error}")
    return _Prepared(face, gt=gt, crop=warp_to_crop(image, matrix, input_size), matrix=matrix)


OUTSIDE_MARGIN = 0.5  # annotated points may lie this far outside the photo (a fraction of its size)


def points_outside_photo(points: np.ndarray, width: int, height: int, margin: float = OUTSIDE_MARGIN) -> str | None:
    """Why an annotation cannot belong to a width × height photo (points far outside it: another
    photo's annotation, wrong units or scale), or None. 300-W's points lie at most 0.3 % outside."""
    low = np.array([-margin * width, -margin * height])
    high = np.array([(1 + margin) * width, (1 + margin) * height])
    if np.all((points >= low) & (points <= high)):
        return None
    return (f"points far outside the photo ({width}x{height}; x {points[:, 0].min():.4g} to "
            f"{points[:, 0].max():.4g}, y {points[:, 1].min():.4g} to {points[:, 1].max():.4g}): another "
            "photo's annotation, or wrong units or scale? Not scored")


def skip_summary(skipped: list[str], total: int | None = None) -> str:
    """One line counting the skipped files by reason (the part of each message after its path)."""
    reasons: dict[str, int] = {}
    for message in skipped:
        reason = message.split(": ", 1)[1] if ": " in message else message
        reason = reason.split(" (")[0].split(": ")[0]  # "too large: 12000x12000 ..." → "too large"
        reasons[reason] = reasons.get(reason, 0) + 1
    of = f" of {total}" if total is not None else ""
    parts = "; ".join(f"{count} × {reason}" for reason, count in sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0])))
    return f"{len(skipped)}{of} files skipped (each named above): {parts}"


def _prepared_in_order(faces, box, detector, input_size: int, workers: int, prefetch: int):
    """Prepared faces in input order, at most `prefetch` in flight (memory stays bounded)."""
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        pending = deque()
        for face in faces:
            pending.append(pool.submit(_prepare, face, box, detector, input_size))
            if len(pending) >= prefetch:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def crop_to_photo(landmarks_normalised, matrices, input_size: int = DEFAULT_INPUT_SIZE) -> np.ndarray:
    """Normalised crop coordinates (B, 68, 2) → photo pixels, through each crop matrix's inverse."""
    points = np.asarray(landmarks_normalised, dtype=np.float64) * input_size
    return np.stack([transform_points(invert(matrix), crop_points) for matrix, crop_points in zip(matrices, points)])


def evaluate_faces(faces, model, *, box: str = "gt", batch_size: int = 16, detector=None, model_name=None,
                   progress: bool = False, on_skip: Callable[[str], None] | None = None,
                   workers: int = 2) -> Evaluation:
    """Predict every face and collect the results; bad files are reported through `on_skip` and skipped."""
    if box not in BOX_MODES:
        raise EvaluationError(f"box must be one of {', '.join(BOX_MODES)}, got {box!r}")
    if batch_size < 1:
        raise EvaluationError(f"batch size must be at least 1, got {batch_size}")
    if box == "detect" and detector is None:
        detector = default_detector()
    predict = as_full_predictor(model)
    input_size = input_size_of(model)
    name = model_name
    if name is None:
        name = getattr(model, "name", None) or getattr(model, "__name__", None) or type(model).__name__
    evaluation = Evaluation(model=str(name), box=box)
    report = on_skip or (lambda message: print(message, file=sys.stderr))

    from tqdm import tqdm

    bar = tqdm(total=len(faces), unit="face", disable=not progress, dynamic_ncols=True)

    def say(message: str) -> None:  # through the bar while it is shown, so it is not torn apart
        bar.write(message, file=sys.stderr) if progress else report(message)

    batch: list[_Prepared] = []

    def flush():
        if not batch:
            return
        crops = np.stack([item.crop for item in batch])
        landmarks, uncertainty, face_score = predict(crops)
        landmarks = np.asarray(landmarks)
        if landmarks.shape != (len(batch), metrics.NUM_LANDMARKS, 2):
            raise EvaluationError(f"the model returned landmarks of shape {landmarks.shape}, "
                                  f"expected ({len(batch)}, {metrics.NUM_LANDMARKS}, 2)")
        points = crop_to_photo(landmarks, [item.matrix for item in batch], input_size)
        for index, (item, pred) in enumerate(zip(batch, points)):
            if not np.all(np.isfinite(pred)):
                say(f"{item.face.image_path}: the model returned non-finite landmarks; counted as a failure")
                pred = None
            # uncertainty: crop pixels → photo pixels, ÷ the crop's scale (a similarity)
            scale = float(np.sqrt(abs(np.linalg.det(item.matrix[:2, :2]))))
            u = None if uncertainty is None else np.asarray(uncertainty[index], np.float64) / scale
            score = None if face_score is None else float(face_score[index])
            evaluation.results.append(FaceResult(item.face.image_path, row_of(item.face), item.gt, pred, u, score,
                                                 scale))
        bar.update(len(batch))
        batch.clear()

    try:
        for item in _prepared_in_order(faces, box, detector, input_size, workers, prefetch=4 * batch_size):
            if item.problem is not None:
                evaluation.skipped.append(item.problem)
                say(f"skipped {item.problem}")
                bar.update(1)
            elif item.crop is None:  # the detector missed it
                flush()  # keep results in input order
                evaluation.results.append(FaceResult(item.face.image_path, row_of(item.face), item.gt, None))
                bar.update(1)
            else:
                batch.append(item)
                if len(batch) == batch_size:
                    flush()
        flush()
    finally:
        bar.close()
    return evaluation


def default_detector():
    """The package's face detector as a function: RGB photo → list of (x0, y0, x1, y1[, score]) boxes,
    already calibrated to the 68-point-box convention the crops are cut from."""
    try:
        from .runtime.face_detector import DetectorUnavailableError, default_detector as package_detector
    except ImportError as error:
        raise EvaluationError(f"--box detect needs cfdrnn_keras.runtime.face_detector, which cannot be imported: {error}") from None
    try:
        return package_detector().detect
    except DetectorUnavailableError as error:
        raise EvaluationError(str(error)) from None


def discover(roots, limit: int | None = None, on_skip: Callable[[str], None] | None = None):
    """Faces under the roots (sorted by path; the first `limit` when given) and the skipped files."""
    problems = []
    # No header checks here: each photo is read (and checked) once, when the run crops it. Problems
    # go to `on_skip` only (not also to the log), and a photo without a .pts is one of them.
    faces = find_faces(roots, check=False, problems=problems, warn=False, unannotated=True)
    messages = [str(problem) for problem in problems]
    if on_skip is not None:
        for message in messages:
            on_skip(f"skipped {message}")
    if limit is not None:
        faces = faces[: max(0, int(limit))]
    return faces, messages


def evaluate(roots, model, *, limit: int | None = None, **options) -> Evaluation:
    """Find the faces under `roots` and evaluate `model` on them (options as `evaluate_faces`)."""
    faces, problems = discover(roots, limit, options.get("on_skip"))
    if not faces:
        raise EvaluationError(f"no annotated faces (image + .pts pairs) under {', '.join(map(str, roots))}")
    evaluation = evaluate_faces(faces, model, **options)
    evaluation.skipped[:0] = problems
    return evaluation


def load_report(path) -> dict:
    """A JSON report written by tools/evaluate.py (one-line error if it is not one)."""
    import json

    path = Path(path)
    try:
        report = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise EvaluationError(f"{path}: cannot read the report: {error}") from None
    if not isinstance(report, dict) or not {"model", "subsets", "per_image"} <= set(report):
        raise EvaluationError(f"{path}: not an evaluation report (needs model, subsets and per_image)")
    return report


def report_missed(report: dict) -> dict[str, int]:
    """Subset name → faces without a prediction (empty "pred") in a JSON report."""
    rows = [entry["subset"] for entry in report["per_image"]]
    flags = np.array([len(entry["pred"]) == 0 for entry in report["per_image"]], dtype=bool)
    return {name: int(flags[index].sum()) for name, index in subset_members(rows).items()}


def report_members(report: dict) -> dict[str, np.ndarray]:
    """Subset name → per-image inter-ocular errors (fractions) of a JSON report, subsets as in the run."""
    rows = [entry["subset"] for entry in report["per_image"]]
    errors = np.array([entry["nme_io"] for entry in report["per_image"]], dtype=np.float64) / 100.0
    return {name: errors[index] for name, index in subset_members(rows).items()}


__all__ = [
    "BOX_MODES", "DETECTION_MIN_IOU", "ENGINES", "MISSED_FACE_ERROR", "PAPER_CFDRNN", "Evaluation", "EvaluationError",
    "FaceResult", "as_predictor", "best_detection", "box_iou", "crop_to_photo", "discover", "evaluate",
    "points_outside_photo", "skip_summary",
    "evaluate_faces", "keras_predictor", "keras_to_tflite", "load_model", "load_report", "markdown_table",
    "prepare_engine", "report_members", "report_missed", "row_of", "subset_members",
]
