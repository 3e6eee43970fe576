"""LandmarkDetector: the crop → network → inverse-crop path, model loading, and a real saved model."""
import dataclasses

import numpy as np
import pytest

from cfdrnn_keras.runtime.landmarker import (FaceLandmarks, LandmarkDetector, ModelLoadError, TFLiteBackend,
                                    as_rgb_uint8, load_backend)
from data_pipelines.geometry import crop_matrix, face_box_from_points, transform_points, warp_to_crop
from data_pipelines.images import ImageReadError


class TruthBackend:
    """Returns, for each crop, the ground-truth points of the face it was cut from, in normalised crop
    coordinates: found by matching the crop against the crops of the known boxes. So LandmarkDetector
    must crop, batch and map back exactly for the points to come home."""

    input_size = 256

    def __init__(self, image, faces, margin=1.25):
        self.crops, self.targets, self.calls = [], [], []
        for box, points in faces:
            matrix = crop_matrix(box, 256, margin=margin)
            self.crops.append(warp_to_crop(image, matrix, 256).astype(np.int32))
            self.targets.append(transform_points(matrix, points) / 256.0)

    def predict_crops(self, crops):
        self.calls.append(len(crops))
        out = []
        for crop in crops:
            errors = [np.abs(crop.astype(np.int32) - known).mean() for known in self.crops]
            out.append(self.targets[int(np.argmin(errors))])
        landmarks = np.array(out, dtype=np.float32)
        return landmarks, np.full(landmarks.shape[:2], 0.75, np.float32)


def _face_points(centre, size, seed):
    """68 points spread over a face-sized area (any shape will do for the mapping test)."""
    rng = np.random.default_rng(seed)
    return np.asarray(centre) + rng.uniform(-size / 2, size / 2, (68, 2))


@pytest.fixture
def photo_with_faces():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (600, 900, 3), dtype=np.uint8)
    faces = []
    for i, (centre, size) in enumerate([((200.3, 250.7), 150.0), ((640.0, 300.0), 90.0), ((880.0, 40.0), 60.0)]):
        points = _face_points(centre, size, i)
        faces.append((face_box_from_points(points), points))
    return image, faces


def test_given_boxes_map_back_to_photo_pixels(photo_with_faces):
    image, faces = photo_with_faces
    backend = TruthBackend(image, faces)
    detector = LandmarkDetector(model=backend, batch_size=2, detector=lambda img: [])
    result = detector.detect(image, boxes=[box for box, _ in faces])
    assert backend.calls == [2, 1]  # three faces in batches of two
    assert len(result) == 3
    for face, (box, points) in zip(result, faces):
        assert isinstance(face, FaceLandmarks)
        assert face.points.shape == (68, 2) and face.confidence.shape == (68,)
        # float32 network output at crop scale (<= 256 px) keeps ~1e-5 px; the path itself is exact.
        assert np.abs(face.points - points).max() < 0.01
        np.testing.assert_allclose(face.box, box)
        assert face.score is None
        np.testing.assert_allclose(face.confidence, 0.75)


def test_detected_boxes_are_used_and_scores_kept(photo_with_faces):
    image, faces = photo_with_faces
    calls = []

    def fake_detector(img):
        calls.append(img.shape)
        return [(*box, 0.9 - 0.1 * i) for i, (box, _) in enumerate(faces)]

    detector = LandmarkDetector(model=TruthBackend(image, faces), detector=fake_detector)
    result = detector.detect(image)
    assert calls == [image.shape]
    assert [round(f.score, 3) for f in result] == [0.9, 0.8, 0.7]
    for face, (_, points) in zip(result, faces):
        assert np.abs(face.points - points).max() < 0.01


def test_no_face_gives_empty_list(photo_with_faces):
    image, faces = photo_with_faces
    backend = TruthBackend(image, faces)
    assert LandmarkDetector(model=backend, detector=lambda img: []).detect(image) == []
    assert backend.calls == []


def test_bad_boxes_and_images_are_refused(photo_with_faces):
    image, faces = photo_with_faces
    detector = LandmarkDetector(model=TruthBackend(image, faces), detector=lambda img: [])
    with pytest.raises(ValueError, match="invalid face box"):
        detector.detect(image, boxes=[(10, 10, 5, 50)])
    with pytest.raises(ValueError, match="uint8"):
        detector.detect(image.astype(np.float32))


def test_grayscale_and_rgba_arrays_become_rgb():
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4)
    rgb = as_rgb_uint8(gray)
    assert rgb.shape == (3, 4, 3) and np.array_equal(rgb[:, :, 1], gray)
    rgba = np.dstack([rgb, np.full((3, 4), 7, np.uint8)])
    assert np.array_equal(as_rgb_uint8(rgba), rgb)


def test_packaged_model_missing_is_one_clear_line(monkeypatch, tmp_path):
    import dataclasses

    from cfdrnn_keras.runtime import packaged

    default = packaged.packaged_model()
    monkeypatch.setitem(packaged.PACKAGED_MODELS, default.name,
                        dataclasses.replace(default, tflite_file=str(tmp_path / "absent.tflite")))
    with pytest.raises(ModelLoadError) as info:
        LandmarkDetector()
    message = str(info.value)
    assert "\n" not in message and "absent.tflite" in message and "missing" in message


