"""Finding faces on disk (300-W layout, plain folders, splits) and reading the images they point to."""
import logging

import cv2
import numpy as np
import pytest

from data_pipelines.discovery import EXPECTED_COUNTS, SPLITS, Face, find_faces, load_split, part_of, subset_of
from data_pipelines.images import ImageReadError, decode_image_bytes, image_size_from_header, read_image
from data_pipelines.pts import write_pts
from tests.test_geometry import face_shape

RGB = np.dstack([np.full((30, 40), 200, np.uint8), np.full((30, 40), 100, np.uint8), np.full((30, 40), 7, np.uint8)])


def _pair(folder, stem, ext=".jpg"):
    folder.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(folder / f"{stem}{ext}"), RGB[:, :, ::-1])
    write_pts(folder / f"{stem}.pts", face_shape(centre=(20, 15), half_width=8))


# ---------------------------------------------------------------------------------------------
# images
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("ext", [".png", ".ppm", ".bmp", ".jpg"])
def test_read_colour_formats(tmp_path, ext):
    path = tmp_path / f"a{ext}"
    cv2.imwrite(str(path), RGB[:, :, ::-1])
    image = read_image(path)
    assert image.shape == (30, 40, 3) and image.dtype == np.uint8
    tolerance = 3 if ext == ".jpg" else 0
    assert np.abs(image.astype(int) - RGB).max() <= tolerance  # RGB order, not OpenCV's BGR
    assert image_size_from_header(path.read_bytes()) == (40, 30)


def test_read_grayscale_rgba_and_16_bit(tmp_path):
    cv2.imwrite(str(tmp_path / "g.pgm"), RGB[:, :, 0])
    np.testing.assert_array_equal(read_image(tmp_path / "g.pgm"), np.repeat(RGB[:, :, :1], 3, axis=2))
    cv2.imwrite(str(tmp_path / "gray.png"), RGB[:, :, 1])
    np.testing.assert_array_equal(read_image(tmp_path / "gray.png")[..., 2], RGB[:, :, 1])
    rgba = np.dstack([RGB[:, :, ::-1], np.full((30, 40), 9, np.uint8)])
    cv2.imwrite(str(tmp_path / "rgba.png"), rgba)
    np.testing.assert_array_equal(read_image(tmp_path / "rgba.png"), RGB)
    cv2.imwrite(str(tmp_path / "deep.png"), RGB[:, :, ::-1].astype(np.uint16) * 257)
    np.testing.assert_array_equal(read_image(tmp_path / "deep.png"), RGB)


