"""How a trained network is run at test time: plain data, no Keras, so the command-line parsers and
the runtime can name an ensemble without importing the model side (`cfdrnn_keras.model.ensemble`
builds the graph that runs it)."""
from __future__ import annotations

from dataclasses import dataclass

STAGE_CHOICES = ("all", "last")


@dataclass(frozen=True)
class EnsembleOptions:
    """How a trained network is run at test time.

    flip: also run the mirrored crop and average (2× compute).
    stages: "all" averages the four stages' landmarks; "last" uses the final stage only (the paper).
    subpixel: refine each heat-map peak from the map's own shape before Δ is added
        (`codec.subpixel_peaks`; the paper's Eq. 4 takes the integer argmax). Costs nothing.
    """

    flip: bool = True
    stages: str = "all"
    subpixel: bool = True

    def __post_init__(self):
        if self.stages not in STAGE_CHOICES:
            raise ValueError(f"stages must be one of {', '.join(STAGE_CHOICES)}, got {self.stages!r}")

    @property
    def is_plain(self) -> bool:
        """True when this is the bare network's own `landmarks` output (last stage, argmax, no flip)."""
        return not self.flip and self.stages == "last" and not self.subpixel

    def describe(self) -> str:
        parts = ["four-stage average" if self.stages == "all" else "last stage"]
        parts.append("sub-pixel peaks" if self.subpixel else "argmax peaks")
        parts.append("flip test" if self.flip else "no flip")
        return ", ".join(parts)

    def to_dict(self) -> dict:
        return {"flip": self.flip, "stages": self.stages, "subpixel": self.subpixel}


PLAIN = EnsembleOptions(flip=False, stages="last", subpixel=False)


def add_arguments(parser, exported: bool = False) -> None:
    """`--flip-test/--no-flip-test`, `--stages` and `--subpixel/--no-subpixel` for a command-line tool
    (defaults: the full ensemble; all three off/last is the bare network, the paper's output)."""
    import argparse

    where = "the exported files run" if exported else "a .keras model runs (exported models run as exported)"
    group = parser.add_argument_group("test-time ensemble", f"how {where}; docs/INFERENCE.md")
    group.add_argument("--flip-test", action=argparse.BooleanOptionalAction, default=None,
                       help="also run the mirrored crop and average (2× compute; default: on)")
    group.add_argument("--stages", choices=STAGE_CHOICES, default=None,
                       help="average the landmarks of all four stages, or use the last (the paper's "
                            "output) (default: all)")
    group.add_argument("--subpixel", action=argparse.BooleanOptionalAction, default=None,
                       help="refine each heat-map peak to sub-pixel precision before adding the offsets "
                            "(no extra cost; default: on; --no-flip-test --stages last --no-subpixel is the "
                            "bare network, the paper's Eq. 4)")


def options_from_args(args) -> EnsembleOptions | None:
    """The options the flags ask for, or None where no flag was given (the model's default)."""
    subpixel = getattr(args, "subpixel", None)
    if args.flip_test is None and args.stages is None and subpixel is None:
        return None
    default = EnsembleOptions()
    return EnsembleOptions(flip=default.flip if args.flip_test is None else args.flip_test,
                           stages=args.stages or default.stages,
                           subpixel=default.subpixel if subpixel is None else subpixel)


__all__ = ["EnsembleOptions", "PLAIN", "STAGE_CHOICES", "add_arguments", "options_from_args"]
