"""Half-size .keras files (cfdrnn_keras.model.storage): kernels float16 in the file, a float32 network
after a safe-mode load, batch-norm statistics exact, points within float16 rounding; bad files one line."""
import dataclasses
import io
import zipfile

import h5py
import keras
import numpy as np
import pytest

from cfdrnn_keras import build_cfdrnn, get_preset
from cfdrnn_keras.model.storage import WEIGHTS_ENTRY, store_kernels_float16


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    keras.utils.set_random_seed(0)
    network = build_cfdrnn(dataclasses.replace(get_preset("mobile"), input_size=64, width=0.0625))
    for layer in network.layers:  # batch-norm statistics no float16 could hold exactly
        if hasattr(layer, "moving_variance"):
            layer.moving_variance.assign(np.full(layer.moving_variance.shape, 1 / 3, np.float32))
    path = tmp_path_factory.mktemp("storage") / "net.keras"
    network.save(path)
    return network, path


def stored_dtypes(path):
    with zipfile.ZipFile(path) as archive, h5py.File(io.BytesIO(archive.read(WEIGHTS_ENTRY)), "r") as weights:
        found = []
        weights.visititems(lambda name, item: found.append((item.ndim, item.dtype)) if isinstance(item, h5py.Dataset) else None)
    return found


def test_kernels_are_float16_in_the_file_and_float32_once_loaded(saved, tmp_path):
    network, path = saved
    target = tmp_path / "half.keras"
    halved = store_kernels_float16(path, target)
    kernels = sum(int(np.prod(w.shape)) for w in network.weights if len(w.shape) >= 2)
    assert halved == kernels > 0
    dtypes = stored_dtypes(target)
    assert {d for n, d in dtypes if n >= 2} == {np.dtype("float16")}
    assert {d for n, d in dtypes if n < 2} == {np.dtype("float32")}
    assert target.stat().st_size < 0.65 * path.stat().st_size
    loaded = keras.saving.load_model(target, safe_mode=True)
    assert {w.dtype for w in loaded.weights} == {"float32"}
    for before, after in zip(network.weights, loaded.weights):
        if len(before.shape) >= 2:
            np.testing.assert_array_equal(np.asarray(after), np.asarray(before).astype(np.float16).astype(np.float32))
        else:
            np.testing.assert_array_equal(np.asarray(after), np.asarray(before))  # BN statistics, γ, β exact
    crops = np.random.default_rng(1).uniform(-0.5, 0.5, (4, 64, 64, 3)).astype(np.float32)
    after, before = loaded.predict(crops, verbose=0), network.predict(crops, verbose=0)
    for name in ("heatmaps_4", "delta_4"):  # float16 rounding, carried through the network (an untrained
        # one: its argmax ties, so the maps and offsets are compared, not the points)
        assert np.abs(after[name] - before[name]).max() < 0.02 * np.abs(before[name]).max()


def test_bad_files_and_the_command_line(saved, tmp_path, capsys):
    from cfdrnn_keras.cli.compact import main

    _, path = saved
    junk = tmp_path / "junk.keras"
    junk.write_bytes(b"PK\x03\x04 not really")
    with pytest.raises(ValueError, match="junk.keras: not a .keras file"):
        store_kernels_float16(junk, tmp_path / "out.keras")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["junk.keras"]  # nothing written, no temporary left
    assert main([str(junk), "--out", str(tmp_path / "out.keras")]) == 2
    assert "junk.keras: not a .keras file" in capsys.readouterr().err
    assert main([str(path), "--out", str(path)]) == 2
    assert "is the input" in capsys.readouterr().err
    assert main([str(path), "--out", str(tmp_path / "half.keras")]) == 0
    assert "stored as float16" in capsys.readouterr().out
