"""The web folder (`export.web`, `tools/export.py --formats web`) in headless Chromium.

Debian's `chromium` driven by Playwright (no browser download), the folder served on 127.0.0.1 by
an `http.server` thread. The folder is exported once for the module, copied elsewhere and the
export deleted, so every page below runs from a copy that cannot lean on the checkout. Checked:

- the page on examples/astronaut.png agrees with the Python path (`LandmarkDetector` with the same
  two .tflite files) within 1.5 px on average, and reports its ms per face and its model;
- no request leaves 127.0.0.1 (every request of every page is recorded);
- the JS crop (warp + area pre-shrink) and the detector's resizes against OpenCV on the same pixels;
- a missing image, a file that is not an image, a photo without a face and a model that cannot load
  each give one clear line on the page and in the result JSON;
- the folder itself: nothing in it points back into the checkout or to another host, the model.json
  settings are the Python defaults, the batch-fixed model computes what the original does;
- `tools/export.py --formats web`.
"""
from __future__ import annotations

import base64
import functools
import http.server
import importlib
import json
import os
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
# the LiteRT file of the packaged model the page runs by default (export.web.PACKAGED_WEB_MODEL)
FAST_FILE = "cfdrnn_mobile_noflip_int8.tflite"
ASTRONAUT = REPO / "examples" / "astronaut.png"
CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]
PAGE_TIMEOUT_MS = 180_000  # the WebAssembly runtime compiles on a shared 2-core machine

web = pytest.importorskip("export.web")
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright not installed (pip install -e '.[test]')")
if CHROMIUM is None:
    pytest.skip("chromium not installed (apt-get install -y chromium; .ci/run does it)", allow_module_level=True)


def _first(*names):
    for name in names:
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    raise ImportError(f"none of {names}")


# ----------------------------------------------------------------------------------------------
# Fixtures: the folder (once), a server, a browser
# ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """The exported folder, copied elsewhere (the export itself deleted), with test files beside the page."""
    model, _ = web.packaged_web_model()
    if not model.is_file():
        pytest.skip(f"{model}: the packaged model's LiteRT file is not in this checkout")
    exported = tmp_path_factory.mktemp("export")
    try:
        web.export_web(exported, log=lambda line: None)
    except web.WebExportError as error:
        pytest.skip(f"cannot export the web folder here: {error}")
    copy = tmp_path_factory.mktemp("elsewhere") / "site"
    shutil.copytree(exported / web.WEB_DIR, copy)
    shutil.rmtree(exported)
    shutil.copyfile(ASTRONAUT, copy / "astronaut.png")
    (copy / "not_an_image.png").write_text("this is not a PNG\n")
    cv2 = pytest.importorskip("cv2")
    cv2.imwrite(str(copy / "grey.png"), np.full((240, 320, 3), 128, np.uint8))
    # A folder whose model.json names a landmark model that is not there.
    broken = copy / "broken"
    broken.mkdir()
    for name in ("index.html", "cfdrnn.js"):
        shutil.copyfile(copy / name, broken / name)
    shutil.copytree(copy / "litert", broken / "litert")
    settings = json.loads((copy / "model.json").read_text())
    settings["landmark_model"] = "models/missing.tflite"
    (broken / "model.json").write_text(json.dumps(settings))
    return copy


class _Server:
    def __init__(self, root: Path):
        handler = functools.partial(_QuietHandler, directory=str(root))
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map, ".wasm": "application/wasm",
                      ".js": "text/javascript"}

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server(folder):
    running = _Server(folder)
    yield running
    running.close()


@pytest.fixture(scope="module")
def playwright():
    running = sync_api.sync_playwright().start()
    yield running
    running.stop()


def launch(playwright, profile: Path, extra_args=()):
    """Chromium with a fresh profile; every request it makes is recorded in `.requests`."""
    try:
        context = playwright.chromium.launch_persistent_context(
            str(profile), executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS + list(extra_args),
            viewport={"width": 1100, "height": 720})
    except Exception as error:  # a browser that does not start is an environment problem: say which
        pytest.skip(f"{CHROMIUM} does not start under Playwright: {str(error).splitlines()[0]}")
    requests: list[str] = []
    context.on("request", lambda request: requests.append(request.url))
    context.requests = requests
    return context


@pytest.fixture(scope="module")
def browser(playwright, tmp_path_factory):
    context = launch(playwright, tmp_path_factory.mktemp("chromium-profile"))
    yield context
    context.close()


def open_page(browser, url: str):
    """Load `url`, wait until the page says it is done (or ready), return (page, result JSON or None)."""
    page = browser.new_page()
    page.goto(url)
    page.wait_for_function("['done', 'ready'].includes(document.body.dataset.state)", timeout=PAGE_TIMEOUT_MS)
    text = page.inner_text("#result").strip()
    return page, (json.loads(text) if text else None)


