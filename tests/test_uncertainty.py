"""Per-point uncertainty and face score (issue 17): the layer against numpy, safe saving, the fit,
export agreement (SavedModel, TFLite), and on real faces with the packaged LiteRT model: calibration,
AUROC, the occlusion effect and the face score on boxes off the face.

Bounds on real faces come from the measurement in docs/MODEL_CARD.md ("Uncertainty"): on the 15
sample photos the packaged full-int8 file gives Spearman 0.55, AUROC 0.89, fifth ratios 0.87–1.08,
a face-score AUROC of 0.999 against 47 face-sized boxes off every face, and the grey mouth patch
raises the mouth points' uncertainty on every face.
"""
import dataclasses
import json

import keras
import numpy as np
import pytest

from cfdrnn_keras import build_cfdrnn, get_preset
from cfdrnn_keras.model.codec import heatmap_peaks_numpy
from cfdrnn_keras.model.ensemble import EnsembleOptions, build_test_time_model
from cfdrnn_keras.model.uncertainty import (PEAK_FLOOR, PointUncertainty, calibration_path, ensemble_key,
                                            fit_face_score, fit_point_calibration, load_calibration, predict_point)
from cfdrnn_keras.runtime.backends import CropPrediction, as_crop_prediction
from cfdrnn_keras.uncertainty_metrics import auroc, fifth_ratios, spearman
from data_pipelines.geometry import MIRROR_PERMUTATION_68

PERM = np.asarray(MIRROR_PERMUTATION_68)


def synthetic_calibration(flip=True):
    rng = np.random.default_rng(1)
    return {"intercepts": list(rng.normal(0.5, 0.1, 68)), "slopes": [-1.5, -1.0],
            "face_weights": [3.0, -1.0] if flip else [3.0], "face_bias": 2.0}


@pytest.fixture(scope="module")
def tiny_network():
    keras.utils.set_random_seed(7)
    return build_cfdrnn(dataclasses.replace(get_preset("mobile"), input_size=64, width=0.0625))


@pytest.fixture(scope="module")
def crops():
    return np.random.default_rng(3).integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)


def numpy_features(network, crops, stages=(1, 2, 3, 4), flip=True):
    """The layer's features computed from the network's raw outputs with numpy."""
    x = crops.astype(np.float32) / 255.0 - 0.5
    batches = [x, x[:, :, ::-1]] if flip else [x]
    peaks, points = [], []
    for batch in batches:
        out = {k: np.asarray(v) for k, v in network(batch, training=False).items()}
        pk, pt = 0, 0
        for j in stages:
            coarse, peak = heatmap_peaks_numpy(out[f"heatmaps_{j}"], 4, 64)
            pk, pt = pk + peak, pt + (coarse + out[f"delta_{j}"]) * 64
        peaks.append(pk / len(stages))
        points.append(pt / len(stages))
    if flip:
        back = points[1][:, PERM].copy()
        back[..., 0] = 63.0 - back[..., 0]
        gap = np.linalg.norm(points[0] - back, axis=-1)
        peak = (peaks[0] + peaks[1][:, PERM]) / 2
    else:
        peak = peaks[0]
    log_peak = np.log(np.maximum(peak, PEAK_FLOOR))
    face = [log_peak.mean(1)] + ([np.log(np.maximum(gap, 0.05)).mean(1)] if flip else [])
    return np.stack([log_peak, np.repeat(log_peak.mean(1, keepdims=True), 68, 1)], -1), np.stack(face, -1)


@pytest.mark.parametrize("flip,stages", [(True, "all"), (False, "last")])
def test_layer_features_and_calibration_match_numpy(tiny_network, crops, flip, stages):
    options = EnsembleOptions(flip=flip, stages=stages)
    x = crops.astype(np.float32) / 255.0 - 0.5
    point, face = numpy_features(tiny_network, crops, (1, 2, 3, 4) if stages == "all" else (4,), flip)
    features = build_test_time_model(tiny_network, options, uncertainty="features")(x)
    np.testing.assert_allclose(np.asarray(features["uncertainty_features"]), point, atol=1e-5)
    np.testing.assert_allclose(np.asarray(features["face_features"]), face, atol=1e-4)
    calibration = synthetic_calibration(flip)
    out = build_test_time_model(tiny_network, options, uncertainty=calibration)(x)
    want = predict_point(calibration["intercepts"], calibration["slopes"], point)
    np.testing.assert_allclose(np.asarray(out["uncertainty"]), want, rtol=1e-4)
    score = 1 / (1 + np.exp(-(face @ np.asarray(calibration["face_weights"]) + calibration["face_bias"])))
    np.testing.assert_allclose(np.asarray(out["face_score"]), score, atol=1e-5)
    assert set(out) == {"landmarks", "confidence", "uncertainty", "face_score"}


