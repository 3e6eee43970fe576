"""Decompression bombs for the tests, written by hand in a few hundred KB at most (never committed).

Each writes a real, valid file of `width` × `height` 8-bit gray (or constant colour) pixels whose
compressed data is tiny, so decoding it would really cost width × height × channels bytes:
PNG and TIFF from zlib-compressed zero rows (streamed, never held in memory), WebP as a lossless
VP8L bitstream whose prefix codes each have one symbol (zero bits per pixel), GIF as a tiny
image whose logical screen claims the full size (the decoder fills the whole canvas).
"""
from __future__ import annotations

import struct
import zlib
from pathlib import Path

CHUNK_ROWS = 256


def _zeros_deflated(row_bytes: int, rows: int, row_prefix: bytes = b"") -> bytes:
    """zlib stream of `rows` rows of (prefix + zero bytes), compressed chunk by chunk."""
    compressor = zlib.compressobj(9)
    row = row_prefix + bytes(row_bytes)
    parts = []
    block = row * CHUNK_ROWS
    full, rest = divmod(rows, CHUNK_ROWS)
    for _ in range(full):
        parts.append(compressor.compress(block))
    parts.append(compressor.compress(row * rest))
    parts.append(compressor.flush())
    return b"".join(parts)


def png_bomb(path, width: int, height: int) -> Path:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit gray
    data = _zeros_deflated(width, height, row_prefix=b"\x00")  # filter type 0 per row
    path = Path(path)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", data) + chunk(b"IEND", b""))
    return path


def tiff_bomb(path, width: int, height: int, big_endian: bool = False) -> Path:
    """8-bit gray, Adobe-deflate compressed, one strip."""
    order = ">" if big_endian else "<"
    data = _zeros_deflated(width, height)
    tags = [  # (tag, type, count, value); type 3 = SHORT, 4 = LONG
        (256, 4, 1, width), (257, 4, 1, height), (258, 3, 1, 8), (259, 3, 1, 8), (262, 3, 1, 1),
        (273, 4, 1, 0), (277, 3, 1, 1), (278, 4, 1, height), (279, 4, 1, len(data)),
    ]
    ifd_size = 2 + 12 * len(tags) + 4
    data_offset = 8 + ifd_size
    entries = b""
    for tag, kind, count, value in tags:
        if tag == 273:
            value = data_offset
        packed = struct.pack(order + ("H2x" if kind == 3 else "I"), value)
        entries += struct.pack(order + "HHI", tag, kind, count) + packed
    header = (b"MM" if big_endian else b"II") + struct.pack(order + "HI", 42, 8)
    path = Path(path)
    path.write_bytes(header + struct.pack(order + "H", len(tags)) + entries + struct.pack(order + "I", 0) + data)
    return path


class _Bits:
    """LSB-first bit writer (the VP8L bit order)."""

    def __init__(self):
        self.value, self.count = 0, 0

    def put(self, value: int, bits: int) -> None:
        self.value |= (value & ((1 << bits) - 1)) << self.count
        self.count += bits

    def bytes(self) -> bytes:
        return self.value.to_bytes((self.count + 7) // 8, "little")


def webp_bomb(path, width: int, height: int) -> Path:
    """A lossless WebP of one constant colour: every prefix code has a single symbol (0 bits/pixel)."""
    assert 1 <= width <= 16384 and 1 <= height <= 16384
    bits = _Bits()
    bits.put(0x2F, 8)
    bits.put(width - 1, 14)
    bits.put(height - 1, 14)
    bits.put(0, 1)  # alpha not used
    bits.put(0, 3)  # version
    bits.put(0, 1)  # no transform
    bits.put(0, 1)  # no colour cache
    bits.put(0, 1)  # no meta prefix codes
    for symbol in (0, 128, 0, 255, 0):  # green, red, blue, alpha, distance: one symbol each
        bits.put(1, 1)  # simple code
        bits.put(0, 1)  # one symbol
        bits.put(1, 1)  # 8-bit symbol
        bits.put(symbol, 8)
    payload = bits.bytes()
    if len(payload) % 2:
        payload += b"\0"
    chunk = b"VP8L" + struct.pack("<I", len(bits.bytes())) + payload
    path = Path(path)
    path.write_bytes(b"RIFF" + struct.pack("<I", 4 + len(chunk)) + b"WEBP" + chunk)
    return path


def gif_bomb(path, width: int, height: int) -> Path:
    """A 1×1 image on a logical screen of width × height (GIF decoders allocate the whole screen)."""
    palette = b"\x00\x00\x00\xff\xff\xff"
    screen = struct.pack("<HHBBB", width, height, 0x80, 0, 0)  # global palette of 2 colours
    image = b"\x2c" + struct.pack("<HHHHB", 0, 0, 1, 1, 0)
    lzw = b"\x02\x02\x44\x01\x00"  # minimum code size 2, one sub-block: clear, 0, end
    path = Path(path)
    path.write_bytes(b"GIF89a" + screen + palette + image + lzw + b"\x3b")
    return path


def patched_header(path, data: bytes, offset: int, new: bytes) -> Path:
    """`data` with the bytes at `offset` replaced (a tiny real encode claiming another size)."""
    data = bytearray(data)
    data[offset:offset + len(new)] = new
    path = Path(path)
    path.write_bytes(bytes(data))
    return path
