"""Export a CFDRNN model for serving and devices: SavedModel (TF Serving) and TFLite files.

    python tools/export.py --out exported
    python tools/export.py --model run/best.keras --out exported --formats saved_model,tflite_fp16

Formats (comma-separated):
  saved_model       signatures serving_default (uint8 crops → landmarks in crop pixels) and
                    predict_image (encoded photo bytes + face box → landmarks in photo pixels)
  tflite_fp32       float32 TFLite (builtin ops only, uint8 crop input)
  tflite_fp16       float16 weights
  tflite_int8       dynamic-range int8 (int8 weights, float activations)
  tflite_int8_full  full-integer int8 calibrated on real face crops (uint8 input, float outputs)
  web               OUT/web/: a static web page running the full-int8 file in the browser
                    (LiteRT.js, copied from npm; not in the default set). With tflite_int8_full in
                    the same run it packs that file, else the packaged model's LiteRT file

Each export is compared with the Keras model on real face crops; sizes and differences go to
OUT/manifest.json and a table on stdout. Exit status 0 if every format was written, 1 otherwise,
2 for a bad command line or an unreadable model. See docs/DEPLOYMENT.md.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from cfdrnn_keras.errors import one_line
from export import (DEFAULT_MAX_IMAGE_PIXELS, DEFAULT_MAX_REQUEST_PIXELS, FORMATS, WEB,  # noqa: E402  (no TF yet)
                    default_calibration_root, default_model_files, parse_formats)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None,
                        help="a .keras model, or a packaged model's name (fast; default: the default packaged model's .keras network)")
    parser.add_argument("--out", default="exported", help="output folder (default: exported)")
    parser.add_argument("--verbose", action="store_true",
                        help="show TensorFlow's and LiteRT's own log lines (default: hidden)")
    parser.add_argument("--formats", default=",".join(FORMATS),
                        help=f"comma-separated formats (default: all: {','.join(FORMATS)}; also: {WEB})")
    parser.add_argument("--calibration-data", default=None,
                        help="folder of annotated faces (image + .pts, any depth) for int8 calibration and "
                             "for the comparison with Keras (default: ../shared/data/300w beside the checkout, "
                             "or $CFDRNN_DATA/300w, if present)")
    parser.add_argument("--calibration-count", type=int, default=100,
                        help="face crops fed to the full-integer calibration (default: 100)")
    parser.add_argument("--compare-count", type=int, default=8,
                        help="face crops on which each export is compared with Keras (default: 8)")
    parser.add_argument("--max-image-pixels", type=_pixel_count, default=DEFAULT_MAX_IMAGE_PIXELS, metavar="N",
                        help="the SavedModel's predict_image refuses an image of more pixels, read from its header "
                             f"before decoding (default: {DEFAULT_MAX_IMAGE_PIXELS:,}; 50e6 is accepted)")
    parser.add_argument("--max-request-pixels", type=_pixel_count, default=DEFAULT_MAX_REQUEST_PIXELS, metavar="N",
                        help="... and a request whose images have more pixels in all "
                             f"(default: {DEFAULT_MAX_REQUEST_PIXELS:,})")
    from cfdrnn_keras import ensemble_options

    ensemble_options.add_arguments(parser, exported=True)
    return parser.parse_args(argv)


def _pixel_count(text: str) -> int:
    """A positive pixel count: 50000000, 50_000_000 or 50e6."""
    try:
        value = float(text.replace("_", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of pixels: {text!r}") from None
    if not value >= 1 or value != int(value):
        raise argparse.ArgumentTypeError(f"needs a positive whole number of pixels, got {text!r}")
    return int(value)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        formats = parse_formats(args.formats)
    except ValueError as error:
        print(f"export: {error}", file=sys.stderr)
        return 2
    web, formats = WEB in formats, [fmt for fmt in formats if fmt != WEB]
    from cfdrnn_keras.runtime import packaged

    named = packaged.packaged_name(args.model)  # None: a path
    model_files = default_model_files(named) if named else (Path(args.model),)
    for model_path in model_files:
        if not model_path.exists():
            hint = "" if args.model else " (no packaged model in this checkout: pass --model PATH)"
            print(f"export: {model_path}: model file not found{hint}", file=sys.stderr)
            return 2
    model_source = named or model_files[0]  # what cfdrnn_keras.model.loading loads
    default_options = packaged.packaged_model(named).ensemble if named else None  # as its LiteRT file runs
    web_model = None
    if web and "tflite_int8_full" not in formats:  # the page packs the packaged model's LiteRT file
        from export.web import PACKAGED_WEB_MODEL

        name = named if args.model else PACKAGED_WEB_MODEL
        if name not in packaged.PACKAGED_MODELS:
            print(f"export: web: {args.model} is not a packaged model: add tflite_int8_full to --formats "
                  "(the page runs that file)", file=sys.stderr)
            return 2
        from cfdrnn_keras import ensemble_options

        if ensemble_options.options_from_args(args) not in (None, packaged.packaged_model(name).ensemble):
            print(f"export: web: the packaged LiteRT file runs {name}'s ensemble; add tflite_int8_full to "
                  "--formats to export the page with another", file=sys.stderr)
            return 2
        web_model = (packaged.packaged_model(name).tflite_path, name)
        if not formats:  # the page alone: no Keras, no calibration
            return _export_web(args.out, *web_model)
    calibration_root = args.calibration_data or default_calibration_root()
    if calibration_root and not Path(calibration_root).is_dir():
        print(f"export: {calibration_root}: calibration data folder not found", file=sys.stderr)
        return 2

    from cfdrnn_keras.model import ensemble as ensembles  # imports Keras and registers the custom layers
    from cfdrnn_keras.model import loading
    from cfdrnn_keras.model.fusion import fusion_of
    from cfdrnn_keras.model.uncertainty import uncertainty_of
    from export import export_model, manifest_table
    from export.saved_model import crop_size_of
    from export.tflite import face_crops

    try:
        model = loading.load_network(model_source)  # a packaged model's networks averaged where it has several
        options = ensembles.options_from_args(args) or default_options or ensembles.EnsembleOptions()
        # issue 17: the model's uncertainty / face-score calibration (beside a .keras file), when there is one
        calibration_entry = loading.calibration_entry(model_source, options)
        model = ensembles.for_inference(model, options, uncertainty=uncertainty_of(calibration_entry),
                                        fusion=fusion_of(calibration_entry, options))
    except Exception as error:  # a corrupt or foreign file: one line, no traceback
        print(f"export: {loading.describe(model_source)}: cannot load the model: {one_line(error)}", file=sys.stderr)
        return 2

    calibration = comparison = truth = None
    if calibration_root:
        crops, points = face_crops(calibration_root, args.calibration_count + args.compare_count, crop_size_of(model))
        if len(crops) == 0:
            print(f"export: {calibration_root}: no readable annotated faces (image + .pts)", file=sys.stderr)
        else:
            # Compare on faces spread over the set and kept out of the calibration.
            picks = np.unique(np.linspace(0, len(crops) - 1, min(args.compare_count, len(crops))).round().astype(int))
            rest = np.setdiff1d(np.arange(len(crops)), picks)
            comparison, truth = crops[picks], points[picks]
            calibration = crops[rest[: args.calibration_count]] if len(rest) else crops

    manifest = export_model(
        model, args.out, formats, calibration_crops=calibration, comparison_crops=comparison, comparison_points=truth,
        log=lambda line: print(line, file=sys.stderr), model_source=loading.describe(model_source), ensemble=options.to_dict(),
        max_image_pixels=args.max_image_pixels, max_request_pixels=args.max_request_pixels,
    )
    print(manifest_table(manifest))
    print(f"\nwrote {Path(args.out) / 'manifest.json'}")
    status = 1 if manifest["failed"] else 0
    if web:
        if web_model is None:
            if "tflite_int8_full" in manifest["failed"]:
                print("export: web: not written (tflite_int8_full failed)", file=sys.stderr)
                return 1
            web_model = (Path(args.out) / "cfdrnn_int8_full.tflite", args.model or packaged.DEFAULT_MODEL)
        status = max(status, _export_web(args.out, *web_model))
    return status


def _export_web(out, model_path, model_name) -> int:
    """`export.web.export_web` for the CLI: 0, or 1 with the reason in one line."""
    from export.web import WebExportError, export_web

    try:
        export_web(out, model_path, model_name, log=lambda line: print(line, file=sys.stderr))
    except WebExportError as error:
        print(f"export: web: {error}", file=sys.stderr)
        return 1
    print(f"wrote {Path(out) / 'web'} (open index.html through any static server, e.g. "
          f"python -m http.server -d {Path(out) / 'web'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
