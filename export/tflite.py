"""TFLite files for devices: float32, float16, dynamic-range int8 and full-integer int8.

Every file takes uint8 face crops [N, S, S, 3] (signature `serving_default`, input `image`) and returns
`landmarks` float32 [N, 68, 2] in crop pixels and `confidence` float32 [N, 68], and holds builtin
operators only (no Flex / TF Select ops, no custom ops), so the plain LiteRT interpreter
(`ai_edge_litert.interpreter.Interpreter`) runs it; `builtin_only_problems` checks the flatbuffer.

Decisions where the issue is silent:
* the input stays uint8 in every variant (a camera frame's own type; the /255 − 0.5 scaling is part
  of the graph), so the full-integer model needs no input quantisation parameters;
* the full-integer model keeps float32 outputs: landmarks are sub-pixel coordinates in [0, 256) and an
  int8 output would quantise them to 1-pixel steps. Its weights and activations are int8 except the
  last heat-map 1×1 convolution and the decoder (`float_heatmap_head`: int8 heat-maps make the argmax
  tie); TFLITE_BUILTINS is the fall-back for those;
* calibration uses real face crops (the training crop: 68-point box, margin 1.25), never noise,
  because the activation ranges of a landmark network depend on seeing faces.
"""
from __future__ import annotations

import tempfile
import warnings

import keras
import numpy as np
import tensorflow as tf

from .saved_model import build_export_archive, crop_size_of

from . import TFLITE_FORMATS  # noqa: E402  (the names live in the package, which imports no TF)
SIGNATURE = "serving_default"


def configure_converter(converter: tf.lite.TFLiteConverter, fmt: str, representative_crops=None):
    """Set a converter up for one of `TFLITE_FORMATS`."""
    builtins = tf.lite.OpsSet.TFLITE_BUILTINS
    converter.target_spec.supported_ops = [builtins]
    if fmt == "tflite_fp32":
        pass
    elif fmt == "tflite_fp16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif fmt == "tflite_int8":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]  # dynamic range: int8 weights, float activations
    elif fmt == "tflite_int8_full":
        if representative_crops is None or len(representative_crops) == 0:
            raise ValueError("needs real face crops for calibration (pass --calibration-data DIR)")
        crops = np.asarray(representative_crops, dtype=np.uint8)

        def representative_dataset():
            for crop in crops:
                yield {"image": crop[None]}

        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative_dataset
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8, builtins]
    else:
        raise ValueError(f"unknown TFLite format {fmt!r}; choose one of {', '.join(TFLITE_FORMATS)}")
    return converter


def _cfdrnn_graph(model: keras.Model) -> keras.Model:
    """The CFDRNN network inside `model`: itself, or the first nested graph with a `decoder` layer, at
    any depth (a test-time ensemble wraps a network, or an average of networks whose members share
    their layer names, so one member's names are every member's)."""
    if "decoder" in {layer.name for layer in model.layers}:
        return model
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            try:
                return _cfdrnn_graph(layer)
            except ValueError:
                continue
    raise ValueError(f"{model.name}: no CFDRNN network (a `decoder` layer) inside")


def float_heatmap_head(model: keras.Model) -> list[str]:
    """Name patterns of the layers kept in float in the full-integer file: the 1×1 convolution (with
    its batch norm and ReLU) that makes each heat-map whose argmax is used, and the decoding layers.

    Why: the final heat-maps quantised to int8 keep about a dozen distinct levels, so the argmax of
    Eq. 4 ties between neighbouring pixels and, on faint heat-maps, falls back to pixel (0, 0). On the
    packaged model this cost +0.55 points of NME against +0.03 with this one convolution in float
    (about 0.1 % of the FLOPs; docs/DEPLOYMENT.md). The four-stage average (cfdrnn_keras.model.ensemble)
    takes the argmax of every stage's heat-maps, so all four heads stay in float there. The uncertainty
    layer (`PointUncertainty`, issue 17) reads the same heat-maps' peaks and takes logs: float too. So
    does the fusion's offset (`PointOffset`, a few tenths of a crop pixel): quantised with the
    landmarks' range, the fused `accurate` lost 0.06 points (3.062 → 3.119).
    """
    from cfdrnn_keras.model.ensemble import MirrorMerge, StageAverage
    from cfdrnn_keras.model.fusion import PointOffset
    from cfdrnn_keras.model.network import HEATMAP_OUTPUTS
    from cfdrnn_keras.model.uncertainty import PointUncertainty

    network = _cfdrnn_graph(model)
    decoding = [layer.name for layer in model.layers
                if isinstance(layer, (StageAverage, MirrorMerge, PointOffset, PointUncertainty))]
    averaged = any(isinstance(layer, StageAverage) for layer in model.layers)
    names = [name for name in HEATMAP_OUTPUTS if name in {layer.name for layer in network.layers}]
    patterns = []
    for name in names if averaged else names[-1:]:
        layer = network.get_layer(name)  # the `heatmaps_j` output activation
        while not isinstance(layer, keras.layers.Conv2D):
            layer = layer._inbound_nodes[0].parent_nodes[0].operation
        patterns.append(f"{layer.name}_")
    return patterns + [f"{name}_" for name in ["decoder", *decoding]]


