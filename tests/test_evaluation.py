"""Evaluation on the 300-W protocol: mapping crops back to photos, subsets, detector misses, reports."""
import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest

from cfdrnn_keras import evaluation as ev
from cfdrnn_keras import metrics
from cfdrnn_keras.model.codec import encode_heatmaps_numpy, heatmap_peaks_numpy
from data_pipelines.discovery import Face, find_faces
from data_pipelines.geometry import crop_matrix, face_box_from_points, transform_points
from data_pipelines.pts import read_pts, write_pts

STRIDE, SIZE = 4, 256


def decode_gaussian_heatmaps(heatmaps: np.ndarray, size: int = SIZE) -> np.ndarray:
    """(B, size/4, size/4, 68) heat-maps → normalised points: argmax plus the log-parabola vertex
    around it, which is exact for a sampled Gaussian (its logarithm is a parabola)."""
    coarse, _ = heatmap_peaks_numpy(heatmaps, STRIDE, size)
    cells = np.rint(coarse * size / STRIDE).astype(int)  # (B, 68, 2) heat-map cell of each peak
    logs = np.log(np.maximum(heatmaps, 1e-30))
    refined = np.zeros_like(coarse, dtype=np.float64)
    for b, n in np.ndindex(*cells.shape[:2]):
        u, v = cells[b, n]
        left, mid, right = logs[b, v, u - 1, n], logs[b, v, u, n], logs[b, v, u + 1, n]
        up, down = logs[b, v - 1, u, n], logs[b, v + 1, u, n]
        refined[b, n, 0] = u + 0.5 * (left - right) / (left - 2 * mid + right)
        refined[b, n, 1] = v + 0.5 * (up - down) / (up - 2 * mid + down)
    return refined * STRIDE / size


class PerfectHeatmapModel:
    """A stand-in network whose heat-maps are perfect: it knows each face's landmarks in crop pixels
    (from the annotation and the 300-W crop geometry), encodes them as the training targets and
    decodes them again. Whatever error remains comes from the evaluation's mapping to the photo."""

    def __init__(self, faces, check_crop=None, input_size: int = SIZE):
        self.input_size = input_size  # evaluate_faces cuts crops of the size a model asks for
        self.crop_points = []
        for face in faces:
            gt = read_pts(face.pts_path)
            matrix = crop_matrix(face_box_from_points(gt), output_size=input_size, margin=1.25)
            self.crop_points.append(transform_points(matrix, gt))
        self.check_crop = check_crop
        self.calls = 0

    def __call__(self, crops):
        size = self.input_size
        assert crops.dtype == np.uint8 and crops.shape[1:] == (size, size, 3)
        points = np.stack(self.crop_points[self.calls:self.calls + len(crops)])
        if self.check_crop is not None:
            for crop, crop_points in zip(crops, points):
                self.check_crop(crop, crop_points)
        self.calls += len(crops)
        return decode_gaussian_heatmaps(encode_heatmaps_numpy(points, size, STRIDE, 1.3), size)


def test_perfect_heatmaps_give_the_ground_truth_back_in_photo_pixels(samples_dir):
    """Full-size photos: faces shrunk (1920 px wide) and enlarged (150 px wide) into the crop."""
    faces = find_faces([samples_dir])
    assert len(faces) == 15
    model = PerfectHeatmapModel(faces)
    result = ev.evaluate_faces(faces, model, batch_size=4)  # 4 batches, the last one short
    assert model.calls == 15 and not result.skipped
    assert [r.file for r in result.results] == [f.image_path for f in faces]
    for face, face_result in zip(faces, result.results):
        gt = read_pts(face.pts_path)
        np.testing.assert_allclose(face_result.gt, gt, atol=1e-4)
        assert np.abs(face_result.pred - gt).max() < 0.5, face.image_path
    table = result.subsets()
    assert table["samples"]["n"] == 15 and table["all"]["n"] == 15
    assert table["all"]["nme_io"] < 0.1 and table["all"]["auc08_io"] > 99.5 and table["all"]["fr08_io"] == 0


