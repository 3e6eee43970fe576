"""The landmark model in a web page: a self-contained static folder run by LiteRT.js in the browser.

`export_web(out_dir)` writes `out_dir/web/`:

| file | what |
|---|---|
| `index.html` | the page: drop or choose a photo, or the webcam; boxes, points and ms per face on a canvas; `index.html?image=PATH` runs on PATH and writes a JSON into `<pre id="result">` |
| `cfdrnn.js` | the ES module that does what `LandmarkDetector` does (BlazeFace, crop, network, inverse map): `import {detect} from "./cfdrnn.js"` |
| `model.json` | which model files the module loads and the detector's settings, written from the Python defaults |
| `models/` | the landmark `.tflite` (the packaged `fast` model by default) and BlazeFace's `.tflite` |
| `litert/` | LiteRT.js (npm `@litertjs/core`): its ES module and the WebAssembly runtime, copied from the npm package at export time |

Nothing in the folder points outside it, and the page asks nothing of any other host: it works from
any static server (`python -m http.server`) and offline. The npm package is installed once into a
cache folder (`$CFDRNN_WEB_NPM`, else `$XDG_CACHE_HOME/cfdrnn-keras/web-npm`, else
`~/.cache/cfdrnn-keras/web-npm`) with the ordinary `npm` client; only `npm` needs the registry.

Two changes to what is copied, both mechanical: LiteRT.js's module imports its helper package by
its bare npm name, which a browser cannot resolve without a bundler, so the copy imports it by a
relative path; and LiteRT.js 2.5.3 refuses inputs whose declared batch is dynamic (-1, as every
file of `export.tflite` declares), so the landmark model's copy has its shape signatures' -1
replaced by 1 in place (`fixed_batch_tflite`: same bytes otherwise, same operators and weights).
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import json
import os
import shutil
import struct
import subprocess
import time
from pathlib import Path

LITERT_PACKAGE = "@litertjs/core"
LITERT_VERSION = "2.5.3"
WEB_DIR = "web"
TEMPLATE_DIR = Path(__file__).resolve().parent / "web_template"
TEMPLATE_FILES = ("index.html", "cfdrnn.js")
# The non-threaded builds: the threaded one needs SharedArrayBuffer, i.e. cross-origin isolation
# headers that a plain static server does not send; `jspi` is for WebNN. LiteRT.js picks
# `litert_wasm_internal` where the browser has relaxed SIMD and the `compat` build elsewhere.
RUNTIME_FILES = ("litert_wasm_internal.js", "litert_wasm_internal.wasm",
                 "litert_wasm_compat_internal.js", "litert_wasm_compat_internal.wasm")
BLAZEFACE_FILE = "face_detection_full_range_sparse.tflite"
PACKAGED_WEB_MODEL = "fast"  # as `--model` takes it


class WebExportError(RuntimeError):
    """The web folder cannot be written (npm missing or failing, a model file missing); one line."""


# ----------------------------------------------------------------------------------------------
# Where things are
# ----------------------------------------------------------------------------------------------
def _package_dir(name: str) -> Path:
    """A top-level package's folder, found without importing it."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise WebExportError(f"package {name} not found")
    return Path(next(iter(spec.submodule_search_locations)))


def assets_dir() -> Path:
    return _package_dir("cfdrnn_keras") / "assets"


def _import_first(*names):
    """The first of these modules that imports (the package is being reorganised; any layout works)."""
    for name in names:
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    raise WebExportError(f"none of {', '.join(names)} imports")


def packaged_web_model() -> tuple[Path, str]:
    """(LiteRT file, name) of the packaged model the page runs by default: the `fast` model's full-int8 file."""
    try:
        packaged = importlib.import_module("cfdrnn_keras.runtime.packaged")
        return Path(packaged.packaged_model(PACKAGED_WEB_MODEL).tflite_path), PACKAGED_WEB_MODEL
    except ImportError:
        return assets_dir() / "cfdrnn_mobile_noflip_int8.tflite", PACKAGED_WEB_MODEL


