"""A SavedModel is a program: check its graph against the ops of this project's own exports before
anything of it runs.

`tf.saved_model.load` runs the functions a SavedModel holds (some at load time already: resource
initialisers), and a function may hold any TensorFlow op: file I/O (ReadFile, WriteFile,
MatchingFiles, DeleteFile...), Python callbacks (PyFunc, EagerPyFunc), printing to a file (PrintV2),
ops of custom libraries. `check_saved_model(path)` reads `saved_model.pb` with the protobuf classes
TensorFlow ships (`tensorflow.core.protobuf.saved_model_pb2`; nothing is loaded, traced or run) and
refuses, in one line naming the op and the function that holds it, any op outside `MODEL_OPS`, the
ops that `export.saved_model` writes (issue 16, case 9).

What is checked, in every MetaGraph:

* every function of the function library. A function reachable from the object graph (what
  `tf.saved_model.load` can call: signatures, restored functions, resource initialisers) or from no
  one at all may use `MODEL_OPS` only;
* the functions reachable only from the graph's top-level nodes (the saver: `_traced_save` /
  `_traced_restore`, which TF Serving runs with the model's own `variables/` path and
  `tf.saved_model.load` never runs) and those top-level nodes may also use `SAVER_OPS`
  (SaveV2, RestoreV2, ...);
* a node whose op is the name of a library function is a call of that function; a function-valued
  attribute (`f` of PartitionedCall, While's `body`, If's branches, ...) naming no library function
  names an op (TensorFlow runs an op given there as a one-node function), and that op is checked too;
* a SavedModel without an object graph (TensorFlow 1's format, whose loader runs its top-level init
  and restore ops) is refused: it is nothing this project writes.

The opt-out, for a model the user trusts: `LandmarkDetector(model=folder, trust_model=True)`,
`--trust-model` in the tools, `SavedModelBackend(folder, trust_model=True)`.

Regenerating the allowlists (after a TensorFlow or Keras upgrade adds ops to the project's exports;
`tests/test_saved_model_safety.py` fails, naming the op, when a fresh export no longer passes):

    python -c "from cfdrnn_keras.model.saved_model_check import derive_allowlists as d; d()"

exports the packaged model and tiny untrained networks of every preset (each with the default
ensemble, bare, and with the uncertainty outputs), both signatures and crops only, and prints the
two sets to paste below.
"""
from __future__ import annotations

from pathlib import Path

from ..runtime.backends import ModelLoadError

TRUST_HINT = "load it only if you trust it: trust_model=True, or --trust-model in the tools"

# The ops of this project's SavedModel exports (`export.saved_model.export_saved_model`: both
# signatures, every ensemble (sub-pixel decoding included), with and without the uncertainty outputs,
# every preset; `export.tflite.write_crops_saved_model`), as printed by `derive_allowlists()` with
# TensorFlow 2.21 / Keras 3.
MODEL_OPS = frozenset({
    "Abs", "AddV2", "All", "Any", "ArgMax", "AsString", "Assert", "BitwiseAnd", "BroadcastTo", "Cast",
    "Ceil", "ConcatV2", "Const", "Conv2D", "DecodeImage", "DecodeJpeg", "DecodeRaw", "Einsum", "Equal",
    "Exp", "ExtractJpegShape", "Fill", "Floor", "FloorDiv", "FloorMod", "FusedBatchNormV3", "GatherV2",
    "Greater", "GreaterEqual", "Identity", "ImageProjectiveTransformV3", "IsFinite", "Less",
    "LessEqual", "Log", "LogicalAnd", "LogicalNot", "LogicalOr", "MatMul", "MatrixDeterminant",
    "MatrixInverse", "Max", "MaxPool", "Maximum", "Mean", "Minimum", "Mul", "NoOp", "OnesLike", "Pack",
    "Range", "ReadVariableOp", "RealDiv", "Relu", "Reshape", "ReverseV2", "Round", "Rsqrt", "SelectV2",
    "Shape", "Sigmoid", "Sqrt", "Square", "Squeeze", "StatefulPartitionedCall", "StatelessIf",
    "StatelessWhile", "StopGradient", "StridedSlice", "StringFormat", "StringJoin", "Sub", "Substr",
    "Sum", "TensorListFromTensor", "TensorListGetItem", "TensorListReserve", "TensorListSetItem",
    "TensorListStack", "Transpose", "Unpack", "Where", "ZerosLike"
})
# What the saver (functions reachable only from the top-level graph, and those nodes) may use besides.
SAVER_OPS = frozenset({
    "AssignVariableOp", "DisableCopyOnRead", "MergeV2Checkpoints", "Placeholder", "RestoreV2", "SaveV2",
    "Select", "ShardedFilename", "StaticRegexFullMatch", "VarHandleOp", "VarIsInitializedOp"
})