def test_model_paths_that_cannot_load(tmp_path):
    with pytest.raises(ModelLoadError, match="not found"):
        load_backend(tmp_path / "nope.keras")
    junk = tmp_path / "junk.keras"
    junk.write_bytes(b"not a zip")
    with pytest.raises(ModelLoadError) as info:
        load_backend(junk)
    assert "\n" not in str(info.value) and str(junk) in str(info.value)
    (tmp_path / "folder").mkdir()
    with pytest.raises(ModelLoadError, match="not a SavedModel"):
        load_backend(tmp_path / "folder")
    other = tmp_path / "weights.h5"
    other.write_bytes(b"x")
    with pytest.raises(ModelLoadError, match="unknown model format"):
        load_backend(other)


def test_detect_file_reports_unreadable_file(tmp_path, photo_with_faces):
    image, faces = photo_with_faces
    detector = LandmarkDetector(model=TruthBackend(image, faces), detector=lambda img: [])
    bad = tmp_path / "bad.jpg"
    bad.write_text("hello")
    with pytest.raises(ImageReadError, match="bad.jpg"):
        detector.detect_file(bad)


@pytest.fixture(scope="module")
def tiny_model_path(tmp_path_factory):
    """An untrained 1/16-width CFDRNN saved as .keras (what real files look like, loaded safely)."""
    from cfdrnn_keras import build_cfdrnn, get_preset

    model = build_cfdrnn(dataclasses.replace(get_preset("lite"), width=0.0625))
    path = tmp_path_factory.mktemp("model") / "tiny.keras"
    model.save(path)
    return path


def test_keras_file_backend_matches_the_model(tiny_model_path):
    detector = LandmarkDetector(model=str(tiny_model_path), detector=lambda img: [])
    rng = np.random.default_rng(1)
    photo = rng.integers(0, 255, (300, 400, 3), dtype=np.uint8)
    boxes = [(100, 80, 220, 200), (10.5, 20.5, 90.5, 140.5)]
    crops = np.stack([warp_to_crop(photo, crop_matrix(box), 256) for box in boxes])
    landmarks, confidence = detector.predict_crops(crops)
    assert landmarks.shape == (2, 68, 2) and confidence.shape == (2, 68)
    # The backend feeds the network [-0.5, 0.5] floats, as in training.
    expected = detector.backend.model(crops.astype(np.float32) / 255.0 - 0.5, training=False)
    np.testing.assert_allclose(landmarks, np.asarray(expected["landmarks"]), atol=1e-5)
    np.testing.assert_allclose(confidence, np.asarray(expected["confidence"]), atol=1e-5)
    # The whole photo path gives the same points, moved into the photo's frame.
    faces = detector.detect(photo, boxes=boxes)
    assert len(faces) == 2
    for face, box, crop_landmarks in zip(faces, boxes, landmarks):
        back_in_crop = transform_points(crop_matrix(box), face.points) / 256.0
        np.testing.assert_allclose(back_in_crop, crop_landmarks, atol=1e-5)


def _write_tflite(tmp_path, uint8_input: bool):
    """A tiny TFLite 'landmark model': a fixed pattern scaled by the mean pixel, in either convention."""
    import tensorflow as tf

    base = np.linspace(0.1, 0.9, 136, dtype=np.float32).reshape(68, 2)

    if uint8_input:
        @tf.function(input_signature=[tf.TensorSpec([None, 256, 256, 3], tf.uint8, name="crops")])
        def serve(crops):
            mean = tf.reduce_mean(tf.cast(crops, tf.float32), axis=[1, 2, 3]) / 255.0
            landmarks = base[None] * 256.0 * mean[:, None, None]  # crop pixels
            return {"landmarks": landmarks, "confidence": tf.ones_like(landmarks[..., 0]) * mean[:, None]}
    else:
        @tf.function(input_signature=[tf.TensorSpec([None, 256, 256, 3], tf.float32, name="image")])
        def serve(image):
            mean = tf.reduce_mean(image, axis=[1, 2, 3]) + 0.5
            landmarks = base[None] * mean[:, None, None]  # normalised
            return {"landmarks": landmarks, "confidence": tf.ones_like(landmarks[..., 0]) * mean[:, None]}

    module = tf.Module()
    module.serve = serve
    saved = tmp_path / "saved_for_tflite"
    tf.saved_model.save(module, str(saved), signatures={"serving_default": serve})
    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved))  # as export/ does: keeps the signature
    path = tmp_path / ("uint8.tflite" if uint8_input else "float.tflite")
    path.write_bytes(converter.convert())
    return path, base


