"""In-graph augmentation: image and points move together, mirroring swaps sides, seeds replay."""
import math

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from data_pipelines.augment import (  # noqa: E402
    AugmentConfig,
    apply_augmentation,
    apply_colour,
    augment,
    augmentation_matrices,
    colour_matrices,
    sample_parameters,
)
from data_pipelines.geometry import MIRROR_PERMUTATION_68  # noqa: E402
from tests.test_geometry import face_shape  # noqa: E402

LOOSE, OUT = 192, 128  # small loose crop → output, to keep the test fast
GEOMETRY_ONLY = AugmentConfig(rotation_degrees=20, scale_range=(0.85, 1.15), translation=0.04,
                              brightness=0, contrast=0, saturation=0, hue=0, mirror_probability=0.5)


def _face():
    return face_shape(centre=((LOOSE - 1) / 2, (LOOSE - 1) / 2 + 3), half_width=48.0).astype(np.float32)


def _dot_images(points, sigma=1.0):
    """One image per landmark, each with a single Gaussian dot at that landmark (sub-pixel)."""
    ys, xs = np.mgrid[0:LOOSE, 0:LOOSE].astype(np.float32)
    dots = np.exp(-((xs[None] - points[:, 0, None, None]) ** 2 + (ys[None] - points[:, 1, None, None]) ** 2)
                  / (2 * sigma * sigma))
    return np.repeat(dots[..., None], 3, axis=-1).astype(np.float32)


def _centroids(images):
    weights = np.asarray(images, dtype=np.float64)[..., 0]
    ys, xs = np.mgrid[0:weights.shape[1], 0:weights.shape[2]]
    total = weights.sum(axis=(1, 2))
    return np.stack([(weights * xs).sum(axis=(1, 2)) / total, (weights * ys).sum(axis=(1, 2)) / total], axis=1)


def _params(angle_degrees=0.0, scale=1.0, shift=(0.0, 0.0), mirror=False, batch=1, **colour):
    values = {"angle": math.radians(angle_degrees), "scale": scale, "mirror": mirror, "brightness": 0.0,
              "contrast": 1.0, "saturation": 1.0, "hue": 0.0, **colour}
    params = {key: tf.fill([batch], value) for key, value in values.items()}
    params["shift"] = tf.tile(tf.constant([shift], tf.float32), [batch, 1])
    return params


def _expected_landmark_of_dot(moved, mirrored):
    """Dot i (painted at input landmark i) must sit at output landmark perm[i] when mirrored."""
    from data_pipelines.geometry import MIRROR_PERMUTATION_68

    return moved[list(MIRROR_PERMUTATION_68)] if mirrored else moved


@pytest.mark.parametrize(
    "angle,scale,shift,mirror",
    [(17.0, 1.12, (0.03, -0.02), False), (-14.0, 0.87, (-0.04, 0.01), True), (0.0, 1.0, (0.0, 0.0), True)],
)
def test_dots_land_on_the_transformed_landmarks(angle, scale, shift, mirror):
    points = _face()
    dots = _dot_images(points)
    params = _params(angle, scale, shift, mirror, batch=68)
    images, moved = apply_augmentation(dots, np.repeat(points[None], 68, axis=0), params, GEOMETRY_ONLY,
                                       output_size=OUT, base_scale=OUT / LOOSE * 1.2)
    moved = moved.numpy()[0]
    found = _centroids(images.numpy())
    expected = _expected_landmark_of_dot(moved, mirror)
    assert np.abs(found - expected).max() < 0.5, np.abs(found - expected).max()
    # The same points by an independent route: the hand-made similarity about the centres.
    centre_in, centre_out = (LOOSE - 1) / 2, (OUT - 1) / 2
    k = scale * OUT / LOOSE * 1.2
    relative = (points - centre_in) * [(-1.0 if mirror else 1.0), 1.0]
    c, s = math.cos(math.radians(angle)), math.sin(math.radians(angle))
    rotated = relative @ np.array([[c, s], [-s, c]]) * k + centre_out + np.asarray(shift) * OUT
    np.testing.assert_allclose(expected, rotated, atol=1e-3)