class UntrustedModelError(ModelLoadError):
    """A SavedModel whose graph holds an op outside the allowlist (one line naming it)."""


def read_saved_model(path):
    """The parsed `saved_model.pb` of a SavedModel folder (a `saved_model_pb2.SavedModel`)."""
    from google.protobuf.message import DecodeError
    from tensorflow.core.protobuf import saved_model_pb2

    path = Path(path)
    pb = path / "saved_model.pb"
    if not pb.is_file():
        raise ModelLoadError(f"{path}: not a SavedModel (no saved_model.pb)")
    proto = saved_model_pb2.SavedModel()
    try:
        proto.ParseFromString(pb.read_bytes())
    except (DecodeError, ValueError) as error:
        raise ModelLoadError(f"{pb}: not a valid SavedModel protobuf ({error})") from None
    if not proto.meta_graphs:
        raise ModelLoadError(f"{pb}: the SavedModel holds no MetaGraph")
    return proto


def _function_references(node):
    """Names in a NodeDef's function-valued attributes (`func` and lists of them)."""
    for value in node.attr.values():
        if value.HasField("func"):
            yield value.func.name
        if value.HasField("list"):
            for func in value.list.func:
                yield func.name


def _calls_and_ops(nodes, library):
    """(library functions called, {op: first node name}) of a list of NodeDefs."""
    calls, ops = set(), {}
    for node in nodes:
        if node.op in library:
            calls.add(node.op)
        else:
            ops.setdefault(node.op, node.name)
        for name in _function_references(node):
            if name in library:
                calls.add(name)
            elif name:
                ops.setdefault(name, node.name)
    return calls, ops


def _reachable(roots, edges):
    seen, stack = set(), [name for name in roots]
    while stack:
        name = stack.pop()
        if name in seen or name not in edges:
            continue
        seen.add(name)
        stack.extend(edges[name])
    return seen


def meta_graph_ops(meta_graph) -> dict:
    """{"model": {op: where}, "saver": {op: where}} of one MetaGraph: the ops of everything that
    `tf.saved_model.load` may run (and of functions no one calls), and those of the saver."""
    graph = meta_graph.graph_def
    library = {function.signature.name: function for function in graph.library.function}
    edges, ops_of = {}, {}
    for name, function in library.items():
        edges[name], ops_of[name] = _calls_and_ops(function.node_def, library)
    for gradient in graph.library.gradient:  # a gradient runs where its function is differentiated
        if gradient.function_name in edges and gradient.gradient_func in library:
            edges[gradient.function_name].add(gradient.gradient_func)

    objects = meta_graph.object_graph_def
    roots = set(objects.concrete_functions)
    for item in objects.nodes:
        kind = item.WhichOneof("kind")
        if kind == "function":
            roots.update(item.function.concrete_functions)
        elif kind == "bare_concrete_function":
            roots.add(item.bare_concrete_function.concrete_function_name)
    callable_functions = _reachable(roots, edges)
    top_calls, top_ops = _calls_and_ops(graph.node, library)
    saver_only = _reachable(top_calls, edges) - callable_functions

    model, saver = {}, {}
    for name in sorted(library):
        target = saver if name in saver_only else model
        for op, node in ops_of[name].items():
            target.setdefault(op, f"function {name}, node {node}")
    for op, node in top_ops.items():
        saver.setdefault(op, f"the top-level graph, node {node}")
    return {"model": model, "saver": saver, "has_object_graph": bool(objects.nodes)}


def saved_model_ops(path) -> dict:
    """{"model": set, "saver": set}: the ops of a SavedModel folder, in the two classes above."""
    result = {"model": set(), "saver": set()}
    for meta_graph in read_saved_model(path).meta_graphs:
        found = meta_graph_ops(meta_graph)
        result["model"] |= set(found["model"])
        result["saver"] |= set(found["saver"])
    return result


