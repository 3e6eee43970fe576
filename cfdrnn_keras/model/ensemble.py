"""Test-time ensembling: the mirrored crop and the four stages' estimates, averaged in the graph.

CFDRNN refines its estimate in four stages (heat-maps H_j, offsets Δ_j, Eq. 4 on each); the paper
reports the last one. Two ensembles cost little and each removes error the other does not:

* stage average: the landmarks of every stage, s·argmax(H_j)/S + Δ_j, averaged (+10 % FLOPs: the
  offset tails of stages 1–3, which the last-stage graph prunes);
* flip test (as in HRNet / mmpose `flip_test`): the crop and its horizontal mirror go through the
  network as one batch; the mirror's points are mirrored back (x → (S−1)/S − x in normalised units,
  the pixel-centre convention, and left/right points swapped with the 300-W permutation) and the
  two are averaged. Twice the compute.

On the packaged model's 201 held-out faces (docs/MODEL_CARD.md) the last stage alone scores 4.33 %
inter-ocular NME, the flip test 3.91 %, both ensembles 3.68 %.

`build_test_time_model(network)` wraps a trained CFDRNN graph in a functional model with the same
`image` input and two outputs, `landmarks` and `confidence`, so every consumer (LandmarkDetector,
evaluation, SavedModel and TFLite export) uses it exactly as it uses the bare network. The layers
are registered and use `keras.ops` only, so the wrapper saves, loads with `safe_mode=True` and runs
on any backend.
"""
from __future__ import annotations

import keras
from keras import ops

from ..ensemble_options import PLAIN, STAGE_CHOICES, EnsembleOptions, add_arguments, options_from_args  # noqa: F401  (re-exported)
from .codec import heatmap_peaks, subpixel_peaks
from .fusion import PointOffset, check_entry

@keras.saving.register_keras_serializable(package="cfdrnn")
class MirrorBatch(keras.layers.Layer):
    """(B, H, W, C) crops → (2B, H, W, C): the crops followed by their horizontal mirrors."""

    def call(self, images):
        return ops.concatenate([images, ops.flip(images, axis=2)], axis=0)

    def compute_output_spec(self, images):
        batch = None if images.shape[0] is None else 2 * images.shape[0]
        return keras.KerasTensor((batch, *images.shape[1:]), dtype=images.dtype)


@keras.saving.register_keras_serializable(package="cfdrnn")
class StageAverage(keras.layers.Layer):
    """Mean over stages of Eq. 4's landmarks: s·peak(H_j)/S + Δ_j, for lists of heat-maps and Δ.

    subpixel: the peak refined from the heat-map's shape (`codec.subpixel_peaks`) instead of the
    integer argmax (`codec.heatmap_peaks`, the paper's Eq. 4). Off in saved files that predate it.
    weights: (K, N) per (stage, point), each column summing to one (`fusion.fit_fusion`), instead of
        the plain mean; None: the mean.
    permutation: with weights and the flip test (a batch of crops, then their mirrors): the left/right
        point swap, so that a mirror's point i takes the weights of the photo point it becomes.
    """

    def __init__(self, stride: int = 4, input_size: int = 256, subpixel: bool = False, weights=None,
                 permutation=None, **kwargs):
        super().__init__(**kwargs)
        self.stride = int(stride)
        self.input_size = int(input_size)
        self.subpixel = bool(subpixel)
        self.weights_per_point = None if weights is None else [[float(v) for v in row] for row in weights]
        self.permutation = None if permutation is None else [int(i) for i in permutation]

    def _weighted(self, points, index):
        """points (B', N, 2) × their weights; with `permutation`, B' = 2B and the mirrors' rows permuted."""
        row = self.weights_per_point[index]
        if self.permutation is None:
            return points * ops.convert_to_tensor(row, dtype="float32")[None, :, None]
        both = ops.convert_to_tensor([row, [row[i] for i in self.permutation]], dtype="float32")  # (2, N)
        count = len(row)
        halves = ops.reshape(points, (2, -1, count, 2)) * both[:, None, :, None]
        return ops.reshape(halves, (-1, count, 2))

    def call(self, heatmaps, deltas):
        if len(heatmaps) != len(deltas) or not heatmaps:
            raise ValueError(f"need as many heat-maps as offsets (≥ 1), got {len(heatmaps)} and {len(deltas)}")
        if self.weights_per_point is not None and len(self.weights_per_point) != len(heatmaps):
            raise ValueError(f"{len(self.weights_per_point)} rows of weights for {len(heatmaps)} estimates")
        total = None
        for index, (h, d) in enumerate(zip(heatmaps, deltas)):
            if self.subpixel:
                coarse = subpixel_peaks(h, self.stride, self.input_size)
            else:
                coarse, _ = heatmap_peaks(ops.cast(h, "float32"), self.stride, self.input_size)
            points = coarse + ops.cast(d, "float32")
            if self.weights_per_point is not None:
                points = self._weighted(points, index)
            total = points if total is None else total + points
        return total if self.weights_per_point is not None else total / float(len(heatmaps))

    def compute_output_spec(self, heatmaps, deltas):
        return keras.KerasTensor(deltas[0].shape, dtype="float32")

    def get_config(self):
        config = super().get_config()
        config.update(stride=self.stride, input_size=self.input_size, subpixel=self.subpixel)
        if self.weights_per_point is not None:
            config.update(weights=[list(row) for row in self.weights_per_point], permutation=self.permutation)
        return config