@pytest.fixture(scope="module")
def astronaut_run(browser, server):
    runs = int(os.environ.get("CFDRNN_WEB_RUNS", "5"))  # more for the figure in docs/DEPLOYMENT.md
    page, record = open_page(browser, server.url + f"index.html?image=astronaut.png&runs={runs}")
    screenshot = os.environ.get("CFDRNN_WEB_SCREENSHOT")
    if screenshot:  # docs/figures/web_page.png is made this way
        page.screenshot(path=screenshot)
    status = page.inner_text("#status")
    page.close()
    return record, status


# ----------------------------------------------------------------------------------------------
# The page against Python
# ----------------------------------------------------------------------------------------------
def python_faces(folder: Path):
    landmarker = _first("cfdrnn_keras.runtime.landmarker", "cfdrnn_keras.inference")
    face_detector = _first("cfdrnn_keras.runtime.face_detector", "cfdrnn_keras.detector")
    from data_pipelines.images import read_image

    settings = json.loads((folder / "model.json").read_text())
    detector = landmarker.LandmarkDetector(
        model=str(folder / settings["landmark_model"]),
        detector=face_detector.FaceDetector(model_path=folder / settings["detector_model"]))
    return detector.detect(read_image(ASTRONAUT))


def python_ms_per_face(folder: Path, box, runs=None) -> float:
    import time

    backends = _first("cfdrnn_keras.runtime.backends", "cfdrnn_keras.runtime.landmarker", "cfdrnn_keras.inference")
    landmarker = _first("cfdrnn_keras.runtime.landmarker", "cfdrnn_keras.inference")
    from data_pipelines.images import read_image

    settings = json.loads((folder / "model.json").read_text())
    detector = landmarker.LandmarkDetector(model=backends.TFLiteBackend(folder / settings["landmark_model"],
                                                                        num_threads=1))
    image = read_image(ASTRONAUT)
    times = []
    for _ in range(1 + (runs or int(os.environ.get("CFDRNN_WEB_RUNS", "5")))):
        started = time.perf_counter()
        detector.detect(image, boxes=[box])
        times.append(1000 * (time.perf_counter() - started))
    return float(np.median(times[1:]))


def test_astronaut_matches_python(astronaut_run, folder):
    record, status = astronaut_run
    assert record["status"] == "ok", record
    assert record["model"] == "fast"
    assert (record["width"], record["height"]) == (512, 512)
    expected = python_faces(folder)
    assert len(record["faces"]) == len(expected) == 1
    face, want = record["faces"][0], expected[0]
    assert set(face) >= {"box", "points", "confidence", "score"}
    np.testing.assert_allclose(face["box"], want.box, atol=0.05)  # same detector, same decoding
    points = np.asarray(face["points"], np.float64)
    assert points.shape == (68, 2)
    distance = np.linalg.norm(points - want.points, axis=1)
    print(f"\nJS vs Python on the astronaut: mean {distance.mean():.4f} px, max {distance.max():.4f} px; "
          f"{record['ms_per_face']} ms/face (median of {record['runs']}), detector {record['ms_detector']} ms")
    assert distance.mean() < 1.5
    if os.environ.get("CFDRNN_WEB_RUNS"):  # the Python path's time on the same face, one thread, for the docs
        print(f"Python, 1 thread, same face (crop + network + mapping): {python_ms_per_face(folder, want.box):.1f} "
              f"ms (median of {record['runs']}); load average {os.getloadavg()}")
    assert np.abs(np.asarray(face["confidence"]) - want.confidence).mean() < 0.05
    assert record["ms_per_face"] > 0 and record["ms_detector"] > 0
    assert "ms per face" in status


def test_no_request_leaves_127_0_0_1(astronaut_run, browser, server):
    assert browser.requests, "no request recorded"
    outside = [url for url in browser.requests if not url.startswith(server.url) and not url.startswith("data:")]
    assert outside == []
    fetched = {url[len(server.url):].split("?")[0] for url in browser.requests}
    assert {"cfdrnn.js", "model.json", "litert/core.js", f"models/{FAST_FILE}"} <= fetched


