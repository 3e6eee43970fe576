"""Video frames in, steady landmarks out: frame reading, face tracking and temporal smoothing.

Frames come from `cv2.VideoCapture` (whatever FFmpeg in the OpenCV wheel decodes) as RGB uint8.

Landmarks predicted frame by frame jitter by a pixel or two even on a still face. `FaceTracker`
follows each face from frame to frame (greedy matching of boxes by IoU) and smooths its 68 points
and box with a One-Euro filter (Casiez et al., CHI 2012): an exponential filter whose weight on the
new frame rises with the face's speed, so a still face is steady and a moving one does not lag.

    alpha = 2π·fc / (1 + 2π·fc),   fc = fc_still + beta · speed        (per-frame units)

`alpha_still` is the weight of the new frame while the face is still (1 = no smoothing); `speed` is
the smoothed mean point displacement per frame divided by the face size, so `beta` does not depend
on the resolution. All 68 points share one alpha per frame: smoothing points independently would
bend the face's shape while it moves.

A track ends where the face jumps, so neither its id nor its smoothing carries over to someone else:
at a hard cut (the frames' colour histograms differ by more than `CUT_DISTANCE` in total variation)
every track ends, and a face whose box overlaps a track's but whose appearance differs (normalised
correlation of 32×32 gray face crops below `MIN_FACE_SIMILARITY`) starts a new one. On the 105 pairs
of the 15 sample photos (each pair as two frames) these two tests together flag 104 cuts; a frame
moved by 20 px, zoomed 5 %, brightened by 10 and noisy stays below both thresholds.

Truncated files: `read_frames` stops at the first frame that cannot be decoded; `is_truncated`
compares the frames read with the container's frame count (tolerating 1 %, at least one frame, as
some containers only estimate it).
"""
from __future__ import annotations

import math
import os
import stat
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv", ".3gp")
DERIVATIVE_ALPHA = 0.5  # smoothing of the speed estimate itself (One-Euro's d_cutoff, per frame)
CUT_DISTANCE = 0.4  # total-variation distance of 8×8×8-bin colour histograms above which a frame is a cut
MIN_FACE_SIMILARITY = 0.4  # normalised correlation of two face crops below which they are two faces
TRUNCATION_TOLERANCE = 0.01  # frames a container may over-count (as a fraction; at least one frame)


class VideoReadError(ValueError):
    """A video that cannot be read; the message is one line naming the file and the problem."""

    def __init__(self, path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


@dataclass(frozen=True)
class VideoInfo:
    fps: float
    frame_count: int  # as the container says; 0 when unknown (some streams do not say)
    width: int
    height: int


def is_video_path(path) -> bool:
    return Path(path).suffix.lower() in VIDEO_EXTENSIONS


def open_video(path):
    """(cv2.VideoCapture, VideoInfo) for a readable video file; `VideoReadError` otherwise."""
    import cv2

    path = Path(path)
    try:
        info = os.stat(path)
        if stat.S_ISREG(info.st_mode):
            with open(path, "rb"):  # readable? (OpenCV would only say it cannot open it)
                pass
    except FileNotFoundError:
        raise VideoReadError(path, "broken symbolic link" if os.path.islink(path) else "file not found") from None
    except OSError as error:
        raise VideoReadError(path, f"cannot read: {error.strerror or error}") from None
    if stat.S_ISDIR(info.st_mode):
        raise VideoReadError(path, "is a directory, not a video")
    if not stat.S_ISREG(info.st_mode):
        raise VideoReadError(path, "not a regular file")
    if info.st_size == 0:
        raise VideoReadError(path, "empty file")
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        capture.release()
        raise VideoReadError(path, "not a video or corrupt (OpenCV cannot open it)")
    fps = capture.get(cv2.CAP_PROP_FPS)
    video = VideoInfo(fps=float(fps) if fps and math.isfinite(fps) and fps > 0 else 0.0,
                      frame_count=max(0, int(capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0)),
                      width=int(capture.get(cv2.CAP_PROP_FRAME_WIDTH) or 0),
                      height=int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT) or 0))
    return capture, video


def read_frames(path):
    """Yield (frame index, RGB uint8 frame) for every frame; a file without a single frame is an error."""
    import cv2

    capture, _ = open_video(path)
    index = 0
    try:
        while True:
            ok, frame = capture.read()
            if not ok or frame is None:
                break
            if frame.ndim == 2:
                frame = cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
            yield index, np.ascontiguousarray(frame[:, :, 2::-1])
            index += 1
    finally:
        capture.release()
    if index == 0:
        raise VideoReadError(path, "no frame could be decoded")