def blazeface_model() -> Path:
    return assets_dir() / BLAZEFACE_FILE


def detector_settings() -> dict:
    """The Python face detector's defaults (`FaceDetector()`, `BLAZEFACE_CALIBRATION`, `BlazeFace`),
    read from the Python code so that the page cannot drift from it."""
    module = _import_first("cfdrnn_keras.runtime.face_detector", "cfdrnn_keras.detector")
    defaults = {name: p.default for name, p in inspect.signature(module.FaceDetector.__init__).parameters.items()
                if p.default is not inspect.Parameter.empty}
    calibration = module.BLAZEFACE_CALIBRATION
    return {
        "input_size": int(module.BlazeFace.INPUT_SIZE),
        "grid": int(module.BlazeFace.GRID),
        "score_threshold": float(defaults["score_threshold"]),
        "iou_threshold": float(defaults["iou_threshold"]),
        "zoom": int(defaults["zoom"]),
        "min_tile": int(defaults["min_tile"]),
        "calibration": {"dx": calibration.dx, "dy": calibration.dy, "sx": calibration.sx, "sy": calibration.sy},
    }


def crop_margin() -> float:
    module = _import_first("cfdrnn_keras.runtime.landmarker", "cfdrnn_keras.inference")
    return float(module.CROP_MARGIN)


def npm_cache_dir() -> Path:
    if os.environ.get("CFDRNN_WEB_NPM"):
        return Path(os.environ["CFDRNN_WEB_NPM"])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "cfdrnn-keras" / "web-npm"


# ----------------------------------------------------------------------------------------------
# LiteRT.js from npm
# ----------------------------------------------------------------------------------------------
def litert_package(cache: Path | None = None, version: str = LITERT_VERSION, log=print) -> Path:
    """`node_modules/@litertjs` of `@litertjs/core@version` in `cache`, installed with npm if needed."""
    cache = Path(cache) if cache else npm_cache_dir()
    scope = cache / "node_modules" / "@litertjs"

    def installed() -> bool:
        try:
            return json.loads((scope / "core" / "package.json").read_text())["version"] == version and all(
                (scope / "core" / "wasm" / name).is_file() for name in RUNTIME_FILES)
        except (OSError, ValueError, KeyError):
            return False

    if installed():
        return scope
    npm = shutil.which("npm")
    if npm is None:
        raise WebExportError(f"npm not found: the web folder copies LiteRT.js from the npm package "
                             f"{LITERT_PACKAGE}@{version} (install Node.js and npm, e.g. apt-get install npm)")
    cache.mkdir(parents=True, exist_ok=True)
    log(f"web: npm install {LITERT_PACKAGE}@{version} into {cache}")
    command = [npm, "install", "--prefix", str(cache), "--no-audit", "--no-fund", "--ignore-scripts",
               "--no-save", "--loglevel=error", f"{LITERT_PACKAGE}@{version}"]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    except subprocess.TimeoutExpired:
        raise WebExportError(f"npm install {LITERT_PACKAGE}@{version} took more than 10 minutes") from None
    if done.returncode != 0 or not installed():
        lines = [line for line in (done.stderr or done.stdout or "").splitlines() if line.strip()]
        detail = lines[-1].strip() if lines else f"exit status {done.returncode}"
        raise WebExportError(f"npm install {LITERT_PACKAGE}@{version} failed: {detail}")
    return scope