@keras.saving.register_keras_serializable(package="cfdrnn")
class MirrorMerge(keras.layers.Layer):
    """Average the crops' estimates with their mirrors' estimates, mirrored back.

    Inputs: landmarks (2B, N, 2) normalised and confidence (2B, N), crops first then mirrors (the
    order `MirrorBatch` makes). Outputs: landmarks (B, N, 2) and confidence (B, N).
    """

    def __init__(self, permutation, input_size: int = 256, **kwargs):
        super().__init__(**kwargs)
        self.permutation = [int(i) for i in permutation]
        if sorted(self.permutation) != list(range(len(self.permutation))):
            raise ValueError("permutation must be a permutation of 0..N-1")
        self.input_size = int(input_size)

    def call(self, landmarks, confidence):
        count = len(self.permutation)
        points = ops.reshape(ops.cast(landmarks, "float32"), (2, -1, count, 2))
        scores = ops.reshape(ops.cast(confidence, "float32"), (2, -1, count))
        index = ops.convert_to_tensor(self.permutation, dtype="int32")
        mirrored = ops.take(points[1], index, axis=1)
        back = ops.stack([(self.input_size - 1.0) / self.input_size - mirrored[..., 0], mirrored[..., 1]], axis=-1)
        return (points[0] + back) * 0.5, (scores[0] + ops.take(scores[1], index, axis=1)) * 0.5

    def compute_output_spec(self, landmarks, confidence):
        batch = None if landmarks.shape[0] is None else landmarks.shape[0] // 2
        return (
            keras.KerasTensor((batch, *landmarks.shape[1:]), dtype="float32"),
            keras.KerasTensor((batch, *confidence.shape[1:]), dtype="float32"),
        )

    def get_config(self):
        config = super().get_config()
        config.update(permutation=list(self.permutation), input_size=self.input_size)
        return config


def stage_count(network: keras.Model) -> int:
    """How many (heatmaps_j, delta_j) output pairs a CFDRNN graph has (0 when it is not one)."""
    outputs = network.output if isinstance(network.output, dict) else {}
    count = 0
    while f"heatmaps_{count + 1}" in outputs and f"delta_{count + 1}" in outputs:
        count += 1
    return count


def member_suffixes(network: keras.Model) -> list[str]:
    """The output-name suffixes of the networks a graph holds: `[""]` for one network, `["", "_m2",
    ...]` for an average of networks (`network_average`: member k's outputs are `heatmaps_j_mk`)."""
    outputs = network.output if isinstance(network.output, dict) else {}
    suffixes = [""]
    while f"heatmaps_1_m{len(suffixes) + 1}" in outputs:
        suffixes.append(f"_m{len(suffixes) + 1}")
    return suffixes


def stage_keys(network: keras.Model, options: EnsembleOptions, stages: int | None = None) -> list[tuple[str, str]]:
    """(heat-map, offset) output names the ensemble reads: every stage or the last, of every member."""
    stages = stage_count(network) if stages is None else stages
    used = range(1, stages + 1) if options.stages == "all" else [stages]
    return [(f"heatmaps_{j}{s}", f"delta_{j}{s}") for s in member_suffixes(network) for j in used]


