"""Crop geometry: hand-computed matrices, exact round trips, and image/point agreement of the warps."""
import numpy as np
import pytest

from data_pipelines import geometry


def face_shape(centre=(0.0, 0.0), half_width=1.0) -> np.ndarray:
    """A left-right symmetric 68-point face in 300-W order (image coordinates, y down).

    Index 36 (outer corner of the eye on the image's left) has a smaller x than 45, 0 than 16,
    48 than 54, 17 than 26 — the layout of a real annotated frontal face. Used by several test
    modules as an independent, data-free face.
    """
    points = np.zeros((68, 2))
    angles = np.pi - np.arange(17) * np.pi / 16  # jaw: image-left ear → chin → image-right ear
    points[0:17] = np.stack([np.cos(angles), np.sin(angles) * 1.1 - 0.1], axis=1)
    points[17:22] = np.stack([np.linspace(-0.8, -0.2, 5), [-0.5, -0.6, -0.62, -0.6, -0.55]], axis=1)
    points[27:31] = np.stack([np.zeros(4), np.linspace(-0.35, 0.1, 4)], axis=1)
    points[31:36] = np.stack([np.linspace(-0.2, 0.2, 5), [0.2, 0.23, 0.25, 0.23, 0.2]], axis=1)
    points[36:42] = [(-0.65, -0.3), (-0.55, -0.37), (-0.35, -0.37), (-0.25, -0.3), (-0.35, -0.24), (-0.55, -0.24)]
    points[48:55] = np.stack([np.linspace(-0.4, 0.4, 7), [0.55, 0.48, 0.44, 0.46, 0.44, 0.48, 0.55]], axis=1)
    points[55:60] = [(0.28, 0.66), (0.14, 0.71), (0.0, 0.72), (-0.14, 0.71), (-0.28, 0.66)]
    points[60:65] = [(-0.32, 0.55), (-0.14, 0.52), (0.0, 0.53), (0.14, 0.52), (0.32, 0.55)]
    points[65:68] = [(0.14, 0.6), (0.0, 0.61), (-0.14, 0.6)]
    # The image-right half mirrors the image-left half through the permutation.
    mirror = np.asarray(geometry.MIRROR_PERMUTATION_68)
    for index in (*range(22, 27), *range(42, 48)):
        points[index] = (-points[mirror[index], 0], points[mirror[index], 1])
    return points * half_width + np.asarray(centre)


def test_face_shape_is_symmetric_under_the_permutation():
    face = face_shape()
    mirrored = face * [-1.0, 1.0]
    np.testing.assert_allclose(mirrored[list(geometry.MIRROR_PERMUTATION_68)], face, atol=1e-12)


def test_mirror_permutation_is_an_involution():
    perm = np.asarray(geometry.MIRROR_PERMUTATION_68)
    assert sorted(perm) == list(range(68))
    np.testing.assert_array_equal(perm[perm], np.arange(68))
    assert (perm[36], perm[39], perm[48], perm[0], perm[30], perm[8]) == (45, 42, 54, 16, 30, 8)


def test_face_box_is_tight():
    assert geometry.face_box_from_points([[3, 9], [7, 2], [5, 5]]) == (3.0, 2.0, 7.0, 9.0)
    with pytest.raises(ValueError):
        geometry.face_box_from_points(np.zeros((0, 2)))


def test_crop_matrix_hand_computed():
    # Box 100 wide, 40 tall → square side 100 around centre (60, 40); margin 1 → 1 px per px.
    matrix = geometry.crop_matrix((10, 20, 110, 60), output_size=100, margin=1.0)
    np.testing.assert_allclose(matrix, [[1, 0, 49.5 - 60], [0, 1, 49.5 - 40], [0, 0, 1]])
    # The square's edges land on the crop's outer pixel edges.
    corners = geometry.transform_points(matrix, [[10, -10], [110, 90]])
    np.testing.assert_allclose(corners, [[-0.5, -0.5], [99.5, 99.5]])
    # Margin 2 on a 256 crop: side 200, scale 1.28, centre → 127.5.
    matrix = geometry.crop_matrix((10, 20, 110, 60), output_size=256, margin=2.0)
    np.testing.assert_allclose(geometry.transform_points(matrix, [[60, 40], [160, 40]]), [[127.5, 127.5], [255.5, 127.5]])


