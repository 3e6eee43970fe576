"""Several trained CFDRNN networks as one graph, their estimates averaged (issue 14's `accurate`).

Why: two networks trained apart from different starting weights make errors that are partly
independent, so the average of their points beats either one; HRNet's and face-alignment's
leaderboard entries use the same model averaging. Folding the members into ONE functional graph
keeps the CFDRNN output contract, so every consumer (the test-time ensemble, the uncertainty layer,
SavedModel and LiteRT export, `LandmarkDetector`) runs it exactly as it runs one network:

* `heatmaps_j`, `delta_j` (j = 1..S) are the first member's stages; member k ≥ 2 adds
  `heatmaps_j_mk`, `delta_j_mk` (`ensemble.member_suffixes` lists them). The test-time four-stage
  average then averages all members' stages with equal weights, which is the mean of the members'
  own averages; "last stage" reads every member's last stage; the uncertainty layer's heat-map peak
  is the mean over all of them (so an averaged file needs its own calibration,
  `tools/fit_uncertainty.py`).
* `landmarks` and `confidence` are the members' own (last stage, argmax) outputs, averaged.

Points are averaged after each member decodes its own maps, never the maps themselves: a member's
offsets Δ_j are measured from ITS peak, so averaged maps with averaged offsets would mix frames.
"""
from __future__ import annotations

import keras

from .ensemble import member_suffixes, stage_count


def _check_members(networks) -> tuple[tuple, int, int]:
    """(input shape, stages, landmarks) the members share; ValueError naming the one that differs."""
    if len(networks) < 2:
        raise ValueError(f"averaging needs at least two networks, got {len(networks)}")
    shapes = set()
    for index, network in enumerate(networks, 1):
        outputs = network.output if isinstance(network.output, dict) else {}
        stages = stage_count(network)
        if not stages or not {"landmarks", "confidence"} <= set(outputs):
            raise ValueError(f"member {index} ({network.name}): not a CFDRNN network (needs heatmaps_j, delta_j, "
                             "landmarks and confidence outputs)")
        if len(member_suffixes(network)) > 1:
            raise ValueError(f"member {index} ({network.name}): already an average of networks; average its members")
        shapes.add((tuple(network.inputs[0].shape[1:]), stages, int(outputs["landmarks"].shape[1])))
    if len(shapes) != 1:
        raise ValueError("the networks differ in input size, stage count or landmark count: "
                         + "; ".join(f"{s[0][0]}² input, {s[1]} stages, {s[2]} points" for s in sorted(shapes)))
    return shapes.pop()


def average_networks(networks, name: str = "cfdrnn_average") -> keras.Model:
    """One functional model: `image` → every member's stage outputs and the averaged
    `landmarks` / `confidence` (module docstring). The members' weights are shared, not copied."""
    networks = list(networks)
    shape, stages, _ = _check_members(networks)
    image = keras.Input(shape, name="image")
    outputs, landmarks, confidence = {}, [], []
    for index, network in enumerate(networks, 1):
        member = keras.Model(network.inputs, network.output, name=f"member_{index}")  # unique names in the graph
        result = member(image)
        suffix = "" if index == 1 else f"_m{index}"
        for j in range(1, stages + 1):
            outputs[f"heatmaps_{j}{suffix}"] = result[f"heatmaps_{j}"]
            outputs[f"delta_{j}{suffix}"] = result[f"delta_{j}"]
        landmarks.append(result["landmarks"])
        confidence.append(result["confidence"])
    outputs["landmarks"] = keras.layers.Average(dtype="float32", name="landmarks")(landmarks)
    outputs["confidence"] = keras.layers.Average(dtype="float32", name="confidence")(confidence)
    return keras.Model(image, outputs, name=name)


def members_of(model: keras.Model) -> list[keras.Model]:
    """The member networks of an averaged graph (the graph itself, in a list, for one network)."""
    nested = [layer for layer in model.layers if isinstance(layer, keras.Model) and layer.name.startswith("member_")]
    return nested if len(member_suffixes(model)) > 1 and nested else [model]


__all__ = ["average_networks", "members_of"]
