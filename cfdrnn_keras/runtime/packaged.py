"""The models that ship inside the package, by name, and the files behind each name.

A packaged model is a trained network (or several, averaged), the test-time ensemble it runs with,
and its files:

- a LiteRT (`.tflite`) file, what `LandmarkDetector()` and the tools run by default: the network(s)
  with the ensemble (four-stage average, sub-pixel peaks, and for `accurate` the flip test) built in,
  quantised to full int8 with the heat-map heads and the outputs kept float
  (`cfdrnn export --model NAME --formats tflite_int8_full`), uint8 crops in, landmarks in crop
  pixels, their uncertainty and a face score out. It needs LiteRT only.
- its float `.keras` networks, which training (`--init-weights`, `--distill-from`) and export start
  from; running them (`NAME:keras`, with the same ensemble) needs the `[train]` extra. A model of
  several networks lists each one's file, and loading averages them into one graph
  (`cfdrnn_keras.model.loading`, `cfdrnn_keras.model.network_average`): every network is stored once,
  so `accurate`, whose first network is `fast`'s, ships no second copy of it.
- its calibration (`*.uncertainty.json`), fitted on the ensemble it runs: how the estimates are fused
  (weights per network, stage and point, and the markup's per-point offset, fitted on the training
  faces: `cfdrnn_keras.model.fusion`) and the uncertainty (`cfdrnn_keras.model.uncertainty`, fitted on
  held-out faces). The LiteRT file has both built in; `NAME:keras` reads them from here.

Two names, chosen by what they are for (docs/MODEL_CARD.md has a section for each):
- `accurate`, the default: the best NME the package has;
- `fast`, for video and devices: the best NME that runs in at most 10 ms a face, end to end (face
  detector, crop, network, points mapped back), on one core of an AVX512-VNNI CPU.
`fast` is the `mobile` network, one pass. `accurate` is a different model: two `mobile` networks
trained apart (the `fast` one and a wider one, width 0.35, from fresh weights), averaged, with the
flip test (docs/MODEL_CARD.md has the validation NME of each). The `.keras` files store their kernels as float16
(`cfdrnn_keras.model.storage`), which keeps the model files under issue 14's 40 MB.
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
    networks: tuple[str, ...]  # its float .keras networks, in member order; several are averaged
    tflite_file: str
    calibration_file: str
    summary: str
    flip_test: bool = True  # the ensemble its files run (four-stage average and sub-pixel peaks always)

    def __post_init__(self):
        if not self.networks:
            raise ValueError(f"packaged model {self.name!r}: no network file")

    @property
    def ensemble(self):
        """The `EnsembleOptions` its LiteRT file was exported with, and its `:keras` form runs with."""
        from ..ensemble_options import EnsembleOptions

        return EnsembleOptions(flip=self.flip_test)

    @property
    def network_paths(self) -> tuple[Path, ...]:
        return tuple(ASSETS / file for file in self.networks)

    @property
    def tflite_path(self) -> Path:
        return ASSETS / self.tflite_file

    @property
    def calibration_path(self) -> Path:
        return ASSETS / self.calibration_file

    def missing_files(self) -> list[Path]:
        """Its files that this install lacks (a checkout without the assets, a broken install)."""
        paths = (*self.network_paths, self.tflite_path, self.calibration_path)
        return [path for path in paths if not path.is_file()]


PACKAGED_MODELS = {
    "accurate": PackagedModel(
        name="accurate", preset="mobile", networks=("cfdrnn_mobile.keras", "cfdrnn_mobile_w035.keras"),
        tflite_file="cfdrnn_accurate_int8.tflite", calibration_file="cfdrnn_accurate.uncertainty.json",
        summary="the best NME: two mobile networks (widths 1/4 and 0.35) averaged, with the flip test", flip_test=True),
    "fast": PackagedModel(
        name="fast", preset="mobile", networks=("cfdrnn_mobile.keras",),
        tflite_file="cfdrnn_mobile_noflip_int8.tflite", calibration_file="cfdrnn_mobile.uncertainty.json",
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


def network_files(spec) -> tuple[Path, ...]:
    """The `.keras` files a model spec names: a packaged model's networks in member order (`NAME` or
    `NAME:keras`), or the path itself. No Keras needed, so commands check them before TensorFlow loads."""
    name = packaged_name(spec) if isinstance(spec, str) else None
    return packaged_model(name).network_paths if name else (Path(spec),)


def resolve(spec) -> tuple[object, str | None]:
    """(what to load, packaged name or None) for a model spec: None → the default's LiteRT file,
    `NAME` → its LiteRT file, `NAME:keras` → the `PackagedModel` itself (its float networks and
    calibration, which `cfdrnn_keras.model.loading` loads); anything else is returned as given (a path,
    a model object)."""
    if spec is None:
        spec = DEFAULT_MODEL
    if isinstance(spec, str):
        base, keras = (spec[:-len(KERAS_SUFFIX)], True) if spec.endswith(KERAS_SUFFIX) else (spec, False)
        if base in PACKAGED_MODELS:
            model = PACKAGED_MODELS[base]
            return (model if keras else model.tflite_path), spec
    return spec, None


def describe() -> str:
    """One line per packaged model, for --help texts."""
    return "; ".join(f"{m.name}: {m.summary}" + (" (default)" if m.name == DEFAULT_MODEL else "")
                     for m in PACKAGED_MODELS.values())


__all__ = ["ASSETS", "DEFAULT_MODEL", "KERAS_SUFFIX", "PACKAGED_MODELS", "PackagedModel", "describe",
           "network_files", "packaged_model", "packaged_name", "resolve"]
