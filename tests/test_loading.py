"""Float networks by packaged name or path (cfdrnn_keras.model.loading): a model of several networks is
stored a file per network, no network twice, and loads as the graph average_networks builds."""
import hashlib

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from cfdrnn_keras import build_cfdrnn, get_preset  # noqa: E402
from cfdrnn_keras.model import loading  # noqa: E402
from cfdrnn_keras.model.ensemble import member_suffixes  # noqa: E402
from cfdrnn_keras.model.network_average import average_networks  # noqa: E402
from cfdrnn_keras.runtime import packaged  # noqa: E402
from cfdrnn_keras.runtime.backends import ModelLoadError, load_backend  # noqa: E402

TINY = get_preset("mobile").replace(width=0.0625, input_size=64)


@pytest.fixture(scope="module")
def tiny_networks(tmp_path_factory):
    """Two tiny networks from different seeds, saved once for the module."""
    folder = tmp_path_factory.mktemp("networks")
    for seed, name in ((1, "a.keras"), (2, "b.keras")):
        keras.utils.set_random_seed(seed)
        build_cfdrnn(TINY).save(folder / name)
    return folder


@pytest.fixture()
def tiny_assets(tiny_networks, tmp_path, monkeypatch):
    """An assets folder of those two files, a model named `pair` of both and `one` of the first."""
    for name in ("a.keras", "b.keras"):
        (tmp_path / name).write_bytes((tiny_networks / name).read_bytes())
    models = {
        "pair": packaged.PackagedModel(name="pair", preset="mobile", networks=("a.keras", "b.keras"),
                                       tflite_file="pair.tflite", calibration_file="pair.uncertainty.json", summary=""),
        "one": packaged.PackagedModel(name="one", preset="mobile", networks=("a.keras",), tflite_file="one.tflite",
                                      calibration_file="a.uncertainty.json", summary="", flip_test=False),
    }
    monkeypatch.setattr(packaged, "ASSETS", tmp_path)
    monkeypatch.setattr(packaged, "PACKAGED_MODELS", models)
    return tmp_path


def test_a_model_of_two_files_loads_as_their_average(tiny_assets):
    pair = loading.load_network("pair:keras")
    assert pair.name == "cfdrnn_pair" and member_suffixes(pair) == ["", "_m2"]
    first, second = (keras.saving.load_model(tiny_assets / name, safe_mode=True) for name in ("a.keras", "b.keras"))
    expected = average_networks([first, second])
    x = np.random.default_rng(0).uniform(-0.5, 0.5, (2, 64, 64, 3)).astype("float32")
    got, want = pair.predict_on_batch(x), expected.predict_on_batch(x)
    assert sorted(got) == sorted(want)
    for key in want:
        np.testing.assert_array_equal(np.asarray(got[key]), np.asarray(want[key]))
    # One file loads as itself, by name as by path.
    for source in ("one", str(tiny_assets / "a.keras")):
        one = loading.load_network(source)
        assert member_suffixes(one) == [""] and len(one.weights) == len(first.weights)
        for mine, theirs in zip(one.weights, first.weights):
            np.testing.assert_array_equal(np.asarray(mine), np.asarray(theirs))


def test_files_calibration_and_fingerprint_of_each_kind_of_source(tiny_assets):
    assert loading.network_files("pair") == (tiny_assets / "a.keras", tiny_assets / "b.keras")
    assert loading.network_files(tiny_assets / "b.keras") == (tiny_assets / "b.keras",)
    assert loading.calibration_file("pair:keras") == tiny_assets / "pair.uncertainty.json"
    assert loading.calibration_file(tiny_assets / "b.keras") == tiny_assets / "b.uncertainty.json"
    assert loading.describe("pair") == "pair (a.keras + b.keras)"
    a, b = ((tiny_assets / name).read_bytes() for name in ("a.keras", "b.keras"))
    assert loading.network_sha256("one") == hashlib.sha256(a).hexdigest()
    assert loading.network_sha256("pair") == hashlib.sha256(a + b).hexdigest()


