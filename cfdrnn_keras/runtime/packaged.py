"""The models that ship inside the package, by name, and the files behind each name.

A packaged model is a trained network, the test-time ensemble it runs with, and two files:

- a LiteRT (`.tflite`) file, what `LandmarkDetector()` and the tools run by default: the network
  with its ensemble (four-stage average, sub-pixel peaks, and for `accurate` the flip test) built in,
  quantised to full int8 with the heat-map heads and the outputs kept float
  (`cfdrnn export --model NAME --formats tflite_int8_full`), uint8 crops in, landmarks in crop
  pixels, their uncertainty and a face score out. It needs LiteRT only.
- the float `.keras` network, which training (`--init-weights`) and export start from; running it
  (`NAME:keras`, with the same ensemble) needs the `[train]` extra.

Two names, chosen by what they are for (docs/MODEL_CARD.md has a section for each):
- `accurate`, the default: the best NME the package has;
- `fast`, for video and devices: the best NME that runs in at most 10 ms a face, end to end (face
  detector, crop, network, points mapped back), on one core of an AVX512-VNNI CPU.
`fast` is the `mobile` network, one pass. `accurate` is a different network: two `mobile` networks
trained apart (the `fast` one and a second from fresh weights), averaged in one graph
(`cfdrnn_keras.model.network_average`), with the flip test: 3.30 % against 3.48 % validation NME,
23.5 against 9.0 ms a face end to end on one core (docs/MODEL_CARD.md). The `.keras` files store
their kernels as float16 (`cfdrnn_keras.model.storage`), which keeps both under the 40 MB.
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
    flip_test: bool = True  # the ensemble its files run (four-stage average and sub-pixel peaks always)

    @property
    def ensemble(self):
        """The `EnsembleOptions` its LiteRT file was exported with, and its `:keras` form runs with."""
        from ..ensemble_options import EnsembleOptions

        return EnsembleOptions(flip=self.flip_test)

    @property
    def keras_path(self) -> Path:
        return ASSETS / self.keras_file

    @property
    def tflite_path(self) -> Path:
        return ASSETS / self.tflite_file


PACKAGED_MODELS = {
    "accurate": PackagedModel(
        name="accurate", preset="mobile", keras_file="cfdrnn_accurate.keras", tflite_file="cfdrnn_accurate_int8.tflite",
        summary="the best NME: two mobile networks averaged, with the flip test", flip_test=True),
    "fast": PackagedModel(
        name="fast", preset="mobile", keras_file="cfdrnn_mobile.keras",
        tflite_file="cfdrnn_mobile_noflip_int8.tflite",
        summary="≤ 10 ms a face on one core: the mobile network, one pass; for video and devices", flip_test=False),
}
DEFAULT_MODEL = "accurate"


def packaged_model(name: str | None = None) -> PackagedModel:
    """The packaged model called `name` (None: the default); a ValueError lists the names."""
    name = DEFAULT_MODEL if name is None else name
    try:
        return PACKAGED_MODELS[name]
    except KeyError:
        raise ValueError(f"no packaged model named {name!r}; packaged: {', '.join(PACKAGED_MODELS)}") from None


def packaged_name(spec) -> str | None:
    """The packaged model a spec names (`NAME` or `NAME:keras`; None → the default), else None."""
    if spec is None:
        return DEFAULT_MODEL
    if isinstance(spec, str):
        base = spec[:-len(KERAS_SUFFIX)] if spec.endswith(KERAS_SUFFIX) else spec
        if base in PACKAGED_MODELS:
            return base
    return None


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
           "packaged_model", "packaged_name", "resolve"]
