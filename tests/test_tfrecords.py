"""TFRecords: written once, read back as the same (image, targets) stream as the in-memory pipeline."""
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from data_pipelines.dataset import make_dataset  # noqa: E402
from data_pipelines.geometry import invert, transform_points  # noqa: E402
from data_pipelines.pts import read_pts  # noqa: E402
from data_pipelines.tfrecords import (  # noqa: E402
    load_tfrecord_examples,
    make_tfrecord_dataset,
    read_metadata,
    write_tfrecords,
)
from tests.test_dataset import write_synthetic_faces  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tfr")
    faces = write_synthetic_faces(folder / "faces", 7, seed=2)
    (folder / "faces" / "face_04.png").write_bytes(b"broken")  # one unreadable face among them
    problems = []
    paths = write_tfrecords(faces, folder / "records", shards=3, problems=problems)
    return faces, [face for face in faces if "face_04" not in face.image_path], paths, problems


def _stream(dataset):
    return [(images.numpy(), {key: value.numpy() for key, value in targets.items()}) for images, targets in dataset]


def test_writer_spreads_faces_and_reports_problems(records):
    _, kept, paths, problems = records
    assert [path.name for path in paths] == [f"faces-0000{i}-of-00003.tfrecord" for i in range(3)]
    metadata = read_metadata(paths[0].parent)
    assert metadata["faces"] == 6 and list(metadata["shards"].values()) == [2, 2, 2]
    assert metadata["loose_size"] == 384 and metadata["encoding"] == "png"
    assert len(problems) == 1 and "face_04.png" in str(problems[0]) and metadata["skipped"] == [str(problems[0])]


def test_evaluation_stream_equals_the_in_memory_pipeline(records):
    _, kept, paths, _ = records
    from_records = _stream(make_tfrecord_dataset(paths[0].parent, training=False, batch_size=4))
    in_memory = _stream(make_dataset(kept, training=False, batch_size=4))
    assert [batch[0].shape[0] for batch in from_records] == [4, 2]
    for (image_a, target_a), (image_b, target_b) in zip(from_records, in_memory):
        # Plain crop cut from the stored loose crop vs. warped directly: OpenCV fixed-point rounding only.
        assert np.abs(image_a - image_b).max() <= 1 / 255 + 1e-6
        np.testing.assert_allclose(target_a["landmarks"], target_b["landmarks"], atol=1e-5)


def test_training_stream_equals_the_in_memory_pipeline(records):
    _, kept, paths, _ = records
    options = dict(training=True, batch_size=2, shuffle=False, seed=4)
    from_records = _stream(make_tfrecord_dataset(paths, **options))
    in_memory = _stream(make_dataset(kept, **options))
    assert len(from_records) == 3
    for (image_a, target_a), (image_b, target_b) in zip(from_records, in_memory):
        np.testing.assert_array_equal(image_a, image_b)  # PNG is lossless: identical loose crops
        np.testing.assert_array_equal(target_a["heatmaps_4"], target_b["heatmaps_4"])


def test_shuffled_epochs_differ_but_hold_the_same_faces(records):
    _, _, paths, _ = records
    dataset = make_tfrecord_dataset(paths, training=False, batch_size=6, shuffle=True, seed=1, shuffle_buffer=8)
    first, second = (np.concatenate([t["landmarks"] for _, t in _stream(dataset)]) for _ in range(2))
    assert not np.array_equal(first, second)
    key = lambda rows: sorted(map(tuple, rows.reshape(len(rows), -1).round(4)))  # noqa: E731
    assert key(first) == key(second)


def test_worker_shards_partition_the_faces(records):
    _, kept, paths, _ = records
    seen = []
    for workers in (3, 2):  # file-level split (3 files / 3 workers), record-level split (3 files / 2)
        parts = [np.concatenate([t["landmarks"] for _, t in _stream(
            make_tfrecord_dataset(paths, training=False, batch_size=8, num_shards=workers, shard_index=index))])
            for index in range(workers)]
        assert sum(len(part) for part in parts) == len(kept)
        seen.append(sorted(np.concatenate(parts)[:, 0, 0].round(4).tolist()))
    assert seen[0] == seen[1]


def test_examples_map_back_to_the_pts_files(records):
    _, kept, paths, _ = records
    examples = load_tfrecord_examples(paths)
    assert examples.images.shape == (6, 256, 256, 3)
    assert [face.pts_path for face in examples.faces] == [face.pts_path for face in kept]
    for index in (0, 5):
        back = transform_points(invert(examples.matrices[index]), examples.points[index])
        np.testing.assert_allclose(back, read_pts(kept[index].pts_path), atol=1e-3)


def test_raw_encoding_reads_back_identically(records, tmp_path):
    _, kept, paths, _ = records
    raw = write_tfrecords(kept[:2], tmp_path / "raw", shards=1, encoding="raw")
    png_images = load_tfrecord_examples(paths).images[:2]
    np.testing.assert_array_equal(load_tfrecord_examples(raw).images, png_images)


def _tool():
    spec = importlib.util.spec_from_file_location("make_tfrecords", REPO / "tools" / "make_tfrecords.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_command_line_tool(tmp_path, capsys):
    faces_dir = tmp_path / "faces"
    write_synthetic_faces(faces_dir, 3, seed=9)
    out = tmp_path / "out"
    tool = _tool()
    assert tool.main(["--data", str(faces_dir), "--out", str(out), "--shards", "2", "--encoding", "jpeg"]) == 0
    printed = capsys.readouterr().out
    assert "all: 3 faces (faces 3)" in printed and "wrote 3 faces to 2 shards" in printed
    assert json.loads((out / "metadata.json").read_text())["encoding"] == "jpeg"
    assert tool.main(["--data", str(tmp_path / "nope")]) == 2
    assert capsys.readouterr().err.strip() == f"error: {tmp_path / 'nope'}: data folder not found"


def test_command_line_help_documents_every_option():
    result = subprocess.run([sys.executable, str(REPO / "tools" / "make_tfrecords.py"), "--help"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0
    for option in ("--data", "--split", "--out", "--shards", "--margin", "--loose-factor", "--encoding"):
        assert option in result.stdout