# The ensemble's own layers compute in float32 whatever the global dtype policy: under a training
# run's mixed bf16 policy, sub-pixel peaks and averages in bf16 moved a validation NME by 0.005 points
# (docs/TRAINING.md, "Weight averaging"). The network's layers keep the policy they were built with.
ENSEMBLE_DTYPE = "float32"


def build_test_time_model(network: keras.Model, options: EnsembleOptions = EnsembleOptions(),
                          permutation=None, uncertainty=None, fusion=None) -> keras.Model:
    """`image` → {`landmarks`, `confidence`} for `network` run as `options` says.

    network: a CFDRNN graph (outputs `heatmaps_j`, `delta_j`, `landmarks`, `confidence`).
    permutation: the left/right point swap for the flip test (default: the 68-point one).
    uncertainty: a calibration entry (`cfdrnn_keras.model.uncertainty.load_calibration`: intercepts,
        slopes, face_weights, face_bias) → the model also outputs `uncertainty` (B, N), each point's
        expected error in CROP PIXELS, and `face_score` (B,) in [0, 1], from a `PointUncertainty`
        layer; "features" → it outputs the layer's raw features instead (`uncertainty_features`,
        `face_features`), for fitting a calibration. None: neither.
    fusion: a fusion entry (`cfdrnn_keras.model.fusion`: weights per (network, stage) and point, and an
        offset per point) → the estimates are combined with those weights and the offsets added;
        "features" → the model also outputs `estimates` (B, K, N, 2), each (network, stage) estimate
        (mirror-merged with the flip test), for fitting one. None: the plain mean.
    """
    outputs = network.output if isinstance(network.output, dict) else {}
    if not {"landmarks", "confidence"} <= set(outputs):
        raise ValueError(f"{network.name}: not a CFDRNN model (needs `landmarks` and `confidence` outputs)")
    stages = stage_count(network)
    if options.stages == "all" and stages == 0:
        raise ValueError(f"{network.name}: has no heatmaps_j / delta_j outputs to average (use stages='last')")
    size = int(network.inputs[0].shape[1])
    count = int(outputs["landmarks"].shape[1])
    if permutation is None:
        from data_pipelines.geometry import MIRROR_PERMUTATION_68

        if options.flip and count != len(MIRROR_PERMUTATION_68):
            raise ValueError(f"{network.name}: the flip test needs a permutation for {count} points")
        permutation = MIRROR_PERMUTATION_68

    keys = stage_keys(network, options, stages)
    if isinstance(fusion, dict):
        if stages == 0:
            raise ValueError(f"{network.name}: has no heatmaps_j / delta_j outputs to fuse")
        check_entry(fusion, keys, count)
    reads_stages = uncertainty is not None or options.subpixel or fusion is not None
    if options.stages == "last":  # only the final stage is read: let Keras prune the other tails
        kept = {"landmarks": outputs["landmarks"], "confidence": outputs["confidence"]}
        if reads_stages:  # these read the last heat-maps and offsets
            kept.update({key: outputs[key] for pair in keys for key in pair})
        network = keras.Model(network.inputs, kept, name=network.name)
    image = keras.Input(network.inputs[0].shape[1:], name="image")
    batch = MirrorBatch(dtype=ENSEMBLE_DTYPE, name="mirror_batch")(image) if options.flip else image
    results = network(batch, training=False)
    stride = size // int(results[keys[0][0]].shape[1]) if keys and keys[0][0] in results else 1
    if options.stages == "all" or reads_stages:
        weights = fusion["weights"] if isinstance(fusion, dict) else None
        mirrored = list(permutation) if weights is not None and options.flip else None
        landmarks = StageAverage(stride, size, subpixel=options.subpixel, weights=weights, permutation=mirrored,
                                 dtype=ENSEMBLE_DTYPE, name="stage_average")(
            [results[h] for h, _ in keys], [results[d] for _, d in keys])
    else:
        landmarks = results["landmarks"]
    confidence = results["confidence"]
    if options.flip:
        landmarks, confidence = MirrorMerge(permutation, size, dtype=ENSEMBLE_DTYPE, name="mirror_merge")(
            landmarks, confidence)
    if isinstance(fusion, dict):
        landmarks = PointOffset(fusion["offsets"], dtype=ENSEMBLE_DTYPE, name="point_offset")(landmarks)
    landmarks = keras.layers.Activation("linear", dtype="float32", name="landmarks")(landmarks)
    confidence = keras.layers.Activation("linear", dtype="float32", name="confidence")(confidence)
    suffix = "ensemble" if not options.is_plain else "plain"
    model_outputs = {"landmarks": landmarks, "confidence": confidence}
    if uncertainty is not None:
        model_outputs.update(_uncertainty_outputs(results, options, keys, size, permutation, uncertainty))
    if fusion == "features":
        model_outputs["estimates"] = _estimates_output(results, options, keys, stride, size, permutation)
    return keras.Model(image, model_outputs, name=f"{network.name}_{suffix}")


