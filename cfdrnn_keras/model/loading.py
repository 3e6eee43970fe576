"""Float CFDRNN networks by packaged name or by path, and the uncertainty calibration that goes with them.

Why one place: a packaged model of several networks (`accurate`) stores each network once, in its own
file (its first network is `fast`'s), and is averaged into one graph when it is loaded
(`network_average.average_networks`, the graph `tools/average_networks.py` writes). Every tool that
takes a `.keras` file (export, evaluate, fit_uncertainty, average_networks, train's --distill-from)
takes a packaged name through here, so none of them needs to know how many files a model has.

A source is a packaged model's name (`NAME` or `NAME:keras`), a `PackagedModel`, or a `.keras` path.
"""
from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

from ..runtime import packaged
from .uncertainty import calibration_path, ensemble_key


def packaged_source(source) -> packaged.PackagedModel | None:
    """The packaged model a source names, else None (a path)."""
    if isinstance(source, packaged.PackagedModel):
        return source
    name = packaged.packaged_name(source) if isinstance(source, str) else None
    return packaged.packaged_model(name) if name else None


def network_files(source) -> tuple[Path, ...]:
    """The `.keras` files a source loads from: a packaged model's networks in member order, or the path."""
    model = packaged_source(source)
    return model.network_paths if model else packaged.network_files(source)


def calibration_file(source) -> Path:
    """Where the source's uncertainty calibration lives: the packaged model's own file, or
    `NAME.uncertainty.json` beside a `.keras` path (`uncertainty.calibration_path`)."""
    model = packaged_source(source)
    return model.calibration_path if model else calibration_path(source)


def calibration_entry(source, options) -> dict | None:
    """The source's calibration entry for the ensemble `options` (fusion and uncertainty), or None:
    there is none, or it was fitted for other weights. The file records the SHA-256 of the weights it
    was fitted on (`network_sha256`); a network trained on or replaced since, or a calibration copied
    beside another file, would move every point by another network's offsets, so such a file is not
    used, and a warning says so in one line."""
    path = calibration_file(source)
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    fitted_for = data.get("model_sha256") if isinstance(data, dict) else None
    if fitted_for and fitted_for != network_sha256(source):
        warnings.warn(f"{path}: fitted for other weights than {describe(source)} (trained on or replaced since?); "
                      f"not used: fit it again with tools/fit_uncertainty.py --model {describe(source)}", stacklevel=2)
        return None
    return data.get("ensembles", {}).get(ensemble_key(options)) if isinstance(data, dict) else None


def describe(source) -> str:
    """A label for messages and manifests: `accurate (cfdrnn_mobile.keras + cfdrnn_mobile_w035.keras)` or the path."""
    model = packaged_source(source)
    return f"{model.name} ({' + '.join(model.networks)})" if model else str(source)


def network_sha256(source) -> str:
    """A fingerprint of the weights a source loads: the file's SHA-256, or for several networks the
    SHA-256 of their files' bytes in member order."""
    digest = hashlib.sha256()
    for path in network_files(source):
        digest.update(Path(path).read_bytes())
    return digest.hexdigest()


def load_network(source, *, compile: bool = True):
    """The float network of a source, loaded in safe mode: one file as it is, several averaged into one
    graph named `cfdrnn_NAME`. FileNotFoundError names a missing file; a file that is not a Keras
    archive raises what `keras.saving.load_model` raises."""
    import keras  # this package's __init__ has registered the custom layers

    from .network_average import average_networks

    files = network_files(source)
    for path in files:
        if not Path(path).is_file():
            model = packaged_source(source)
            where = f" (the packaged model {model.name!r} is missing from this install: reinstall cfdrnn-keras)" if model else ""
            raise FileNotFoundError(f"{path}: model not found{where}")
    networks = [keras.saving.load_model(str(path), compile=compile, safe_mode=True) for path in files]
    if len(networks) == 1:
        return networks[0]
    return average_networks(networks, name=f"cfdrnn_{packaged_source(source).name}")


__all__ = ["calibration_entry", "calibration_file", "describe", "load_network", "network_files", "network_sha256", "packaged_source"]