def _well_separated_groups(points, min_distance=14.0):
    """Split landmark indices into groups whose dots lie at least `min_distance` px apart."""
    groups = []
    for index in range(len(points)):
        for group in groups:
            if all(np.linalg.norm(points[index] - points[other]) >= min_distance for other in group):
                group.append(index)
                break
        else:
            groups.append([index])
    return groups


def test_random_augment_moves_dots_with_points():
    """The public `augment` with random parameters (one seed → the same draw for every call).

    To keep it quick, dots far enough apart share an image and each is measured in a window around
    where its landmark went (a dot elsewhere would pull the window's centroid off by pixels)."""
    points = _face()
    config = AugmentConfig.none(rotation_degrees=25, scale_range=(0.8, 1.2), translation=0.05, mirror_probability=1.0)
    run = tf.function(lambda image: augment(image, points, config, 1234, output_size=OUT, base_scale=OUT / LOOSE))
    groups = _well_separated_groups(points)
    assert len(groups) < 20
    dots = _dot_images(points)
    perm = list(MIRROR_PERMUTATION_68)
    errors = []
    for group in groups:
        image, moved = run(dots[group].sum(axis=0))
        image, moved = image.numpy()[..., 0], moved.numpy()
        for index in group:
            x, y = moved[perm[index]]  # mirrored: dot `index` belongs to landmark perm[index]
            x0, y0 = int(round(x)) - 4, int(round(y)) - 4
            window = image[y0:y0 + 9, x0:x0 + 9].astype(np.float64)
            ys, xs = np.mgrid[y0:y0 + 9, x0:x0 + 9]
            found = np.array([(window * xs).sum(), (window * ys).sum()]) / window.sum()
            errors.append(np.abs(found - (x, y)).max())
    assert len(errors) == 68 and max(errors) < 0.5, max(errors)
    # The draw really moved things (not the identity): rotation and scale change the inter-eye vector.
    before = points[45] - points[36]
    after = moved[45] - moved[36]
    assert abs(math.atan2(after[1], after[0]) - math.atan2(before[1], before[0])) > 1e-3 or \
        abs(np.linalg.norm(after) / np.linalg.norm(before) - OUT / LOOSE) > 1e-3


def test_mirroring_swaps_left_and_right_by_position():
    points = _face()
    image = np.zeros((LOOSE, LOOSE, 3), np.float32)
    _, plain = apply_augmentation(image[None], points[None], _params(), GEOMETRY_ONLY, output_size=LOOSE)
    _, flipped = apply_augmentation(image[None], points[None], _params(mirror=True), GEOMETRY_ONLY, output_size=LOOSE)
    plain, flipped = plain.numpy()[0], flipped.numpy()[0]
    np.testing.assert_allclose(plain, points, atol=1e-4)
    # Semantic layout survives the flip: eye corners, brows, mouth corners, jaw ends stay ordered.
    for left, right in ((36, 45), (39, 42), (17, 26), (21, 22), (48, 54), (60, 64), (0, 16), (31, 35)):
        assert flipped[left, 0] < flipped[right, 0], (left, right)
    # Point 36 of the flipped face is where the old point 45 went: x → size - 1 - x.
    np.testing.assert_allclose(flipped[36], [LOOSE - 1 - points[45, 0], points[45, 1]], atol=1e-4)
    # An asymmetric tilt shows the flip is a real reflection: the image-left eye corner was higher.
    tilted = points.copy()
    tilted[36, 1] -= 5.0
    _, tilted_flip = apply_augmentation(image[None], tilted[None], _params(mirror=True), GEOMETRY_ONLY,
                                        output_size=LOOSE)
    assert tilted_flip.numpy()[0, 45, 1] == pytest.approx(tilted[36, 1], abs=1e-4)