@pytest.mark.parametrize("uint8_input", [True, False])
@pytest.mark.parametrize("use_signature", [True, False])
def test_tflite_backend_units_and_batches(tmp_path, monkeypatch, uint8_input, use_signature):
    path, base = _write_tflite(tmp_path, uint8_input)
    if not use_signature:  # the path for files without a serving_default signature: tensors by name/shape
        monkeypatch.setattr(TFLiteBackend, "SIGNATURE", "no_such_signature")
    backend = load_backend(path)
    assert isinstance(backend, TFLiteBackend)
    assert (backend._runner is not None) == use_signature
    crops = np.stack([np.full((256, 256, 3), v, np.uint8) for v in (255, 51, 102)])
    for batch in (crops, crops[:1]):  # resizing the batch works both ways
        landmarks, confidence = backend.predict_crops(batch)
        means = batch.reshape(len(batch), -1).mean(axis=1) / 255.0
        np.testing.assert_allclose(landmarks, base[None] * means[:, None, None], atol=1e-4)
        np.testing.assert_allclose(confidence, np.repeat(means[:, None], 68, axis=1), atol=1e-4)


def test_saved_model_backend_reads_serving_default_in_crop_pixels(tmp_path):
    """A SavedModel shaped like export/'s: serving_default(uint8 crops) → landmarks in crop pixels."""
    import tensorflow as tf

    base = np.linspace(0.1, 0.9, 136, dtype=np.float32).reshape(68, 2)

    class Serving(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 256, 256, 3], tf.uint8, name="crops")])
        def serve(self, crops):
            mean = tf.reduce_mean(tf.cast(crops, tf.float32), axis=[1, 2, 3]) / 255.0
            landmarks = base[None] * 256.0 * mean[:, None, None]
            return {"landmarks": landmarks, "confidence": tf.ones_like(landmarks[..., 0]) * mean[:, None]}

    module = Serving()
    tf.saved_model.save(module, str(tmp_path / "sm"), signatures={"serving_default": module.serve})
    # Made here, not by export/: its ops (PartitionedCall...) are outside the SavedModel check's allowlist.
    with pytest.raises(ModelLoadError, match="the SavedModel runs op 'PartitionedCall'"):
        LandmarkDetector(model=tmp_path / "sm", detector=lambda img: [])
    detector = LandmarkDetector(model=tmp_path / "sm", detector=lambda img: [], trust_model=True)
    crops = np.stack([np.full((256, 256, 3), v, np.uint8) for v in (255, 51)])
    landmarks, confidence = detector.predict_crops(crops)
    means = np.array([1.0, 0.2])
    np.testing.assert_allclose(landmarks, base[None] * means[:, None, None], atol=1e-5)  # normalised
    np.testing.assert_allclose(confidence, np.repeat(means[:, None], 68, axis=1), atol=1e-5)


@pytest.fixture(scope="module")
def packaged_detector():
    from cfdrnn_keras.runtime.packaged import packaged_model

    path = packaged_model().tflite_path
    if not path.exists():
        pytest.skip(f"no trained model is packaged yet at {path}")
    return LandmarkDetector()


def _inter_ocular_nme(points, gt):
    return float(np.linalg.norm(points - gt, axis=-1).mean() / np.linalg.norm(gt[36] - gt[45]))


@pytest.mark.parametrize("boxes", ["annotated", "detected"])
def test_packaged_model_puts_the_points_on_real_sample_faces(packaged_detector, samples_dir, boxes):
    """The trained model on the 15 full-size sample photos, with the annotated 68-point box or the
    default detector's box: the points land on the face (loose bounds: several faces are iBUG's
    hardest; the 300-W figures are tools/evaluate.py's job)."""
    from data_pipelines.discovery import find_faces
    from data_pipelines.images import read_image
    from data_pipelines.pts import read_pts

    errors = []
    for face in find_faces(samples_dir):
        gt = read_pts(face.pts_path)
        image = read_image(face.image_path)
        if boxes == "annotated":
            found = packaged_detector.detect(image, boxes=[face_box_from_points(gt)])
        else:
            found = packaged_detector.detect(image)
        best = min((_inter_ocular_nme(f.points, gt) for f in found), default=np.inf)
        errors.append(best)
    errors = np.array(errors)
    assert len(errors) == 15
    # Bounds from the default packaged model's measurement as LandmarkDetector() runs it (`accurate`'s
    # full-int8 LiteRT file: `fast`'s network and the width-0.35 one, four stages each, sub-pixel peaks,
    # flip test, the estimates fused with the weights and offsets fitted on the training faces;
    # docs/MODEL_CARD.md, 2026-12-07): annotated boxes mean 3.87 %, worst 7.28 %; detected boxes median
    # 3.38 %, worst 11.6 % (breakingbad.jpg, whose detector box is off); with about half a point of
    # margin on the typical photo and one and a half on the worst (room for another CPU's int8
    # kernels). Issue 14: every photo below 8 % with its annotated box. An untrained network scores
    # ~20-60 %.
    if boxes == "annotated":
        assert errors.mean() < 0.044, errors
        assert errors.max() < 0.088, errors
    else:
        assert np.median(errors) < 0.039, errors
        assert errors.max() < 0.132, errors