def test_models_with_smaller_crops_are_mapped_back_with_their_own_size(samples_dir):
    faces = find_faces([samples_dir])[:4]
    result = ev.evaluate_faces(faces, PerfectHeatmapModel(faces, input_size=128))
    for face, face_result in zip(faces, result.results):
        assert np.abs(face_result.pred - read_pts(face.pts_path)).max() < 0.5


def test_the_crop_the_model_sees_shows_the_face_where_the_annotation_says(tmp_path, samples_dir):
    """A synthetic photo with one bright dot on the nose tip (point 30): the dot must be in the crop
    at the annotated point's crop position, and predictions must come back onto the photo."""
    gt = read_pts(samples_dir / "lenna.pts").astype(np.float64) * 0.7 + np.array([150.0, 40.0])
    photo = np.full((420, 640, 3), 30, np.uint8)
    cv2.circle(photo, (int(round(gt[30, 0])), int(round(gt[30, 1]))), 3, (255, 255, 255), -1)
    cv2.imwrite(str(tmp_path / "dot.png"), photo)
    write_pts(tmp_path / "dot.pts", gt)

    def dot_is_at_point_30(crop, crop_points):
        gray = cv2.GaussianBlur(crop[..., 0].astype(np.float32), (0, 0), 2.0)
        y, x = np.unravel_index(np.argmax(gray), gray.shape)
        assert np.hypot(x - crop_points[30, 0], y - crop_points[30, 1]) < 1.5

    faces = find_faces([tmp_path])
    model = PerfectHeatmapModel(faces, check_crop=dot_is_at_point_30)
    result = ev.evaluate_faces(faces, model)
    assert model.calls == 1
    assert np.abs(result.results[0].pred - np.round(gt, 3)).max() < 0.5


def test_keras_models_see_pixels_in_minus_half_to_half_and_give_their_landmarks_output():
    import keras

    image = keras.Input((SIZE, SIZE, 3), name="image")
    mean = keras.layers.GlobalAveragePooling2D()(image)  # (B, 3)
    dense = keras.layers.Dense(136, use_bias=False, kernel_initializer=keras.initializers.Constant(1 / 3))
    landmarks = keras.layers.Reshape((68, 2))(dense(mean))
    model = keras.Model(image, {"landmarks": landmarks, "other": mean})
    predict = ev.as_predictor(model)
    crops = np.stack([np.full((SIZE, SIZE, 3), 255, np.uint8), np.zeros((SIZE, SIZE, 3), np.uint8)])
    out = predict(crops)
    assert out.shape == (2, 68, 2)
    np.testing.assert_allclose(out[0], 0.5, atol=1e-5)
    np.testing.assert_allclose(out[1], -0.5, atol=1e-5)
    short = predict(crops[1:])  # a short last batch is padded inside and cut back
    assert short.shape == (1, 68, 2)
    np.testing.assert_allclose(short[0], -0.5, atol=1e-5)


def test_crop_to_photo_inverts_the_crop_matrix():
    matrix = crop_matrix((100.0, 50.0, 180.0, 150.0), SIZE, 1.25)  # 100 px tall box → side 125 px
    # crop centre (127.5 px) is the box centre; the crop's outer edge (-0.5) is 62.5 photo px away
    normalised = np.array([[[127.5, 127.5], [-0.5, -0.5]] + [[0.0, 0.0]] * 66]) / SIZE
    photo = ev.crop_to_photo(normalised, [matrix])
    np.testing.assert_allclose(photo[0, 0], [140.0, 100.0])
    np.testing.assert_allclose(photo[0, 1], [140.0 - 62.5, 100.0 - 62.5])


def test_subsets_follow_the_300w_protocol():
    faces = [Face("a.jpg", "a.pts", part) for part in
             ("lfpw/testset", "helen/testset", "ibug", "01_Indoor", "02_Outdoor", "afw", "samples")]
    rows = [ev.row_of(face) for face in faces]
    assert rows == ["common", "common", "challenging", "private", "private", "afw", "samples"]
    members = ev.subset_members(rows)
    assert list(members) == ["common", "challenging", "full", "private", "afw", "samples", "all"]
    assert members["full"].tolist() == [0, 1, 2]
    assert members["private"].tolist() == [3, 4]
    assert members["all"].tolist() == list(range(7))
    assert "full" not in ev.subset_members(["common", "common"])