def _copy_litert(scope: Path, target: Path) -> dict:
    """LiteRT.js's module (its one bare import made relative) and the WebAssembly runtime into `target`."""
    target.mkdir(parents=True, exist_ok=True)
    core = (scope / "core" / "dist" / "index.js").read_text()
    bare = 'from "@litertjs/wasm-utils"'
    if core.count(bare) != 1:
        raise WebExportError(f"{scope / 'core/dist/index.js'}: expected one import of @litertjs/wasm-utils "
                             f"(a LiteRT.js version other than {LITERT_VERSION}?)")
    core = core.replace(bare, 'from "./wasm-utils.js"').replace("//# sourceMappingURL=index.js.map", "")
    (target / "core.js").write_text(core)
    utils = (scope / "wasm-utils" / "dist" / "index.js").read_text()
    if "import " in utils.replace("importScripts", ""):
        raise WebExportError(f"{scope / 'wasm-utils/dist/index.js'}: unexpected imports")
    (target / "wasm-utils.js").write_text(utils.replace("//# sourceMappingURL=index.js.map", ""))
    for name in RUNTIME_FILES:
        shutil.copyfile(scope / "core" / "wasm" / name, target / name)
    versions = {part: json.loads((scope / part / "package.json").read_text())["version"] for part in ("core", "wasm-utils")}
    (target / "NOTICE.txt").write_text(
        f"LiteRT.js: npm packages {LITERT_PACKAGE} {versions['core']} and @litertjs/wasm-utils "
        f"{versions['wasm-utils']}, Apache-2.0 (Google), https://github.com/google-ai-edge/LiteRT\n"
        "core.js and wasm-utils.js are their dist/index.js, with the bare import of @litertjs/wasm-utils\n"
        "made relative and the source-map comments removed; the .js/.wasm runtime files are unchanged.\n")
    return versions


# ----------------------------------------------------------------------------------------------
# The model file: a fixed batch of 1 for LiteRT.js
# ----------------------------------------------------------------------------------------------
def _table_field(data: bytes, table: int, index: int) -> int | None:
    """Absolute position of field `index` of the flatbuffer table at `table`, or None if absent."""
    vtable = table - struct.unpack_from("<i", data, table)[0]
    vtable_size = struct.unpack_from("<H", data, vtable)[0]
    slot = 4 + 2 * index
    if slot >= vtable_size:
        return None
    offset = struct.unpack_from("<H", data, vtable + slot)[0]
    return table + offset if offset else None


def _deref(data: bytes, position: int) -> int:
    return position + struct.unpack_from("<I", data, position)[0]


def _vector(data: bytes, field: int) -> tuple[int, int]:
    """(first element's position, length) of the vector an offset field points at."""
    start = _deref(data, field)
    return start + 4, struct.unpack_from("<I", data, start)[0]


def fixed_batch_tflite(model: bytes) -> tuple[bytes, int]:
    """The same TFLite flatbuffer with every -1 in its tensors' `shape_signature` set to 1, in place.

    TFLite schema: Model.subgraphs is field 2; SubGraph.tensors field 0; Tensor.shape_signature
    field 7 (a vector of int32). Only those int32 values change; returns (bytes, values changed).
    """
    data = bytearray(model)
    if data[4:8] != b"TFL3":
        raise WebExportError("not a TFLite flatbuffer (no TFL3 identifier)")
    root = _deref(data, 0)
    subgraphs_field = _table_field(data, root, 2)
    changed = 0
    if subgraphs_field is None:
        return bytes(data), 0
    subgraphs, count = _vector(data, subgraphs_field)
    for s in range(count):
        subgraph = _deref(data, subgraphs + 4 * s)
        tensors_field = _table_field(data, subgraph, 0)
        if tensors_field is None:
            continue
        tensors, tensor_count = _vector(data, tensors_field)
        for t in range(tensor_count):
            tensor = _deref(data, tensors + 4 * t)
            signature_field = _table_field(data, tensor, 7)
            if signature_field is None:
                continue
            values, length = _vector(data, signature_field)
            for k in range(length):
                if struct.unpack_from("<i", data, values + 4 * k)[0] == -1:
                    struct.pack_into("<i", data, values + 4 * k, 1)
                    changed += 1
    return bytes(data), changed