def is_truncated(frames_read: int, frame_count: int) -> bool:
    """Whether fewer frames were decoded than the container says it holds (beyond the tolerance);
    False when the container does not say (frame_count 0)."""
    if frame_count <= 0:
        return False
    return frames_read < frame_count - max(1, int(TRUNCATION_TOLERANCE * frame_count))


# ----------------------------------------------------------------------------------------------
# Smoothing and tracking
# ----------------------------------------------------------------------------------------------
def alpha_from_cutoff(cutoff: float) -> float:
    """Exponential-filter weight of the new sample for a cutoff in cycles per frame."""
    if math.isinf(cutoff):
        return 1.0
    tau = 2 * math.pi * cutoff
    return tau / (1 + tau)


def cutoff_from_alpha(alpha: float) -> float:
    """Inverse of `alpha_from_cutoff` (alpha 1 → infinite cutoff, i.e. no smoothing)."""
    if not 0 < alpha <= 1:
        raise ValueError(f"smoothing alpha must be in (0, 1], got {alpha}")
    return math.inf if alpha >= 1 else alpha / (2 * math.pi * (1 - alpha))


class OneEuroFilter:
    """One-Euro filter for one face: 68 points and a box, one adaptive alpha per frame."""

    def __init__(self, alpha_still: float = 0.3, beta: float = 20.0):
        self.cutoff_still = cutoff_from_alpha(alpha_still)
        self.beta = float(beta)
        self.points = None
        self.box = None
        self.velocity = None
        self.last_alpha = 1.0

    def __call__(self, points: np.ndarray, box) -> tuple[np.ndarray, np.ndarray]:
        points = np.asarray(points, dtype=np.float64)
        box = np.asarray(box[:4], dtype=np.float64)
        if self.points is None:
            self.points, self.box, self.velocity = points.copy(), box.copy(), np.zeros_like(points)
            self.last_alpha = 1.0
            return self.points.copy(), self.box.copy()
        self.velocity = DERIVATIVE_ALPHA * (points - self.points) + (1 - DERIVATIVE_ALPHA) * self.velocity
        size = max(box[2] - box[0], box[3] - box[1], 1e-6)
        speed = float(np.linalg.norm(self.velocity, axis=-1).mean()) / size
        alpha = alpha_from_cutoff(self.cutoff_still + self.beta * speed)
        self.points = alpha * points + (1 - alpha) * self.points
        self.box = alpha * box + (1 - alpha) * self.box
        self.last_alpha = alpha
        return self.points.copy(), self.box.copy()


def frame_signature(frame: np.ndarray) -> np.ndarray:
    """A frame's 8×8×8-bin colour histogram (of a 64×48 thumbnail), normalised to sum 1."""
    import cv2

    small = cv2.resize(np.ascontiguousarray(frame), (64, 48), interpolation=cv2.INTER_AREA)
    if small.ndim == 2:
        small = np.repeat(small[:, :, None], 3, axis=2)
    histogram = cv2.calcHist([small[:, :, :3]], [0, 1, 2], None, [8, 8, 8], [0, 256] * 3).ravel()
    return histogram / max(float(histogram.sum()), 1.0)


def is_cut(previous: np.ndarray, current: np.ndarray, threshold: float = CUT_DISTANCE) -> bool:
    """Whether two frame signatures differ as two different shots do (total variation > threshold)."""
    return 0.5 * float(np.abs(previous - current).sum()) > threshold


def face_appearance(frame: np.ndarray, box, size: int = 32) -> np.ndarray:
    """The face's box cut from the frame as a size×size gray crop, zero mean and unit variance."""
    import cv2

    x0, y0, x1, y1 = (float(v) for v in box[:4])
    half = max(x1 - x0, y1 - y0, 1.0) / 2
    scale = size / (2 * half)
    matrix = np.float32([[scale, 0, size / 2 - (x0 + x1) / 2 * scale], [0, scale, size / 2 - (y0 + y1) / 2 * scale]])
    gray = np.ascontiguousarray(frame)
    if gray.ndim == 3:
        gray = cv2.cvtColor(gray[:, :, :3], cv2.COLOR_RGB2GRAY)
    crop = cv2.warpAffine(gray, matrix, (size, size), flags=cv2.INTER_AREA,
                          borderMode=cv2.BORDER_REPLICATE).astype(np.float64)
    return (crop - crop.mean()) / (crop.std() + 1e-6)