def test_full_is_image_weighted(tmp_path):
    gt = np.zeros((68, 2))
    gt[36], gt[45] = (0, 0), (100, 0)
    gt[42:48] = (100, 0)  # inter-pupil distance 100 too
    run = ev.Evaluation("m", [ev.FaceResult("c1", "common", gt, gt + 1.0),  # sqrt(2) px off
                              ev.FaceResult("c2", "common", gt, gt + 1.0),
                              ev.FaceResult("i1", "challenging", gt, gt + 4.0)])
    table = run.subsets()
    root2 = math.sqrt(2)
    assert table["common"]["nme_io"] == pytest.approx(root2)
    assert table["challenging"]["nme_io"] == pytest.approx(4 * root2)
    assert table["full"]["nme_io"] == pytest.approx(6 * root2 / 3)  # not (1 + 4) / 2 * sqrt(2)


def test_box_iou_and_best_detection():
    assert ev.box_iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(50 / 150)
    assert ev.box_iou((0, 0, 10, 10), (20, 20, 30, 30)) == 0.0
    gt_box = (0, 0, 10, 10)
    boxes = [(20, 20, 30, 30), (5, 0, 15, 10), (1, 1, 11, 11)]
    assert ev.best_detection(boxes, gt_box) == (1, 1, 11, 11)
    assert ev.best_detection([(7, 0, 17, 10)], gt_box) is None  # IoU 3/17 < 0.3


def test_missed_faces_count_as_failures(samples_dir):
    faces = find_faces([samples_dir])[:3]
    model = PerfectHeatmapModel(faces)
    boxes = [face_box_from_points(read_pts(face.pts_path)) for face in faces]
    calls = []

    def detector(image):  # finds the first and the last face exactly, misses the second one
        calls.append(image.shape)
        index = len(calls) - 1
        return [] if index == 1 else [(0, 0, 5, 5), boxes[index]]

    # The perfect model is told the gt-box crops, which are the crops of faces 0 and 2 here.
    model.crop_points.pop(1)
    result = ev.evaluate_faces(faces, model, box="detect", detector=detector, workers=1)
    assert len(calls) == 3 and model.calls == 2
    assert [r.missed for r in result.results] == [False, True, False]
    assert result.results[1].error() == ev.MISSED_FACE_ERROR
    row = result.subsets()["samples"]
    assert row["fr08_io"] == pytest.approx(100 / 3)
    assert row["nme_io"] == pytest.approx(100 / 3, abs=0.1)  # two perfect faces and one 100 % miss
    assert result.missed()["all"] == 1
    report = result.to_json()
    assert report["per_image"][1]["pred"] == [] and report["per_image"][1]["nme_io"] == 100.0
    assert "missed" in ev.markdown_table(report["subsets"], result.missed())
    assert ev.report_missed(report) == result.missed()


def test_bad_files_are_skipped_with_one_line_and_counted(tmp_path, samples_dir):
    for name in ("lenna", "takeo"):
        for suffix in (".png", ".pts"):
            (tmp_path / f"{name}{suffix}").write_bytes((samples_dir / f"{name}{suffix}").read_bytes())
    (tmp_path / "takeo.png").write_bytes(b"not an image")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    (tmp_path / "broken.pts").write_bytes((samples_dir / "lenna.pts").read_bytes())
    (tmp_path / "short.png").write_bytes((samples_dir / "lenna.png").read_bytes())
    write_pts(tmp_path / "short.pts", np.zeros((5, 2)) + 10)
    write_pts(tmp_path / "lonely.pts", np.zeros((68, 2)) + 10)  # no image beside it
    messages = []
    faces, problems = ev.discover([tmp_path], on_skip=messages.append)
    assert [Path(f.pts_path).stem for f in faces] == ["broken", "lenna", "short", "takeo"]
    assert len(problems) == 1 and "lonely.pts" in problems[0]
    lenna = faces[1]
    result = ev.evaluate_faces(faces, PerfectHeatmapModel([lenna]), on_skip=messages.append)
    assert [r.file for r in result.results] == [lenna.image_path]
    assert len(result.skipped) == 3
    for name, message in zip(("broken.png", "short.pts", "takeo.png"), result.skipped):
        assert name in message
    assert len(messages) == 4 and all("\n" not in message for message in messages)