def check_saved_model(path) -> dict:
    """Refuse (UntrustedModelError, one line) a SavedModel folder that holds anything but the ops of
    this project's exports; else {"ops": number of distinct ops, "functions": number of functions}."""
    path = Path(path)
    proto = read_saved_model(path)
    ops, functions = set(), 0
    for meta_graph in proto.meta_graphs:
        found = meta_graph_ops(meta_graph)
        if not found["has_object_graph"]:
            raise UntrustedModelError(f"{path}: a TensorFlow 1 SavedModel (no object graph), not one of this "
                                      f"project's exports; its loader runs its graph unchecked; {TRUST_HINT}")
        for op, where in sorted(found["model"].items()):
            if op not in MODEL_OPS:
                raise UntrustedModelError(f"{path}: the SavedModel runs op {op!r} ({where}), which this project's "
                                          f"exports never use; refused: {TRUST_HINT}")
        for op, where in sorted(found["saver"].items()):
            if op not in MODEL_OPS | SAVER_OPS:
                raise UntrustedModelError(f"{path}: the SavedModel's saver uses op {op!r} ({where}), which this "
                                          f"project's exports never use; refused: {TRUST_HINT}")
        ops |= set(found["model"]) | set(found["saver"])
        functions += len(meta_graph.graph_def.library.function)
    return {"ops": len(ops), "functions": functions}


def _deployed_variants(network):
    """The network as the exports run it: the default ensemble, the bare last stage, and (where the
    uncertainty outputs exist) the ensemble with them and a fusion, with and without the flip test."""
    import inspect

    from . import ensemble as ensembles
    from .fusion import fusion_entry

    yield ensembles.for_inference(network, ensembles.EnsembleOptions())
    yield ensembles.for_inference(network, ensembles.PLAIN)
    if "uncertainty" in inspect.signature(ensembles.build_test_time_model).parameters:
        for flip in (True, False):
            calibration = {"intercepts": [0.5] * 68, "slopes": [-1.5, -1.0], "face_weights": [3.0, -1.0][:1 + flip],
                           "face_bias": 2.0}
            options = ensembles.EnsembleOptions(flip=flip)
            keys = ensembles.stage_keys(network, options)
            fusion = fusion_entry([[1.0 / len(keys)] * 68] * len(keys), [[0.001, 0.0]] * 68, keys)
            yield ensembles.build_test_time_model(network, options, uncertainty=calibration, fusion=fusion)


def derive_allowlists(out=None) -> dict:
    """Export the project's models (the packaged one and tiny untrained networks of every preset, each
    as `_deployed_variants` makes it; both signatures, and crops only) into a temporary folder and print the
    union of their ops as the two constants above. Needs the `export` package of the checkout."""
    import tempfile

    from export import default_model_files
    from export.saved_model import export_saved_model
    from export.tflite import write_crops_saved_model

    from .. import build_cfdrnn, get_preset
    from ..runtime.packaged import DEFAULT_MODEL
    from .loading import load_network

    networks = {}
    if all(path.exists() for path in default_model_files()):
        networks["packaged"] = load_network(DEFAULT_MODEL)
    for preset in ("paper", "lite", "mobile"):
        config = get_preset(preset).replace(width=0.0625, input_size=64)
        networks[f"tiny-{preset}"] = build_cfdrnn(config)
    found = {"model": set(), "saver": set()}
    with tempfile.TemporaryDirectory() as folder:
        for name, network in networks.items():
            for index, model in enumerate(_deployed_variants(network)):
                target = Path(folder) / f"{name}-{index}"
                exports = [export_saved_model(model, target / "full"), write_crops_saved_model(model, target / "crops")]
                for export in exports:
                    ops = saved_model_ops(export)
                    found["model"] |= ops["model"]
                    found["saver"] |= ops["saver"]
    saver_extra = found["saver"] - found["model"]
    print(f"MODEL_OPS = frozenset({sorted(found['model'])})")
    print(f"SAVER_OPS = frozenset({sorted(saver_extra)})")
    if out is not None:
        Path(out).write_text(repr({"model": sorted(found["model"]), "saver": sorted(saver_extra)}))
    return {"model": found["model"], "saver": saver_extra}


__all__ = ["MODEL_OPS", "SAVER_OPS", "TRUST_HINT", "UntrustedModelError", "check_saved_model", "derive_allowlists",
           "meta_graph_ops", "read_saved_model", "saved_model_ops"]
