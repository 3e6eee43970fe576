"""Half-size `.keras` files: convolution kernels stored as float16, everything else as saved.

Why: the package's model files must stay under 40 MB (issue 14), and a float32 `mobile` network is
14.8 MB of weights. Kernels rounded to float16 (relative error ≤ 2⁻¹¹) move the packaged networks'
points by far less than the int8 LiteRT files users run by default; batch-norm statistics, γ and β
stay float32 (a moving variance can sit where float16 has no precision left). Keras casts a stored
array to its variable's dtype when it loads weights, so the file is an ordinary `.keras` archive: it
loads with `keras.saving.load_model(path, safe_mode=True)` into a float32 network, with no code of
ours on the loading side, and `--init-weights` trains from it as from any other file.
"""
from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np

WEIGHTS_ENTRY = "model.weights.h5"


def _halve_kernels(raw: bytes) -> tuple[bytes, int]:
    """The weights file with every float32 array of rank ≥ 2 (the kernels) stored as float16."""
    import h5py

    halved = 0
    buffer = io.BytesIO()
    with h5py.File(io.BytesIO(raw), "r") as source, h5py.File(buffer, "w") as target:
        target.attrs.update(dict(source.attrs))

        def copy(name, item):
            nonlocal halved
            if isinstance(item, h5py.Group):
                target.require_group(name).attrs.update(dict(item.attrs))
                return
            data = item[()]
            if item.dtype == np.float32 and item.ndim >= 2:
                data = data.astype(np.float16)
                halved += data.size
            target.create_dataset(name, data=data).attrs.update(dict(item.attrs))

        source.visititems(copy)
    return buffer.getvalue(), halved


def store_kernels_float16(source, target) -> int:
    """Write `source` (.keras) to `target` with its kernels stored as float16; returns how many
    values were halved. Written atomically by the project's writer (`training.callbacks.
    write_bytes_atomically`: a full disk is a one-line `RunFileError`, `target` is left as it was)."""
    from ..training.callbacks import write_bytes_atomically

    source, target = Path(source), Path(target)
    try:
        with zipfile.ZipFile(source) as archive:
            entries = [(info.filename, archive.read(info.filename)) for info in archive.infolist()]
    except zipfile.BadZipFile:
        raise ValueError(f"{source}: not a .keras file (not a complete zip archive)") from None
    if WEIGHTS_ENTRY not in dict(entries):
        raise ValueError(f"{source}: not a .keras file (no {WEIGHTS_ENTRY} inside)")
    halved = 0
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in entries:
            if name == WEIGHTS_ENTRY:
                data, halved = _halve_kernels(data)
            archive.writestr(name, data)
    write_bytes_atomically(str(target), buffer.getvalue(), "model")
    return halved


__all__ = ["store_kernels_float16"]