def test_matrix_hand_computed_quarter_turn():
    params = _params(angle_degrees=90.0)
    matrix = augmentation_matrices(params, 5, 5, 5).numpy()[0]
    # About the centre (2, 2): (4, 2) → offset (2, 0) → rotated (0, 2) → (2, 4).
    np.testing.assert_allclose(matrix @ [4.0, 2.0, 1.0], [2.0, 4.0, 1.0], atol=1e-5)
    image = np.zeros((1, 5, 5, 3), np.float32)
    image[0, 2, 4] = 1.0  # row 2, column 4 = point (4, 2)
    warped, _ = apply_augmentation(image, np.zeros((1, 68, 2), np.float32), params, GEOMETRY_ONLY, output_size=5)
    assert warped.numpy()[0, 4, 2, 0] == pytest.approx(1.0, abs=1e-5)


def test_same_seed_replays_different_seed_differs():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
    points = rng.uniform(10, 50, (3, 68, 2)).astype(np.float32)
    config = AugmentConfig()
    first = augment(images, points, config, 7)
    again = augment(images, points, config, 7)
    other = augment(images, points, config, 8)
    np.testing.assert_array_equal(first[0].numpy(), again[0].numpy())
    np.testing.assert_array_equal(first[1].numpy(), again[1].numpy())
    assert not np.array_equal(first[1].numpy(), other[1].numpy())
    assert not np.array_equal(first[1].numpy(), augment(images, points, AugmentConfig(seed=5), 7)[1].numpy())
    # Within a batch every example draws its own parameters.
    params = sample_parameters(config, 7, 3)
    assert len(set(params["angle"].numpy().tolist())) == 3


def test_parameters_stay_in_their_ranges():
    config = AugmentConfig(rotation_degrees=10, scale_range=(0.9, 1.2), translation=0.05, brightness=0.1,
                           contrast=0.2, saturation=0.3, hue=0.04, mirror_probability=0.25)
    params = {key: value.numpy() for key, value in sample_parameters(config, 3, 4000).items()}
    assert np.abs(params["angle"]).max() <= math.radians(10) + 1e-6
    assert 0.9 - 1e-6 <= params["scale"].min() and params["scale"].max() <= 1.2 + 1e-6
    assert np.abs(params["shift"]).max() <= 0.05 + 1e-6
    assert 0.2 < params["mirror"].mean() < 0.3
    assert np.abs(params["brightness"]).max() <= 0.1 + 1e-6 and np.abs(params["hue"]).max() <= 0.04 + 1e-6
    assert np.abs(params["contrast"] - 1).max() <= 0.2 + 1e-6 and np.abs(params["saturation"] - 1).max() <= 0.3 + 1e-6
    assert (params["scale"] < 1).any() and (params["scale"] > 1).any()  # reduction and enlargement


def test_colour_operations_hand_checked():
    identity = colour_matrices(tf.constant([1.0]), tf.constant([0.0])).numpy()[0]
    np.testing.assert_allclose(identity, np.eye(3), atol=1e-5)
    pixels = tf.constant([[[[0.8, 0.4, 0.2], [0.2, 0.4, 0.6]]]], tf.float32)  # (1, 1, 2, 3)
    grey = apply_colour(pixels, _params(saturation=0.0)).numpy()[0, 0]
    np.testing.assert_allclose(grey[:, 0], grey[:, 1], atol=1e-5)  # no chroma left: R = G = B = luma
    np.testing.assert_allclose(grey[0], 0.299 * 0.8 + 0.587 * 0.4 + 0.114 * 0.2, atol=1e-5)
    brighter = apply_colour(pixels, _params(brightness=0.1)).numpy()[0, 0]
    np.testing.assert_allclose(brighter, pixels.numpy()[0, 0] + 0.1, atol=1e-5)
    flat = apply_colour(pixels, _params(contrast=0.0)).numpy()[0, 0]
    np.testing.assert_allclose(flat, [[0.5, 0.4, 0.4]] * 2, atol=1e-5)  # every pixel → the mean
    rotated = apply_colour(pixels, _params(hue=0.5)).numpy()[0, 0]  # half a turn: chroma negated
    luma = pixels.numpy()[0, 0] @ [0.299, 0.587, 0.114]
    np.testing.assert_allclose(rotated @ [0.299, 0.587, 0.114], luma, atol=1e-5)
    clipped = apply_colour(pixels, _params(brightness=0.5)).numpy()
    assert clipped.max() == 1.0


