"""tools/measure_degradation.py: each named degradation does what its name says, on hand-made crops."""
import importlib
import sys
from pathlib import Path

import numpy as np
import pytest

cv2 = pytest.importorskip("cv2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
tool = importlib.import_module("measure_degradation")


def _crops():
    ys, xs = np.mgrid[0:32, 0:32]
    texture = (128 + 100 * np.sin(xs / 1.5) * np.cos(ys / 2.0)).astype(np.uint8)
    flat = np.full((32, 32, 3), 90, np.uint8)
    return np.stack([np.repeat(texture[..., None], 3, -1), flat])


def test_blur_is_opencvs_gaussian_and_leaves_a_flat_crop_flat():
    crops = _crops()
    blurred = tool.degrade(crops, "blur σ2")
    expected = cv2.GaussianBlur(crops[0], (0, 0), sigmaX=2.0, sigmaY=2.0, borderType=cv2.BORDER_REFLECT)
    np.testing.assert_array_equal(blurred[0], expected)
    np.testing.assert_array_equal(blurred[1], crops[1])
    assert np.abs(blurred[0].astype(int) - crops[0]).mean() > 10  # the texture is gone
    np.testing.assert_array_equal(crops, _crops())  # the input is not changed in place


def test_jpeg_quality_orders_the_error_and_steps_chain_in_order():
    crops = _crops()
    error = {q: np.abs(tool.degrade(crops, f"jpeg q{q}")[0].astype(int) - crops[0]).mean() for q in (10, 30, 90)}
    assert error[10] > error[30] > error[90] > 0
    chained = tool.degrade(crops, "blur σ1 + jpeg q30")
    np.testing.assert_array_equal(chained, tool.degrade(tool.degrade(crops, "blur σ1"), "jpeg q30"))
    assert set(tool.DEGRADATIONS) >= {"clean", "blur σ1 + jpeg q30"}