def test_each_skip_is_named_once_summarised_at_the_end_and_strict_makes_it_an_error(tmp_path, samples_dir, capsys):
    from cfdrnn_keras.cli.evaluate import main

    data = tmp_path / "faces"
    data.mkdir()
    for name in ("lenna", "takeo"):
        for suffix in (".png", ".pts"):
            (data / f"{name}{suffix}").write_bytes((samples_dir / f"{name}{suffix}").read_bytes())
    (data / "lonely.pts").write_bytes((samples_dir / "lenna.pts").read_bytes())  # no image beside it
    (data / "unannotated.png").write_bytes((samples_dir / "lenna.png").read_bytes())  # no .pts beside it
    (data / "scaled.png").write_bytes((samples_dir / "lenna.png").read_bytes())
    write_pts(data / "scaled.pts", read_pts(samples_dir / "lenna.pts").astype(np.float64) * 1e12)  # wrong units
    out = tmp_path / "run.json"
    assert main(["--data", str(data), "--json", str(out), "--quiet"]) == 0  # the default LiteRT model
    captured = capsys.readouterr()
    skipped = {data / "lonely.pts": "no image with the same name beside it",
               data / "unannotated.png": "no .pts annotation beside it",
               data / "scaled.pts": "points far outside the photo (512x512"}
    for path, problem in skipped.items():
        lines = [line for line in captured.err.splitlines() if str(path) in line]
        assert len(lines) == 1 and problem in lines[0], (path, lines)  # once, saying what is wrong
    assert captured.err.strip().splitlines()[-1] == (
        "3 of 5 files skipped (each named above): 1 × no .pts annotation beside it; "
        "1 × no image with the same name beside it; 1 × points far outside the photo")
    report = json.loads(out.read_text())
    assert report["subsets"]["all"]["n"] == 2 and len(report["skipped"]) == 3
    assert report["subsets"]["all"]["nme_io"] < 10  # the ×1e12 face is not in the mean

    strict = tmp_path / "strict.json"
    assert main(["--data", str(data), "--json", str(strict), "--quiet", "--strict"]) == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("error: --strict: 3 of 5 files skipped")
    assert json.loads(strict.read_text())["skipped"] == report["skipped"]  # still written, listing them
    # Without skips --strict changes nothing.
    assert main(["--data", str(data / "lenna.pts"), "--json", str(strict), "--quiet", "--strict"]) == 0


def test_markdown_table_puts_the_paper_beside_ours():
    row = {"n": 554, "nme_io": 3.5, "nme_ip": 4.9, "auc08_io": 55.0, "fr08_io": 0.5}
    table = ev.markdown_table({"common": row, "private": row, "afw": row})
    lines = table.splitlines()
    assert lines[0].startswith("| subset | n | NME IO % | paper | NME IP % | paper | AUC_0.08 % | paper")
    assert lines[2] == "| common | 554 | 3.50 | 3.23 | 4.90 | 4.55 | 55.00 | – | 0.50 | – |"
    assert lines[3] == "| private | 554 | 3.50 | 3.49 | 4.90 | – | 55.00 | 56.68 | 0.50 | 1.00 |"
    assert lines[4].startswith("| afw | 554 | 3.50 | – |")