def test_augmentation_graph_has_no_python_ops():
    config = AugmentConfig()

    @tf.function
    def run(image, points):
        return augment(image, points, config, tf.constant([1, 2], tf.int64), output_size=64)

    graph = run.get_concrete_function(tf.TensorSpec([2, 96, 96, 3], tf.uint8), tf.TensorSpec([2, 68, 2])).graph
    op_types = {op.type for op in graph.get_operations()}
    assert "ImageProjectiveTransformV3" in op_types
    assert not op_types & {"PyFunc", "EagerPyFunc", "PyFuncStateless"}


def test_config_validation_and_round_trip():
    with pytest.raises(ValueError):
        AugmentConfig(scale_range=(1.2, 0.8))
    with pytest.raises(ValueError):
        AugmentConfig(mirror_probability=1.5)
    with pytest.raises(ValueError):
        AugmentConfig().permutation(5)  # mirroring 5 points needs an explicit permutation
    config = AugmentConfig(seed=4, scale_range=(0.8, 1.3))
    assert AugmentConfig.from_dict(config.to_dict()) == config
    assert not AugmentConfig.none().has_colour


def test_numpy_twin_matches_the_graph_version():
    from data_pipelines.augment import (
        apply_colour_numpy,
        augment_numpy,
        augmentation_matrices_numpy,
        sample_parameters_numpy,
    )

    config = AugmentConfig(mirror_probability=0.5)
    params = sample_parameters_numpy(config, np.random.default_rng(0), 6)
    assert params["mirror"].any() and not params["mirror"].all()
    graph_params = {key: tf.constant(value, tf.bool if key == "mirror" else tf.float32) for key, value in params.items()}
    np.testing.assert_allclose(augmentation_matrices_numpy(params, 96, 80, 64, 0.7),
                               augmentation_matrices(graph_params, 96, 80, 64, 0.7).numpy(), atol=1e-4)
    images = np.random.default_rng(1).uniform(0, 255, (6, 16, 16, 3)).astype(np.float32)
    np.testing.assert_allclose(apply_colour_numpy(images, params, scale=255.0, low=-0.5),
                               apply_colour(tf.constant(images), graph_params, scale=255.0, low=-0.5).numpy(),
                               atol=1e-5)
    # The whole numpy augmentation moves dots with their points as the graph version does.
    points = _face()
    dots = (_dot_images(points) * 255).astype(np.uint8)
    geometry_only = AugmentConfig.none(rotation_degrees=20, scale_range=(0.85, 1.15), translation=0.04,
                                       mirror_probability=1.0)
    warped, moved = augment_numpy(dots, np.repeat(points[None], 68, axis=0), geometry_only,
                                  np.random.default_rng(5), output_size=OUT, base_scale=OUT / LOOSE)
    # One draw per example here, so compare each dot image with its own transformed points.
    perm = list(MIRROR_PERMUTATION_68)
    found = _centroids(warped)
    expected = np.array([moved[i, perm[i]] for i in range(68)])
    assert np.abs(found - expected).max() < 0.5


def test_occlusion_rectangle_by_hand_and_its_numpy_twin():
    from data_pipelines.augment import apply_occlusion, apply_occlusion_numpy

    images = np.zeros((2, 8, 8, 3), np.float32) - 0.5
    params = {"occlude": np.array([True, False]), "occlusion_size": np.array([[0.25, 0.5], [0.5, 0.5]], np.float32),
              "occlusion_origin": np.array([[0.5, 0.0], [0.0, 0.0]], np.float32),
              "occlusion_fill": np.array([[0.1, 0.2, 0.3], [0.9, 0.9, 0.9]], np.float32)}
    # Crop 0: 2 × 4 px; free space 8 − 2 = 6 in x → x0 = 3, columns 3–4; y0 = 0, rows 0–3. Crop 1: not occluded.
    expected = images.copy()
    expected[0, 0:4, 3:5] = [0.1 - 0.5, 0.2 - 0.5, 0.3 - 0.5]
    got = np.asarray(apply_occlusion(tf.constant(images), params, low=-0.5))
    np.testing.assert_allclose(got, expected, atol=1e-6)
    np.testing.assert_allclose(apply_occlusion_numpy(images, params, low=-0.5), expected, atol=1e-6)


