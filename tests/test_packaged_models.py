"""The models that ship in the package: each loads by its name and by its path, in both of its files,
and the LiteRT file users run by default scores what its float Keras network scores on real faces."""
from pathlib import Path

import numpy as np
import pytest

from cfdrnn_keras.runtime import packaged
from cfdrnn_keras.runtime.backends import ModelLoadError, load_backend
from cfdrnn_keras.runtime.landmarker import LandmarkDetector

COMPARE_FACES = 40
ASTRONAUT = Path(__file__).resolve().parents[1] / "examples" / "astronaut.png"


@pytest.mark.parametrize("name", sorted(packaged.PACKAGED_MODELS))
def test_each_packaged_model_loads_by_name_and_by_path(name):
    model = packaged.PACKAGED_MODELS[name]
    assert model.missing_files() == []
    by_name, by_path = load_backend(name), load_backend(model.tflite_path)
    crop = np.random.default_rng(0).integers(0, 256, (1, by_name.input_size, by_name.input_size, 3), np.uint8)
    np.testing.assert_array_equal(by_name.predict_crops(crop)[0], by_path.predict_crops(crop)[0])
    assert LandmarkDetector(model=name).model_name == name


def test_the_default_is_a_packaged_model_and_unknown_names_are_one_line():
    assert packaged.DEFAULT_MODEL in packaged.PACKAGED_MODELS
    assert LandmarkDetector().model_name == packaged.DEFAULT_MODEL
    with pytest.raises(ModelLoadError, match="nonesuch: model not found"):
        load_backend("nonesuch")
    with pytest.raises(ValueError, match="no packaged model named 'nonesuch'; packaged: "):
        packaged.packaged_model("nonesuch")


def test_the_named_models_are_different_networks():
    """Issue 14: `accurate` is two networks averaged (`network_average`), `fast` one; `fast`'s network
    is the first of the two, the other a wider network trained apart (width 0.35 against 1/4)."""
    pytest.importorskip("keras")
    from cfdrnn_keras.model.ensemble import member_suffixes
    from cfdrnn_keras.model.loading import load_network
    from cfdrnn_keras.model.network import config_from_model
    from cfdrnn_keras.model.network_average import members_of

    accurate, fast = load_network("accurate"), load_network("fast")
    assert member_suffixes(accurate) == ["", "_m2"] and member_suffixes(fast) == [""]
    first, second = members_of(accurate)
    assert config_from_model(first).width == 0.25  # recovered from channel counts: 22 of 64 is 0.34375
    assert config_from_model(second).width == pytest.approx(0.35, abs=0.01)
    assert accurate.count_params() == fast.count_params() + second.count_params() > 2 * fast.count_params()
    for mine, theirs in zip(first.get_weights(), fast.get_weights()):
        np.testing.assert_array_equal(mine, theirs)


def test_accurate_is_the_default_and_fast_runs_one_pass():
    """What the names promise (docs/MODEL_CARD.md): `accurate` is the default and runs the crop and its
    mirror, `fast` one pass."""
    accurate, fast = packaged.PACKAGED_MODELS["accurate"], packaged.PACKAGED_MODELS["fast"]
    assert packaged.DEFAULT_MODEL == "accurate"
    assert accurate.ensemble.flip and not fast.ensemble.flip
    assert accurate.tflite_path.read_bytes() != fast.tflite_path.read_bytes()
    # The flip test makes a model mirror-equivariant, f(mirror crop) = mirror f(crop), whatever its
    # weights (it runs both and swaps them); one pass is not. The fusion keeps that but for its offsets
    # b (the 300-W markup's, which do not mirror; a point and its mirror partner share their weights):
    # mirror f(mirror crop) − f(crop) = mirror(b) − b, mirror(b)_k = (−b_x, b_y) of point k's partner.
    # Checked on a real face crop against the offsets in the calibration file.
    import json

    from data_pipelines.geometry import MIRROR_PERMUTATION_68, crop_matrix, warp_to_crop
    from data_pipelines.images import read_image

    image = read_image(ASTRONAUT)
    crop = warp_to_crop(image, crop_matrix((180, 95, 265, 180), 128, 1.25), 128)[None]
    permutation = list(MIRROR_PERMUTATION_68)

    def asymmetry(name, ensemble_key):
        calibration = json.loads(packaged.PACKAGED_MODELS[name].calibration_path.read_text())
        offsets = np.asarray(calibration["ensembles"][ensemble_key]["fusion"]["offsets"]) * 128
        mirrored_offsets = offsets[permutation] * [-1.0, 1.0]
        backend = load_backend(name, threads=1)
        direct = np.asarray(backend.predict_crops(crop)[0])[0] * 128
        mirrored = np.asarray(backend.predict_crops(crop[:, :, ::-1].copy())[0])[0] * 128
        back = mirrored[permutation]
        back[:, 0] = 127.0 - back[:, 0]
        return float(np.abs(back - direct - (mirrored_offsets - offsets)).max())

    assert asymmetry("accurate", "flip+all") < 0.05
    assert asymmetry("fast", "noflip+all") > 0.2


def test_package_model_files_stay_under_40_mb():
    total = sum(path.stat().st_size for path in packaged.ASSETS.iterdir() if path.is_file())
    assert total < 40e6, f"{total / 1e6:.1f} MB of model files in {packaged.ASSETS}"


@pytest.fixture(scope="module")
def real_faces(shared_data):
    from data_pipelines.discovery import find_faces
    from data_pipelines.images import read_image
    from data_pipelines.pts import read_pts

    faces = find_faces([shared_data / "300w" / "helen"], check=False)[:COMPARE_FACES]
    return [(read_image(f.image_path), read_pts(f.pts_path)) for f in faces]


@pytest.mark.parametrize("name", sorted(packaged.PACKAGED_MODELS))
def test_the_litert_default_scores_what_its_keras_network_scores(name, real_faces):
    """Issue 15: the plain install's default within 0.1 point of NME of the Keras model."""
    pytest.importorskip("keras")
    from data_pipelines.geometry import face_box_from_points

    def mean_nme(detector):
        errors = []
        for image, gt in real_faces:
            (face,) = detector.detect(image, boxes=[face_box_from_points(gt)])
            errors.append(np.linalg.norm(face.points - gt, axis=1).mean() / np.linalg.norm(gt[36] - gt[45]))
        return 100 * float(np.mean(errors))

    litert, keras_network = mean_nme(LandmarkDetector(model=name)), mean_nme(LandmarkDetector(model=f"{name}:keras"))
    assert litert < 10 and keras_network < 10  # both are working landmark models on these faces
    assert abs(litert - keras_network) <= 0.1, (litert, keras_network)
