"""Parameters and arithmetic per block of a CFDRNN model, read off the built graph.

Counting from the graph (not from a hand-written table) means the numbers cannot drift from the
network; `tools/model_summary.py` prints them and the benchmarks quote the GFLOPs.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import keras


@dataclass
class BlockStats:
    name: str
    params: int = 0
    flops: int = 0  # multiply-add counted as 2
    output_shapes: list = field(default_factory=list)


_BLOCK_ORDER = ("resizer0", "resizer_r", "hml", "hml1", "hml2", "hml3", "lml1", "lml2", "lml3", "lml4")


def block_of(layer_name: str) -> str:
    """`resizer0.conv9x9_1` → `resizer0`; the decoder and the named output layers form `outputs`."""
    block = layer_name.split(".", 1)[0]
    return block if block in _BLOCK_ORDER else "outputs"


def conv_flops(layer: keras.layers.Layer) -> int:
    """2 · K_h · K_w · C_in · C_out · H_out · W_out for a Conv2D (0 for anything else)."""
    if not isinstance(layer, keras.layers.Conv2D):
        return 0
    kh, kw = layer.kernel_size
    c_in = layer.input.shape[-1]
    _, h_out, w_out, c_out = layer.output.shape
    return 2 * kh * kw * c_in * c_out * h_out * w_out


def model_stats(model: keras.Model) -> list[BlockStats]:
    """Per-block parameters, FLOPs per face and the output shapes of each block's last layer."""
    blocks: dict[str, BlockStats] = {}
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        stats = blocks.setdefault(block_of(layer.name), BlockStats(block_of(layer.name)))
        stats.params += layer.count_params()
        stats.flops += conv_flops(layer)
        outputs = layer.output if isinstance(layer.output, (list, tuple)) else [layer.output]
        if stats.name != "outputs" or layer.name == "decoder":
            stats.output_shapes = [tuple(t.shape[1:]) for t in outputs]
    order = {name: i for i, name in enumerate(_BLOCK_ORDER + ("outputs",))}
    return sorted(blocks.values(), key=lambda b: order[b.name])


def total_flops(model: keras.Model) -> int:
    """Convolution FLOPs per face, nested graphs included; a graph that also runs each crop's mirror
    (`cfdrnn_keras.model.ensemble.MirrorBatch`) runs its nested network twice per face."""
    from .ensemble import MirrorBatch

    passes = 2 if any(isinstance(layer, MirrorBatch) for layer in model.layers) else 1
    return sum(passes * total_flops(layer) if isinstance(layer, keras.Model) else conv_flops(layer)
               for layer in model.layers)