def test_occlusion_keeps_every_other_draw_and_the_points():
    plain, occluded = GEOMETRY_ONLY, AugmentConfig(**{**GEOMETRY_ONLY.to_dict(), "occlusion_probability": 0.5})
    a, b = sample_parameters(plain, 7, 400), sample_parameters(occluded, 7, 400)
    assert set(b) - set(a) == {"occlude", "occlusion_size", "occlusion_origin", "occlusion_fill"}
    for key in a:  # a run without occlusion draws exactly what it drew before the option existed
        np.testing.assert_array_equal(np.asarray(a[key]), np.asarray(b[key]))
    assert 0.4 < float(np.mean(b["occlude"])) < 0.6
    sizes = np.asarray(b["occlusion_size"])
    assert sizes.min() >= 0.15 and sizes.max() <= 0.4
    image = np.full((4, LOOSE, LOOSE, 3), 128, np.uint8)
    points = np.repeat(_face()[None], 4, axis=0)
    params = sample_parameters(occluded, 3, 4)
    params["occlude"] = tf.constant([True, True, False, False])
    warped_plain, moved_plain = apply_augmentation(image, points, params, plain, output_size=OUT)
    warped, moved = apply_augmentation(image, points, params, occluded, output_size=OUT)
    np.testing.assert_array_equal(np.asarray(moved), np.asarray(moved_plain))
    changed = np.any(np.asarray(warped) != np.asarray(warped_plain), axis=(1, 2, 3))
    assert changed.tolist() == [True, True, False, False]


def test_occlusion_config_checks_and_the_named_preset():
    config = AugmentConfig.named("occlusion")
    assert config.occlusion_probability == 0.5 and config.rotation_degrees == AugmentConfig().rotation_degrees
    assert AugmentConfig.from_dict(config.to_dict()) == config
    assert AugmentConfig.from_dict({k: v for k, v in AugmentConfig().to_dict().items()
                                    if not k.startswith("occlusion")}) == AugmentConfig()  # runs recorded before it
    with pytest.raises(ValueError, match="occlusion_probability"):
        AugmentConfig(occlusion_probability=1.5)
    with pytest.raises(ValueError, match="occlusion_size"):
        AugmentConfig(occlusion_size=(0.5, 0.2))


def test_blur_by_hand_and_its_numpy_twin():
    from data_pipelines.augment import apply_blur, apply_blur_numpy

    config = AugmentConfig.degrade()
    size, sigma = 24, 1.2
    images = np.zeros((3, size, size, 3), np.float32)
    images[0, 10, 13] = 1.0  # a dot well inside: the blur is the outer product of two 1-D Gaussians
    images[1] = 0.25  # a flat crop stays flat, border rows included (weights renormalised there)
    images[2, 10, 13] = 1.0  # not selected: unchanged
    params = {"blur": np.array([True, True, False]), "blur_sigma": np.array([sigma, 0.7, 1.0], np.float32)}
    radius = math.ceil(3 * config.blur_sigma[1])
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps /= taps.sum()
    expected = np.zeros((size, size))
    expected[10 - radius:10 + radius + 1, 13 - radius:13 + radius + 1] = np.outer(taps, taps)
    got = np.asarray(apply_blur(tf.constant(images), params, config))
    np.testing.assert_allclose(got[0, ..., 1], expected, atol=1e-6)
    np.testing.assert_allclose(got[1], 0.25, atol=1e-6)
    np.testing.assert_array_equal(got[2], images[2])
    np.testing.assert_allclose(apply_blur_numpy(images, params, config), got, atol=1e-6)