# Signature outputs computed in float in the full-integer file: the last op of each is named after
# the output (`StatefulPartitionedCall:K`), not after its layer, so the layer patterns miss it.
# Quantised, the face score's logistic saw its inputs clipped to the faces' calibration range (every
# background box scored 0.5), the uncertainty's exp was cut at 21.6 px (issue 17), and the landmarks
# came out in steps of about half a crop pixel (256 levels over the crop), which undid most of what
# the sub-pixel peaks gain.
FLOAT_OUTPUTS = ("landmarks", "confidence", "uncertainty", "face_score")


def _tensor_names(saved_model_dir, outputs=()) -> list[str]:
    """Tensor names of the float conversion (the names the quantisation debugger's denylist uses),
    and those of the signature outputs named in `outputs` that it has."""
    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model_dir), signature_keys=[SIGNATURE])
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=converter.convert())
    names = [detail["name"] for detail in interpreter.get_tensor_details()]
    if not outputs:
        return names
    details = interpreter.get_signature_runner(SIGNATURE).get_output_details()
    return names, [details[key]["name"] for key in outputs if key in details]


def _full_integer_with_float_head(converter, saved_model_dir, keep_float: list[str]) -> bytes:
    all_names, output_names = _tensor_names(saved_model_dir, FLOAT_OUTPUTS)
    names = [name for name in all_names if any(pattern in name for pattern in keep_float)] + output_names
    if not names:
        raise ValueError(f"none of the layers {keep_float} found in the converted graph")
    options = tf.lite.experimental.QuantizationDebugOptions(denylisted_nodes=names)
    debugger = tf.lite.experimental.QuantizationDebugger(
        converter=converter, debug_dataset=converter.representative_dataset, debug_options=options
    )
    return debugger.get_nondebug_quantized_model()


def convert(model: keras.Model, fmt: str, representative_crops=None, saved_model_dir=None) -> bytes:
    """The `.tflite` flatbuffer of `model` in format `fmt` (raises if it would need non-builtin ops).

    `saved_model_dir` may name a crops-only SavedModel already written for this model (it is
    reused across formats); otherwise one is written to a temporary folder.
    """
    if saved_model_dir is None:
        with tempfile.TemporaryDirectory() as tmp:
            return convert(model, fmt, representative_crops, write_crops_saved_model(model, tmp))
    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model_dir), signature_keys=[SIGNATURE])
    configure_converter(converter, fmt, representative_crops)
    with warnings.catch_warnings():  # the calibrator runs TF's own deprecated tf.lite.Interpreter
        warnings.filterwarnings("ignore", message=".*tf.lite.Interpreter is deprecated")
        if fmt == "tflite_int8_full":
            content = _full_integer_with_float_head(converter, saved_model_dir, float_heatmap_head(model))
        else:
            content = converter.convert()
    problems = builtin_only_problems(content)
    if problems:
        raise ValueError(f"{fmt}: the TFLite model needs non-builtin operators: {', '.join(problems)}")
    return content


def write_crops_saved_model(model: keras.Model, path) -> str:
    """The crops-only SavedModel the converter reads (no `predict_image`: decode ops are not builtin)."""
    build_export_archive(model, with_predict_image=False).write_out(str(path), verbose=False)
    return str(path)


