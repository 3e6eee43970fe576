"""Read any photo the project meets into one shape: H×W×3 uint8 RGB.

jpg/png/ppm/pgm/bmp (and whatever else OpenCV decodes), colour or grayscale, with alpha (dropped)
or 16 bits per channel (scaled to 8). Problems raise `ImageReadError` with a one-line message that
names the file: missing, empty, not an image / corrupt, or too large. The size is checked from
the file header BEFORE decoding for PNG, JPEG, BMP and PNM, so a decompression bomb is refused
without allocating it; other formats are checked right after decoding.

EXIF orientation is ignored by default: 300-W's annotations refer to the pixel array as stored
(MATLAB's `imread` ignores EXIF too). Pass `apply_exif_orientation=True` for phone photos at
inference time.
"""
from __future__ import annotations

import struct
from pathlib import Path

import cv2
import numpy as np

DEFAULT_MAX_PIXELS = 100_000_000
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".pgm", ".pnm", ".bmp")


class ImageReadError(ValueError):
    """An image that cannot be used; the message is one line naming the file and the problem."""

    def __init__(self, path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


def read_image(path, *, max_pixels: int = DEFAULT_MAX_PIXELS, apply_exif_orientation: bool = False) -> np.ndarray:
    """Decode `path` into an H×W×3 uint8 RGB array (see the module docstring for what is accepted)."""
    path = Path(path)
    data = _read_bytes(path)
    return decode_image_bytes(data, path, max_pixels=max_pixels, apply_exif_orientation=apply_exif_orientation)


def check_image_file(path, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
    """Cheap validity check without decoding: readable, not empty, a sane header, not too large,
    and (JPEG) not truncated. Raises `ImageReadError`; a pass does not prove the pixels decode."""
    path = Path(path)
    _check_header(_read_bytes(path), path, max_pixels)


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise ImageReadError(path, "file not found") from None
    except IsADirectoryError:
        raise ImageReadError(path, "is a directory, not an image") from None
    except OSError as error:
        raise ImageReadError(path, f"cannot read: {error.strerror or error}") from None


def _check_header(data: bytes, name, max_pixels: int) -> None:
    if len(data) == 0:
        raise ImageReadError(name, "empty file")
    size = image_size_from_header(data)
    if size is not None:
        width, height = size
        if width <= 0 or height <= 0:
            raise ImageReadError(name, "corrupt header (cannot read the image size)")
        _check_pixels(name, width, height, max_pixels)
        if data[:2] == b"\xff\xd8" and not _jpeg_has_end(data):
            # libjpeg would return the truncated photo grey-filled with only a warning on stderr.
            raise ImageReadError(name, "truncated JPEG (no end-of-image marker)")


def decode_image_bytes(data: bytes, name="<bytes>", *, max_pixels: int = DEFAULT_MAX_PIXELS,
                       apply_exif_orientation: bool = False) -> np.ndarray:
    """`read_image` for bytes already in memory (an upload, a TFRecord); `name` goes into errors."""
    _check_header(data, name, max_pixels)
    flags = (cv2.IMREAD_COLOR | cv2.IMREAD_ANYDEPTH) if apply_exif_orientation else cv2.IMREAD_UNCHANGED
    try:
        image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), flags)
    except cv2.error as error:  # OpenCV's own size limit or a decoder failure
        message = str(error).strip().splitlines()[-1] if str(error).strip() else "decoder error"
        raise ImageReadError(name, f"cannot decode: {message}") from None
    if image is None:
        raise ImageReadError(name, "not an image or corrupt (OpenCV cannot decode it)")
    _check_pixels(name, image.shape[1], image.shape[0], max_pixels)
    return _to_rgb8(image, name)


def _check_pixels(name, width: int, height: int, max_pixels: int) -> None:
    if max_pixels and width * height > max_pixels:
        raise ImageReadError(
            name, f"too large: {width}x{height} = {width * height / 1e6:.1f} megapixels (limit {max_pixels / 1e6:g})"
        )


