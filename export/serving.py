"""TensorFlow Serving's REST "predict" API in a few functions, for tests and clients.

The model server is not on PyPI or Debian, so tests cannot start one. These helpers build request
bodies the way a client of TF Serving's REST API does, and turn them into tensors the way the server
does before calling a signature:

* row format `{"signature_name": ..., "instances": [...]}`: an instance is a JSON object keyed by the
  signature's input names, or the bare value when the signature has one input; instances are
  stacked along a new first axis;
* columnar format `{"inputs": {...}}` (or `{"inputs": value}` for one input): values already batched;
* `{"b64": "..."}` stands for binary bytes in a string tensor; numbers take the input's dtype;
* the reply is `{"predictions": [...]}` (one object per instance, or the bare value for a single
  output) for the row format and `{"outputs": ...}` for the columnar one.

This module imports only json, base64 and TensorFlow (never this project), so a test can run its
source in a fresh interpreter beside a SavedModel, exactly as a server would hold it.
"""
import base64
import json

import tensorflow as tf

DEFAULT_SIGNATURE = "serving_default"


# ------------------------------------------------------------------------------------------------
# Client side: request bodies.
# ------------------------------------------------------------------------------------------------
def b64(data: bytes) -> dict:
    """A binary value as TF Serving's JSON expects it."""
    return {"b64": base64.b64encode(bytes(data)).decode("ascii")}


def image_request(images, boxes, signature_name: str = "predict_image") -> str:
    """Row-format request for `predict_image`: encoded photo bytes and one (x0, y0, x1, y1) box each."""
    instances = [{"image": b64(data), "box": [float(v) for v in box]} for data, box in zip(images, boxes)]
    return json.dumps({"signature_name": signature_name, "instances": instances})


def crops_request(crops) -> str:
    """Row-format request for `serving_default`: uint8 crops [N, S, S, 3] as nested lists."""
    instances = [crop.tolist() if hasattr(crop, "tolist") else crop for crop in crops]
    return json.dumps({"instances": instances})


# ------------------------------------------------------------------------------------------------
# Server side: request → tensors → signature → reply.
# ------------------------------------------------------------------------------------------------
def _unwrap_binary(value):
    """Replace every {"b64": ...} in a JSON value by the bytes it encodes."""
    if isinstance(value, dict):
        if set(value) == {"b64"}:
            return base64.b64decode(value["b64"])
        raise ValueError(f"unexpected JSON object in a tensor value (keys {sorted(value)}); only {{\"b64\": ...}}")
    if isinstance(value, list):
        return [_unwrap_binary(item) for item in value]
    return value


def _to_tensor(name: str, value, spec: tf.TensorSpec) -> tf.Tensor:
    value = _unwrap_binary(value)
    try:
        tensor = tf.constant(value, dtype=spec.dtype)
    except (TypeError, ValueError) as error:
        raise ValueError(f"input {name!r}: cannot convert to {spec.dtype.name}: {error}") from None
    if not spec.shape.is_compatible_with(tensor.shape):
        raise ValueError(f"input {name!r}: shape {tensor.shape} does not match the signature's {spec.shape}")
    return tensor


def input_specs(signature) -> dict:
    """name → tf.TensorSpec of a signature's inputs (keyword inputs of a loaded SavedModel's
    signature, or the named positional specs of a concrete function)."""
    args, kwargs = signature.structured_input_signature
    specs = {spec.name: spec for spec in args if isinstance(spec, tf.TensorSpec)}
    specs.update(kwargs)
    return specs


def decode_request(body, signatures) -> tuple:
    """(signature name, format, {input name: tensor}) from a REST body (str or parsed dict)."""
    request = json.loads(body) if isinstance(body, (str, bytes)) else body
    name = request.get("signature_name", DEFAULT_SIGNATURE)
    if name not in signatures:
        raise ValueError(f"signature {name!r} not found; the model has {sorted(signatures)}")
    specs = input_specs(signatures[name])
    if ("instances" in request) == ("inputs" in request):
        raise ValueError('the request needs exactly one of "instances" (row format) or "inputs" (columnar)')

    if "instances" in request:
        instances = request["instances"]
        if not isinstance(instances, list) or not instances:
            raise ValueError('"instances" must be a non-empty list')
        if len(specs) == 1 and not (isinstance(instances[0], dict) and set(instances[0]) - {"b64"}):
            (only,) = specs
            return name, "row", {only: _to_tensor(only, instances, specs[only])}
        columns = {}
        for index, instance in enumerate(instances):
            if not isinstance(instance, dict) or set(instance) != set(specs):
                got = sorted(instance) if isinstance(instance, dict) else type(instance).__name__
                raise ValueError(f"instance {index}: needs the inputs {sorted(specs)}, got {got}")
            for key, value in instance.items():
                columns.setdefault(key, []).append(value)
        return name, "row", {key: _to_tensor(key, values, specs[key]) for key, values in columns.items()}

    inputs = request["inputs"]
    if not isinstance(inputs, dict) or set(inputs) == {"b64"}:
        (only,) = specs
        inputs = {only: inputs}
    if set(inputs) != set(specs):
        raise ValueError(f'"inputs" needs {sorted(specs)}, got {sorted(inputs)}')
    return name, "columnar", {key: _to_tensor(key, value, specs[key]) for key, value in inputs.items()}


def _json_value(key: str, tensor) -> object:
    values = tensor.numpy().tolist()
    if tensor.dtype == tf.string:  # TF Serving base64-encodes outputs whose names end in _bytes
        wrap = (lambda v: b64(v)) if key.endswith("_bytes") else (lambda v: v.decode("utf-8", "replace"))
        values = tf.nest.map_structure(wrap, values)
    return values


def encode_response(outputs: dict, fmt: str = "row") -> dict:
    """A signature's output dict → the REST reply body (as a dict)."""
    columns = {key: _json_value(key, value) for key, value in outputs.items()}
    if fmt == "columnar":
        return {"outputs": columns if len(columns) > 1 else next(iter(columns.values()))}
    count = len(next(iter(columns.values())))
    if len(columns) == 1:
        return {"predictions": next(iter(columns.values()))}
    return {"predictions": [{key: values[i] for key, values in columns.items()} for i in range(count)]}


def predict(loaded, body) -> dict:
    """Serve one REST "predict" body with a `tf.saved_model.load`ed model, as TF Serving would."""
    name, fmt, inputs = decode_request(body, loaded.signatures)
    return encode_response(loaded.signatures[name](**inputs), fmt)