# ------------------------------------------------------------------------------------------------
# Inspecting a flatbuffer.
# ------------------------------------------------------------------------------------------------
def operator_names(content: bytes) -> list[str]:
    """Names of the operator codes a .tflite flatbuffer uses (custom ops by their custom name)."""
    from ai_edge_litert import schema_py_generated as schema

    names_of = {value: name for name, value in vars(schema.BuiltinOperator).items() if not name.startswith("_")}
    model = schema.Model.GetRootAs(bytearray(content), 0)
    names = []
    for index in range(model.OperatorCodesLength()):
        code = model.OperatorCodes(index)
        builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
        if builtin == schema.BuiltinOperator.CUSTOM:
            names.append(f"CUSTOM:{code.CustomCode().decode()}")
        else:
            names.append(names_of.get(builtin, f"BUILTIN_{builtin}"))
    return names


def builtin_only_problems(content: bytes) -> list[str]:
    """Operators that the plain LiteRT interpreter lacks: Flex (TF Select) and other custom ops."""
    return [name for name in operator_names(content) if name.startswith("CUSTOM:") or name.startswith("Flex")]


# ------------------------------------------------------------------------------------------------
# Running a file.
# ------------------------------------------------------------------------------------------------
class TFLiteLandmarks:
    """A `.tflite` landmark file in the LiteRT interpreter: uint8 crops → landmarks, confidence."""

    def __init__(self, model_path, num_threads: int | None = None):
        from ai_edge_litert.interpreter import Interpreter

        self.path = str(model_path)
        self.interpreter = Interpreter(model_path=self.path, num_threads=num_threads)
        self.runner = self.interpreter.get_signature_runner(SIGNATURE)
        details = self.runner.get_input_details()["image"]
        self.input_dtype = details["dtype"]
        self.crop_size = int(details["shape_signature"][1])

    def __call__(self, crops) -> dict:
        crops = np.asarray(crops)
        if crops.ndim == 3:
            crops = crops[None]
        if crops.dtype != np.uint8:
            raise ValueError(f"{self.path}: expects uint8 crops, got {crops.dtype}")
        out = self.runner(image=crops)
        return {name: np.asarray(value) for name, value in out.items()
                if name in ("landmarks", "confidence", "uncertainty", "face_score")}


def keras_crop_landmarks(model: keras.Model, crops) -> np.ndarray:
    """The Keras model's landmarks in crop pixels for uint8 crops (the reference for every export)."""
    crops = np.asarray(crops)
    size = crop_size_of(model)
    outputs = model.predict(crops.astype(np.float32) / 255.0 - 0.5, batch_size=8, verbose=0)
    return np.asarray(outputs["landmarks"], dtype=np.float64) * size


# ------------------------------------------------------------------------------------------------
# Real faces for calibration and comparison.
# ------------------------------------------------------------------------------------------------
def face_crops(root, count: int, size: int = 256, margin: float = 1.25):
    """`count` real face crops spread evenly over the annotated faces under `root`.

    Returns (crops uint8 [K, S, S, 3], points float64 [K, 68, 2] ground truth in crop pixels),
    K ≤ count. The crop is the training one: 68-point box × margin (data_pipelines.geometry).
    Unreadable faces are skipped.
    """
    from data_pipelines import geometry
    from data_pipelines.discovery import find_faces
    from data_pipelines.images import ImageReadError, read_image
    from data_pipelines.pts import PtsFormatError, read_pts

    faces = find_faces(root, check=False)
    if not faces or count <= 0:
        return np.zeros((0, size, size, 3), np.uint8), np.zeros((0, 68, 2))
    picks = np.unique(np.linspace(0, len(faces) - 1, min(count, len(faces))).round().astype(int))
    crops, points = [], []
    for index in picks:
        face = faces[index]
        try:
            image = read_image(face.image_path)
            pts = read_pts(face.pts_path)
        except (ImageReadError, PtsFormatError):
            continue
        matrix = geometry.crop_matrix(geometry.face_box_from_points(pts), size, margin)
        crops.append(geometry.warp_to_crop(image, matrix, size))
        points.append(geometry.transform_points(matrix, pts))
    return np.stack(crops).astype(np.uint8), np.stack(points)