@pytest.mark.parametrize(
    "content,fragment",
    [
        (None, "not found"),
        (b"", "empty"),
        (b"this is not an image at all", "not an image"),
        (b"\x89PNG\r\n\x1a\n\x00\x00", "corrupt header"),
        ("truncated", "truncated JPEG"),
    ],
)
def test_unreadable_images_give_one_line(tmp_path, content, fragment):
    path = tmp_path / "bad.jpg"
    if content == "truncated":
        cv2.imwrite(str(path), np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
        path.write_bytes(path.read_bytes()[:600])
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(ImageReadError, match=fragment) as caught:
        read_image(path)
    assert str(caught.value).startswith(str(path)) and "\n" not in str(caught.value)


def test_too_large_is_refused_before_decoding(tmp_path):
    # A PNG header that claims 20000 × 20000 pixels, with no pixel data behind it: only the header
    # check can refuse it with this message (decoding would fail differently).
    path = tmp_path / "huge.png"
    cv2.imwrite(str(path), RGB)
    data = bytearray(path.read_bytes())
    data[16:24] = (20000).to_bytes(4, "big") + (20000).to_bytes(4, "big")
    path.write_bytes(bytes(data))
    with pytest.raises(ImageReadError, match="too large: 20000x20000"):
        read_image(path)
    with pytest.raises(ImageReadError, match="too large"):
        read_image(tmp_path / "huge.png", max_pixels=100)
    cv2.imwrite(str(tmp_path / "ok.bmp"), RGB)
    with pytest.raises(ImageReadError, match="too large: 40x30"):
        read_image(tmp_path / "ok.bmp", max_pixels=1000)


# ---------------------------------------------------------------------------------------------
# discovery
# ---------------------------------------------------------------------------------------------
def test_300w_layout_at_any_depth(tmp_path):
    root = tmp_path / "downloads" / "300W"
    for part in ("afw", "lfpw/trainset", "lfpw/testset", "helen/testset", "ibug", "01_Indoor", "02_Outdoor"):
        _pair(root / part, "img_1", ".png" if "Indoor" in part else ".jpg")
    _pair(root / "ibug" / "extra", "deep")  # inside ibug, one level deeper
    _pair(tmp_path / "my faces", "photo", ".bmp")
    faces = find_faces([tmp_path])
    by_stem = {(face.subset, face.name.split("/")[-1]) for face in faces}
    assert by_stem == {
        ("afw", "img_1"), ("lfpw/trainset", "img_1"), ("lfpw/testset", "img_1"), ("helen/testset", "img_1"),
        ("ibug", "img_1"), ("ibug", "deep"), ("01_Indoor", "img_1"), ("02_Outdoor", "img_1"), ("my faces", "photo"),
    }
    assert [face.pts_path for face in faces] == sorted(face.pts_path for face in faces)
    groups = {face.subset: subset_of(face) for face in faces}
    assert groups == {"afw": "train", "lfpw/trainset": "train", "lfpw/testset": "common", "helen/testset": "common",
                      "ibug": "challenging", "01_Indoor": "private", "02_Outdoor": "private", "my faces": "my faces"}
    # A root that is itself a part folder keeps its part name; overlapping roots do not double count.
    assert {face.subset for face in find_faces(root / "lfpw" / "trainset")} == {"lfpw/trainset"}
    assert len(find_faces([root, root / "ibug", tmp_path])) == len(faces)


def test_part_of_looks_no_higher_than_the_root(tmp_path):
    assert part_of(tmp_path / "afw" / "x", tmp_path / "afw" / "x") == "x"
    assert part_of(tmp_path / "x" / "AFW", tmp_path) == "afw"
    assert part_of(tmp_path / "helen" / "testset", tmp_path / "helen" / "testset") == "helen/testset"


def test_splits_report_counts_and_missing_parts(tmp_path):
    _pair(tmp_path / "lfpw" / "testset", "a")
    _pair(tmp_path / "lfpw" / "testset", "b")
    _pair(tmp_path / "ibug", "c")
    report = load_split("full", tmp_path)
    assert len(report.faces) == 3
    assert report.counts == {"lfpw/testset": 2, "helen/testset": 0, "ibug": 1}
    assert report.missing == ["helen/testset"]
    assert report.summary() == "full: 3 faces (lfpw/testset 2/224, helen/testset 0/330, ibug 1/135); missing: helen/testset"
    assert load_split("challenging", tmp_path).counts == {"ibug": 1}
    assert load_split("ibug", tmp_path).counts == {"ibug": 1}
    assert set(SPLITS) == {"train", "common", "challenging", "full", "private"}
    assert sum(EXPECTED_COUNTS[part] for part in SPLITS["full"]) == 689
    with pytest.raises(ValueError, match="unknown split"):
        load_split("nonsense", tmp_path)


def test_corrupt_image_and_malformed_pts_are_reported_and_skipped(tmp_path, caplog):
    for stem in ("good_1", "good_2", "bad_image", "bad_pts"):
        _pair(tmp_path / "faces", stem)
    (tmp_path / "faces" / "bad_image.jpg").write_bytes(b"\xff\xd8\xff\xe0 garbage, not a JPEG")
    (tmp_path / "faces" / "bad_pts.pts").write_text("version: 1\nn_points: 68\n{\n1 2\nnot numbers\n}\n")
    (tmp_path / "faces" / "orphan.pts").write_text("version: 1\nn_points: 1\n{\n1 1\n}\n")
    problems = []
    with caplog.at_level(logging.WARNING):
        faces = find_faces(tmp_path, problems=problems)
    assert [face.name for face in faces] == ["faces/good_1", "faces/good_2"]
    reported = {str(problem) for problem in problems}
    assert any("bad_image.jpg" in text and "corrupt header" in text for text in reported), reported
    assert any("bad_pts.pts" in text and "line 5" in text for text in reported), reported
    assert any("orphan.pts" in text and "no image" in text for text in reported), reported
    assert len(problems) == 3 and caplog.text.count("skipped") == 3


def test_wrong_point_count_is_a_problem(tmp_path):
    _pair(tmp_path, "a")
    write_pts(tmp_path / "a.pts", np.zeros((5, 2)))
    problems = []
    assert find_faces(tmp_path, problems=problems) == []
    assert "has 5 points, expected 68" in str(problems[0])
    assert len(find_faces(tmp_path, num_points=None)) == 1


def test_face_is_plain_data():
    face = Face("x/a.jpg", "x/a.pts", "ibug")
    assert face.name == "ibug/a" and subset_of(face) == "challenging"


def test_real_shared_folders_hold_2014_faces(shared_data):
    report = load_split("train", shared_data / "300w")
    assert len(report.faces) == 2014
    assert report.counts == {"afw": 337, "lfpw/trainset": 805, "helen/trainset": 872}
    assert report.missing == [] and report.problems == []
    assert "train: 2014 faces" in report.summary()
    assert load_split("common", shared_data / "300w", check=False).missing == ["lfpw/testset", "helen/testset"]


# ---------------------------------------------------------------------------------------------
# Every format's size comes from its header (issue 16, case 3)
# ---------------------------------------------------------------------------------------------
_RNG = np.random.default_rng(0)
_COLOUR = _RNG.integers(0, 255, (37, 53, 3), dtype=np.uint8)
_ALPHA = _RNG.integers(0, 255, (37, 53, 4), dtype=np.uint8)
ENCODINGS = {  # name: (extension, pixels, imencode parameters)
    "png": (".png", _COLOUR, []), "png16": (".png", _ALPHA.astype(np.uint16) * 257, []),
    "jpeg": (".jpg", _COLOUR, []), "jpeg-progressive": (".jpg", _COLOUR, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1]),
    "bmp": (".bmp", _COLOUR, []), "ppm": (".ppm", _COLOUR, []), "ppm-ascii": (".ppm", _COLOUR, [cv2.IMWRITE_PXM_BINARY, 0]),
    "pgm": (".pgm", _COLOUR[:, :, 0], []), "pbm": (".pbm", _COLOUR[:, :, 0], []), "pam": (".pam", _COLOUR, []),
    "pfm": (".pfm", _COLOUR.astype(np.float32) / 255, []), "tiff": (".tiff", _COLOUR, []),
    "tiff16-rgba": (".tiff", _ALPHA.astype(np.uint16), []), "tiff-uncompressed": (".tiff", _COLOUR, [cv2.IMWRITE_TIFF_COMPRESSION, 1]),
    "webp-lossless": (".webp", _COLOUR, [cv2.IMWRITE_WEBP_QUALITY, 101]), "webp-lossy": (".webp", _COLOUR, [cv2.IMWRITE_WEBP_QUALITY, 80]),
    "webp-lossy-alpha": (".webp", _ALPHA, [cv2.IMWRITE_WEBP_QUALITY, 80]), "gif": (".gif", _COLOUR, []),
    "sun-raster": (".sr", _COLOUR, []), "radiance-hdr": (".hdr", _COLOUR.astype(np.float32) / 255, []),
}