def test_wrapper_with_uncertainty_saves_and_loads_safely(tiny_network, crops, tmp_path):
    model = build_test_time_model(tiny_network, EnsembleOptions(), uncertainty=synthetic_calibration())
    path = tmp_path / "wrapped.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert any(isinstance(layer, PointUncertainty) for layer in loaded.layers)
    x = crops.astype(np.float32) / 255.0 - 0.5
    for key in ("uncertainty", "face_score"):
        np.testing.assert_allclose(np.asarray(loaded(x)[key]), np.asarray(model(x)[key]), rtol=1e-6)


def test_calibration_needs_its_parameters():
    with pytest.raises(ValueError, match="needs intercepts"):
        PointUncertainty(4, 64, permutation=None)
    with pytest.raises(ValueError, match="slopes"):
        PointUncertainty(4, 64, intercepts=[0.0] * 68, slopes=[1.0], face_weights=[1.0])


def test_fit_recovers_a_known_calibration_and_is_calibrated():
    rng = np.random.default_rng(0)
    features = rng.normal(0, 0.5, (400, 68, 2))
    a, b = rng.normal(1.0, 0.2, 68), np.array([-1.2, 0.6])
    mean = predict_point(a, b, features)
    errors = mean * rng.exponential(1.0, mean.shape)
    fa, fb = fit_point_calibration(features, errors)
    np.testing.assert_allclose(fb, b, atol=0.05)
    assert np.abs(fa - a).mean() < 0.06  # each from 400 exponential draws: s.e. 0.05
    ratios = [f["ratio"] for f in fifth_ratios(predict_point(fa, fb, features), errors)]
    assert all(0.93 < r < 1.07 for r in ratios), ratios


def test_face_score_fit_separates():
    rng = np.random.default_rng(0)
    x = np.r_[rng.normal(1, 0.3, (50, 2)), rng.normal(-1, 0.3, (80, 2))]
    y = np.r_[np.ones(50), np.zeros(80)]
    w, c = fit_face_score(x, y)
    p = 1 / (1 + np.exp(-(x @ w + c)))
    assert auroc(p, y > 0.5) > 0.99 and p[:50].mean() > 0.8 and p[50:].mean() < 0.2


def test_metrics_by_hand():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert auroc([0.1, 0.4, 0.35, 0.8], [False, False, True, True]) == pytest.approx(0.75)
    ratios = fifth_ratios(np.arange(1, 11), 2 * np.arange(1, 11))
    assert [r["ratio"] for r in ratios] == pytest.approx([2.0] * 5)


def test_crop_prediction_unpacks_as_the_pair_it_always_was():
    result = CropPrediction(np.zeros((2, 68, 2)), np.ones((2, 68)), np.full((2, 68), 3.0), np.array([0.9, 0.1]))
    landmarks, confidence = result
    assert landmarks.shape == (2, 68, 2) and confidence.shape == (2, 68)
    assert result.uncertainty.shape == (2, 68) and result.face_score[1] == 0.1
    plain = as_crop_prediction((landmarks, confidence))
    assert plain.uncertainty is None and plain.face_score is None


def test_calibration_file_beside_the_model(tmp_path):
    model = tmp_path / "m.keras"
    assert calibration_path(model) == tmp_path / "m.uncertainty.json"
    assert load_calibration(model, EnsembleOptions()) is None
    calibration_path(model).write_text(json.dumps({"ensembles": {"flip+all": {"slopes": [1, 2]}}}))
    assert load_calibration(model, EnsembleOptions())["slopes"] == [1, 2]
    assert load_calibration(model, EnsembleOptions(flip=False)) is None
    assert ensemble_key(EnsembleOptions(flip=False, stages="last")) == "noflip+last"


def test_landmark_detector_gives_photo_pixels_and_drops_low_face_scores():
    from cfdrnn_keras.runtime.landmarker import LandmarkDetector

    class Fake:
        input_size = 64

        def predict_crops(self, crops):
            n = len(crops)
            return CropPrediction(np.full((n, 68, 2), 0.5, np.float32), np.ones((n, 68), np.float32),
                                  np.full((n, 68), 2.0, np.float32), np.array([0.9, 0.2][:n], np.float32))

    detector = LandmarkDetector(model=Fake(), detector=lambda image: [])
    image = np.zeros((400, 400, 3), np.uint8)
    boxes = [(100, 100, 200, 200), (10, 10, 60, 60)]
    faces = detector.detect(image, boxes=boxes)
    # box side 100 × 1.25 margin = 125 photo px onto 64 crop px: 2 crop px = 2 × 125 / 64 photo px
    np.testing.assert_allclose(faces[0].uncertainty, 2.0 * 125 / 64, rtol=1e-6)
    assert faces[0].face_score == pytest.approx(0.9)
    record = faces[0].to_dict()
    assert len(record["uncertainty"]) == 68 and record["face_score"] == pytest.approx(0.9)
    kept = detector.detect(image, boxes=boxes, min_face_score=0.5)
    assert len(kept) == 1 and kept[0].box == (100.0, 100.0, 200.0, 200.0)