def test_chosen_photo_and_webcam(browser, playwright, server, tmp_path_factory):
    page, _ = open_page(browser, server.url + "index.html")
    page.evaluate("document.body.dataset.state = ''")
    page.set_input_files("#file", str(ASTRONAUT))  # what "Choose a photo" does
    page.wait_for_function("document.body.dataset.state === 'done'", timeout=PAGE_TIMEOUT_MS)
    record = json.loads(page.inner_text("#result"))
    page.close()
    assert record["file"] == "astronaut.png" and record["status"] == "ok" and len(record["faces"]) == 1
    # The webcam loop, on Chromium's fake camera (a test pattern: no face in it).
    context = launch(playwright, tmp_path_factory.mktemp("chromium-camera"),
                     ["--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"])
    try:
        camera = context.new_page()
        camera.goto(server.url + "index.html")
        camera.wait_for_function("document.body.dataset.state === 'ready'", timeout=PAGE_TIMEOUT_MS)
        camera.click("#webcam")
        camera.wait_for_function("document.getElementById('status').textContent.startsWith('webcam: ')",
                                 timeout=PAGE_TIMEOUT_MS)
        shown = camera.inner_text("#status")
    finally:
        context.close()
    outside = [url for url in context.requests if not url.startswith(server.url) and not url.startswith("data:")]
    assert outside == []
    assert re.match(r"webcam: (no face|\d+ face)", shown), shown  # frames went through the detector


# ----------------------------------------------------------------------------------------------
# The JS image code against OpenCV, on the same pixels
# ----------------------------------------------------------------------------------------------
JS_CROPS = """async ([b64, width, height, jobs]) => {
  const m = await import('./cfdrnn.js');
  const data = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  const image = {data, width, height, channels: 3};
  const encode = (bytes) => { let s = ''; for (const v of bytes) s += String.fromCharCode(v); return btoa(s); };
  return jobs.map((job) => {
    if (job.kind === 'crop') return encode(m.warpToCrop(image, m.cropMatrix(job.box, job.size, 1.25), job.size));
    const resize = job.kind === 'area' ? m.resizeArea : m.resizeLinear;
    return encode(resize(image, job.x, job.y, job.w, job.h, job.dw, job.dh));
  });
}"""


def test_js_crops_and_resizes_match_opencv(browser, server):
    import cv2

    geometry = importlib.import_module("data_pipelines.geometry")
    rng = np.random.default_rng(18)
    # A smooth picture with texture (noise alone makes every bilinear tie a coin toss).
    ys, xs = np.mgrid[0:300, 0:420]
    image = np.stack([(xs * 0.6 + 40 * np.sin(ys / 9.0)) % 256, (ys * 0.8 + 30 * np.cos(xs / 7.0)) % 256,
                      (xs + ys) % 256], axis=-1)
    image = np.clip(image + rng.normal(0, 6, image.shape), 0, 255).astype(np.uint8)
    jobs = [
        {"kind": "crop", "box": [150.3, 80.7, 260.2, 205.9], "size": 128},   # inside, scale ≈ 0.8
        {"kind": "crop", "box": [-30.5, 200.2, 60.1, 330.8], "size": 128},   # over the corner: black outside
        {"kind": "crop", "box": [10.0, 5.0, 400.0, 290.0], "size": 128},     # scale ≈ 0.26: area pre-shrink
        {"kind": "area", "x": 0, "y": 0, "w": 420, "h": 300, "dw": 192, "dh": 137},  # detector input, shrink
        {"kind": "area", "x": 20, "y": 10, "w": 384, "h": 288, "dw": 192, "dh": 144},  # exact 2×
        {"kind": "linear", "x": 100, "y": 50, "w": 96, "h": 70, "dw": 192, "dh": 140},  # small photo, enlarge
    ]
    page, _ = open_page(browser, server.url + "index.html")
    try:
        results = page.evaluate(JS_CROPS, [base64.b64encode(image.tobytes()).decode(), 420, 300, jobs])
    finally:
        page.close()
    for job, encoded in zip(jobs, results):
        got = np.frombuffer(base64.b64decode(encoded), np.uint8)
        if job["kind"] == "crop":
            want = geometry.warp_to_crop(image, geometry.crop_matrix(job["box"], job["size"], margin=1.25), job["size"])
        else:
            region = image[job["y"]:job["y"] + job["h"], job["x"]:job["x"] + job["w"]]
            mode = cv2.INTER_AREA if job["kind"] == "area" else cv2.INTER_LINEAR
            want = cv2.resize(region, (job["dw"], job["dh"]), interpolation=mode)
        difference = np.abs(got.reshape(want.shape).astype(int) - want.astype(int))
        print(f"\n{job['kind']} {job.get('box', '')}: {int((difference > 0).sum())} of {difference.size} values "
              f"differ from OpenCV's (max {difference.max()})", end="")
        assert difference.max() <= 1, (job, difference.max())
        assert (difference > 0).mean() < 0.002, (job, (difference > 0).mean())


