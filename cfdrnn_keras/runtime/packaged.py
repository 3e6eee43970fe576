"""The models that ship inside the package, by name, and the files behind each name.

A packaged model is one trained network in two files:

- a LiteRT (`.tflite`) file, what `LandmarkDetector()` and the tools run by default: the network
  with its test-time ensemble (flip test + four-stage average), quantised to full int8 with the
  heat-map heads kept float (`tools/export.py --formats tflite_int8_full`), uint8 crops in,
  landmarks in crop pixels out. It needs LiteRT only.
- the float `.keras` network, which training (`--init-weights`) and export start from; running it
  needs the `[train]` extra.

Names, as `LandmarkDetector(model=...)` and `--model` take them: `NAME` is the LiteRT file,
`NAME:keras` the float network. docs/MODEL_CARD.md has a section for each model.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

ASSETS = Path(__file__).resolve().parents[1] / "assets"
KERAS_SUFFIX = ":keras"


@dataclass(frozen=True)
class PackagedModel:
    name: str
    preset: str
    keras_file: str
    tflite_file: str
    summary: str

    @property
    def keras_path(self) -> Path:
        return ASSETS / self.keras_file

    @property
    def tflite_path(self) -> Path:
        return ASSETS / self.tflite_file


PACKAGED_MODELS = {
    "fast": PackagedModel(
        name="fast", preset="mobile", keras_file="cfdrnn_mobile.keras", tflite_file="cfdrnn_mobile_int8.tflite",
        summary="128² crops, width 1/4; for video and devices"),
}
DEFAULT_MODEL = "fast"


def packaged_model(name: str | None = None) -> PackagedModel:
    """The packaged model called `name` (None: the default); a ValueError lists the names."""
    name = DEFAULT_MODEL if name is None else name
    try:
        return PACKAGED_MODELS[name]
    except KeyError:
        raise ValueError(f"no packaged model named {name!r}; packaged: {', '.join(PACKAGED_MODELS)}") from None


def resolve(spec) -> tuple[object, str | None]:
    """(what to load, packaged name or None) for a model spec: None → the default's LiteRT file,
    `NAME` → its LiteRT file, `NAME:keras` → its `.keras` network; anything else is returned as given
    (a path, a model object)."""
    if spec is None:
        spec = DEFAULT_MODEL
    if isinstance(spec, str):
        base, keras = (spec[:-len(KERAS_SUFFIX)], True) if spec.endswith(KERAS_SUFFIX) else (spec, False)
        if base in PACKAGED_MODELS:
            model = PACKAGED_MODELS[base]
            return (model.keras_path if keras else model.tflite_path), spec
    return spec, None


def describe() -> str:
    """One line per packaged model, for --help texts."""
    return "; ".join(f"{m.name}: {m.summary}" + (" (default)" if m.name == DEFAULT_MODEL else "")
                     for m in PACKAGED_MODELS.values())


__all__ = ["ASSETS", "DEFAULT_MODEL", "KERAS_SUFFIX", "PACKAGED_MODELS", "PackagedModel", "describe",
           "packaged_model", "resolve"]