def face_similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Normalised correlation of two `face_appearance` crops (1 = identical)."""
    return float((a * b).mean())


class FaceTracker:
    """Gives each face a track id that persists across frames and (optionally) smooths it.

    update(faces, frame) takes one frame's `FaceLandmarks` (and the RGB frame they were found in)
    and returns [(track id, face)] in the same order, the faces smoothed when `alpha_still` < 1. A
    face matches the previous frame's face whose box overlaps it most (IoU > `min_iou`, greedy); a
    face with no match starts a new track, and a track with no face in a frame ends. Given the
    frames, a track also ends at a cut, and a face that does not look like the track's last face
    does not continue it (see the module docstring); without them only the boxes are compared.
    """

    def __init__(self, alpha_still: float = 1.0, beta: float = 20.0, min_iou: float = 0.3,
                 cut_distance: float = CUT_DISTANCE, min_similarity: float = MIN_FACE_SIMILARITY):
        cutoff_from_alpha(alpha_still)  # validates
        self.alpha_still = float(alpha_still)
        self.beta = float(beta)
        self.min_iou = float(min_iou)
        self.cut_distance = float(cut_distance)
        self.min_similarity = float(min_similarity)
        self._tracks: dict[int, tuple] = {}  # id → (box, filter, appearance or None)
        self._next_id = 0
        self._signature = None
        self.cuts = 0  # cuts seen so far
        self.last_was_cut = False

    def update(self, faces, frame: np.ndarray | None = None) -> list[tuple[int, object]]:
        from .face_detector import iou

        self.last_was_cut = False
        if frame is not None:
            signature = frame_signature(frame)
            if self._signature is not None and is_cut(self._signature, signature, self.cut_distance):
                self._tracks = {}  # another shot: no face continues a track across it
                self.cuts += 1
                self.last_was_cut = True
            self._signature = signature
        looks = [face_appearance(frame, face.box) if frame is not None else None for face in faces]
        pairs = sorted(((iou(face.box, box), index, track_id)
                        for index, face in enumerate(faces)
                        for track_id, (box, _, _) in self._tracks.items()), reverse=True)
        assigned: dict[int, int] = {}
        used_tracks = set()
        for overlap, index, track_id in pairs:
            if overlap <= self.min_iou:
                break
            if index in assigned or track_id in used_tracks:
                continue
            before = self._tracks[track_id][2]
            if looks[index] is not None and before is not None \
                    and face_similarity(looks[index], before) < self.min_similarity:
                continue  # the box is where the face was, but it is someone else
            assigned[index] = track_id
            used_tracks.add(track_id)
        tracks, results = {}, []
        for index, face in enumerate(faces):
            if index in assigned:
                track_id = assigned[index]
                smoother = self._tracks[track_id][1]
            else:
                track_id, self._next_id = self._next_id, self._next_id + 1
                smoother = OneEuroFilter(self.alpha_still, self.beta) if self.alpha_still < 1 else None
            raw_box = tuple(face.box)
            if smoother is not None:
                points, box = smoother(face.points, face.box)
                face = replace(face, points=points, box=tuple(float(v) for v in box))
            tracks[track_id] = (raw_box, smoother, looks[index])
            results.append((track_id, face))
        self._tracks = tracks
        return results


def landmarks_in_video(path, detector, alpha_still: float = 1.0, beta: float = 20.0):
    """Yield (frame index, RGB frame, [(track id, FaceLandmarks)]) for every frame of a video.

    detector: a `LandmarkDetector`. alpha_still < 1 smooths each tracked face (see the module docstring).
    """
    tracker = FaceTracker(alpha_still=alpha_still, beta=beta)
    for index, frame in read_frames(path):
        yield index, frame, tracker.update(detector.detect(frame), frame)


__all__ = ["CUT_DISTANCE", "FaceTracker", "MIN_FACE_SIMILARITY", "landmarks_in_video", "OneEuroFilter", "VIDEO_EXTENSIONS",
           "VideoInfo", "VideoReadError", "alpha_from_cutoff", "cutoff_from_alpha", "face_appearance", "face_similarity",
           "frame_signature", "is_cut", "is_truncated", "is_video_path", "open_video", "read_frames"]