# ----------------------------------------------------------------------------------------------
# What a user can get wrong
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("image, status, words", [
    ("missing.png", "error", ["missing.png", "HTTP 404"]),
    ("not_an_image.png", "error", ["not_an_image.png", "not an image"]),
    ("grey.png", "no face", ["grey.png", "no face found"]),
])
def test_user_errors_give_one_line(browser, server, image, status, words):
    page, record = open_page(browser, server.url + f"index.html?image={image}")
    shown = page.inner_text("#status")
    page.close()
    assert record["status"] == status and record["faces"] == []
    assert record["model"] == "fast"
    for word in words:
        assert word in record["error"] and word in shown
    assert "\n" not in record["error"] and "\n" not in shown.strip()


def test_model_that_cannot_load(browser, server):
    page, record = open_page(browser, server.url + "broken/index.html?image=../astronaut.png")
    shown = page.inner_text("#status")
    page.close()
    assert record["status"] == "error"
    assert "cannot load the landmark model models/missing.tflite" in record["error"]
    assert record["error"] in shown


# ----------------------------------------------------------------------------------------------
# The folder
# ----------------------------------------------------------------------------------------------
def test_folder_is_self_contained(folder):
    expected = {"index.html", "cfdrnn.js", "model.json", "litert/core.js", "litert/wasm-utils.js",
                "litert/litert_wasm_internal.js", "litert/litert_wasm_internal.wasm",
                "litert/litert_wasm_compat_internal.js", "litert/litert_wasm_compat_internal.wasm",
                f"models/{FAST_FILE}", "models/face_detection_full_range_sparse.tflite"}
    present = {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}
    assert expected <= present
    for name in ("index.html", "cfdrnn.js", "model.json", "litert/core.js", "litert/wasm-utils.js"):
        text = (folder / name).read_text()
        assert str(REPO) not in text and "node_modules" not in text and "@litertjs/wasm-utils\"" not in text
        assert "cdn." not in text and "jsdelivr" not in text and "unpkg" not in text
    for name in ("index.html", "cfdrnn.js"):
        text = (folder / name).read_text()
        assert "http://" not in text and "https://" not in text, name


def test_model_json_holds_the_python_defaults(folder):
    face_detector = _first("cfdrnn_keras.runtime.face_detector", "cfdrnn_keras.detector")
    landmarker = _first("cfdrnn_keras.runtime.landmarker", "cfdrnn_keras.inference")
    settings = json.loads((folder / "model.json").read_text())
    python = face_detector.FaceDetector(model_path=folder / settings["detector_model"])
    detector = settings["detector"]
    assert (detector["score_threshold"], detector["iou_threshold"], detector["zoom"], detector["min_tile"]) == (
        python.score_threshold, python.iou_threshold, python.zoom, python.min_tile)
    assert detector["calibration"] == {k: getattr(python.calibration, k) for k in ("dx", "dy", "sx", "sy")}
    assert (detector["input_size"], detector["grid"]) == (face_detector.BlazeFace.INPUT_SIZE, face_detector.BlazeFace.GRID)
    assert settings["crop_margin"] == landmarker.CROP_MARGIN and settings["crop_size"] == 128
    assert settings["model"] == "fast" and settings["litert"]["version"] == web.LITERT_VERSION


def test_batch_fixed_model_computes_the_same(folder):
    from ai_edge_litert.interpreter import Interpreter

    original, _ = web.packaged_web_model()
    crop = np.random.default_rng(3).integers(0, 256, (1, 128, 128, 3), dtype=np.uint8)
    outputs = []
    for path in (original, folder / "models" / original.name):
        interpreter = Interpreter(model_path=str(path))
        outputs.append(interpreter.get_signature_runner("serving_default")(image=crop))
        shape = interpreter.get_input_details()[0]["shape_signature"]
    assert list(shape) == [1, 128, 128, 3]
    for key in ("landmarks", "confidence"):
        np.testing.assert_array_equal(outputs[0][key], outputs[1][key])
    fixed, changed = web.fixed_batch_tflite(original.read_bytes())
    assert changed > 0 and len(fixed) == original.stat().st_size
    assert web.fixed_batch_tflite(fixed)[1] == 0


def test_export_cli_writes_the_web_folder(tmp_path, folder):
    out = tmp_path / "exported"
    done = subprocess.run([sys.executable, str(REPO / "tools" / "export.py"), "--formats", "web", "--out", str(out)],
                          capture_output=True, text=True, timeout=600, cwd=REPO)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (out / "web" / "index.html").is_file() and (out / "web" / "models" / FAST_FILE).is_file()
    assert json.loads((out / "web" / "model.json").read_text())["model"] == "fast"
    bad = subprocess.run([sys.executable, str(REPO / "tools" / "export.py"), "--formats", "web,nonsense", "--out",
                          str(out)], capture_output=True, text=True, timeout=600, cwd=REPO)
    assert bad.returncode == 2 and "nonsense" in bad.stderr