def _check_landmark_model(path: Path) -> dict:
    """Input uint8 [1, S, S, 3] and the `landmarks`/`confidence` outputs, as the page expects."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    signature = interpreter.get_signature_list().get("serving_default", {})
    detail = interpreter.get_input_details()[0]
    if detail["dtype"].__name__ != "uint8" or len(detail["shape"]) != 4 or detail["shape"][3] != 3:
        raise WebExportError(f"{path}: the page needs a model with uint8 crop input [N, S, S, 3] "
                             f"(tools/export.py's TFLite files), this one takes {detail['dtype'].__name__} "
                             f"{list(detail['shape'])}")
    if "landmarks" not in signature.get("outputs", ()):
        raise WebExportError(f"{path}: no serving_default signature with a 'landmarks' output")
    return {"input_size": int(detail["shape"][1]),
            "shape_signature": [int(v) for v in detail["shape_signature"]]}


# ----------------------------------------------------------------------------------------------
# The folder
# ----------------------------------------------------------------------------------------------
def export_web(out_dir, model_path=None, model_name: str | None = None, *, npm_cache=None,
               litert_version: str = LITERT_VERSION, log=print) -> dict:
    """Write the static web folder `out_dir/web/` (replacing an earlier one); returns its description.

    model_path: the landmark `.tflite` (uint8 crops in, `landmarks` in crop pixels out, as
        `tools/export.py` writes them); None: the packaged `fast` model's full-int8 file.
    model_name: what the page reports as `model`; None: `fast` for the packaged file, else the
        file's name.
    """
    started = time.perf_counter()
    packaged_path, packaged_name = packaged_web_model()
    if model_path is None:
        model_path = packaged_path
        if not model_path.is_file():
            raise WebExportError(f"{model_path}: the packaged model's LiteRT file is missing "
                                 "(pass model_path=, e.g. the cfdrnn_int8_full.tflite that tools/export.py writes)")
    model_path = Path(model_path)
    if not model_path.is_file():
        raise WebExportError(f"{model_path}: model file not found")
    if model_name is None:
        same = packaged_path.is_file() and packaged_path.resolve() == model_path.resolve()
        model_name = packaged_name if same else model_path.name
    detector = blazeface_model()
    if not detector.is_file():
        raise WebExportError(f"{detector}: the BlazeFace model is missing (reinstall cfdrnn-keras)")
    for name in TEMPLATE_FILES:
        if not (TEMPLATE_DIR / name).is_file():
            raise WebExportError(f"{TEMPLATE_DIR / name}: page template missing")

    scope = litert_package(npm_cache, litert_version, log=log)
    web = Path(out_dir) / WEB_DIR
    if web.exists():
        shutil.rmtree(web)
    (web / "models").mkdir(parents=True)
    versions = _copy_litert(scope, web / "litert")
    for name in TEMPLATE_FILES:
        shutil.copyfile(TEMPLATE_DIR / name, web / name)

    original = model_path.read_bytes()
    fixed, changed = fixed_batch_tflite(original)
    landmark_file = web / "models" / model_path.name
    landmark_file.write_bytes(fixed)
    model_info = _check_landmark_model(landmark_file)
    shutil.copyfile(detector, web / "models" / detector.name)

    config = {
        "model": model_name,
        "landmark_model": f"models/{landmark_file.name}",
        "detector_model": f"models/{detector.name}",
        "crop_size": model_info["input_size"],
        "crop_margin": crop_margin(),
        "detector": detector_settings(),
        "litert": {"package": LITERT_PACKAGE, "version": versions["core"], "accelerator": "wasm"},
        "source": {"file": model_path.name, "sha256": hashlib.sha256(original).hexdigest(),
                   "batch_fixed_to_1": changed},
    }
    (web / "model.json").write_text(json.dumps(config, indent=2) + "\n")
    files = sorted(str(p.relative_to(web)) for p in web.rglob("*") if p.is_file())
    size = sum((web / f).stat().st_size for f in files)
    log(f"web: wrote {web} ({len(files)} files, {size / 1e6:.1f} MB; model {model_name}: {model_path.name})")
    return {"path": WEB_DIR, "model": model_name, "model_file": model_path.name, "files": files,
            "size_bytes": size, "litert_version": versions["core"],
            "seconds": round(time.perf_counter() - started, 1)}


__all__ = ["LITERT_PACKAGE", "LITERT_VERSION", "WEB_DIR", "WebExportError", "blazeface_model", "detector_settings",
           "export_web", "fixed_batch_tflite", "litert_package", "npm_cache_dir", "packaged_web_model"]