def test_missing_model_is_one_clear_line(tmp_path, monkeypatch):
    import dataclasses

    from cfdrnn_keras.runtime import packaged

    default = packaged.packaged_model()
    monkeypatch.setitem(packaged.PACKAGED_MODELS, default.name,
                        dataclasses.replace(default, tflite_file=str(tmp_path / "absent.tflite")))
    with pytest.raises(ev.EvaluationError, match=f"absent.tflite: the packaged model '{default.name}' is missing .* --model"):
        ev.load_model(None)
    with pytest.raises(ev.EvaluationError, match="not found"):
        ev.load_model(tmp_path / "nothing.keras")
    # A file that exists but is not a .keras archive says so (Keras itself says "File not found").
    (tmp_path / "junk.keras").write_bytes(b"junk")
    packaged = Path(ev.__file__).parent / "assets" / "cfdrnn_mobile.keras"
    (tmp_path / "cut.keras").write_bytes(packaged.read_bytes()[: packaged.stat().st_size * 6 // 10])
    for name in ("junk.keras", "cut.keras"):
        with pytest.raises(ev.EvaluationError) as caught:
            ev.load_model(tmp_path / name)
        message = str(caught.value)
        assert message.startswith(f"{tmp_path / name}: not a valid .keras file: not a complete zip archive")
        assert "File not found" not in message and "\n" not in message
    damaged = bytearray(packaged.read_bytes())
    damaged[len(damaged) // 2:len(damaged) // 2 + 64] = bytes(64 * [0x5A])
    (tmp_path / "flipped.keras").write_bytes(bytes(damaged))
    with pytest.raises(ev.EvaluationError, match="corrupt .keras file: model.weights.h5 inside it fails its checksum"):
        ev.load_model(tmp_path / "flipped.keras")


@pytest.fixture(scope="module")
def tiny_model_path(tmp_path_factory):
    from cfdrnn_keras import build_cfdrnn, get_preset

    path = tmp_path_factory.mktemp("model") / "tiny.keras"
    build_cfdrnn(get_preset("lite").replace(width=0.0625)).save(path)
    return path


def test_cli_report_has_exactly_the_documented_shape(tmp_path, shared_data, tiny_model_path, capsys):
    from cfdrnn_keras.cli.evaluate import main

    faces = find_faces([shared_data / "300w"])
    data = [shared_data / "300w" / "afw", shared_data / "300w" / "helen" / "trainset"]
    out = tmp_path / "run.json"
    code = main(["--data", *map(str, data), "--model", str(tiny_model_path), "--json", str(out),
                 "--plots", str(tmp_path / "plots"), "--limit", "5", "--batch-size", "2", "--quiet"])
    assert code == 0
    text = out.read_text()
    report = json.loads(text, parse_constant=lambda name: pytest.fail(f"non-standard JSON {name}"))
    assert set(report) - {"uncertainty"} == {"model", "box", "ensemble", "skipped", "subsets", "per_image"}
    assert report["skipped"] == []
    assert isinstance(report["model"], str) and report["model"].endswith("tiny.keras")
    assert report["box"] == "gt" and report["ensemble"] == {"flip": True, "stages": "all", "subpixel": True,
                                                            "fused": False}  # the default; no calibration
    assert list(report["subsets"]) == ["afw", "all"]  # sorted: the first five faces are all AFW
    for row in report["subsets"].values():
        assert set(row) == {"n", "nme_io", "nme_ip", "auc08_io", "fr08_io"}
        assert isinstance(row["n"], int) and all(isinstance(row[k], float) for k in row if k != "n")
    assert report["subsets"]["all"]["n"] == 5
    assert len(report["per_image"]) == 5
    afw = [f for f in faces if f.subset == "afw"][:5]  # find_faces sorts by path, as the CLI does
    for entry, face in zip(report["per_image"], afw):
        assert set(entry) == {"file", "subset", "nme_io", "pred", "gt"}
        assert entry["file"] == face.image_path and entry["subset"] == "afw"
        pred, gt = np.array(entry["pred"]), np.array(entry["gt"])
        assert pred.shape == gt.shape == (68, 2)
        np.testing.assert_allclose(gt, read_pts(face.pts_path), atol=1e-4)  # 0-based photo pixels
        assert entry["nme_io"] == pytest.approx(100 * metrics.nme(pred, gt))
    assert report["subsets"]["all"]["nme_io"] == pytest.approx(np.mean([e["nme_io"] for e in report["per_image"]]))
    assert (tmp_path / "plots" / "ced.png").stat().st_size > 10_000
    printed = capsys.readouterr().out
    assert "| afw | 5 |" in printed and "| all | 5 |" in printed

    # Two runs compared in one figure per subset.
    second = tmp_path / "second.json"
    second.write_text(json.dumps({**report, "model": "other"}))
    assert main(["--compare", str(out), str(second), "--plots", str(tmp_path / "compare")]) == 0
    assert sorted(p.name for p in (tmp_path / "compare").iterdir()) == ["ced_compare_afw.png", "ced_compare_all.png"]
    paired_row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("| second: other |"))
    assert "| 5 |" in paired_row and "| +0.000 | +0.000 … +0.000 | 0 % | 0 |" in paired_row  # a copy: no difference


def test_cli_errors_are_one_line(tmp_path, capsys):
    from cfdrnn_keras.cli.evaluate import main

    assert main(["--data", str(tmp_path), "--model", str(tmp_path / "absent.keras")]) == 2
    assert main(["--compare", str(tmp_path / "absent.json")]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 2 and all(line.startswith("error: ") for line in errors)


def test_held_out_evaluates_exactly_the_faces_a_training_run_kept_out(tmp_path, shared_data, tiny_model_path):
    from cfdrnn_keras.cli.evaluate import main

    faces = find_faces([shared_data / "300w" / "helen" / "trainset"])
    validation = [faces[7].pts_path, faces[2].pts_path]
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"train": [faces[0].pts_path], "validation": validation}))
    out = tmp_path / "held_out.json"
    assert main(["--held-out", str(split), "--model", str(tiny_model_path), "--json", str(out), "--quiet"]) == 0
    report = json.loads(out.read_text())
    assert sorted(entry["file"] for entry in report["per_image"]) == sorted([faces[7].image_path, faces[2].image_path])
    assert report["subsets"]["all"]["n"] == 2


