"""tf.data pipeline: shapes and ranges, targets that agree with the image, seeds, caching, bad files."""
import cv2
import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from cfdrnn_keras.model.codec import heatmap_peaks_numpy  # noqa: E402
from data_pipelines.augment import AugmentConfig  # noqa: E402
from data_pipelines.dataset import HEATMAP_KEYS, crop_face, load_examples, loose_geometry, make_dataset  # noqa: E402
from data_pipelines.discovery import find_faces  # noqa: E402
from data_pipelines.geometry import MIRROR_PERMUTATION_68, invert, transform_points  # noqa: E402
from data_pipelines.pts import read_pts, write_pts  # noqa: E402
from tests.test_geometry import face_shape  # noqa: E402


def write_synthetic_faces(folder, count, seed=0):
    """`count` photos of smooth random colour with a synthetic 68-point face each; returns the Faces."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        height, width = rng.integers(150, 260, size=2)
        noise = rng.integers(0, 256, (height // 8 + 2, width // 8 + 2, 3), dtype=np.uint8)
        photo = cv2.resize(noise, (int(width), int(height)), interpolation=cv2.INTER_CUBIC)
        centre = (width * rng.uniform(0.4, 0.6), height * rng.uniform(0.4, 0.6))
        cv2.imwrite(str(folder / f"face_{index:02d}.png"), photo)
        write_pts(folder / f"face_{index:02d}.pts", face_shape(centre, half_width=rng.uniform(30, 60)))
    return find_faces(folder)


@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    return write_synthetic_faces(tmp_path_factory.mktemp("faces"), 6)


def _first(dataset):
    images, targets = next(iter(dataset))
    return images.numpy(), {key: value.numpy() for key, value in targets.items()}


def test_training_batches_have_the_model_shapes_and_consistent_targets(faces):
    images, targets = _first(make_dataset(faces, training=True, batch_size=3, seed=1))
    assert images.shape == (3, 256, 256, 3) and images.dtype == np.float32
    assert images.min() >= -0.5 and images.max() <= 0.5 and images.std() > 0.05
    assert set(targets) == {*HEATMAP_KEYS, "landmarks"}
    for key in HEATMAP_KEYS:
        assert targets[key].shape == (3, 64, 64, 68)
        np.testing.assert_array_equal(targets[key], targets["heatmaps_1"])
    landmarks = targets["landmarks"]
    assert landmarks.shape == (3, 68, 2)
    # Each heat-map peaks at the heat-map pixel nearest its landmark (peak = stride·argmax/256).
    coarse, peak = heatmap_peaks_numpy(targets["heatmaps_1"])
    inside = (landmarks > 0.01).all(-1) & (landmarks < 0.98).all(-1)
    assert inside.mean() > 0.9
    assert np.abs(coarse - landmarks)[inside].max() <= 2.0 / 256 + 1e-6
    assert (peak[inside] > 0.7).all()


def test_evaluation_batches_are_the_plain_crops(faces):
    dataset = make_dataset(faces, training=False, batch_size=4)
    batches = list(dataset)
    assert [int(images.shape[0]) for images, _ in batches] == [4, 2]  # the last partial batch is kept
    examples = load_examples(faces)
    images = np.concatenate([images.numpy() for images, _ in batches])
    landmarks = np.concatenate([targets["landmarks"].numpy() for _, targets in batches])
    np.testing.assert_array_equal(images, examples.images.astype(np.float32) / 255.0 - 0.5)
    np.testing.assert_allclose(landmarks, examples.points / 256.0, atol=1e-7)
    # The matrices take crop points back to the .pts file.
    back = transform_points(invert(examples.matrices[2]), examples.points[2])
    np.testing.assert_allclose(back, read_pts(faces[2].pts_path), atol=1e-3)


def test_loose_crop_centre_is_the_plain_crop(faces):
    loose_size, loose_margin = loose_geometry(256, 1.25, 1.5)
    assert (loose_size, loose_margin) == (384, 1.875)
    plain, loose = crop_face(faces[0], 256, 1.25), crop_face(faces[0], loose_size, loose_margin)
    np.testing.assert_allclose(loose.points - 64, plain.points, atol=1e-4)
    # OpenCV's 1/32-px fixed-point sampling may round a few pixels differently.
    difference = np.abs(loose.image[64:320, 64:320].astype(int) - plain.image)
    assert difference.max() <= 2 and difference.mean() < 0.05


def test_same_seed_replays_and_epochs_differ(faces):
    first = make_dataset(faces, training=True, batch_size=2, seed=5)
    second = make_dataset(faces, training=True, batch_size=2, seed=5)
    epoch_a = [targets["landmarks"].numpy() for _, targets in first]
    epoch_b = [targets["landmarks"].numpy() for _, targets in first]
    replay = [targets["landmarks"].numpy() for _, targets in second]
    assert len(epoch_a) == 3  # 6 faces, batch 2
    np.testing.assert_array_equal(np.concatenate(epoch_a), np.concatenate(replay))
    assert not np.allclose(np.concatenate(epoch_a), np.concatenate(epoch_b))  # new shuffle + augmentation
    other = make_dataset(faces, training=True, batch_size=2, seed=6)
    assert not np.allclose(np.concatenate(epoch_a), np.concatenate([t["landmarks"].numpy() for _, t in other]))


def test_streaming_without_cache_gives_the_same_stream(faces):
    cached = make_dataset(faces, training=True, batch_size=2, seed=3, cache=True)
    streamed = make_dataset(faces, training=True, batch_size=2, seed=3, cache=False)
    for (image_a, target_a), (image_b, target_b) in zip(cached, streamed):
        np.testing.assert_array_equal(image_a.numpy(), image_b.numpy())
        np.testing.assert_array_equal(target_a["landmarks"].numpy(), target_b["landmarks"].numpy())


def test_mirrored_training_image_is_the_flipped_plain_crop(faces):
    mirror_only = AugmentConfig.none(mirror_probability=1.0)
    images, targets = _first(make_dataset(faces[:2], training=True, batch_size=2, shuffle=False,
                                          augment_config=mirror_only))
    plain_images, plain_targets = _first(make_dataset(faces[:2], training=False, batch_size=2))
    difference = np.abs(images - plain_images[:, :, ::-1])
    # Exact but for OpenCV's fixed-point rounding of the plain crop (one grey level, rarely).
    assert difference.max() <= 1 / 255 + 1e-6 and (difference > 1e-6).mean() < 1e-3
    plain = plain_targets["landmarks"] * 256
    expected = np.stack([255.0 - plain[..., 0], plain[..., 1]], axis=-1)[:, list(MIRROR_PERMUTATION_68)]
    np.testing.assert_allclose(targets["landmarks"] * 256, expected, atol=1e-3)
    assert (targets["landmarks"][:, 36, 0] < targets["landmarks"][:, 45, 0]).all()


def test_unreadable_faces_are_reported_and_the_rest_yielded(tmp_path, caplog):
    folder = tmp_path / "mixed"
    write_synthetic_faces(folder, 5)
    png = bytearray((folder / "face_01.png").read_bytes())
    start = png.find(b"IDAT")
    png[start + 40:start + 80] = bytes(40)  # valid header, broken pixel data (CRC error)
    (folder / "face_01.png").write_bytes(bytes(png))
    (folder / "face_03.pts").write_text("version: 1\nn_points: 68\n{\n1 2\n3\n}\n")
    faces = find_faces(folder, check=False)  # let the bad files reach the pipeline
    assert len(faces) == 5
    problems = []
    dataset = make_dataset(faces, training=False, batch_size=8, problems=problems)
    (images, targets), = list(dataset)
    assert images.shape[0] == 3
    messages = sorted(str(problem) for problem in problems)
    assert len(messages) == 2
    assert "face_01.png" in messages[0] and "not an image or corrupt" in messages[0]
    assert "face_03.pts" in messages[1] and "line 5" in messages[1]
    assert "skipped" in caplog.text


def test_no_readable_face_is_an_error(tmp_path):
    (tmp_path / "a.png").write_bytes(b"not a png")
    write_pts(tmp_path / "a.pts", face_shape((50, 50), 20))
    with pytest.raises(ValueError, match="none of the 1 faces"):
        make_dataset(find_faces(tmp_path, check=False), training=True)


def test_real_faces_train_and_evaluate(shared_data):
    faces = find_faces(shared_data / "300w" / "afw")[:4]
    images, targets = _first(make_dataset(faces, training=True, batch_size=4, seed=0))
    assert images.shape == (4, 256, 256, 3)
    _, plain = _first(make_dataset(faces, training=False, batch_size=4))
    extent = plain["landmarks"].max(axis=1) - plain["landmarks"].min(axis=1)
    np.testing.assert_allclose(extent.max(axis=1), 1 / 1.25, atol=1e-5)  # longer box side = crop / margin
    # The augmentation rotates, mirrors and scales about the crop's centre, then shifts: a face's centre
    # moves from the crop centre by at most scale_max × its plain distance + the shift's √2 × t, whatever
    # the draw (the batch order depends on TensorFlow's global seed, so compare the batch's extremes).
    config = AugmentConfig()
    radius = lambda points: np.linalg.norm(np.asarray(points).mean(axis=1) - 0.5, axis=1)
    bound = config.scale_range[1] * radius(plain["landmarks"]).max() + config.translation * np.sqrt(2) + 0.01
    assert radius(targets["landmarks"]).max() <= bound
    assert bound < 0.3  # the faces stay in the middle of the crop


def test_numpy_pydataset_gives_the_same_batches_shape_and_plain_crops(faces):
    from data_pipelines.dataset import make_pydataset

    evaluation = make_pydataset(faces, training=False, batch_size=4)
    assert len(evaluation) == 2
    images, targets = evaluation[1]
    graph_images, graph_targets = list(make_dataset(faces, training=False, batch_size=4))[1]
    np.testing.assert_array_equal(images, graph_images.numpy())
    np.testing.assert_allclose(targets["heatmaps_2"], graph_targets["heatmaps_2"].numpy(), atol=1e-6)

    training = make_pydataset(faces, training=True, batch_size=2, seed=3)
    assert len(training) == 3
    first = training[0]
    np.testing.assert_array_equal(first[0], training[0][0])  # a pure function of (seed, epoch, index)
    assert first[0].shape == (2, 256, 256, 3) and first[0].dtype == np.float32
    assert first[0].min() >= -0.5 and first[0].max() <= 0.5
    coarse, _ = heatmap_peaks_numpy(first[1]["heatmaps_1"])
    inside = (first[1]["landmarks"] > 0.01).all(-1) & (first[1]["landmarks"] < 0.98).all(-1)
    assert np.abs(coarse - first[1]["landmarks"])[inside].max() <= 2.0 / 256 + 1e-6
    training.on_epoch_end()
    assert not np.array_equal(first[1]["landmarks"], training[0][1]["landmarks"])


def test_benchmark_tool_writes_its_report(faces, tmp_path, capsys):
    import importlib.util
    import json
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "tools" / "benchmark_pipeline.py"
    spec = importlib.util.spec_from_file_location("benchmark_pipeline", path)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    folder = str(Path(faces[0].pts_path).parent)
    out = tmp_path / "bench.json"
    assert tool.main(["--data", folder, "--json", str(out), "--batch-size", "2", "--steps", "2", "--runs", "2",
                      "--warmup", "1"]) == 0
    report = json.loads(out.read_text())
    assert report["faces"] == 6 and len(report["examples_per_second_runs"]) == 2
    assert report["examples_per_second_median"] > 0 and "examples/s, median" in capsys.readouterr().out


def test_too_few_faces_for_a_full_batch_is_a_clear_error(faces):
    with pytest.raises(ValueError, match="cannot fill one batch of 8"):
        make_dataset(faces[:3], training=True, batch_size=8)
    assert sum(1 for _ in make_dataset(faces[:3], training=True, batch_size=8, repeat=True).take(2)) == 2
    with pytest.raises(ValueError, match="no faces"):
        make_dataset([], training=False)