def _estimates_output(results, options, keys, stride, size, permutation):
    """(B, K, N, 2): each (network, stage) estimate the ensemble reads, mirror-merged with the flip
    test, by the same layers the ensemble runs (for fitting a fusion)."""
    stacked = []
    for index, (h, d) in enumerate(keys):
        points = StageAverage(stride, size, subpixel=options.subpixel, dtype=ENSEMBLE_DTYPE,
                              name=f"estimate_{index}")([results[h]], [results[d]])
        if options.flip:
            points, _ = MirrorMerge(permutation, size, dtype=ENSEMBLE_DTYPE, name=f"estimate_{index}_merge")(
                points, results["confidence"])
        stacked.append(keras.layers.Reshape((1, *points.shape[1:]), name=f"estimate_{index}_row")(points))
    joined = stacked[0] if len(stacked) == 1 else keras.layers.Concatenate(axis=1, name="estimates_joined")(stacked)
    return keras.layers.Activation("linear", dtype="float32", name="estimates")(joined)


def _uncertainty_outputs(results, options, keys, size, permutation, uncertainty) -> dict:
    """The `PointUncertainty` layer on the (heat-map, offset) outputs `keys` the ensemble uses (issue 17)."""
    from .uncertainty import PointUncertainty

    stride = size // int(results[keys[-1][0]].shape[1])
    features = uncertainty == "features"
    layer = PointUncertainty(
        stride, size, permutation=list(permutation) if options.flip else None, mode="features" if features else "calibrated",
        **({} if features else {key: uncertainty[key] for key in ("intercepts", "slopes", "face_weights", "face_bias")}),
        dtype=ENSEMBLE_DTYPE, name="point_uncertainty")
    first, second = layer([results[h] for h, _ in keys], [results[d] for _, d in keys])
    names = ("uncertainty_features", "face_features") if features else ("uncertainty", "face_score")
    return {names[0]: keras.layers.Activation("linear", dtype="float32", name=names[0])(first),
            names[1]: keras.layers.Activation("linear", dtype="float32", name=names[1])(second)}


def default_options(model: keras.Model) -> EnsembleOptions:
    """What a model runs with when the caller does not say: the ensemble for a CFDRNN graph with its
    stage outputs, its own `landmarks` output for anything else (e.g. a model already wrapped)."""
    return EnsembleOptions() if stage_count(model) else PLAIN


def for_inference(network: keras.Model, options: EnsembleOptions | None = None, uncertainty=None,
                  fusion=None) -> keras.Model:
    """The model to run for `options` (default: `EnsembleOptions()`): the bare network where they are
    plain (last stage, no flip) and no uncertainty or fusion is asked for, else `build_test_time_model`.
    uncertainty, fusion: as `build_test_time_model` (entries, "features" or None)."""
    options = EnsembleOptions() if options is None else options
    if options.is_plain and uncertainty is None and fusion is None:
        return network
    if options.is_plain and not stage_count(network):  # no stage outputs (e.g. already wrapped)
        return network
    return build_test_time_model(network, options, uncertainty=uncertainty, fusion=fusion)


__all__ = ["EnsembleOptions", "MirrorBatch", "MirrorMerge", "PLAIN", "STAGE_CHOICES", "StageAverage",
           "add_arguments", "build_test_time_model", "default_options", "for_inference", "member_suffixes",
           "options_from_args", "stage_count", "stage_keys"]
