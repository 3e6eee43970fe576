"""Deployment artefacts of a trained CFDRNN model: a SavedModel for TF Serving and TFLite files.

`export_model` writes the requested formats into one folder with a `manifest.json` that records each
file's size and how far its landmarks are from the Keras model's on the same face crops.
`export.serving` (TF Serving's REST request format) imports nothing from this project.
"""
from __future__ import annotations

import json
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from cfdrnn_keras.errors import one_line

SAVED_MODEL = "saved_model"
TFLITE_FORMATS = ("tflite_fp32", "tflite_fp16", "tflite_int8", "tflite_int8_full")
FORMATS = (SAVED_MODEL,) + TFLITE_FORMATS
# The SavedModel's predict_image limits (export.saved_model, docs/DEPLOYMENT.md), set at export; here so
# tools/export.py can show them before importing TensorFlow.
DEFAULT_MAX_IMAGE_PIXELS = 50_000_000  # a 50 MP photo (8660 x 5773); decoding it takes 150 MB as uint8
DEFAULT_MAX_REQUEST_PIXELS = 100_000_000  # all the images of one request together
WEB = "web"  # a static web page (`export.web`); asked for by name, not part of the default set
EXTRA_FORMATS = (WEB,)
FILE_NAMES = {SAVED_MODEL: "saved_model", **{fmt: f"cfdrnn_{fmt[len('tflite_'):]}.tflite" for fmt in TFLITE_FORMATS}}


def default_model_files(name: str | None = None) -> tuple[Path, ...]:
    """The float `.keras` networks of a packaged model (None: the default one), which exports start
    from (several are averaged when loaded: `cfdrnn_keras.model.loading`)."""
    from cfdrnn_keras.runtime.packaged import network_files, packaged_model

    return network_files(packaged_model(name).name)


def default_calibration_root() -> Path | None:
    """`$CFDRNN_DATA/300w`, else `../shared/data/300w` beside the checkout, if present."""
    import os

    env = os.environ.get("CFDRNN_DATA")
    base = Path(env) if env else Path(__file__).resolve().parents[1].parent / "shared" / "data"
    root = base / "300w"
    return root if root.is_dir() else None


def parse_formats(text: str) -> list[str]:
    formats = [item.strip() for item in text.split(",") if item.strip()]
    unknown = [item for item in formats if item not in FORMATS + EXTRA_FORMATS]
    if unknown or not formats:
        raise ValueError(f"unknown format(s) {', '.join(unknown) or '(none given)'}; "
                         f"choose from {', '.join(FORMATS + EXTRA_FORMATS)}")
    return list(dict.fromkeys(formats))


def directory_size(path: Path) -> int:
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(item.stat().st_size for item in path.rglob("*") if item.is_file())


def point_difference(reference, other) -> dict:
    """Mean and max Euclidean distance (px) between two landmark arrays [N, K, 2]."""
    distance = np.linalg.norm(np.asarray(other, np.float64) - np.asarray(reference, np.float64), axis=-1)
    return {"mean_px": float(distance.mean()), "max_px": float(distance.max())}


def inter_ocular_nme_percent(points, ground_truth) -> float:
    """Mean inter-ocular NME (%, 300-W) of predictions against ground truth, both [N, 68, 2]."""
    from cfdrnn_keras.metrics import mean_nme, nme

    return 100.0 * float(mean_nme(nme(points, ground_truth, "inter_ocular")))