def test_held_out_split_errors_are_one_line(tmp_path, capsys):
    from cfdrnn_keras.cli.evaluate import main

    not_a_split = tmp_path / "other.json"
    not_a_split.write_text(json.dumps({"model": "x"}))
    stale = tmp_path / "stale.json"
    stale.write_text(json.dumps({"validation": [str(tmp_path / "gone" / "face.pts")]}))
    for path in (tmp_path / "absent.json", not_a_split, stale):
        assert main(["--held-out", str(path), "--quiet"]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 3 and all(line.startswith("error: ") for line in errors)
    assert "no \"validation\" list" in errors[1] and "1 of its 1 validation faces are not found" in errors[2]


@pytest.mark.slow  # the TFLite conversion alone takes 10-30 s on the 2 shared cores
def test_tflite_engine_gives_the_keras_landmarks(tiny_model_path):
    import keras

    model = keras.saving.load_model(tiny_model_path)
    crops = np.random.default_rng(0).integers(0, 256, (3, SIZE, SIZE, 3), dtype=np.uint8)
    expected = ev.as_predictor(model)(crops)
    converted = ev.as_predictor(ev.prepare_engine(model, "tflite"))
    np.testing.assert_allclose(converted(crops), expected, atol=1e-5)
    np.testing.assert_allclose(converted(crops[:1]), expected[:1], atol=1e-5)  # batch size changes


def test_non_finite_predictions_are_failures_not_crashes(samples_dir):
    faces = find_faces([samples_dir])[:2]
    perfect = PerfectHeatmapModel(faces)

    def half_broken(crops):
        out = perfect(crops)
        out[1, 5] = np.nan
        return out

    messages = []
    result = ev.evaluate_faces(faces, half_broken, on_skip=messages.append)
    assert [r.missed for r in result.results] == [False, True]
    assert len(messages) == 1 and "non-finite" in messages[0] and faces[1].image_path in messages[0]
    assert result.subsets()["all"]["fr08_io"] == pytest.approx(50.0)
    json.dumps(result.to_json(), allow_nan=False)


def test_landmark_detector_backends_are_evaluated_like_the_keras_model(tiny_model_path, samples_dir):
    import keras

    from cfdrnn_keras.runtime.landmarker import LandmarkDetector

    from cfdrnn_keras.model.ensemble import for_inference

    faces = find_faces([samples_dir])[:3]
    model = keras.saving.load_model(tiny_model_path)
    direct = ev.evaluate_faces(faces, for_inference(model), batch_size=2)
    detector = LandmarkDetector(model=model, batch_size=2)  # the same default ensemble
    through_detector = ev.evaluate_faces(faces, detector, batch_size=2)
    for a, b in zip(direct.results, through_detector.results):
        np.testing.assert_allclose(a.pred, b.pred, atol=1e-3)