def test_drawing_colours_by_uncertainty_with_a_legend():
    from cfdrnn_keras.runtime.drawing import draw_faces, uncertainty_colour

    assert uncertainty_colour(0.01) == (0, 255, 0) and uncertainty_colour(0.2) == (255, 0, 0)
    image = np.zeros((300, 300, 3), np.uint8)
    points = np.stack(np.meshgrid(np.linspace(100, 200, 17), np.linspace(100, 200, 4)), -1).reshape(-1, 2)[:68]
    face = {"box": [100, 100, 200, 200], "points": points.tolist(), "confidence": [1.0] * 68,
            "uncertainty": [50.0] * 68}
    drawn = draw_faces(image, [face])
    assert (drawn[..., 0] > 200).any()  # red points: 50 px is far above 10 % of the eye distance
    assert drawn[-60:, :120].any()  # the legend, bottom left
    no_legend = draw_faces(image, [{**face, "uncertainty": None}], legend=False)
    assert not no_legend[-60:, :90].any()


# ------------------------------------------------------------------------------------------------
# Export: SavedModel and TFLite give the Keras model's uncertainty.
# ------------------------------------------------------------------------------------------------
def test_saved_model_and_tflite_give_the_keras_uncertainty(tiny_network, crops, tmp_path):
    import tensorflow as tf

    from export import tflite
    from export.saved_model import export_saved_model, inference_model

    model = inference_model(build_test_time_model(tiny_network, EnsembleOptions(), uncertainty=synthetic_calibration()))
    want = model(crops.astype(np.float32) / 255.0 - 0.5)
    export_saved_model(model, tmp_path / "sm")
    loaded = tf.saved_model.load(str(tmp_path / "sm"))
    served = loaded.signatures["serving_default"](image=tf.constant(crops))
    np.testing.assert_allclose(served["uncertainty"].numpy(), np.asarray(want["uncertainty"]), rtol=1e-4)
    np.testing.assert_allclose(served["face_score"].numpy(), np.asarray(want["face_score"]), atol=1e-5)
    path = tmp_path / "f.tflite"
    path.write_bytes(tflite.convert(model, "tflite_fp32"))
    out = tflite.TFLiteLandmarks(path)(crops)
    np.testing.assert_allclose(out["uncertainty"], np.asarray(want["uncertainty"]), rtol=1e-3)
    np.testing.assert_allclose(out["face_score"], np.asarray(want["face_score"]), atol=1e-4)
    from cfdrnn_keras.runtime.backends import TFLiteBackend

    result = TFLiteBackend(path).predict_crops(crops)
    np.testing.assert_allclose(result.uncertainty, np.asarray(want["uncertainty"]), rtol=1e-3)


# ------------------------------------------------------------------------------------------------
# Real faces, the packaged LiteRT model (the default of LandmarkDetector).
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def packaged_detector():
    from cfdrnn_keras.runtime.landmarker import LandmarkDetector

    detector = LandmarkDetector(detector=lambda image: [])
    if detector.backend.predict_crops(np.zeros((1, detector.input_size, detector.input_size, 3), np.uint8)).uncertainty is None:
        pytest.fail("the packaged LiteRT file has no uncertainty output: re-export it (docs/MODEL_CARD.md)")
    return detector


@pytest.fixture(scope="module")
def sample_faces(samples_dir):
    from cfdrnn_keras.cli.fit_uncertainty import face_crops, sample_photos

    faces, off = sample_photos(samples_dir, 128)
    return faces, off, face_crops(faces, 128)


@pytest.fixture(scope="module")
def sample_predictions(packaged_detector, sample_faces):
    faces, off, (crops, truth, scales, iods) = sample_faces
    result = packaged_detector.predict_crops(crops)
    errors = np.linalg.norm(result.landmarks * 128 - truth, axis=-1)
    return result, errors, scales, iods


def test_uncertainty_is_calibrated_and_ranks_errors_on_real_faces(sample_predictions):
    result, errors, scales, iods = sample_predictions
    u_photo, e_photo = result.uncertainty / scales[:, None], errors / scales[:, None]
    normalised = e_photo / iods[:, None]
    assert spearman(result.uncertainty, normalised) > 0.45  # measured 0.55
    assert auroc(result.uncertainty, normalised > 0.08) > 0.84  # measured 0.89
    ratios = [f["ratio"] for f in fifth_ratios(u_photo, e_photo)]
    assert all(0.7 < r < 1.35 for r in ratios), ratios  # measured 0.87–1.08 on these 15 faces
    assert 0.8 < e_photo.mean() / u_photo.mean() < 1.25


