"""68 facial landmarks for every face in photos, folders of photos and videos.

    python tools/predict.py examples/astronaut.png --draw out/
    python tools/predict.py photos/ clip.mp4 --model model.keras --json landmarks.json --draw out/ --smooth 0.3

Inputs: image files (any format OpenCV reads: jpg, png, bmp, ppm/pgm, tiff, webp, ...; 8- or 16-bit,
grayscale, colour or with alpha), folders (searched recursively for image and video extensions),
and video files (every frame, by extension: .mp4 .avi .mov .mkv .webm ...).

A file that cannot be used (missing, unreadable, empty, corrupt, not an image, larger than
--max-pixels: refused from its header before decoding, in every format) gets a one-line message and
the other inputs go on; the exit status is 1 if any input failed, 2 for a usage, output-path or
model error, else 0. The output paths (--json, --draw) are checked before any input is read: one
line and exit 2 if they cannot be written. The JSON file is replaced only once the run is complete.
A photo in which no face is found is reported ("no face found") but is not a failure, unless
--require-face is given: a folder of holiday photos has landscapes in it. A video that ends before
the frame count its container states is "truncated": its frames are kept, with "frames_read" and
"frame_count", and it counts as a failure.

JSON (--json): {"model": ..., "inputs": [{"file", "kind": "image"|"video", "status": "ok"|"no face"|
"error", "error": message, "width", "height", "faces": [{"box": [x0, y0, x1, y1], "score", "points":
[[x, y] × 68], "confidence": [68]}]} ...]}; a video ("ok", "no face" or "truncated") has "fps",
"frames_read", "frame_count" (the container's; 0 if unknown) and "frames": [{"frame", "time",
"faces": [... with "track"]}]; the number drawn beside a face in a video is its "track".
Coordinates are the original photo's pixels, 0-based pixel centres;
the box is in the 68-point-box convention (tight box of the 68 points).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from pathlib import Path

from ..errors import one_line


DEFAULT_MAX_PIXELS = 50_000_000


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders and video files")
    parser.add_argument("--model", default=None, metavar="NAME|PATH",
                        help="a packaged model's name (NAME runs its LiteRT file, NAME:keras its float Keras "
                             "network), a .tflite file, a .keras file or a SavedModel directory (default: the "
                             "default packaged model, on LiteRT)")
    parser.add_argument("--trust-model", action="store_true",
                        help="run a SavedModel --model without checking its graph (a SavedModel is a program: by "
                             "default one using any op that this project's exports do not use, file I/O or "
                             "py_func say, is refused; .keras and .tflite files are data and need no trust)")
    parser.add_argument("--threads", type=int, default=None, metavar="N",
                        help="LiteRT threads for the network and the face detector (default: all cores)")
    parser.add_argument("--verbose", action="store_true",
                        help="show TensorFlow's and LiteRT's own log lines (default: hidden)")
    parser.add_argument("--json", dest="json_path", default=None, metavar="OUT",
                        help="write all results to this JSON file (default: none; a summary line per input is "
                             "printed either way)")
    parser.add_argument("--draw", default=None, metavar="DIR",
                        help="write each photo with boxes and points drawn into DIR (PNG), and each video as "
                             "DIR/<name>.avi (MJPG) (default: no drawings)")
    parser.add_argument("--smooth", type=float, default=1.0, metavar="ALPHA",
                        help="video only: One-Euro smoothing of each tracked face, ALPHA in (0, 1] = weight of "
                             "the new frame while the face is still (e.g. 0.3; 1 = off) (default: 1)")
    parser.add_argument("--smooth-beta", type=float, default=20.0, metavar="BETA",
                        help="video only: how fast the smoothing lets go as the face moves, per face-size per "
                             "frame of speed (default: 20)")
    parser.add_argument("--batch-size", type=int, default=8, help="faces per network call (default: 8)")
    parser.add_argument("--boxes-from-pts", action="store_true",
                        help="use the tight box of a .pts file beside each image instead of the face detector "
                             "(default: detect)")
    parser.add_argument("--detector-zoom", type=int, choices=(1, 2), default=2,
                        help="1: search the whole photo once (fast, large faces); 2: also search half-size "
                             "windows for small faces (default: 2)")
    parser.add_argument("--min-score", type=float, default=0.5,
                        help="face-detector score threshold (default: 0.5)")
    parser.add_argument("--min-face-score", type=float, default=None, metavar="P",
                        help="drop faces whose face_score (does the crop hold a face the model can align? 0-1) "
                             "is below P, e.g. 0.5 against false detections (default: keep every face)")
    parser.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                        help=f"refuse images with more pixels than this, checked before decoding "
                             f"(default: {DEFAULT_MAX_PIXELS})")
    parser.add_argument("--require-face", action="store_true",
                        help="count a photo (or a video) with no face as a failure (default: report only)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar and no per-input lines (default: off)")
    from cfdrnn_keras import ensemble_options

    ensemble_options.add_arguments(parser)
    args = parser.parse_args(argv)
    if not 0 < args.smooth <= 1:
        parser.error(f"--smooth must be in (0, 1], got {args.smooth}")
    if args.batch_size < 1:
        parser.error("--batch-size must be at least 1")
    if args.threads is not None and args.threads < 1:
        parser.error("--threads must be at least 1")
    return args


# ----------------------------------------------------------------------------------------------
# Inputs
# ----------------------------------------------------------------------------------------------
def expand_inputs(inputs, problems: list | None = None) -> list[Path]:
    """Files as given (in order), folders replaced by their image and video files (sorted, recursive).

    Never raises: a path that cannot even be examined is kept as a file (processing reports why), and
    a subfolder that cannot be listed is appended to `problems` as "folder: cannot read: why".
    """
    from cfdrnn_keras.runtime.video import VIDEO_EXTENSIONS
    from data_pipelines.images import IMAGE_EXTENSIONS

    wanted = set(IMAGE_EXTENSIONS) | {".tif", ".tiff", ".webp"} | set(VIDEO_EXTENSIONS)
    problems = [] if problems is None else problems
    files = []
    for item in inputs:
        path = Path(item)
        try:
            is_folder = path.is_dir()
        except OSError:  # e.g. a name too long, or a parent folder it may not search
            is_folder = False
        if not is_folder:
            files.append(path)  # missing or odd files are reported when processed
            continue

        def unreadable(error, root=path):
            problems.append(f"{error.filename or root}: cannot read the folder: {error.strerror or error}")

        found = []
        for directory, _, names in os.walk(path, onerror=unreadable):
            found.extend(Path(directory) / name for name in names
                         if Path(name).suffix.lower() in wanted and os.path.isfile(os.path.join(directory, name)))
        files.extend(sorted(found))
    return files


def check_outputs(json_path, draw) -> str | None:
    """Why --json or --draw cannot be written (one line), or None; creates missing folders.

    Runs before any work, so a typo in an output path costs nothing and loses nothing.
    """
    import tempfile

    def writable(folder: Path, option: str, target: Path) -> str | None:
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except FileExistsError:
            return f"{option} {target}: {_first_file(folder)} is a file, not a folder"
        except NotADirectoryError:
            return f"{option} {target}: {_first_file(folder)} is a file, not a folder"
        except OSError as error:
            return f"{option} {target}: cannot create {folder}: {error.strerror or error}"
        try:
            handle, probe = tempfile.mkstemp(dir=folder, prefix=".cfdrnn-write-test-")
            os.close(handle)
            os.unlink(probe)
        except OSError as error:
            return f"{option} {target}: cannot write in {folder}: {error.strerror or error}"
        return None

    if json_path:
        target = Path(json_path)
        if target.is_dir():
            return f"--json {target}: is a folder; give a file name, e.g. {target / 'landmarks.json'}"
        problem = writable(target.parent if str(target.parent) else Path("."), "--json", target)
        if problem:
            return problem
    if draw:
        target = Path(draw)
        if target.exists() and not target.is_dir():
            return f"--draw {target}: is a file, not a folder"
        problem = writable(target, "--draw", target)
        if problem:
            return problem
    return None


def _first_file(folder: Path) -> Path:
    """The nearest ancestor of `folder` (or itself) that exists and is not a folder."""
    for candidate in (folder, *folder.parents):
        if candidate.exists() and not candidate.is_dir():
            return candidate
    return folder


def write_json(path, content) -> None:
    """Write the results: through a temporary file and a rename for a regular file, so an earlier
    file is replaced only by a complete one (a device such as /dev/null is written directly)."""
    path = Path(path)
    if path.exists() and not path.is_file():
        with open(path, "w") as handle:
            json.dump(content, handle)
        return
    import tempfile

    from ..file_mode import match_plain_open

    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        match_plain_open(handle, path)  # readable as a plain open() would leave it, not mkstemp's 0600
        with os.fdopen(handle, "w") as stream:
            json.dump(content, stream)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


class Outputs:
    """Unique drawing names in --draw DIR (two inputs called face.jpg do not overwrite each other)."""

    def __init__(self, folder):
        self.folder = Path(folder) if folder else None
        self.used = set()
        if self.folder:
            self.folder.mkdir(parents=True, exist_ok=True)

    def name(self, source: Path, suffix: str) -> Path:
        stem, n = source.stem or "input", 0
        candidate = f"{stem}{suffix}"
        while candidate in self.used:
            n += 1
            candidate = f"{stem}_{n}{suffix}"
        self.used.add(candidate)
        return self.folder / candidate


# ----------------------------------------------------------------------------------------------
# Processing
# ----------------------------------------------------------------------------------------------
def pts_box(image_path: Path):
    from data_pipelines.geometry import face_box_from_points
    from data_pipelines.pts import read_pts

    pts = image_path.with_suffix(".pts")
    if not pts.is_file():
        raise FileNotFoundError(f"{image_path}: --boxes-from-pts but no {pts.name} beside it")
    return [face_box_from_points(read_pts(pts))]


def process_image(path: Path, detector, args, outputs: Outputs) -> dict:
    import cv2

    from cfdrnn_keras.runtime.drawing import draw_faces
    from data_pipelines.images import read_image

    # Phone photos are shown upright by their EXIF tag; .pts annotations refer to the stored pixels.
    image = read_image(path, max_pixels=args.max_pixels, apply_exif_orientation=not args.boxes_from_pts)
    boxes = pts_box(path) if args.boxes_from_pts else None
    faces = detector.detect(image, boxes=boxes)
    record = {"file": str(path), "kind": "image", "width": image.shape[1], "height": image.shape[0],
              "faces": [face.to_dict() for face in faces]}
    if outputs.folder:
        drawn = draw_faces(image, faces)
        target = outputs.name(path, ".png")
        if not cv2.imwrite(str(target), drawn[:, :, ::-1]):
            raise ValueError(f"{path}: cannot write the drawing {target}")
    return record


def process_video(path: Path, detector, args, outputs: Outputs, progress) -> dict:
    import cv2

    from cfdrnn_keras.runtime.drawing import draw_faces
    from cfdrnn_keras.runtime.video import landmarks_in_video, open_video

    capture, info = open_video(path)
    capture.release()
    writer = None
    frames = []
    bar = progress(total=info.frame_count or None, desc=path.name, unit="frame", leave=False)
    try:
        for index, frame, tracked in landmarks_in_video(path, detector, args.smooth, args.smooth_beta):
            entry = {"frame": index, "time": round(index / info.fps, 4) if info.fps else None,
                     "faces": [{"track": track_id, **face.to_dict()} for track_id, face in tracked]}
            frames.append(entry)
            if outputs.folder:
                if writer is None:
                    target = outputs.name(path, ".avi")
                    writer = cv2.VideoWriter(str(target), cv2.VideoWriter_fourcc(*"MJPG"), info.fps or 25.0,
                                             (frame.shape[1], frame.shape[0]))
                    if not writer.isOpened():
                        raise ValueError(f"{path}: cannot write the drawing {target}")
                # The JSON entries themselves are drawn: the number beside a face is its "track".
                writer.write(draw_faces(frame, entry["faces"])[:, :, ::-1])
            bar.update(1)
    finally:
        bar.close()
        if writer is not None:
            writer.release()
    return {"file": str(path), "kind": "video", "fps": info.fps, "width": info.width, "height": info.height,
            "smooth": args.smooth, "frames_read": len(frames), "frame_count": info.frame_count, "frames": frames}


def face_count(record: dict) -> int:
    if record["kind"] == "video":
        return sum(len(frame["faces"]) for frame in record["frames"])
    return len(record["faces"])


def run(args) -> int:
    from tqdm import tqdm

    from cfdrnn_keras.runtime.face_detector import DetectorUnavailableError, FaceDetector
    from cfdrnn_keras.ensemble_options import options_from_args
    from cfdrnn_keras.runtime.landmarker import LandmarkDetector, ModelLoadError
    from cfdrnn_keras.runtime.video import VideoReadError, is_truncated, is_video_path
    from data_pipelines.images import ImageReadError
    from data_pipelines.pts import PtsFormatError

    problem = check_outputs(args.json_path, args.draw)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    unreadable_folders: list[str] = []
    files = expand_inputs(args.inputs, unreadable_folders)
    for message in unreadable_folders:
        print(f"error: {message}", file=sys.stderr)
    if not files:
        print("error: no image or video files found in the inputs", file=sys.stderr)
        return 2
    try:
        detector = LandmarkDetector(model=args.model, batch_size=args.batch_size, ensemble=options_from_args(args),
                                    threads=args.threads, min_face_score=args.min_face_score, trust_model=args.trust_model)
        if not args.boxes_from_pts:
            detector.detector = FaceDetector(score_threshold=args.min_score, zoom=args.detector_zoom,
                                             num_threads=detector.threads)
    except (ModelLoadError, DetectorUnavailableError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    outputs = Outputs(args.draw)
    records, failed, faceless = [], 0, 0
    for message in unreadable_folders:
        records.append({"file": message.split(": cannot read the folder")[0], "kind": "folder", "status": "error",
                        "error": message})
    show = not args.quiet

    def say(message):
        if show:
            tqdm.write(message, file=sys.stdout)

    def progress(**options):
        return tqdm(disable=args.quiet, file=sys.stderr, **options)

    bar = tqdm(files, unit="file", disable=args.quiet or len(files) < 2, file=sys.stderr)
    for path in bar:
        try:
            if is_video_path(path):
                record = process_video(path, detector, args, outputs, progress)
            else:
                record = process_image(path, detector, args, outputs)
        except (ImageReadError, VideoReadError, PtsFormatError, FileNotFoundError, ValueError) as error:
            failed += 1
            records.append({"file": str(path), "kind": "video" if is_video_path(path) else "image",
                            "status": "error", "error": str(error)})
            tqdm.write(f"error: {one_line(error)}", file=sys.stderr)
            continue
        except Exception as error:  # anything else (out of memory, a codec crash): one line, go on
            failed += 1
            message = f"{path}: unexpected {type(error).__name__}: {one_line(error)}"
            records.append({"file": str(path), "status": "error", "error": message})
            tqdm.write(f"error: {message}", file=sys.stderr)
            continue
        count = face_count(record)
        if record["kind"] == "video" and is_truncated(record["frames_read"], record["frame_count"]):
            failed += 1
            record["status"] = "truncated"
            record["error"] = (f"{path}: truncated: {record['frames_read']} of {record['frame_count']} frames "
                               "could be read (the container says more)")
            tqdm.write(f"error: {record['error']}", file=sys.stderr)
        elif count == 0:
            faceless += 1
            record["status"] = "no face"
            if args.require_face:
                failed += 1
                tqdm.write(f"error: {path}: no face found", file=sys.stderr)
            else:
                say(f"{path}: no face found")
        else:
            record["status"] = "ok"
            if record["kind"] == "video":
                say(f"{path}: {len(record['frames'])} frames, {count} faces")
            else:
                say(f"{path}: {count} face{'s' if count != 1 else ''}")
        records.append(record)
    if args.json_path:
        try:
            write_json(args.json_path, {"model": detector.model_name, "inputs": records})
        except OSError as error:
            print(f"error: --json {args.json_path}: cannot write: {error.strerror or error}", file=sys.stderr)
            return 2
    failed += len(unreadable_folders)
    total = len(files) + len(unreadable_folders)
    ok = total - failed
    summary = f"{ok} of {total} inputs processed"
    if faceless:
        summary += f", {faceless} without a face"
    if failed:
        summary += f", {failed} failed"
    print(summary, file=sys.stderr)
    return 1 if failed else 0


def main(argv=None) -> int:
    args = parse_args(argv)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
