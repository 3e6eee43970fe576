"""Draw faces found by `LandmarkDetector` onto a copy of the photo (OpenCV), for eyeballing results.

Points are dots coloured by their uncertainty (issue 17: the expected error, relative to the eye
distance — green under 2 %, yellow about 4.5 %, red 10 % and more; a legend says so), or by the
heat-map confidence (red = low, green = high) for a model without uncertainty, and joined along the
68-point markup's contours (jaw, brows, nose, eyes, lips), so a misplaced point stands out; the box is the
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
               label: bool = True, legend: bool = True) -> np.ndarray:
    """A copy of the RGB photo with each face's box, contours and points drawn on it.

    Points are coloured by `uncertainty` where a face has it (legend in the bottom-left corner when
    `legend`), else by `confidence`.

    faces: objects with `.box`, `.points` (68, 2) and `.confidence` (68,) — `FaceLandmarks` — or dicts
    with the same keys (as in predict.py's JSON). Each face is labelled by `face_label`: its track id
    where it has one (a video's JSON entry), else its index in the list.
    """
    canvas = np.ascontiguousarray(np.asarray(image_rgb, dtype=np.uint8).copy())
    any_uncertainty = False
    shift = 4  # sub-pixel drawing: coordinates are given ×16
    scale = 1 << shift
    for index, face in enumerate(faces):
        box, points, confidence = _fields(face)
        uncertainty = _uncertainty(face)
        if uncertainty is not None:
            any_uncertainty = True
            eyes = float(np.linalg.norm(points[36] - points[45])) if len(points) == 68 else 0.0
            eyes = eyes if eyes > 1e-6 else max(box[2] - box[0], box[3] - box[1], 1.0) * 0.5
            colours = [uncertainty_colour(u / eyes) for u in uncertainty]
        else:
            colours = [confidence_colour(c) for c in confidence]
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
        for point, colour in zip(fixed, colours):
            cv2.circle(canvas, tuple(int(v) for v in point), int(round(radius * scale)), colour,
                       -1, cv2.LINE_AA, shift)
    if legend and any_uncertainty:
        draw_uncertainty_legend(canvas)
    return canvas


UNCERTAINTY_GREEN, UNCERTAINTY_RED = 0.02, 0.10  # expected error / eye distance at the two ends


def uncertainty_colour(relative: float) -> tuple[int, int, int]:
    """RGB for an uncertainty relative to the eye distance: green ≤ 2 %, yellow ≈ 4.5 %, red ≥ 10 %
    (a log scale between)."""
    r = max(float(relative), 1e-9)
    t = (np.log(r) - np.log(UNCERTAINTY_GREEN)) / (np.log(UNCERTAINTY_RED) - np.log(UNCERTAINTY_GREEN))
    return confidence_colour(1.0 - float(np.clip(t, 0.0, 1.0)))


def draw_uncertainty_legend(canvas: np.ndarray) -> None:
    """The colour key of `uncertainty_colour`, in the bottom-left corner, scaled to the image."""
    height, width = canvas.shape[:2]
    unit = max(1.0, min(height, width) / 400.0)
    font, size, thick = cv2.FONT_HERSHEY_SIMPLEX, 0.4 * unit, max(1, int(round(unit)))
    rows = [("expected error / eye distance", None), ("< 2 %", 0.015), ("4.5 %", 0.045), ("> 10 %", 0.12)]
    line = int(round(16 * unit))
    box_w, box_h = int(round(200 * unit)), line * len(rows) + int(round(6 * unit))
    x0, y0 = int(round(6 * unit)), height - box_h - int(round(6 * unit))
    overlay = canvas.copy()
    cv2.rectangle(overlay, (x0, y0), (x0 + box_w, y0 + box_h), (0, 0, 0), -1)
    cv2.addWeighted(overlay, 0.55, canvas, 0.45, 0, dst=canvas)
    for i, (text, value) in enumerate(rows):
        y = y0 + line * (i + 1)
        x = x0 + int(round(6 * unit))
        if value is not None:
            cv2.circle(canvas, (x + int(round(4 * unit)), y - int(round(4 * unit))), int(round(4 * unit)),
                       uncertainty_colour(value), -1, cv2.LINE_AA)
            x += int(round(14 * unit))
        cv2.putText(canvas, text, (x, y), font, size, (255, 255, 255), thick, cv2.LINE_AA)


def face_label(face, index: int) -> str:
    """The number drawn beside a face: its "track" (a video's JSON entry, or an object with a
    `.track`) so the drawing and the JSON name a face alike; else its index in the frame."""
    track = face.get("track") if isinstance(face, dict) else getattr(face, "track", None)
    return str(index if track is None else track)


def _uncertainty(face):
    value = face.get("uncertainty") if isinstance(face, dict) else getattr(face, "uncertainty", None)
    return None if value is None else np.asarray(value, np.float64)


def _fields(face):
    if isinstance(face, dict):
        box, points = face["box"], face["points"]
        confidence = face.get("confidence", np.ones(len(points)))
    else:
        box, points, confidence = face.box, face.points, face.confidence
    return [float(v) for v in box[:4]], np.asarray(points, dtype=np.float64), np.asarray(confidence, np.float64)


__all__ = ["CONTOURS", "confidence_colour", "draw_faces", "draw_uncertainty_legend", "face_label",
           "uncertainty_colour"]
