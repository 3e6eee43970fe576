"""Fused estimates (cfdrnn_keras.model.fusion): the least-squares fit recovers known weights and offsets,
the graph computes what the numpy twin computes from the estimates it outputs, fused models save and
load safely, and entries that do not fit the graph are refused."""
import dataclasses

import keras
import numpy as np
import pytest

from cfdrnn_keras import build_cfdrnn, get_preset
from cfdrnn_keras.model.ensemble import EnsembleOptions, StageAverage, build_test_time_model, stage_keys
from cfdrnn_keras.model.fusion import (
    PointOffset,
    apply_fusion,
    check_entry,
    cross_validated,
    fit_fusion,
    fusion_entry,
    fusion_of,
)
from tests.test_ensemble import one_hot


def test_fit_recovers_inverse_variance_weights_and_the_offset():
    # Three unbiased-but-shifted estimators with independent noise of σ = 1, 2, 4: the best unbiased
    # combination weighs them 1/σ² (16 : 4 : 1) / 21, and the shift they share (0.3, −0.2) comes back
    # as the offset. Point 1's estimators swap their noise, so its weights swap too.
    rng = np.random.default_rng(0)
    faces, points = 20000, 2
    truth = rng.uniform(0, 100, (faces, points, 2))
    sigma = np.array([[1.0, 4.0], [2.0, 2.0], [4.0, 1.0]])  # (K, N)
    shift = np.array([0.3, -0.2])
    estimates = truth[None] - shift + rng.normal(size=(3, faces, points, 2)) * sigma[:, None, :, None]
    weights, offsets = fit_fusion(estimates, truth)
    np.testing.assert_allclose(weights.sum(0), 1.0, atol=1e-12)
    np.testing.assert_allclose(weights[:, 0], np.array([16, 4, 1]) / 21, atol=0.01)
    np.testing.assert_allclose(weights[:, 1], np.array([1, 4, 16]) / 21, atol=0.01)
    np.testing.assert_allclose(offsets, [shift, shift], atol=0.02)
    fused = apply_fusion(estimates, weights, offsets)
    assert np.abs(fused - truth).mean() < np.abs(estimates.mean(0) + shift - truth).mean()
    # cross-validated, the fit still beats the plain mean on faces it did not see
    held = cross_validated(estimates[:, :2000], truth[:2000])
    assert np.abs(held - truth[:2000]).mean() < np.abs(estimates[:, :2000].mean(0) - truth[:2000]).mean()


def test_mirror_partners_share_their_weights_and_keep_their_offsets():
    # Two points that are each other's mirror: point 0's first estimator is good, point 1's second.
    # Tied, both get the same weights (the pooled inverse-variance ones, equal here by symmetry),
    # and each its own offset.
    rng = np.random.default_rng(1)
    faces = 20000
    truth = rng.uniform(0, 100, (faces, 2, 2))
    sigma = np.array([[1.0, 3.0], [3.0, 1.0]])  # (K, N)
    shift = np.array([[0.5, 0.0], [-0.2, 0.1]])  # (N, 2)
    estimates = truth[None] - shift[None, None] + rng.normal(size=(2, faces, 2, 2)) * sigma[:, None, :, None]
    untied, _ = fit_fusion(estimates, truth)
    tied, offsets = fit_fusion(estimates, truth, permutation=[1, 0])
    assert untied[0, 0] > 0.85 and untied[0, 1] < 0.15
    np.testing.assert_array_equal(tied[:, 0], tied[:, 1])
    np.testing.assert_allclose(tied[:, 0], [0.5, 0.5], atol=0.01)
    np.testing.assert_allclose(offsets, shift, atol=0.05)
    with pytest.raises(ValueError, match="permutation"):
        fit_fusion(estimates, truth, permutation=[0, 0])


def test_fit_refuses_bad_shapes():
    with pytest.raises(ValueError, match="need estimates"):
        fit_fusion(np.zeros((2, 5, 3, 2)), np.zeros((5, 4, 2)))
    with pytest.raises(ValueError, match="too few"):
        fit_fusion(np.zeros((8, 3, 1, 2)), np.zeros((3, 1, 2)))


