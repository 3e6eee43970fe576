""".pts reading and writing: 1-based on disk, 0-based in memory, clear errors naming file and line."""
import numpy as np
import pytest

from data_pipelines.pts import PtsFormatError, read_pts, write_pts


def _write(tmp_path, text, name="face.pts"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_read_subtracts_one(tmp_path):
    path = _write(tmp_path, "version: 1\nn_points:  3\n{\n1 1\n10.5 20.25\n  100.000 2.5  \n}\n")
    np.testing.assert_array_equal(read_pts(path), [[0, 0], [9.5, 19.25], [99, 1.5]])
    assert read_pts(path).dtype == np.float32


def test_write_adds_one_with_standard_header(tmp_path):
    path = tmp_path / "out.pts"
    write_pts(path, [[0, 0], [9.5, 19.25]])
    assert path.read_text() == "version: 1\nn_points: 2\n{\n1.000 1.000\n10.500 20.250\n}\n"


def test_round_trip(tmp_path):
    points = np.random.default_rng(0).uniform(-5, 500, (68, 2)).astype(np.float32)
    write_pts(tmp_path / "r.pts", points)
    np.testing.assert_allclose(read_pts(tmp_path / "r.pts"), points, atol=5e-4)


def test_accepts_crlf_blank_lines_and_bom(tmp_path):
    path = tmp_path / "w.pts"
    path.write_bytes(b"\xef\xbb\xbfversion: 1\r\nn_points: 2\r\n\r\n{\r\n1 2\r\n\r\n3 4\r\n}\r\n\r\n")
    np.testing.assert_array_equal(read_pts(path), [[0, 1], [2, 3]])


@pytest.mark.parametrize(
    "text,line,fragment",
    [
        ("version: 1\nn_points: 3\n{\n1 1\n2 x\n3 3\n}\n", 5, "not a number"),
        ("version: 1\nn_points: 3\n{\n1 1\n2 2\n}\n", 6, "n_points says 3 but the list has 2"),
        ("version: 1\nn_points: 2\n{\n1 1\n2 2\n3 3\n}\n", 6, "more than n_points"),
        ("version: 1\nn_points: 2\n{\n1 1\n2 2 2\n}\n", 5, "two numbers"),
        ("version: 1\nn_points: 2\n{\n1 1\n2 2\n", 5, "no '}'"),
        ("version: 1\n{\n1 1\n}\n", 2, "no n_points"),
        ("version: 1\nn_points: two\n{\n}\n", 2, "not an integer"),
        ("hello world\n", 1, "header"),
        ("version: 1\nn_points: 1\n{\n1 nan\n}\n", 4, "non-finite"),
        ("version: 1\nn_points: 1\n{\n1 1\n}\nextra\n", 6, "after '}'"),
    ],
)
def test_malformed_files_name_file_and_line(tmp_path, text, line, fragment):
    path = _write(tmp_path, text)
    with pytest.raises(PtsFormatError) as caught:
        read_pts(path)
    message = str(caught.value)
    assert message.startswith(f"{path}:{line}: "), message
    assert fragment in message
    assert "\n" not in message
    assert caught.value.line == line and isinstance(caught.value, ValueError)


@pytest.mark.parametrize("content,fragment", [(None, "not found"), (b"", "empty"), (b"\xff\xfe\x00bin", "not a text")])
def test_unreadable_files(tmp_path, content, fragment):
    path = tmp_path / "x.pts"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(PtsFormatError, match=fragment) as caught:
        read_pts(path)
    assert str(path) in str(caught.value)


def test_write_rejects_bad_shapes(tmp_path):
    with pytest.raises(ValueError):
        write_pts(tmp_path / "bad.pts", np.zeros((3, 3)))
    with pytest.raises(ValueError):
        write_pts(tmp_path / "bad.pts", [[0, np.nan]])


def test_real_300w_file(shared_data):
    path = next((shared_data / "300w" / "afw").glob("*.pts"))
    points = read_pts(path)
    assert points.shape == (68, 2)
    first = path.read_text().splitlines()[3].split()
    np.testing.assert_allclose(points[0], [float(first[0]) - 1, float(first[1]) - 1], rtol=1e-6)