def _to_rgb8(image: np.ndarray, name) -> np.ndarray:
    """Any OpenCV decode result (gray, gray+alpha, BGR, BGRA; 8/16-bit/float) → H×W×3 uint8 RGB."""
    if image.dtype == np.uint16:
        image = ((image.astype(np.uint32) + 128) // 257).astype(np.uint8)  # 65535 → 255 exactly
    elif image.dtype in (np.float32, np.float64):
        image = np.clip(np.nan_to_num(image) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    elif image.dtype != np.uint8:
        raise ImageReadError(name, f"unsupported pixel type {image.dtype}")
    if image.ndim == 2:
        return np.ascontiguousarray(np.repeat(image[:, :, None], 3, axis=2))
    channels = image.shape[2]
    if channels == 1:
        return np.ascontiguousarray(np.repeat(image, 3, axis=2))
    if channels == 2:  # gray + alpha
        return np.ascontiguousarray(np.repeat(image[:, :, :1], 3, axis=2))
    if channels in (3, 4):
        return np.ascontiguousarray(image[:, :, 2::-1])  # BGR(A) → RGB, alpha dropped
    raise ImageReadError(name, f"unsupported channel count {channels}")


# ----------------------------------------------------------------------------------------------
# Header parsing: width and height without decoding (None where the format is not recognised).
# ----------------------------------------------------------------------------------------------
def image_size_from_header(data: bytes) -> tuple[int, int] | None:
    """(width, height) read from a PNG, JPEG, BMP or PNM header; None for other formats.

    Never raises: a truncated header of a recognised format gives (0, 0), which the caller reports
    as a corrupt header.
    """
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        if len(data) < 24 or data[12:16] != b"IHDR":
            return (0, 0)
        return struct.unpack(">II", data[16:24])
    if data[:2] == b"\xff\xd8":
        return _jpeg_size(data)
    if data[:2] == b"BM":
        return _bmp_size(data)
    if len(data) >= 2 and data[0:1] == b"P" and data[1:2] in b"123456":
        return _pnm_size(data)
    return None


_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def _jpeg_size(data: bytes) -> tuple[int, int]:
    return _jpeg_frame(data)[:2]


def _jpeg_frame(data: bytes) -> tuple[int, int, int]:
    """(width, height, offset of the frame header); (0, 0, -1) where the header is broken."""
    position = 2
    while position + 4 <= len(data):
        if data[position] != 0xFF:
            return (0, 0, -1)
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD8)):  # markers without a length
            position += 2
            continue
        if marker in (0xD9, 0xDA):  # end of image / start of scan before any frame header
            return (0, 0, -1)
        length = struct.unpack(">H", data[position + 2:position + 4])[0]
        if marker in _JPEG_SOF:
            if position + 9 > len(data):
                return (0, 0, -1)
            height, width = struct.unpack(">HH", data[position + 5:position + 9])
            return (width, height, position)
        if length < 2:
            return (0, 0, -1)
        position += 2 + length
    return (0, 0, -1)


def _jpeg_has_end(data: bytes) -> bool:
    """Whether an end-of-image marker follows the frame header (entropy-coded data cannot hold FFD9;
    an EXIF thumbnail's marker sits before the frame header, inside its APP1 segment)."""
    frame = _jpeg_frame(data)[2]
    return frame >= 0 and data.rfind(b"\xff\xd9") > frame


def _bmp_size(data: bytes) -> tuple[int, int]:
    if len(data) < 26:
        return (0, 0)
    header_size = struct.unpack("<I", data[14:18])[0]
    if header_size == 12:  # OS/2 BITMAPCOREHEADER
        width, height = struct.unpack("<HH", data[18:22])
    else:
        width, height = struct.unpack("<ii", data[18:26])
    return (abs(width), abs(height))


def _pnm_size(data: bytes) -> tuple[int, int]:
    tokens = []
    position = 2
    head = data[:4096]
    while len(tokens) < 2 and position < len(head):
        char = head[position:position + 1]
        if char == b"#":
            end = head.find(b"\n", position)
            position = len(head) if end < 0 else end + 1
        elif char.isspace():
            position += 1
        else:
            start = position
            while position < len(head) and not head[position:position + 1].isspace() and head[position:position + 1] != b"#":
                position += 1
            tokens.append(head[start:position])
    try:
        return (int(tokens[0]), int(tokens[1]))
    except (IndexError, ValueError):
        return (0, 0)