def test_jpeg_compresses_the_selected_crops_and_its_numpy_twin_agrees():
    from data_pipelines.augment import apply_jpeg, apply_jpeg_numpy

    ys, xs = np.mgrid[0:64, 0:64].astype(np.float32)
    texture = 0.5 + 0.4 * np.sin(xs / 2.0) * np.cos(ys / 3.0)  # fine detail that JPEG must lose
    image = np.stack([texture, texture[::-1], 0.5 + 0.0 * texture], axis=-1) - 0.5
    images = np.repeat(image[None], 3, axis=0).astype(np.float32)
    params = {"jpeg": np.array([True, True, False]), "jpeg_quality": np.array([15, 90, 50], np.int32)}
    got = np.asarray(apply_jpeg(tf.constant(images), params, low=-0.5))
    error = np.abs(got - images).mean(axis=(1, 2, 3))
    assert error[0] > error[1] > 0.001 and error[0] < 0.1  # lower quality, larger error; still the image
    np.testing.assert_array_equal(got[2], images[2])
    twin = apply_jpeg_numpy(images, params, low=-0.5)
    assert np.abs(twin - got).mean() < 0.01  # another libjpeg build: the same format, not the same bits
    np.testing.assert_array_equal(twin[2], images[2])


def test_degradation_keeps_every_other_draw_and_the_points():
    plain = GEOMETRY_ONLY
    degraded = AugmentConfig(**{**GEOMETRY_ONLY.to_dict(), "blur_probability": 0.3, "jpeg_probability": 0.3})
    a, b = sample_parameters(plain, 7, 400), sample_parameters(degraded, 7, 400)
    assert set(b) - set(a) == {"blur", "blur_sigma", "jpeg", "jpeg_quality"}
    for key in a:
        np.testing.assert_array_equal(np.asarray(a[key]), np.asarray(b[key]))
    assert 0.2 < float(np.mean(b["blur"])) < 0.4 and 0.2 < float(np.mean(b["jpeg"])) < 0.4
    quality = np.asarray(b["jpeg_quality"])
    assert quality.min() == 20 and quality.max() == 70  # both ends drawn, integers
    image = np.random.default_rng(0).integers(0, 256, (4, LOOSE, LOOSE, 3)).astype(np.uint8)
    points = np.repeat(_face()[None], 4, axis=0)
    params = sample_parameters(degraded, 3, 4)
    params["blur"], params["jpeg"] = tf.constant([True, False, False, False]), tf.constant([False, True, False, False])
    warped_plain, moved_plain = apply_augmentation(image, points, params, plain, output_size=OUT)
    warped, moved = apply_augmentation(image, points, params, degraded, output_size=OUT)
    np.testing.assert_array_equal(np.asarray(moved), np.asarray(moved_plain))
    changed = np.any(np.abs(np.asarray(warped) - np.asarray(warped_plain)) > 1e-6, axis=(1, 2, 3))
    assert changed.tolist() == [True, True, False, False]


def test_degradation_config_checks_and_the_named_preset():
    config = AugmentConfig.named("degrade")
    assert (config.blur_probability, config.jpeg_probability) == (0.3, 0.3)
    assert config.occlusion_probability == 0 and config.rotation_degrees == AugmentConfig().rotation_degrees
    assert AugmentConfig.from_dict(config.to_dict()) == config
    new_fields = ("blur_probability", "blur_sigma", "jpeg_probability", "jpeg_quality")
    assert AugmentConfig.from_dict({k: v for k, v in AugmentConfig().to_dict().items()
                                    if k not in new_fields}) == AugmentConfig()  # runs recorded before them
    with pytest.raises(ValueError, match="blur_probability"):
        AugmentConfig(blur_probability=-0.1)
    with pytest.raises(ValueError, match="blur_sigma"):
        AugmentConfig(blur_sigma=(0.0, 1.0))
    with pytest.raises(ValueError, match="jpeg_quality"):
        AugmentConfig(jpeg_quality=(50, 120))
    with pytest.raises(ValueError, match="jpeg_quality"):
        AugmentConfig(jpeg_quality=(20.5, 70))
