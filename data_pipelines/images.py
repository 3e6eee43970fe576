"""Read any photo the project meets into one shape: H×W×3 uint8 RGB.

PNG, JPEG, BMP, PNM/PAM/PFM, TIFF, WebP, GIF, Sun raster and Radiance HDR, colour or grayscale,
with alpha (dropped) or 16 bits per channel (scaled to 8). Problems raise `ImageReadError` with a
one-line message that names the file: missing, not a regular file, empty, not an image / corrupt, a
format whose size cannot be checked, or too large.

Decompression bombs: the width and height are read from each format's own header BEFORE anything
is decoded (`image_size_from_header`), so a 20 KB file that claims 16000x16000 pixels is refused
without allocating them, whatever the file is called (the content decides the format, as it does
for OpenCV). The formats OpenCV could decode but whose header is not read here (JPEG 2000, AVIF,
OpenEXR, ...) are refused rather than decoded unchecked, and so is a file larger than
`MAX_FILE_BYTES_PER_PIXEL` bytes per allowed pixel. OpenCV's own `OPENCV_IO_MAX_IMAGE_PIXELS` is no
substitute: it is read once, when cv2 is imported, and is one limit for the whole process.

EXIF orientation is ignored by default: 300-W's annotations refer to the pixel array as stored
(MATLAB's `imread` ignores EXIF too). Pass `apply_exif_orientation=True` for phone photos at
inference time.
"""
from __future__ import annotations

import os
import stat
import struct
from pathlib import Path

import cv2
import numpy as np

DEFAULT_MAX_PIXELS = 100_000_000
# A file may hold at most this many bytes per allowed pixel (16: float32 RGBA stored raw), so a huge
# file is not read into memory just to be refused.
MAX_FILE_BYTES_PER_PIXEL = 16
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
    data = _read_bytes(path, max_pixels)
    return decode_image_bytes(data, path, max_pixels=max_pixels, apply_exif_orientation=apply_exif_orientation)