def test_weighted_stage_average_and_offset_by_hand():
    # test_ensemble's hand case, with weights 0.25 / 0.75 on point 0 and 1 / 0 on point 1:
    # point 0: 0.25·(0.26, 0.52) + 0.75·(0.53, 0.48) = (0.4625, 0.49); point 1: stage 1's (0.75, 0).
    h1, h2 = one_hot(4, [(1, 2), (3, 0)]), one_hot(4, [(2, 2), (3, 1)])
    d1 = np.array([[[0.01, 0.02], [0.0, 0.0]]], np.float32)
    d2 = np.array([[[0.03, -0.02], [0.0, 0.05]]], np.float32)
    layer = StageAverage(stride=4, input_size=16, weights=[[0.25, 1.0], [0.75, 0.0]])
    got = np.asarray(layer([h1, h2], [d1, d2]))
    np.testing.assert_allclose(got, [[[0.4625, 0.49], [0.75, 0.0]]], atol=1e-6)
    moved = np.asarray(PointOffset([[0.01, -0.02], [0.0, 0.5]])(got))
    np.testing.assert_allclose(moved, [[[0.4725, 0.47], [0.75, 0.5]]], atol=1e-6)
    assert StageAverage.from_config(layer.get_config()).weights_per_point == [[0.25, 1.0], [0.75, 0.0]]


@pytest.fixture(scope="module")
def tiny_network():
    keras.utils.set_random_seed(7)
    return build_cfdrnn(dataclasses.replace(get_preset("mobile"), input_size=64, width=0.0625))


ENSEMBLES = [EnsembleOptions(), EnsembleOptions(flip=False), EnsembleOptions(flip=False, stages="last")]


@pytest.mark.parametrize("options", ENSEMBLES, ids=["flip+all", "noflip+all", "noflip+last"])
def test_graph_matches_the_numpy_twin_of_its_own_estimates(tiny_network, options, tmp_path):
    x = np.random.default_rng(3).uniform(-0.5, 0.5, (3, 64, 64, 3)).astype(np.float32)
    features = build_test_time_model(tiny_network, options, fusion="features")
    estimates = np.asarray(features(x)["estimates"], np.float64).transpose(1, 0, 2, 3)  # (K, B, N, 2)
    keys = stage_keys(tiny_network, options)
    assert estimates.shape == (len(keys), 3, 68, 2)
    # equal weights and no offset are the plain ensemble
    plain = np.asarray(build_test_time_model(tiny_network, options)(x)["landmarks"])
    np.testing.assert_allclose(estimates.mean(0), plain, atol=1e-5)
    rng = np.random.default_rng(4)
    weights = rng.uniform(0.0, 1.0, (len(keys), 68))
    weights /= weights.sum(0)
    offsets = rng.normal(0.0, 0.01, (68, 2))
    entry = fusion_entry(weights, offsets, keys)
    fused = build_test_time_model(tiny_network, options, fusion=entry)
    np.testing.assert_allclose(np.asarray(fused(x)["landmarks"]), apply_fusion(estimates, weights, offsets), atol=1e-5)
    path = tmp_path / "fused.keras"
    fused.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    np.testing.assert_array_equal(np.asarray(loaded(x)["landmarks"]), np.asarray(fused(x)["landmarks"]))


def test_entries_that_do_not_fit_are_refused(tiny_network):
    keys = stage_keys(tiny_network, EnsembleOptions())
    entry = fusion_entry(np.full((len(keys), 68), 0.25), np.zeros((68, 2)), keys)
    with pytest.raises(ValueError, match="fitted on the outputs"):
        build_test_time_model(tiny_network, EnsembleOptions(stages="last"), fusion=entry)
    with pytest.raises(ValueError, match="do not fit"):
        check_entry(fusion_entry(np.full((len(keys), 5), 0.25), np.zeros((5, 2)), keys), keys, 68)
    # the entry of sub-pixel peaks is not used for integer ones
    calibration = {"fusion": entry}
    assert fusion_of(calibration, EnsembleOptions()) is entry
    assert fusion_of(calibration, EnsembleOptions(subpixel=False)) is None
    assert fusion_of({"intercepts": []}, EnsembleOptions()) is None


