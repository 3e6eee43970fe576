"""Draw faces found by `LandmarkDetector` onto a copy of the photo (OpenCV), for eyeballing results.

Points are dots coloured by confidence (red = low, green = high) and joined along the 68-point
markup's contours (jaw, brows, nose, eyes, lips), so a misplaced point stands out; the box is the
face box in the 68-point-box convention. Line widths scale with the face so both a 150-px thumbnail
and a 4K frame stay readable.
"""
from __future__ import annotations

import cv2
import numpy as np

# 68-point markup contours (0-based, inclusive ranges) and whether each closes on itself.
CONTOURS = (
    (0, 16, False),   # jaw
    (17, 21, False),  # right brow (image left)
    (22, 26, False),  # left brow
    (27, 30, False),  # nose bridge
    (31, 35, False),  # nostrils
    (36, 41, True),   # right eye
    (42, 47, True),   # left eye
    (48, 59, True),   # outer lips
    (60, 67, True),   # inner lips
)
BOX_COLOUR = (255, 160, 0)  # RGB orange
LINE_COLOUR = (255, 255, 255)


def confidence_colour(confidence: float) -> tuple[int, int, int]:
    """RGB from red (0) through yellow (0.5) to green (1)."""
    c = float(np.clip(confidence, 0.0, 1.0))
    return (int(round(255 * min(1.0, 2 - 2 * c))), int(round(255 * min(1.0, 2 * c))), 0)


def draw_faces(image_rgb: np.ndarray, faces, draw_boxes: bool = True, draw_contours: bool = True,
               label: bool = True) -> np.ndarray:
    """A copy of the RGB photo with each face's box, contours and points drawn on it.

    faces: objects with `.box`, `.points` (68, 2) and `.confidence` (68,) — `FaceLandmarks` — or dicts
    with the same keys (as in predict.py's JSON). Each face is labelled by `face_label`: its track id
    where it has one (a video's JSON entry), else its index in the list.
    """
    canvas = np.ascontiguousarray(np.asarray(image_rgb, dtype=np.uint8).copy())
    shift = 4  # sub-pixel drawing: coordinates are given ×16
    scale = 1 << shift
    for index, face in enumerate(faces):
        box, points, confidence = _fields(face)
        side = max(box[2] - box[0], box[3] - box[1], 1.0)
        thickness = max(1, int(round(side / 150)))
        radius = max(1.5, side / 90)
        if draw_boxes:
            corner0 = (int(round(box[0] * scale)), int(round(box[1] * scale)))
            corner1 = (int(round(box[2] * scale)), int(round(box[3] * scale)))
            cv2.rectangle(canvas, corner0, corner1, BOX_COLOUR, thickness, cv2.LINE_AA, shift)
            if label:
                text = face_label(face, index)
                cv2.putText(canvas, text, (int(box[0]), max(12, int(box[1]) - 4)), cv2.FONT_HERSHEY_SIMPLEX,
                            max(0.4, side / 300), BOX_COLOUR, thickness, cv2.LINE_AA)
        fixed = np.round(np.asarray(points, dtype=np.float64) * scale).astype(np.int32)
        if draw_contours and len(fixed) == 68:
            for start, end, closed in CONTOURS:
                cv2.polylines(canvas, [fixed[start:end + 1]], closed, LINE_COLOUR, max(1, thickness // 2),
                              cv2.LINE_AA, shift)
        for point, conf in zip(fixed, confidence):
            cv2.circle(canvas, tuple(int(v) for v in point), int(round(radius * scale)), confidence_colour(conf),
                       -1, cv2.LINE_AA, shift)
    return canvas


def face_label(face, index: int) -> str:
    """The number drawn beside a face: its "track" (a video's JSON entry, or an object with a
    `.track`) so the drawing and the JSON name a face alike; else its index in the frame."""
    track = face.get("track") if isinstance(face, dict) else getattr(face, "track", None)
    return str(index if track is None else track)


def _fields(face):
    if isinstance(face, dict):
        box, points = face["box"], face["points"]
        confidence = face.get("confidence", np.ones(len(points)))
    else:
        box, points, confidence = face.box, face.points, face.confidence
    return [float(v) for v in box[:4]], np.asarray(points, dtype=np.float64), np.asarray(confidence, np.float64)


__all__ = ["CONTOURS", "confidence_colour", "draw_faces", "face_label"]
