"""Averaged networks (cfdrnn_keras.model.network_average): the graph's outputs against each member run
alone, every test-time ensemble of the average against the mean of the members' own, safe saving,
the uncertainty layer on all members, refusals, and the command-line front."""
import dataclasses

import keras
import numpy as np
import pytest

from cfdrnn_keras import build_cfdrnn, get_preset
from cfdrnn_keras.model.ensemble import EnsembleOptions, build_test_time_model, member_suffixes, stage_count
from cfdrnn_keras.model.network_average import average_networks, members_of


def tiny(seed, input_size=64):
    keras.utils.set_random_seed(seed)
    return build_cfdrnn(dataclasses.replace(get_preset("mobile"), input_size=input_size, width=0.0625))


@pytest.fixture(scope="module")
def members():
    return [tiny(1), tiny(2)]


@pytest.fixture(scope="module")
def crops():
    return np.random.default_rng(0).uniform(-0.5, 0.5, (3, 64, 64, 3)).astype(np.float32)


def test_outputs_are_the_members_own(members, crops):
    average = average_networks(members)
    got = average.predict(crops, verbose=0)
    alone = [m.predict(crops, verbose=0) for m in members]
    assert member_suffixes(average) == ["", "_m2"] and stage_count(average) == 4
    for j in range(1, 5):
        np.testing.assert_allclose(got[f"heatmaps_{j}"], alone[0][f"heatmaps_{j}"], atol=1e-6)
        np.testing.assert_allclose(got[f"delta_{j}_m2"], alone[1][f"delta_{j}"], atol=1e-6)
    for name in ("landmarks", "confidence"):
        np.testing.assert_allclose(got[name], (alone[0][name] + alone[1][name]) / 2, atol=1e-6)


@pytest.mark.parametrize("options", [EnsembleOptions(), EnsembleOptions(flip=False),
                                     EnsembleOptions(stages="last"), EnsembleOptions(flip=False, stages="last", subpixel=False)],
                         ids=lambda o: o.describe())
def test_every_ensemble_is_the_mean_of_the_members(members, crops, options):
    # Equal weights over all members' stages = the mean of each member's own ensemble (every step is linear
    # after each member's own decoding).
    average = build_test_time_model(average_networks(members), options).predict(crops, verbose=0)["landmarks"]
    alone = [build_test_time_model(m, options).predict(crops, verbose=0)["landmarks"] for m in members]
    np.testing.assert_allclose(average, (alone[0] + alone[1]) / 2, atol=1e-5)


def test_saves_and_loads_in_safe_mode(members, crops, tmp_path):
    average = average_networks(members)
    path = tmp_path / "average.keras"
    average.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert [m.name for m in members_of(loaded)] == ["member_1", "member_2"]
    np.testing.assert_allclose(loaded.predict(crops, verbose=0)["landmarks"],
                               average.predict(crops, verbose=0)["landmarks"], atol=1e-6)
    assert members_of(members[0]) == [members[0]]


def test_uncertainty_features_read_every_member(crops):
    members = [tiny(4), tiny(5)]
    for member in members:  # fresh heads give peaks under the features' 0.02 floor: lift them above it
        for layer in member.layers:
            if layer.name.endswith("conv1x1_H_bn"):
                layer.beta.assign(np.full(layer.beta.shape, 0.1, np.float32))
    average = average_networks(members)
    out = build_test_time_model(average, EnsembleOptions(flip=False), uncertainty="features").predict(crops, verbose=0)
    singles = [build_test_time_model(m, EnsembleOptions(flip=False), uncertainty="features").predict(crops, verbose=0)
               for m in members]
    # The point feature is log(max(mean peak, 0.02)), the mean over the stages used: here 8, four per member,
    # so where neither member's own mean is under the floor it is the log of the two members' mean.
    peak_a, peak_b, peak = (np.exp(f["uncertainty_features"][..., 0]) for f in (*singles, out))
    mask = (peak_a > 0.02) & (peak_b > 0.02)
    assert mask.mean() > 0.5
    np.testing.assert_allclose(peak[mask], ((peak_a + peak_b) / 2)[mask], rtol=1e-4)


def test_refusals(members):
    with pytest.raises(ValueError, match="at least two"):
        average_networks(members[:1])
    with pytest.raises(ValueError, match="differ in input size"):
        average_networks([members[0], tiny(3, input_size=128)])
    with pytest.raises(ValueError, match="already an average"):
        average_networks([average_networks(members), members[0]])
    plain = keras.Model(members[0].inputs, members[0].output["landmarks"], name="plain")
    with pytest.raises(ValueError, match="not a CFDRNN network"):
        average_networks([plain, members[0]])


def test_command_line(members, tmp_path, capsys):
    from cfdrnn_keras.cli.average import main

    paths = []
    for index, member in enumerate(members):
        paths.append(tmp_path / f"m{index}.keras")
        member.save(paths[-1])
    out = tmp_path / "avg.keras"
    assert main([str(p) for p in paths] + ["--out", str(out)]) == 0
    assert "2 networks averaged" in capsys.readouterr().out
    assert member_suffixes(keras.saving.load_model(out, safe_mode=True)) == ["", "_m2"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["avg.keras", "m0.keras", "m1.keras"]  # no temporary left
    assert main([str(paths[0]), str(tmp_path / "missing.keras"), "--out", str(out)]) == 2
    assert "missing.keras: not a .keras file" in capsys.readouterr().err
    assert main([str(paths[0]), "--out", str(tmp_path / "one.keras")]) == 2
    assert "at least two" in capsys.readouterr().err


def test_full_int8_file_keeps_every_members_heatmap_heads_float(members):
    """`export.tflite.float_heatmap_head` finds the heads through the average; both members' heads are
    float in the full-integer file (their layer names are the same, their tensors are not)."""
    pytest.importorskip("tensorflow")
    from ai_edge_litert.interpreter import Interpreter

    from cfdrnn_keras.model.ensemble import for_inference
    from export.saved_model import inference_model
    from export.tflite import convert, float_heatmap_head

    model = inference_model(for_inference(average_networks(members), EnsembleOptions(flip=False)))
    assert float_heatmap_head(model) == float_heatmap_head(inference_model(for_inference(members[0], EnsembleOptions(flip=False))))
    crops = np.random.default_rng(2).integers(0, 256, (4, 64, 64, 3), np.uint8)
    tensors = Interpreter(model_content=convert(model, "tflite_int8_full", crops)).get_tensor_details()
    heads = {}
    for detail in tensors:
        name = detail["name"]
        if name.endswith("hml3.conv1x1_H_1/convolution"):
            member = "member_2" if "/member_2" in name else "member_1"
            heads[member] = detail["dtype"]
    assert heads == {"member_1": np.float32, "member_2": np.float32}