def test_crop_matrix_rejects_degenerate_boxes():
    with pytest.raises(ValueError, match="degenerate"):
        geometry.crop_matrix((5, 5, 5, 5))


@pytest.mark.parametrize("scale", [0.05, 1.0, 40.0])
def test_points_round_trip_within_1e_3_px(scale):
    rng = np.random.default_rng(1)
    points = face_shape(centre=(1234.5, 987.25), half_width=80.0 * scale) + rng.normal(0, scale, (68, 2))
    matrix = geometry.crop_matrix(geometry.face_box_from_points(points), 256, 1.25)
    in_crop = geometry.transform_points(matrix, points)
    back = geometry.transform_points(geometry.invert(matrix), in_crop)
    assert np.abs(back - points).max() < 1e-3
    # float32 storage of crop points (as the pipeline keeps them) still round-trips within 1e-3 px.
    back32 = geometry.transform_points(geometry.invert(matrix), in_crop.astype(np.float32))
    assert np.abs(back32 - points).max() < 1e-3 * max(1.0, scale)
    assert in_crop.min() > 0 and in_crop.max() < 255  # margin 1.25 keeps the face inside


def _blob_image(height, width, centre, sigma=1.5):
    """Float image with one Gaussian blob at a sub-pixel (x, y) pixel-centre position."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
    blob = np.exp(-((xs - centre[0]) ** 2 + (ys - centre[1]) ** 2) / (2 * sigma * sigma))
    return np.repeat(blob[:, :, None], 3, axis=2).astype(np.float32)


def _centroid(image):
    weights = np.asarray(image, dtype=np.float64)[..., 0]
    ys, xs = np.mgrid[0:weights.shape[0], 0:weights.shape[1]]
    return np.array([(weights * xs).sum(), (weights * ys).sum()]) / weights.sum()


@pytest.mark.parametrize(
    "box,size,centre",
    [
        ((100, 80, 260, 240), 256, (170.3, 151.8)),  # upscale ×1.28
        ((40, 30, 1040, 930), 64, (500.6, 700.2)),  # downscale ×0.05 (the anti-aliased path)
    ],
)
def test_warp_to_crop_moves_pixels_where_the_matrix_moves_points(box, size, centre):
    height, width = (300, 320) if box[2] < 300 else (1000, 1100)
    sigma = 1.5 if box[2] < 300 else 20.0  # a blob a few crop pixels wide in both cases
    image = _blob_image(height, width, centre, sigma)
    matrix = geometry.crop_matrix(box, size, 1.0)
    crop = geometry.warp_to_crop(image, matrix, size)
    expected = geometry.transform_points(matrix, centre)
    assert np.abs(_centroid(crop) - expected).max() < 0.05


def test_mirror_matrix_swaps_pixel_columns():
    image = np.arange(5 * 7 * 3, dtype=np.float32).reshape(5, 7, 3)
    flipped = geometry.warp_to_crop(image, geometry.mirror_matrix(7), 7)[:5]  # square output: 2 black rows
    np.testing.assert_allclose(flipped, image[:, ::-1], atol=0.05)
    np.testing.assert_allclose(geometry.transform_points(geometry.mirror_matrix(7), [[0, 3], [6, 1]]), [[6, 3], [0, 1]])


def test_tf_warp_matches_opencv():
    pytest.importorskip("tensorflow")
    ys, xs = np.mgrid[0:120, 0:140].astype(np.float32)
    image = np.stack([np.sin(xs / 9.0) * 100 + 120, np.cos(ys / 7.0) * 90 + 120, (xs + ys) / 2], axis=2)
    angle = 0.4
    matrix = np.array([[1.3 * np.cos(angle), -1.3 * np.sin(angle), -10.3],
                       [1.3 * np.sin(angle), 1.3 * np.cos(angle), -30.7], [0, 0, 1]])
    expected = geometry.warp_to_crop(image, matrix, 96)
    got = geometry.tf_warp(image[None], matrix[None], 96).numpy()[0]
    inside = geometry.warp_to_crop(np.ones_like(image), matrix, 96)[..., 0] > 0.999
    assert inside.sum() > 1000
    # OpenCV resolves sub-pixel positions to 1/32 px; the interior agrees to that precision.
    assert np.abs(got - expected)[inside].max() < 2.0
    assert np.abs(got - expected)[inside].mean() < 0.3
