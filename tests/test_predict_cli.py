"""tools/predict.py end to end: good and bad photos, a folder, a video, drawings, JSON, exit status.

One run over a folder with every kind of bad input beside good ones (the real example photo in
8-bit RGB, 16-bit, grayscale and RGBA) and a short synthetic video; the tests then read its output.
The model is an untrained 1/16-width CFDRNN saved to .keras: the points are meaningless, but every
step from file to JSON is the real one.
"""
import dataclasses
import json
import shutil
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
ASTRONAUT = REPO / "examples" / "astronaut.png"
VIDEO_FRAMES = 6

from cfdrnn_keras.cli import predict  # noqa: E402


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from cfdrnn_keras import build_cfdrnn, get_preset

    path = tmp_path_factory.mktemp("model") / "tiny.keras"
    build_cfdrnn(dataclasses.replace(get_preset("lite"), width=0.0625)).save(path)
    return path


def _write_inputs(folder: Path) -> dict:
    """Every kind of input the CLI must handle; returns name → path."""
    folder.mkdir()
    bgr = cv2.imread(str(ASTRONAUT), cv2.IMREAD_COLOR)
    bgr = cv2.resize(bgr, (256, 256), interpolation=cv2.INTER_AREA)  # small: quick to process
    paths = {}

    def put(name, data):
        paths[name] = folder / name
        if isinstance(data, bytes):
            paths[name].write_bytes(data)
        else:
            assert cv2.imwrite(str(paths[name]), data)

    put("good_rgb.png", bgr)
    put("good_16bit.png", bgr.astype(np.uint16) * 257)
    put("good_gray.png", cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY))
    put("good_rgba.png", np.dstack([bgr, np.full(bgr.shape[:2], 200, np.uint8)]))
    put("no_face.png", np.full((240, 320, 3), 128, np.uint8))
    put("empty.jpg", b"")
    jpeg = cv2.imencode(".jpg", bgr)[1].tobytes()
    put("truncated.jpg", jpeg[: len(jpeg) // 2])
    png = cv2.imencode(".png", bgr)[1].tobytes()
    put("corrupt.png", png[:40] + bytes(len(png) - 40))  # valid header, zeroed data
    put("not_an_image.jpg", b"just some text, not a picture\n" * 20)
    put("huge.png", np.zeros((10000, 10000), np.uint8))
    put("notes.txt", b"ignored: not an image extension")  # folders only yield image/video files
    # A short video: the face drifting right, MJPG in AVI.
    paths["clip.avi"] = folder / "clip.avi"
    writer = cv2.VideoWriter(str(paths["clip.avi"]), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (320, 256))
    for t in range(VIDEO_FRAMES):
        frame = np.zeros((256, 320, 3), np.uint8)
        frame[:, 4 * t:4 * t + 256] = bgr
        writer.write(frame)
    writer.release()
    return paths


@pytest.fixture(scope="module")
def big_run(tmp_path_factory, tiny_model):
    """predict.py over the folder, plus a missing file, with --json, --draw and --smooth."""
    root = tmp_path_factory.mktemp("predict")
    paths = _write_inputs(root / "inputs")
    missing = root / "missing.png"
    out_json, draw = root / "out.json", root / "drawn"
    capture = _Capture()
    with capture:
        status = predict.main([str(root / "inputs"), str(missing), "--model", str(tiny_model), "--json", str(out_json),
                               "--draw", str(draw), "--smooth", "0.3", "--quiet"])
    records = {Path(r["file"]).name: r for r in json.loads(out_json.read_text())["inputs"]}
    return dict(status=status, stdout=capture.out, stderr=capture.err, records=records, draw=draw, paths=paths)


class _Capture:
    """Collects what predict.main prints (capsys is function-scoped; the run is module-scoped)."""

    def __enter__(self):
        import io

        self._old = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = self._out, self._err = io.StringIO(), io.StringIO()

    def __exit__(self, *exc):
        sys.stdout, sys.stderr = self._old
        self.out, self.err = self._out.getvalue(), self._err.getvalue()


BAD = {
    "missing.png": "file not found",
    "empty.jpg": "empty file",
    "truncated.jpg": "truncated JPEG",
    "corrupt.png": "not an image or corrupt",
    "not_an_image.jpg": "not an image or corrupt",
    "huge.png": "too large: 10000x10000",
}


def test_each_bad_input_gets_one_line_and_the_run_fails(big_run):
    assert big_run["status"] == 1
    error_lines = [line for line in big_run["stderr"].splitlines() if line.startswith("error:")]
    assert len(error_lines) == len(BAD)
    for name, problem in BAD.items():
        lines = [line for line in error_lines if name in line]
        assert len(lines) == 1 and problem in lines[0], (name, lines)
        assert big_run["records"][name]["status"] == "error"
    assert "Traceback" not in big_run["stderr"]
    assert "notes.txt" not in big_run["records"]


@pytest.mark.parametrize("name", ["good_rgb.png", "good_16bit.png", "good_gray.png", "good_rgba.png"])
def test_good_photos_in_any_format_are_processed(big_run, name):
    record = big_run["records"][name]
    assert record["status"] == "ok" and (record["width"], record["height"]) == (256, 256)
    assert len(record["faces"]) == 1
    face = record["faces"][0]
    points = np.array(face["points"])
    assert points.shape == (68, 2) and len(face["confidence"]) == 68 and np.all(np.isfinite(points))
    x0, y0, x1, y1 = face["box"]
    assert 60 < x0 < x1 < 200 and 20 < y0 < y1 < 160  # the astronaut's face (at 256 px)
    assert (big_run["draw"] / name).exists()


def test_formats_agree(big_run):
    """16-bit and RGBA decode to the same pixels as the 8-bit file: same box; grayscale is close."""
    boxes = {name: np.array(big_run["records"][name]["faces"][0]["box"])
             for name in ("good_rgb.png", "good_16bit.png", "good_rgba.png", "good_gray.png")}
    np.testing.assert_allclose(boxes["good_16bit.png"], boxes["good_rgb.png"], atol=1e-6)
    np.testing.assert_allclose(boxes["good_rgba.png"], boxes["good_rgb.png"], atol=1e-6)
    assert np.abs(boxes["good_gray.png"] - boxes["good_rgb.png"]).max() < 15


def test_no_face_is_reported_but_not_a_failure(big_run):
    record = big_run["records"]["no_face.png"]
    assert record["status"] == "no face" and record["faces"] == []
    assert "no_face.png" not in big_run["stderr"]  # not an error line (--quiet hides the report line)
    assert "1 without a face" in big_run["stderr"]
    assert f"{len(big_run['records']) - len(BAD)} of {len(big_run['records'])} inputs processed" in big_run["stderr"]


def test_video_gives_one_entry_per_frame(big_run):
    record = big_run["records"]["clip.avi"]
    assert record["kind"] == "video" and record["status"] == "ok"
    assert record["fps"] == pytest.approx(10.0) and record["smooth"] == 0.3
    assert [frame["frame"] for frame in record["frames"]] == list(range(VIDEO_FRAMES))
    assert [frame["time"] for frame in record["frames"]] == pytest.approx([t / 10 for t in range(VIDEO_FRAMES)])
    tracks = {face["track"] for frame in record["frames"] for face in frame["faces"]}
    assert all(len(frame["faces"]) == 1 for frame in record["frames"]) and tracks == {0}
    # The face drifts 4 px right per frame: so does its (smoothed) box, monotonically.
    lefts = [frame["faces"][0]["box"][0] for frame in record["frames"]]
    assert all(b > a for a, b in zip(lefts, lefts[1:])) and 8 < lefts[-1] - lefts[0] < 25
    drawn = cv2.VideoCapture(str(big_run["draw"] / "clip.avi"))
    assert int(drawn.get(cv2.CAP_PROP_FRAME_COUNT)) == VIDEO_FRAMES
    drawn.release()


def test_clean_run_exits_zero_and_require_face_fails_faceless(tmp_path, tiny_model, capsys):
    good = tmp_path / "good.png"
    shutil.copy(ASTRONAUT, good)
    blank = tmp_path / "blank.png"
    cv2.imwrite(str(blank), np.zeros((200, 200, 3), np.uint8))
    assert predict.main([str(good), str(blank), "--model", str(tiny_model), "--detector-zoom", "1"]) == 0
    out = capsys.readouterr()
    assert f"{good}: 1 face" in out.out and f"{blank}: no face found" in out.out
    assert predict.main([str(good), str(blank), "--model", str(tiny_model), "--require-face", "--quiet"]) == 1
    err = capsys.readouterr().err
    assert f"error: {blank}: no face found" in err


def test_model_and_usage_errors_exit_2_with_one_line(tmp_path, capsys):
    photo = tmp_path / "p.png"
    shutil.copy(ASTRONAUT, photo)
    assert predict.main([str(photo), "--model", str(tmp_path / "absent.keras")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {tmp_path / 'absent.keras'}: model not found"]
    empty = tmp_path / "empty_folder"
    empty.mkdir()
    assert predict.main([str(empty)]) == 2
    with pytest.raises(SystemExit):
        predict.main([str(photo), "--smooth", "0"])


def test_boxes_from_pts_use_the_annotated_box(tmp_path, tiny_model):
    from data_pipelines.pts import write_pts

    photo = tmp_path / "face.png"
    shutil.copy(ASTRONAUT, photo)
    rng = np.random.default_rng(3)
    points = rng.uniform((180, 90), (270, 180), (68, 2))
    write_pts(tmp_path / "face.pts", points)
    bare = tmp_path / "bare.png"
    shutil.copy(ASTRONAUT, bare)
    out = tmp_path / "out.json"
    status = predict.main([str(photo), str(bare), "--model", str(tiny_model), "--boxes-from-pts", "--json", str(out),
                           "--quiet"])
    assert status == 1  # bare.png has no .pts beside it
    records = {Path(r["file"]).name: r for r in json.loads(out.read_text())["inputs"]}
    box = records["face.png"]["faces"][0]["box"]
    np.testing.assert_allclose(box, [*points.min(axis=0), *points.max(axis=0)], atol=0.006)  # 2 decimals
    assert "score" not in records["face.png"]["faces"][0]
    assert "no bare.pts beside it" in records["bare.png"]["error"]


# ----------------------------------------------------------------------------------------------
# Hostile and unlucky inputs (issue 16, cases 3, 4, 10 and 11): one line each, the others go on
# ----------------------------------------------------------------------------------------------
def _small_photo(path: Path) -> Path:
    bgr = cv2.resize(cv2.imread(str(ASTRONAUT), cv2.IMREAD_COLOR), (256, 256), interpolation=cv2.INTER_AREA)
    assert cv2.imwrite(str(path), bgr)
    return path


def _drop_file_permission_override():
    """preexec_fn: as root, give up the capabilities that let root read any file, so chmod bites
    (the process keeps uid 0 and can still run the interpreter under /root)."""
    import ctypes
    import os

    if os.geteuid() != 0:
        return
    libc = ctypes.CDLL(None, use_errno=True)
    for capability in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
        if libc.prctl(24, capability, 0, 0, 0) != 0:  # PR_CAPBSET_DROP; takes effect at exec
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def _run_predict(args, cwd, drop=False):
    """`cfdrnn predict ARGS` in a fresh interpreter: (exit status, stdout, stderr, peak RSS in MB).
    The command runs as a grandchild so that RUSAGE_CHILDREN measures that run alone."""
    import subprocess

    wrapper = ("import resource, subprocess, sys\n"
               "out = subprocess.run([sys.executable, '-m', 'cfdrnn_keras', 'predict', *sys.argv[1:]], "
               "capture_output=True, text=True)\n"
               "sys.stdout.write(out.stdout); sys.stderr.write(out.stderr)\n"
               "print('PEAK', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, out.returncode)\n")
    env = {**__import__("os").environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-c", wrapper, *map(str, args)], capture_output=True, text=True,
                            cwd=str(cwd), env=env, timeout=300,
                            preexec_fn=_drop_file_permission_override if drop else None)
    body, tail = result.stdout.rsplit("PEAK", 1)
    peak, status = tail.split()
    return int(status), body, result.stderr, float(peak)


def _error_lines(stderr):
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def test_image_bombs_in_any_format_are_refused_before_decoding_and_the_run_goes_on(tmp_path):
    from tests import bombs

    good = _small_photo(tmp_path / "good.png")
    hostile = [bombs.tiff_bomb(tmp_path / "zeros.tiff", 8000, 8000), bombs.webp_bomb(tmp_path / "flat.webp", 16000, 16000),
               bombs.gif_bomb(tmp_path / "screen.gif", 16000, 16000), bombs.png_bomb(tmp_path / "zeros.png", 8000, 8000)]
    status, _, stderr, baseline = _run_predict([good, "--quiet"], tmp_path)
    assert status == 0
    out = tmp_path / "out.json"
    status, _, stderr, peak = _run_predict([*hostile, good, "--json", out, "--quiet"], tmp_path)
    assert status == 1 and "Traceback" not in stderr
    errors = _error_lines(stderr)
    assert len(errors) == len(hostile)
    for line, path in zip(errors, hostile):
        assert line.startswith(f"error: {path}: too large: ") and "(limit 50)" in line, line
    records = {Path(r["file"]).name: r for r in json.loads(out.read_text())["inputs"]}
    assert records["good.png"]["status"] == "ok" and len(records["good.png"]["faces"]) == 1
    # Decoding the 16000² WebP alone would cost 768 MB (1.8 GB measured before the header check).
    assert peak < baseline + 40, (peak, baseline)


def test_output_paths_are_checked_before_any_work_and_nothing_written_is_lost(tmp_path):
    good = _small_photo(tmp_path / "good.png")
    previous = tmp_path / "previous.json"
    previous.write_text('{"from": "an earlier run"}')
    (tmp_path / "a_file").write_text("not a folder")
    folder = tmp_path / "results"
    folder.mkdir()
    cases = {
        ("--json", folder): f"error: --json {folder}: is a folder; give a file name",
        ("--json", tmp_path / "a_file" / "out.json"): f"error: --json {tmp_path / 'a_file' / 'out.json'}: "
                                                      f"{tmp_path / 'a_file'} is a file, not a folder",
        ("--draw", tmp_path / "a_file"): f"error: --draw {tmp_path / 'a_file'}: is a file, not a folder",
        ("--draw", tmp_path / "a_file" / "sub"): f"error: --draw {tmp_path / 'a_file' / 'sub'}: "
                                                 f"{tmp_path / 'a_file'} is a file, not a folder",
    }
    for (option, target), message in cases.items():
        capture = _Capture()
        with capture:
            status = predict.main([str(good), option, str(target), "--json" if option == "--draw" else "--draw",
                                   str(previous) if option == "--draw" else str(tmp_path / "drawn"), "--quiet"])
        assert status == 2, (option, target)
        assert capture.err.strip().splitlines() == [message + (", e.g. " + str(folder / "landmarks.json")
                                                               if target == folder else "")]
        assert previous.read_text() == '{"from": "an earlier run"}'  # the earlier results are untouched
    assert list(folder.iterdir()) == [] and not (tmp_path / "drawn").exists()  # refused before any work
    # A good --json replaces the earlier file only with the complete results.
    capture = _Capture()
    with capture:
        assert predict.main([str(good), "--json", str(previous), "--quiet"]) == 0
    assert json.loads(previous.read_text())["inputs"][0]["status"] == "ok"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".previous.json")]  # no temporary left


def test_a_bad_input_path_is_one_line_and_never_aborts_the_others(tmp_path):
    import os

    good = _small_photo(tmp_path / "good.png")
    locked = tmp_path / "locked"
    locked.mkdir()
    _small_photo(locked / "inside.png")
    os.mkfifo(tmp_path / "pipe.png")
    (tmp_path / "dangling.png").symlink_to(tmp_path / "nowhere.png")
    long_name = tmp_path / ("x" * 300 + ".png")
    out, draw = tmp_path / "out" / "results.json", tmp_path / "drawn"
    inputs = [locked / "inside.png", tmp_path / "pipe.png", tmp_path / "dangling.png", long_name, good]
    os.chmod(locked, 0)
    try:
        status, _, stderr, _ = _run_predict([*inputs, "--json", out, "--draw", draw, "--quiet"], tmp_path, drop=True)
    finally:
        os.chmod(locked, 0o755)
    assert status == 1 and "Traceback" not in stderr, stderr
    expected = {
        locked / "inside.png": "cannot read: Permission denied", tmp_path / "pipe.png": "not a regular file",
        tmp_path / "dangling.png": "broken symbolic link", long_name: "cannot read: File name too long",
    }
    errors = _error_lines(stderr)
    assert len(errors) == len(expected)
    for line, (path, problem) in zip(errors, expected.items()):
        assert line == f"error: {path}: {problem}", line
    records = json.loads(out.read_text())["inputs"]
    assert [r["file"] for r in records] == [str(p) for p in inputs]
    assert [r["status"] for r in records] == ["error"] * 4 + ["ok"]
    assert (draw / "good.png").is_file() and "1 of 5 inputs processed, 4 failed" in stderr


def test_a_truncated_video_is_reported_against_its_frame_count(tmp_path):
    bgr = cv2.resize(cv2.imread(str(ASTRONAUT), cv2.IMREAD_COLOR), (256, 256), interpolation=cv2.INTER_AREA)
    whole = tmp_path / "whole.avi"
    writer = cv2.VideoWriter(str(whole), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (256, 256))
    for t in range(10):
        writer.write(np.roll(bgr, 2 * t, axis=1))
    writer.release()
    cut = tmp_path / "cut.avi"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size * 6 // 10])
    out = tmp_path / "out.json"
    capture = _Capture()
    with capture:
        status = predict.main([str(cut), str(whole), "--json", str(out), "--quiet"])
    assert status == 1
    records = {Path(r["file"]).name: r for r in json.loads(out.read_text())["inputs"]}
    truncated = records["cut.avi"]
    read = truncated["frames_read"]
    assert truncated["status"] == "truncated" and truncated["frame_count"] == 10 and 0 < read < 8
    assert len(truncated["frames"]) == read  # the frames that could be read are kept
    assert _error_lines(capture.err) == [f"error: {cut}: truncated: {read} of 10 frames could be read "
                                         "(the container says more)"]
    assert records["whole.avi"]["status"] == "ok" and records["whole.avi"]["frames_read"] == 10


def test_video_drawings_label_each_face_with_its_json_track(tmp_path, monkeypatch, samples_dir):
    """A hard cut between two people: a new track starts, and the number drawn is the JSON's."""
    from cfdrnn_keras.runtime import drawing

    frames = []
    for name in ("takeo.png", "lenna.png"):
        image = cv2.imread(str(samples_dir / name))
        frames += [cv2.resize(image, (320, 320), interpolation=cv2.INTER_AREA)] * 3
    clip = tmp_path / "cut.avi"
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (320, 320))
    for frame in frames:
        writer.write(frame)
    writer.release()
    drawn_labels = []
    original = drawing.draw_faces

    def spy(image, faces, **options):
        drawn_labels.append([drawing.face_label(face, index) for index, face in enumerate(faces)])
        return original(image, faces, **options)

    monkeypatch.setattr(drawing, "draw_faces", spy)
    out = tmp_path / "out.json"
    capture = _Capture()
    with capture:
        assert predict.main([str(clip), "--json", str(out), "--draw", str(tmp_path / "drawn"), "--smooth", "0.3",
                             "--quiet"]) == 0
    record = json.loads(out.read_text())["inputs"][0]
    tracks = [[str(face["track"]) for face in frame["faces"]] for frame in record["frames"]]
    assert drawn_labels == tracks
    first, second = {t for frame in tracks[:3] for t in frame}, {t for frame in tracks[3:] for t in frame}
    assert first and second and not first & second  # nobody keeps a track across the cut