@pytest.mark.parametrize("name", sorted(ENCODINGS))
def test_every_format_the_reader_accepts_gives_its_size_from_the_header(name):
    extension, pixels, parameters = ENCODINGS[name]
    ok, encoded = cv2.imencode(extension, pixels, parameters)
    assert ok
    data = encoded.tobytes()
    assert image_size_from_header(data) == (53, 37)
    assert decode_image_bytes(data, name).shape == (37, 53, 3)
    with pytest.raises(ImageReadError, match="too large: 53x37"):
        decode_image_bytes(data, name, max_pixels=53 * 37 - 1)


def test_formats_whose_size_cannot_be_read_are_refused_not_decoded():
    ok, avif = cv2.imencode(".avif", _COLOUR)
    assert ok
    with pytest.raises(ImageReadError, match=r"unsupported image format \(AVIF/HEIF\)"):
        decode_image_bytes(avif.tobytes(), "a.avif")
    with pytest.raises(ImageReadError, match=r"unsupported image format \(JPEG 2000\)"):
        decode_image_bytes(b"\0\0\0\x0cjP  \r\n\x87\n" + bytes(100), "a.jp2")
    # A header that is cut short is a corrupt header, whatever the format.
    for head in (b"II*\0\x08\0\0\0", b"RIFF\0\0\0\0WEBPVP8L", b"GIF89a\x01", b"\x59\xa6\x6a\x95\0\0"):
        with pytest.raises(ImageReadError, match="corrupt header"):
            decode_image_bytes(head, "short")