def check_image_file(path, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
    """Cheap validity check without decoding: readable, not empty, a sane header, not too large,
    and (JPEG) not truncated. Raises `ImageReadError`; a pass does not prove the pixels decode."""
    path = Path(path)
    _check_header(_read_bytes(path, max_pixels), path, max_pixels)


def _read_bytes(path: Path, max_pixels: int = 0) -> bytes:
    try:
        info = os.stat(path)
        if stat.S_ISDIR(info.st_mode):
            raise ImageReadError(path, "is a directory, not an image")
        if not stat.S_ISREG(info.st_mode):  # a FIFO or a device would block or never end
            raise ImageReadError(path, "not a regular file")
        if max_pixels and info.st_size > max_pixels * MAX_FILE_BYTES_PER_PIXEL + (1 << 20):
            raise ImageReadError(path, f"too large: a file of {info.st_size / 1e6:.0f} MB "
                                       f"(limit {max_pixels / 1e6:g} megapixels)")
        return path.read_bytes()
    except FileNotFoundError:
        if os.path.islink(path):
            raise ImageReadError(path, "broken symbolic link") from None
        raise ImageReadError(path, "file not found") from None
    except IsADirectoryError:
        raise ImageReadError(path, "is a directory, not an image") from None
    except OSError as error:
        raise ImageReadError(path, f"cannot read: {error.strerror or error}") from None


def _check_header(data: bytes, name, max_pixels: int) -> None:
    if len(data) == 0:
        raise ImageReadError(name, "empty file")
    size = image_size_from_header(data)
    if size is None:
        unchecked = unchecked_format(data)
        if unchecked:
            raise ImageReadError(name, f"unsupported image format ({unchecked}): its size cannot be checked "
                                       "before decoding; convert it to PNG or JPEG")
        raise ImageReadError(name, "not an image or corrupt (not a format the reader knows)")
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
    """(width, height) from the header of a PNG, JPEG, BMP, PNM/PAM/PFM, TIFF, WebP, GIF, Sun raster
    or Radiance HDR file; None for any other content (`unchecked_format` names the ones OpenCV knows).

    Never raises: a truncated or broken header of a recognised format gives (0, 0), which the caller
    reports as a corrupt header.
    """
    try:
        return _size_from_header(data)
    except (struct.error, IndexError, ValueError):
        return (0, 0)


def _size_from_header(data: bytes) -> tuple[int, int] | None:
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        if len(data) < 24 or data[12:16] != b"IHDR":
            return (0, 0)
        return struct.unpack(">II", data[16:24])
    if data[:2] == b"\xff\xd8":
        return _jpeg_size(data)
    if data[:2] == b"BM":
        return _bmp_size(data)
    if len(data) >= 2 and data[0:1] == b"P" and data[1:2] in b"1234567Ff":
        return _pnm_size(data)
    if data[:4] in (b"II*\0", b"MM\0*", b"II+\0", b"MM\0+"):
        return _tiff_size(data)
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return _webp_size(data)
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return _gif_size(data)
    if data[:4] == b"\x59\xa6\x6a\x95":  # Sun raster
        return struct.unpack(">II", data[4:12]) if len(data) >= 12 else (0, 0)
    if data[:10] == b"#?RADIANCE" or data[:6] == b"#?RGBE":
        return _hdr_size(data)
    return None


def unchecked_format(data: bytes) -> str | None:
    """The name of a format OpenCV may decode but whose size this module does not read (refused)."""
    if data[:12] == b"\0\0\0\x0cjP  \r\n\x87\n" or data[:4] == b"\xff\x4f\xff\x51":
        return "JPEG 2000"
    if data[4:8] == b"ftyp":
        return "AVIF/HEIF"
    if data[:4] == b"\x76\x2f\x31\x01":
        return "OpenEXR"
    if data[:2] == b"\xff\x0a" or data[:12] == b"\0\0\0\x0cJXL \r\n\x87\n":
        return "JPEG XL"
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
    """P1-P6 and PF/Pf: width and height are the first two numbers after the magic; P7 (PAM): the
    WIDTH and HEIGHT lines before ENDHDR."""
    tokens = []
    position = 2
    head = data[:4096]
    wanted = 16 if data[1:2] == b"7" else 2
    while len(tokens) < wanted and position < len(head):
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
            if tokens[-1] == b"ENDHDR":
                break
    if data[1:2] == b"7":
        fields = {tokens[i]: tokens[i + 1] for i in range(len(tokens) - 1) if tokens[i] in (b"WIDTH", b"HEIGHT")}
        return (int(fields.get(b"WIDTH", 0)), int(fields.get(b"HEIGHT", 0)))
    try:
        return (int(tokens[0]), int(tokens[1]))
    except (IndexError, ValueError):
        return (0, 0)


_TIFF_TYPES = {3: ("H", 2), 4: ("I", 4), 16: ("Q", 8)}  # SHORT, LONG, LONG8


def _tiff_size(data: bytes) -> tuple[int, int]:
    """ImageWidth and ImageLength of the first image file directory (the page OpenCV decodes);
    classic TIFF and BigTIFF, either byte order."""
    order = "<" if data[:2] == b"II" else ">"
    big = struct.unpack(order + "H", data[2:4])[0] == 43
    if big:
        offset = struct.unpack(order + "Q", data[8:16])[0]
        count = struct.unpack(order + "Q", data[offset:offset + 8])[0]
        entries, entry_size, value_at = offset + 8, 20, 12
    else:
        offset = struct.unpack(order + "I", data[4:8])[0]
        count = struct.unpack(order + "H", data[offset:offset + 2])[0]
        entries, entry_size, value_at = offset + 2, 12, 8
    size = {}
    for index in range(min(count, 4096)):
        entry = data[entries + index * entry_size:entries + (index + 1) * entry_size]
        if len(entry) < entry_size:
            return (0, 0)
        tag, kind = struct.unpack(order + "HH", entry[:4])
        if tag in (256, 257):
            if kind not in _TIFF_TYPES:
                return (0, 0)
            code, length = _TIFF_TYPES[kind]
            size[tag] = struct.unpack(order + code, entry[value_at:value_at + length])[0]
            if len(size) == 2:
                return (size[256], size[257])
    return (0, 0)


def _webp_size(data: bytes) -> tuple[int, int]:
    """Canvas size from the first chunk: VP8X (extended), VP8L (lossless) or 'VP8 ' (lossy)."""
    chunk = data[12:16]
    if chunk == b"VP8X":
        return (1 + int.from_bytes(data[24:27], "little"), 1 + int.from_bytes(data[27:30], "little"))
    if chunk == b"VP8L":
        if data[20:21] != b"\x2f" or len(data) < 25:
            return (0, 0)
        bits = int.from_bytes(data[21:25], "little")
        return (1 + (bits & 0x3FFF), 1 + ((bits >> 14) & 0x3FFF))
    if chunk == b"VP8 ":
        if data[23:26] != b"\x9d\x01\x2a" or len(data) < 30:
            return (0, 0)
        width, height = struct.unpack("<HH", data[26:30])
        return (width & 0x3FFF, height & 0x3FFF)
    return (0, 0)


def _gif_size(data: bytes) -> tuple[int, int]:
    """The logical screen, grown to hold the first image if that reaches beyond it."""
    width, height, flags = struct.unpack("<HHB", data[6:11])
    position = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)
    while position < len(data):
        block = data[position]
        if block == 0x2C:  # image descriptor
            left, top, w, h = struct.unpack("<HHHH", data[position + 1:position + 9])
            return (max(width, left + w), max(height, top + h))
        if block != 0x21:  # not an extension: no image before the trailer
            break
        position += 2
        while position < len(data) and data[position]:  # sub-blocks
            position += 1 + data[position]
        position += 1
    return (width, height)


def _hdr_size(data: bytes) -> tuple[int, int]:
    """Radiance: text lines up to a blank one, then e.g. "-Y 480 +X 640"."""
    head = data[:65536]
    blank = head.find(b"\n\n")
    if blank < 0:
        return (0, 0)
    line_end = head.find(b"\n", blank + 2)
    fields = head[blank + 2:line_end if line_end >= 0 else len(head)].split()
    if len(fields) != 4:
        return (0, 0)
    first, second = int(fields[1]), int(fields[3])
    return (second, first) if fields[0][1:2] == b"Y" else (first, second)