def test_fit_fusions_on_real_faces_fits_every_ensemble(tiny_network, shared_data):
    """fit_uncertainty's fusion step on 30 real training faces: an entry per ensemble that the graph
    accepts, and in-sample never worse than the plain mean (least squares includes the mean)."""
    from cfdrnn_keras.cli.fit_uncertainty import ENSEMBLE_KEYS, face_crops, fit_fusions
    from cfdrnn_keras.metrics import nme
    from data_pipelines.discovery import find_faces

    faces = find_faces(shared_data / "300w" / "afw", check=False)[:30]
    crops, truth, _, _ = face_crops(faces, 64)
    entries = fit_fusions(tiny_network, crops, truth, list(ENSEMBLE_KEYS), batch_size=16)
    assert sorted(entries) == sorted(ENSEMBLE_KEYS)
    for key, entry in entries.items():
        options = EnsembleOptions(flip=key.startswith("flip+"), stages=key.split("+")[1])
        keys = stage_keys(tiny_network, options)
        check_entry(entry, keys, 68)
        assert entry["training_faces"] == 30
        x = crops.astype(np.float32) / 255.0 - 0.5
        plain = np.asarray(build_test_time_model(tiny_network, options)(x)["landmarks"]) * 64
        fused = np.asarray(build_test_time_model(tiny_network, options, fusion=entry)(x)["landmarks"]) * 64
        assert ((fused - truth) ** 2).sum() <= ((plain - truth) ** 2).sum() * (1 + 1e-6), key
        # the figure the tool reports for the plain mean is the plain ensemble's own NME
        assert entry["cross_validated_nme_io_percent"]["mean"] == pytest.approx(100 * nme(plain, truth).mean(), abs=1e-3)


def test_packaged_calibrations_fuse_every_member_and_stage():
    """Each packaged model's calibration holds a fusion for every ensemble, over every (network, stage)
    of its networks (a calibration fitted for other networks would be refused when the graph is built)."""
    import json

    from cfdrnn_keras.runtime.packaged import packaged_model

    from cfdrnn_keras.model.loading import network_sha256

    for name, members in (("fast", 1), ("accurate", 2)):
        model = packaged_model(name)
        calibration = json.loads(model.calibration_path.read_text())
        assert calibration["model_sha256"] == network_sha256(name), f"{name}: refit its calibration"
        ensembles = calibration["ensembles"]
        suffixes = [""] + [f"_m{k}" for k in range(2, members + 1)]
        for key, entry in ensembles.items():
            stages = range(1, 5) if key.endswith("+all") else [4]
            want = [[f"heatmaps_{j}{s}", f"delta_{j}{s}"] for s in suffixes for j in stages]
            assert entry["fusion"]["keys"] == want, (name, key)
            weights = np.asarray(entry["fusion"]["weights"])
            np.testing.assert_allclose(weights.sum(0), 1.0, atol=1e-4)
            # the markup's offset: about half a crop pixel to the right on average (docs/TRAINING.md)
            assert 0.2 < np.mean(entry["fusion"]["offsets"], axis=0)[0] * 128 < 0.8, (name, key)


def test_fused_flip_test_is_mirror_equivariant_up_to_the_offsets(tiny_network):
    """With weights shared by mirror partners, mirror f(mirror x) − f(x) = mirror(b) − b exactly:
    the mirrors' points must take their photo points' weights inside StageAverage."""
    from data_pipelines.geometry import MIRROR_PERMUTATION_68

    permutation = list(MIRROR_PERMUTATION_68)
    options = EnsembleOptions()
    keys = stage_keys(tiny_network, options)
    rng = np.random.default_rng(6)
    weights = rng.uniform(0.0, 1.0, (len(keys), 68))
    weights = (weights + weights[:, permutation]) / 2
    weights /= weights.sum(0)
    offsets = rng.normal(0.0, 0.01, (68, 2))
    model = build_test_time_model(tiny_network, options, fusion=fusion_entry(weights, offsets, keys))
    x = rng.uniform(-0.5, 0.5, (2, 64, 64, 3)).astype(np.float32)
    direct = np.asarray(model(x)["landmarks"])
    back = np.asarray(model(x[:, :, ::-1])["landmarks"])[:, permutation]
    back[..., 0] = 63.0 / 64.0 - back[..., 0]
    mirrored_offsets = offsets[permutation] * [-1.0, 1.0]
    np.testing.assert_allclose(back - direct, np.broadcast_to(mirrored_offsets - offsets, direct.shape), atol=2e-5)