def export_model(model, out_dir, formats=FORMATS, *, calibration_crops=None, comparison_crops=None,
                 comparison_points=None, log=print, model_source: str = "", ensemble: dict | None = None,
                 max_image_pixels: int | None = None, max_request_pixels: int | None = None) -> dict:
    """Write each format into `out_dir`, compare each with the Keras model, write `manifest.json`.

    `calibration_crops` (uint8 [K, S, S, 3] real faces) is needed by `tflite_int8_full`;
    `comparison_crops` are the crops on which every export is compared with the Keras model, and
    `comparison_points` their ground truth in crop pixels (then each entry also gets its
    inter-ocular NME and its cost against the Keras model's, in points of %).
    A format that fails is recorded with its one-line error and the others go on.
    `max_image_pixels` / `max_request_pixels`: the SavedModel's `predict_image` limits (None: the
    defaults of `export.saved_model`); recorded in the manifest's saved_model entry.
    Returns the manifest (a dict); `manifest["failed"]` lists the failed formats.
    """
    import keras
    import tensorflow as tf

    from . import tflite
    from . import saved_model as saved_models
    from .saved_model import crop_size_of, export_saved_model, inference_model

    limits = {
        "max_image_pixels": int(DEFAULT_MAX_IMAGE_PIXELS if max_image_pixels is None else max_image_pixels),
        "max_request_pixels": int(DEFAULT_MAX_REQUEST_PIXELS if max_request_pixels is None else max_request_pixels),
    }

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = inference_model(model)
    size = crop_size_of(model)
    if comparison_crops is None or len(comparison_crops) == 0:
        comparison_crops = np.random.default_rng(0).integers(0, 256, (4, size, size, 3), dtype=np.uint8)
        comparison_data = "synthetic noise (no real faces given)"
    else:
        comparison_data = f"{len(comparison_crops)} real face crops"
    reference = tflite.keras_crop_landmarks(model, comparison_crops)

    manifest = {
        "model": model_source,
        "ensemble": ensemble,
        "crop_size": size,
        "parameters": int(model.count_params()),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "versions": {"tensorflow": tf.__version__, "keras": keras.__version__, "python": platform.python_version()},
        "comparison": comparison_data,
        "calibration": None if calibration_crops is None else f"{len(calibration_crops)} real face crops",
        "exports": {},
        "failed": [],
    }
    has_truth = comparison_points is not None and len(comparison_points) == len(comparison_crops)
    if has_truth:
        manifest["keras_nme_percent"] = inter_ocular_nme_percent(reference, comparison_points)
    with tempfile.TemporaryDirectory() as tmp:
        crops_saved_model = None
        for fmt in formats:
            target = out_dir / FILE_NAMES[fmt]
            started = time.perf_counter()
            try:
                if fmt == SAVED_MODEL:
                    if target.exists():
                        shutil.rmtree(target)
                    export_saved_model(model, target, **limits)
                    serve = tf.saved_model.load(str(target)).signatures["serving_default"]
                    points = np.concatenate(
                        [serve(image=tf.constant(crop[None]))["landmarks"].numpy() for crop in comparison_crops]
                    )
                    entry = {"signatures": ["serving_default", "predict_image"],
                             "predict_image": {**limits, "min_box_side_px": saved_models.MIN_BOX_SIDE,
                                               "max_box_scale": saved_models.MAX_BOX_SCALE,
                                               "formats": ["JPEG", "PNG", "BMP", "WebP"]}}
                else:
                    if crops_saved_model is None:
                        crops_saved_model = tflite.write_crops_saved_model(model, Path(tmp) / "crops")
                    content = tflite.convert(model, fmt, calibration_crops, crops_saved_model)
                    target.write_bytes(content)
                    runner = tflite.TFLiteLandmarks(target)
                    points = np.concatenate([runner(crop)["landmarks"] for crop in comparison_crops])
                    entry = {"operators": sorted(set(tflite.operator_names(content)))}
            except Exception as error:  # one format failing must not stop the others
                message = one_line(error)
                log(f"export: {fmt}: {message}")
                manifest["failed"].append(fmt)
                manifest["exports"][fmt] = {"error": message}
                continue
            entry.update(
                path=target.name,
                size_bytes=directory_size(target),
                seconds=round(time.perf_counter() - started, 1),
                **point_difference(reference, points),
            )
            if has_truth:
                entry["nme_percent"] = inter_ocular_nme_percent(points, comparison_points)
                entry["nme_cost_points"] = entry["nme_percent"] - manifest["keras_nme_percent"]
            manifest["exports"][fmt] = entry
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def manifest_table(manifest: dict) -> str:
    """The manifest as a Markdown table: size and difference from the Keras model per format."""
    truth = "keras_nme_percent" in manifest
    lines = [
        f"Difference from the Keras model on {manifest['comparison']} (landmarks, crop pixels of {manifest['crop_size']})"
        + (f"; Keras model's inter-ocular NME there: {manifest['keras_nme_percent']:.2f} %" if truth else "") + ":",
        "",
        "| format | file | size (MB) | mean diff (px) | max diff (px) |" + (" NME (%) | NME cost (points) |" if truth else ""),
        "|---|---|---:|---:|---:|" + ("---:|---:|" if truth else ""),
    ]
    for fmt, entry in manifest["exports"].items():
        if "error" in entry:
            lines.append(f"| {fmt} | failed: {entry['error']} | | | |" + (" | |" if truth else ""))
            continue
        line = f"| {fmt} | {entry['path']} | {entry['size_bytes'] / 1e6:.2f} | {entry['mean_px']:.4f} | {entry['max_px']:.4f} |"
        if truth:
            line += f" {entry['nme_percent']:.2f} | {entry['nme_cost_points']:+.2f} |"
        lines.append(line)
    return "\n".join(lines)
