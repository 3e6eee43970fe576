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
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv", ".3gp")
DERIVATIVE_ALPHA = 0.5  # smoothing of the speed estimate itself (One-Euro's d_cutoff, per frame)


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
    if not path.exists():
        raise VideoReadError(path, "file not found")
    if path.is_dir():
        raise VideoReadError(path, "is a directory, not a video")
    if path.stat().st_size == 0:
        raise VideoReadError(path, "empty file")
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        capture.release()
        raise VideoReadError(path, "not a video or corrupt (OpenCV cannot open it)")
    fps = capture.get(cv2.CAP_PROP_FPS)
    info = VideoInfo(fps=float(fps) if fps and math.isfinite(fps) and fps > 0 else 0.0,
                     frame_count=max(0, int(capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0)),
                     width=int(capture.get(cv2.CAP_PROP_FRAME_WIDTH) or 0),
                     height=int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT) or 0))
    return capture, info


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


class FaceTracker:
    """Gives each face a track id that persists across frames and (optionally) smooths it.

    update(faces) takes one frame's `FaceLandmarks` and returns [(track id, face)] in the same order,
    the faces smoothed when `alpha_still` < 1. A face matches the previous frame's face whose box
    overlaps it most (IoU > `min_iou`, greedy); a face with no match starts a new track, and a track
    with no face in a frame ends.
    """

    def __init__(self, alpha_still: float = 1.0, beta: float = 20.0, min_iou: float = 0.3):
        cutoff_from_alpha(alpha_still)  # validates
        self.alpha_still = float(alpha_still)
        self.beta = float(beta)
        self.min_iou = float(min_iou)
        self._tracks: dict[int, tuple] = {}  # id → (box, filter)
        self._next_id = 0

    def update(self, faces) -> list[tuple[int, object]]:
        from .face_detector import iou

        pairs = sorted(((iou(face.box, box), index, track_id)
                        for index, face in enumerate(faces)
                        for track_id, (box, _) in self._tracks.items()), reverse=True)
        assigned: dict[int, int] = {}
        used_tracks = set()
        for overlap, index, track_id in pairs:
            if overlap <= self.min_iou:
                break
            if index in assigned or track_id in used_tracks:
                continue
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
            tracks[track_id] = (raw_box, smoother)
            results.append((track_id, face))
        self._tracks = tracks
        return results


def landmarks_in_video(path, detector, alpha_still: float = 1.0, beta: float = 20.0):
    """Yield (frame index, RGB frame, [(track id, FaceLandmarks)]) for every frame of a video.

    detector: a `LandmarkDetector`. alpha_still < 1 smooths each tracked face (see the module docstring).
    """
    tracker = FaceTracker(alpha_still=alpha_still, beta=beta)
    for index, frame in read_frames(path):
        yield index, frame, tracker.update(detector.detect(frame))


__all__ = ["FaceTracker", "landmarks_in_video", "OneEuroFilter", "VIDEO_EXTENSIONS", "VideoInfo", "VideoReadError", "alpha_from_cutoff",
           "cutoff_from_alpha", "is_video_path", "open_video", "read_frames"]