def test_a_grey_patch_over_the_mouth_raises_the_mouth_uncertainty(packaged_detector, sample_faces, sample_predictions):
    _, _, (crops, truth, _, _) = sample_faces
    covered = crops.copy()
    for crop, points in zip(covered, truth):
        x0, y0 = np.floor(points[48:].min(0) - 10).astype(int)
        x1, y1 = np.ceil(points[48:].max(0) + 10).astype(int)
        crop[max(0, y0):y1 + 1, max(0, x0):x1 + 1] = 128
    before = sample_predictions[0].uncertainty[:, 48:].mean(1)
    after = packaged_detector.predict_crops(covered).uncertainty[:, 48:].mean(1)
    assert (after > before).mean() >= 0.8, after / before  # measured: every face, ×3–5


def test_face_score_separates_faces_from_boxes_off_the_face(packaged_detector, sample_faces, sample_predictions):
    _, off, _ = sample_faces
    assert len(off) >= 20
    on_faces = sample_predictions[0].face_score
    off_faces = packaged_detector.predict_crops(off).face_score
    assert auroc(np.r_[on_faces, off_faces], np.r_[np.ones(len(on_faces), bool), np.zeros(len(off_faces), bool)]) >= 0.98
    assert np.median(on_faces) > 0.9 and np.median(off_faces) < 0.1


def test_detect_drops_an_off_face_box(packaged_detector, samples_dir):
    from data_pipelines.geometry import face_box_from_points
    from data_pipelines.images import read_image
    from data_pipelines.pts import read_pts

    image = read_image(samples_dir / "einstein.jpg")
    box = face_box_from_points(read_pts(samples_dir / "einstein.pts"))
    side = box[2] - box[0]
    off = (box[0] + 1.5 * side, box[1] + 1.5 * side, box[2] + 1.5 * side, box[3] + 1.5 * side)
    faces = packaged_detector.detect(image, boxes=[box, off])
    assert faces[0].face_score > 0.5 > faces[1].face_score
    kept = packaged_detector.detect(image, boxes=[box, off], min_face_score=0.5)
    assert len(kept) == 1 and kept[0].uncertainty.shape == (68,)


def test_packaged_int8_file_gives_the_keras_uncertainty(packaged_detector, sample_faces, sample_predictions):
    from cfdrnn_keras.runtime.backends import load_backend

    _, _, (crops, _, _, _) = sample_faces
    keras_result = load_backend("accurate:keras").predict_crops(crops[:4])  # the default's own network
    ratio = sample_predictions[0].uncertainty[:4] / keras_result.uncertainty
    # Measured with today's two-network `accurate`: median 0.9 %, max 28 % (breakingbad.jpg, the turned face:
    # int8 rounding moves its faint peaks, and the face-level term moves all 68 points at once; 1.9 px of
    # landmark difference there); the single network of before: median 1 %, max 9 %.
    assert np.median(np.abs(np.log(ratio))) < 0.03 and np.abs(np.log(ratio)).max() < 0.35
    np.testing.assert_allclose(sample_predictions[0].face_score[:4], keras_result.face_score, atol=0.03)


def test_points_cut_off_by_the_image_border_get_a_higher_uncertainty(packaged_detector, shared_data):
    """Issue 17's third kind of occlusion: the photo cut through the face, so the left third of the
    68-point box lies outside it (same box, so the same crop geometry). Measured on 60 Helen faces:
    the cut-off points' mean uncertainty rises on 60/60, median ×12.6, least ×1.7."""
    from data_pipelines.discovery import find_faces
    from data_pipelines.geometry import face_box_from_points
    from data_pipelines.images import read_image
    from data_pipelines.pts import read_pts

    ratios = []
    for face in find_faces([shared_data / "300w" / "helen"], check=False)[:8]:
        image, gt = read_image(face.image_path), read_pts(face.pts_path)
        box = face_box_from_points(gt)
        cut = int(round(box[0] + (box[2] - box[0]) / 3))
        outside = gt[:, 0] < cut
        whole = packaged_detector.detect(image, boxes=[box])[0]
        part = packaged_detector.detect(image[:, cut:], boxes=[(box[0] - cut, box[1], box[2] - cut, box[3])])[0]
        ratios.append(part.uncertainty[outside].mean() / whole.uncertainty[outside].mean())
    assert min(ratios) > 1.2 and np.median(ratios) > 3, ratios
