"""The default face detector: finds the annotated sample faces, maps boxes consistently, calibrates."""
import numpy as np
import pytest

from cfdrnn_keras.runtime.face_detector import (BoxCalibration, DetectorUnavailableError, FaceDetector, default_detector, iou,
                                   weighted_nms)
from data_pipelines.discovery import find_faces
from data_pipelines.geometry import face_box_from_points
from data_pipelines.images import read_image
from data_pipelines.pts import read_pts


def test_iou_hand_computed():
    assert iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(50 / 150)
    assert iou((0, 0, 10, 10), (10, 10, 20, 20)) == 0.0
    assert iou((0, 0, 4, 4, 0.9), (1, 1, 3, 3)) == pytest.approx(4 / 16)  # a score column is ignored
    assert iou((0, 0, 0, 0), (0, 0, 0, 0)) == 0.0


def test_calibration_apply_and_fit_recover_a_known_map():
    calibration = BoxCalibration(dx=0.05, dy=0.1, sx=0.9, sy=0.8)
    # Hand-computed: centre (50, 50) → (50 + 5, 50 + 10); size 100 → 90 × 80.
    assert calibration.apply((0, 0, 100, 100)) == pytest.approx((10, 20, 100, 100))
    rng = np.random.default_rng(0)
    detector_boxes = []
    for _ in range(50):
        x0, y0 = rng.uniform(0, 500, 2)
        w, h = rng.uniform(40, 300), rng.uniform(40, 300)
        detector_boxes.append((x0, y0, x0 + w, y0 + h))
    truth = [calibration.apply(b) for b in detector_boxes]
    fitted = BoxCalibration.fit(detector_boxes, truth)
    assert (fitted.dx, fitted.dy, fitted.sx, fitted.sy) == pytest.approx((0.05, 0.1, 0.9, 0.8), abs=1e-4)
    assert BoxCalibration().apply((3, 4, 30, 40)) == pytest.approx((3, 4, 30, 40))


def test_weighted_nms_blends_overlaps_and_keeps_separate_faces():
    boxes = np.array([[0, 0, 10, 10], [2, 0, 12, 10], [50, 50, 60, 60]], dtype=float)
    scores = np.array([0.9, 0.3, 0.6])
    kept = weighted_nms(boxes, scores, 0.3)
    assert len(kept) == 2
    assert kept[0][:4] == pytest.approx((0.5, 0, 10.5, 10))  # (0·0.9 + 2·0.3) / 1.2 = 0.5
    assert kept[0][4] == pytest.approx(0.9)
    assert kept[1] == pytest.approx((50, 50, 60, 60, 0.6))


@pytest.fixture(scope="module")
def samples(samples_dir):
    faces = find_faces(samples_dir)
    return [(f.image_path, read_image(f.image_path), face_box_from_points(read_pts(f.pts_path))) for f in faces]


def _found(detector, image, box):
    return any(iou(d, box) > 0.3 for d in detector.detect(image))


def test_finds_the_annotated_sample_faces(samples):
    detector = default_detector()
    assert len(samples) == 15
    missed = [path for path, image, box in samples if not _found(detector, image, box)]
    assert len(missed) <= 2, f"missed {missed}"
    # Calibrated boxes sit on the 68-point box, not just near it (measured median IoU ≈ 0.8).
    best = [max(iou(d, box) for d in detector.detect(image)) for _, image, box in samples if _found(detector, image, box)]
    assert np.median(best) > 0.65


def test_results_are_sorted_boxes_with_scores(samples):
    detections = default_detector().detect(samples[0][1])
    assert detections and all(len(d) == 5 and d[0] < d[2] and d[1] < d[3] for d in detections)
    scores = [d[4] for d in detections]
    assert scores == sorted(scores, reverse=True) and all(0.5 <= s <= 1 for s in scores)


def _centre_and_size(box):
    return np.array([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2]), max(box[2] - box[0], box[3] - box[1])


def test_boxes_follow_the_photo_when_shifted_and_mirrored(samples):
    """Pixel bookkeeping of the letterbox and windows: moving or flipping the photo moves the box alike.

    The box's size wobbles with what the model sees around the face; its centre must follow exactly
    (a slip in the letterbox or window offsets would show here)."""
    detector = FaceDetector(zoom=1)
    _, image, box = next(s for s in samples if "lenna" in s[0])
    centre, size = _centre_and_size(max(detector.detect(image), key=lambda d: iou(d, box)))
    height, width = image.shape[:2]
    # Mirrored: x ↦ width - 1 - x.
    mirrored = max(detector.detect(np.ascontiguousarray(image[:, ::-1])), key=lambda d: iou(d, box))
    m_centre, m_size = _centre_and_size(mirrored)
    assert np.abs(m_centre - (width - 1 - centre[0], centre[1])).max() < 0.02 * size
    assert abs(m_size / size - 1) < 0.1
    # Shifted by (32, 64) px on a canvas of the same size, so the model sees the face at the same scale.
    canvas = np.zeros_like(image)
    canvas[64:, 32:] = image[:height - 64, :width - 32]
    s_centre, s_size = _centre_and_size(max(detector.detect(canvas), key=lambda d: iou(d, box)))
    assert np.abs(s_centre - (centre + (32, 64))).max() < 0.02 * size
    assert abs(s_size / size - 1) < 0.1


def test_zoom_2_finds_small_faces_that_one_pass_misses(samples):
    """Each sample face shrunk to 48 px wide on a 1920×1080 canvas: below the whole-photo pass's limit."""
    import cv2

    small = []
    for _, image, box in samples:
        k = 48 / (box[2] - box[0])
        scaled = cv2.resize(image, None, fx=k, fy=k, interpolation=cv2.INTER_AREA)
        canvas = np.full((1080, 1920, 3), 90, np.uint8)
        h, w = min(scaled.shape[0], 780), min(scaled.shape[1], 1020)
        canvas[300:300 + h, 900:900 + w] = scaled[:h, :w]
        small.append((canvas, tuple(np.multiply(box, k) + (900, 300, 900, 300))))
    one_pass = sum(_found(FaceDetector(zoom=1), c, b) for c, b in small)
    tiled = sum(_found(FaceDetector(zoom=2), c, b) for c, b in small)
    assert tiled >= 12 and one_pass <= tiled - 6, (one_pass, tiled)


def test_blank_photo_has_no_face_and_bad_input_is_refused():
    detector = default_detector()
    assert detector.detect(np.zeros((300, 500, 3), np.uint8)) == []
    assert detector.detect(np.full((1, 1, 3), 255, np.uint8)) == []
    assert detector.detect(np.zeros((4, 30000, 3), np.uint8)) == []  # a strip: letterboxed without a 30000² array
    with pytest.raises(ValueError, match="uint8 RGB"):
        detector.detect(np.zeros((30, 50), np.uint8))
    with pytest.raises(ValueError, match="zoom"):
        FaceDetector(zoom=3)


def test_missing_model_file_is_one_clear_line(tmp_path):
    with pytest.raises(DetectorUnavailableError) as info:
        FaceDetector(model_path=tmp_path / "gone.tflite")
    assert "\n" not in str(info.value) and "gone.tflite" in str(info.value)