def test_a_calibration_is_used_only_for_the_weights_it_was_fitted_on(tiny_assets):
    """The fusion beside a `.keras` file moves its points (here by a known offset); after the network's
    weights change, the same file is ignored with a warning instead of moving another network's points."""
    import json

    from cfdrnn_keras.model.backends import KerasBackend
    from cfdrnn_keras.model.ensemble import EnsembleOptions, stage_keys
    from cfdrnn_keras.model.fusion import fusion_entry

    path = tiny_assets / "a.keras"
    network = keras.saving.load_model(path, safe_mode=True)
    options = EnsembleOptions(flip=False)
    keys = stage_keys(network, options)
    shift = np.tile([0.01, -0.02], (68, 1))
    entry = {"fusion": fusion_entry(np.full((len(keys), 68), 1.0 / len(keys)), shift, keys)}
    calibration = {"model_sha256": loading.network_sha256(path), "ensembles": {"noflip+all": entry}}
    loading.calibration_file(path).write_text(json.dumps(calibration))
    crops = np.random.default_rng(3).integers(0, 255, (2, 64, 64, 3), dtype=np.uint8)
    plain = KerasBackend(network, options).predict_crops(crops).landmarks
    fused = KerasBackend(path, options).predict_crops(crops).landmarks
    np.testing.assert_allclose(fused - plain, np.broadcast_to(shift, plain.shape), atol=1e-5)

    calibration["model_sha256"] = hashlib.sha256(b"other weights").hexdigest()
    loading.calibration_file(path).write_text(json.dumps(calibration))
    with pytest.warns(UserWarning, match="fitted for other weights") as caught:
        assert loading.calibration_entry(path, options) is None
        again = KerasBackend(path, options).predict_crops(crops).landmarks
    assert str(path.with_name("a.uncertainty.json")) in str(caught[0].message)
    np.testing.assert_allclose(again, plain, atol=1e-6)


def test_average_networks_takes_a_packaged_model_as_all_its_networks(tiny_assets, capsys):
    from cfdrnn_keras.cli.average import main

    assert main(["pair", "--out", str(tiny_assets / "again.keras")]) == 0
    assert "2 networks averaged" in capsys.readouterr().out
    assert main(["one", "--out", str(tiny_assets / "alone.keras")]) == 2
    assert "at least two" in capsys.readouterr().err


def test_a_missing_network_file_is_one_line_naming_it(tiny_assets):
    (tiny_assets / "b.keras").unlink()
    with pytest.raises(FileNotFoundError, match=r"b\.keras: model not found \(the packaged model 'pair' is missing"):
        loading.load_network("pair")
    with pytest.raises(ModelLoadError, match=r"b\.keras: the packaged model 'pair:keras' is missing from this install"):
        load_backend("pair:keras")
    (tiny_assets / "a.keras").write_bytes(b"not a zip")
    with pytest.raises(ModelLoadError, match=r"a\.keras: not a valid \.keras file"):
        load_backend("one:keras")


def test_the_shipped_models_store_no_network_twice():
    """`accurate`'s first network is `fast`'s file itself; every network file is a different network."""
    files = {file for model in packaged.PACKAGED_MODELS.values() for file in model.networks}
    assert packaged.PACKAGED_MODELS["accurate"].networks[0] == packaged.PACKAGED_MODELS["fast"].networks[0]
    paths = [packaged.ASSETS / file for file in sorted(files)]
    if not all(path.is_file() for path in paths):
        pytest.skip("the packaged networks are not in this checkout")
    digests = {hashlib.sha256(path.read_bytes()).hexdigest() for path in paths}
    assert len(digests) == len(paths)
    stray = sorted(path.name for path in packaged.ASSETS.glob("*.keras") if path.name not in files)
    assert stray == [], f"network files no packaged model uses: {stray}"