def _peak_rss_mb(script: str, *args) -> tuple[str, float]:
    """Run `script` in a fresh interpreter; its stdout and its peak RSS in MB. The interpreter is a
    grandchild, so RUSAGE_CHILDREN of the middle process measures that one run alone."""
    import subprocess
    import sys
    from pathlib import Path

    wrapper = ("import resource, subprocess, sys\n"
               "out = subprocess.run([sys.executable, '-c', sys.argv[1], *sys.argv[2:]], capture_output=True, text=True)\n"
               "sys.stdout.write(out.stdout + out.stderr)\n"
               "print('PEAK', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)\n")
    result = subprocess.run([sys.executable, "-c", wrapper, script, *map(str, args)], capture_output=True, text=True,
                            cwd=str(Path(__file__).resolve().parents[1]), timeout=120)
    text = result.stdout
    return text, float(text.rsplit("PEAK", 1)[1])


READ_EACH = """
import sys
from data_pipelines.images import ImageReadError, read_image
for path in sys.argv[1:]:
    try:
        print(path, 'decoded', read_image(path, max_pixels=50_000_000).shape)
    except ImageReadError as error:
        print(error)
"""


def test_bombs_in_every_format_are_refused_before_decoding_with_bounded_memory(tmp_path):
    """Decoding any of these would cost 64 MB (8000² gray) to 1 GB (16000² RGBA canvas), more with the
    RGB conversion; refused from the header, reading them costs what reading a tiny photo does."""
    from tests import bombs

    files = {
        "png": bombs.png_bomb(tmp_path / "zeros.png", 8000, 8000),
        "tiff": bombs.tiff_bomb(tmp_path / "zeros.tiff", 8000, 8000),
        "tiff-big-endian": bombs.tiff_bomb(tmp_path / "zeros_mm.tif", 8000, 8000, big_endian=True),
        "webp": bombs.webp_bomb(tmp_path / "flat.webp", 16000, 16000),
        "gif": bombs.gif_bomb(tmp_path / "screen.gif", 16000, 16000),
        "webp-named-jpg": bombs.webp_bomb(tmp_path / "disguised.jpg", 16000, 16000),  # content decides
    }
    assert all(path.stat().st_size < 200_000 for path in files.values())
    small = {"tiff": bombs.tiff_bomb(tmp_path / "small.tiff", 64, 48), "webp": bombs.webp_bomb(tmp_path / "small.webp", 64, 48),
             "gif": bombs.gif_bomb(tmp_path / "small.gif", 64, 48)}
    for path in small.values():  # the generators write real, decodable files
        assert read_image(path).shape == (48, 64, 3)

    baseline_text, baseline = _peak_rss_mb(READ_EACH, small["tiff"])
    assert "decoded (48, 64, 3)" in baseline_text
    text, peak = _peak_rss_mb(READ_EACH, *files.values())
    lines = [line for line in text.splitlines() if not line.startswith("PEAK")]
    assert len(lines) == len(files)
    for line, (name, path) in zip(lines, files.items()):
        size = "8000x8000" if name.startswith(("png", "tiff")) else "16000x16000"
        assert line.startswith(str(path)) and f"too large: {size}" in line, (name, line)
    assert peak < baseline + 40, (peak, baseline)  # MB: nothing was decoded


def test_paths_that_are_not_regular_files_are_one_line_and_never_block(tmp_path):
    import os

    os.mkfifo(tmp_path / "pipe.png")
    with pytest.raises(ImageReadError, match="not a regular file"):
        read_image(tmp_path / "pipe.png")  # reading a FIFO would wait for a writer forever
    (tmp_path / "dangling.png").symlink_to(tmp_path / "nowhere.png")
    with pytest.raises(ImageReadError, match="broken symbolic link"):
        read_image(tmp_path / "dangling.png")
    (tmp_path / "parent").write_bytes(b"a file")
    with pytest.raises(ImageReadError, match="cannot read|not found"):
        read_image(tmp_path / "parent" / "child.png")
