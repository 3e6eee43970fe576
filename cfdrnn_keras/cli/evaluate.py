"""Evaluate a landmark model on the 300-W protocol: NME (inter-ocular and inter-pupil), AUC_0.08,
failure rate, CED curves, beside the CFDRNN paper's figures (Tables 5-7; DESIGN.md section 3).

    python tools/evaluate.py --data ../300W --model model.keras --json eval.json --plots plots/
    python tools/evaluate.py --data ../shared/data/300w --model m.keras --limit 554 --json eval.json
    python tools/evaluate.py --held-out runs/mobile/split.json --model runs/mobile/best.keras --json val.json
    python tools/evaluate.py --compare run_a.json run_b.json --plots plots/

Every folder is searched for image + .pts pairs. 300-W test folders are grouped as the papers do:
common (lfpw/testset + helen/testset), challenging (ibug), full (common + challenging, image-weighted)
and private (01_Indoor + 02_Outdoor); any other folder is one set named after it; "all" covers every
face. Predictions are scored in the original photo's pixels. See docs/EVALUATION.md.

Files that cannot be scored (a .pts without its image, an image without a .pts, an unreadable photo
or .pts, points far outside their photo) are named once each as they are skipped, counted by reason
at the end and listed in the report's "skipped"; --strict makes any of them an error (exit 1, the
report still written). Exit status: 0 done, 1 files skipped under --strict, 2 nothing evaluated
(no model, no faces, a usage error).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np



def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", nargs="+", default=[], metavar="DIR",
                        help="folders (or single .pts files) with annotated faces; needed unless --compare")
    parser.add_argument("--held-out", default=None, metavar="SPLIT.json",
                        help="also evaluate the validation faces that a training run held out (its RUN_DIR/"
                             "split.json from tools/train.py), so a model is scored on exactly the faces it "
                             "never trained on")
    parser.add_argument("--model", default=None, metavar="NAME|PATH",
                        help="a packaged model's name (NAME: its LiteRT file, as LandmarkDetector() runs it; "
                             "NAME:keras: its float Keras network), a .keras file, a SavedModel folder or a .tflite "
                             "file (default: the default packaged model, on LiteRT)")
    parser.add_argument("--trust-model", action="store_true",
                        help="run a SavedModel --model without checking its graph (a SavedModel is a program: by "
                             "default one using any op that this project's exports do not use, file I/O or "
                             "py_func say, is refused; .keras and .tflite files are data and need no trust)")
    parser.add_argument("--verbose", action="store_true",
                        help="show TensorFlow's and LiteRT's own log lines (default: hidden)")
    parser.add_argument("--box", choices=("gt", "detect"), default="gt",
                        help="face box: 'gt' = box of the 68 annotated points (as HRNet/PIPNet), 'detect' = the "
                             "package's face detector; a face it misses counts as a failure (default: gt)")
    parser.add_argument("--json", dest="json_path", default="evaluation.json", metavar="OUT.json",
                        help="where to write the report (default: evaluation.json)")
    parser.add_argument("--plots", default=None, metavar="DIR",
                        help="write CED curves as PNG into this folder (default: no plots)")
    parser.add_argument("--engine", choices=("keras", "tflite"), default="keras",
                        help="run a .keras model with Keras/TensorFlow, or convert it in memory to TFLite and run "
                             "it with LiteRT (same landmarks to ~1e-7, about half the CPU time; default: keras)")
    parser.add_argument("--batch-size", type=int, default=16, help="faces per model call (default: 16)")
    parser.add_argument("--limit", type=int, default=None, metavar="N",
                        help="evaluate only the first N faces, sorted by path (default: all)")
    parser.add_argument("--workers", type=int, default=2,
                        help="threads reading and cropping photos while the model runs (default: 2)")
    parser.add_argument("--compare", nargs="+", default=None, metavar="RUN.json",
                        help="instead of evaluating, plot these reports' CED curves together into --plots "
                             "(default plots folder: plots) and print their tables")
    parser.add_argument("--quiet", action="store_true", help="no progress bar (default: show it)")
    parser.add_argument("--strict", action="store_true",
                        help="make any skipped file (a .pts without its image, an image without a .pts, an "
                             "unreadable photo or .pts, points far outside the photo) an error: the report is "
                             "still written, listing them, and the exit status is 1 (default: skip, list, go on)")
    from cfdrnn_keras import ensemble_options

    ensemble_options.add_arguments(parser)
    return parser.parse_args(argv)


def compare(args) -> int:
    from cfdrnn_keras.evaluation import EvaluationError, load_report, markdown_table, report_members, report_missed
    from cfdrnn_keras.plots import plot_compare

    runs, reports = {}, {}
    for path in args.compare:
        try:
            report = load_report(path)
        except EvaluationError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        model = str(report["model"])
        short = Path(model).name if Path(model).suffix.lower() in (".keras", ".tflite") else model
        label = f"{Path(path).stem}: {short}"
        runs[label], reports[label] = report_members(report), report
        print(f"\n### {label}\n\n{markdown_table(report['subsets'], report_missed(report))}")
    if len(reports) > 1 and not print_paired_differences(reports):
        return 2
    written = plot_compare(runs, args.plots or "plots")
    for path in written:
        print(f"wrote {path}")
    return 0


def print_paired_differences(reports: dict) -> bool:
    """Each later report against the first, face by face, with a paired bootstrap interval (False: an error)."""
    from cfdrnn_keras import paired_comparison as paired

    (baseline_label, baseline), *others = reports.items()
    try:
        rows = {label: paired.paired_difference(baseline, report) for label, report in others}
    except paired.ComparisonError as error:
        print(f"error: {error}", file=sys.stderr)
        return False
    print(f"\n### Paired against {baseline_label} (inter-ocular NME %, B − A over the faces both scored; "
          f"{paired.DEFAULT_RESAMPLES} bootstrap resamples of those faces)\n")
    print(paired.markdown_table("the first", rows))
    return True


def held_out_faces(split_path) -> list[str]:
    """The .pts paths a training run held out for validation (the "validation" list of its split.json)."""
    try:
        split = json.loads(Path(split_path).read_text())
    except (OSError, ValueError) as error:
        raise ValueError(f"{split_path}: cannot read the split: {error}") from None
    faces = split.get("validation") if isinstance(split, dict) else None
    if not isinstance(faces, list) or not faces:
        raise ValueError(f"{split_path}: no \"validation\" list of faces (not a split.json of tools/train.py?)")
    missing = [path for path in faces if not Path(path).is_file()]
    if missing:
        raise ValueError(f"{split_path}: {len(missing)} of its {len(faces)} validation faces are not found, e.g. "
                         f"{missing[0]} (paths are relative to the folder training ran in)")
    return [str(path) for path in faces]


def evaluate(args) -> int:
    from cfdrnn_keras import ensemble_options as ensembles
    from cfdrnn_keras import evaluation as ev
    from cfdrnn_keras.plots import plot_run

    if args.held_out:
        try:
            args.data = list(args.data) + held_out_faces(args.held_out)
        except ValueError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
    if not args.data:
        print("error: --data DIR or --held-out SPLIT.json is needed (or --compare A.json B.json)", file=sys.stderr)
        return 2
    if args.batch_size < 1 or (args.limit is not None and args.limit < 1):
        print("error: --batch-size and --limit must be at least 1", file=sys.stderr)
        return 2

    def skip(message):
        print(message, file=sys.stderr)

    try:
        options = ensembles.options_from_args(args)
        model, name = ev.load_model(args.model, options, trust_model=args.trust_model)
        used = getattr(model, "cfdrnn_ensemble", None)  # None for exported files: they run as exported
        fused = bool(getattr(model, "cfdrnn_fused", False))
        model = ev.prepare_engine(model, args.engine, num_threads=os.cpu_count())
        faces, problems = ev.discover(args.data, args.limit, on_skip=skip)
        if not faces:
            raise ev.EvaluationError(f"no annotated faces (image + .pts pairs) under {', '.join(args.data)}")
        start = time.perf_counter()
        result = ev.evaluate_faces(faces, model, box=args.box, batch_size=args.batch_size, model_name=name,
                                   progress=not args.quiet, on_skip=skip, workers=args.workers)
        seconds = time.perf_counter() - start
    except ev.EvaluationError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    result.skipped[:0] = problems
    result.ensemble = {**used.to_dict(), "fused": fused} if used is not None else None
    if not result.results:
        print(f"error: none of the {len(faces)} faces could be read", file=sys.stderr)
        return 2

    report = result.to_json()
    json_path = Path(args.json_path)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(report, indent=1))

    missed = result.missed()
    how = ""
    if result.ensemble:
        options = {key: result.ensemble[key] for key in ("flip", "stages", "subpixel")}
        fusion = ", estimates fused with the calibration's weights and offsets" if result.ensemble.get("fused") else ""
        how = f" ({ensembles.EnsembleOptions(**options).describe()}{fusion})"
    print(f"\nModel {name}{how}, box {args.box}: {len(result.results)} faces in {seconds:.1f} s "
          f"({len(result.skipped)} skipped)\n")
    print(ev.markdown_table(report["subsets"], missed))
    if any(missed.values()):
        print(f"\nThe detector missed {missed['all']} faces; each counts as an error of "
              f"{100 * ev.MISSED_FACE_ERROR:.0f} % (a failure).")
    if report.get("uncertainty"):
        print("\n" + uncertainty_table(report["uncertainty"]))
    print(f"\nwrote {json_path}")
    if args.plots:
        for path in plot_run(ev.report_members(report), args.plots, Path(name).name):
            print(f"wrote {path}")
        if report.get("uncertainty"):
            from cfdrnn_keras.plots import plot_reliability

            done = [r for r in result.results if r.pred is not None and r.uncertainty is not None]
            errors = [np.linalg.norm(r.pred - r.gt, axis=-1) for r in done]
            path = plot_reliability([r.uncertainty for r in done], errors, Path(args.plots) / "reliability.png",
                                    f"Uncertainty reliability, {Path(name).name}")
            print(f"wrote {path}")
    if result.skipped:
        total = len(result.results) + len(result.skipped)
        print(("error: --strict: " if args.strict else "") + ev.skip_summary(result.skipped, total), file=sys.stderr)
        if args.strict:
            return 1
    return 0


def uncertainty_table(summary: dict) -> str:
    """Issue 17's figures as a Markdown table (the goals beside them)."""
    fifths = " / ".join(f"{f['ratio']:.2f}" for f in summary["fifths"])
    lines = ["| uncertainty (per point) | value | goal |", "|---|---:|---:|",
             f"| points ({summary['faces']} faces) | {summary['points']} | |",
             f"| Spearman (uncertainty vs error) | {summary['spearman']:.3f} | ≥ 0.42 |",
             f"| AUROC, points off > 0.08 IO ({100 * summary['off_008_fraction']:.1f} % of points) | "
             f"{summary['auroc_off_008']:.3f} | ≥ 0.86 |",
             f"| actual / predicted error per fifth (low → high) | {fifths} | 0.75–1.25 |",
             f"| mean predicted / mean actual error (px) | {summary['mean_uncertainty_px']:.2f} / "
             f"{summary['mean_error_px']:.2f} | |"]
    if "face_score_min" in summary:
        lines.append(f"| face_score: lowest / median | {summary['face_score_min']:.3f} / "
                     f"{summary['face_score_median']:.3f} | |")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.compare:
        return compare(args)
    return evaluate(args)


if __name__ == "__main__":
    sys.exit(main())
