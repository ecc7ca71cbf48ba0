"""An encoded image's width and height from its header, read before anything is decoded.

A 1 MB PNG can hold 20000x20000 pixels: decoding it takes gigabytes. `image_size` reads the few bytes that say how
big an image is, so `load_image` refuses one past the pixel cap without decoding it. It knows the formats
`load_image` accepts (those OpenCV decodes: PNG, JPEG, BMP, GIF, WebP, TIFF, PNM/PFM, JPEG 2000, AVIF, Sun raster,
Radiance HDR); for another it returns None, and `load_image` refuses the file.
"""

from __future__ import annotations

import io
import struct

__all__ = ["image_size"]

_JPEG_FRAMES = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}  # SOFn, not DHT/JPG/DAC


def image_size(stream) -> tuple | None:
    """(width, height) of the encoded image in `stream` (a seekable binary file, or bytes); None for a format this
    does not know or a header it cannot read (the decoder then judges the file)."""
    f = io.BytesIO(bytes(stream)) if isinstance(stream, (bytes, bytearray, memoryview)) else stream
    try:
        head = f.read(32)
        for magic, reader in _READERS:
            if head.startswith(magic):
                return reader(f, head)
        if head[4:8] == b"ftyp" and head[8:12] in (b"avif", b"avis", b"heic", b"heix", b"mif1", b"msf1"):
            return _AVIF(f, head)
    except (struct.error, ValueError, OSError):
        return None
    return None


def _png(f, head):
    return struct.unpack(">II", head[16:24]) if head[12:16] == b"IHDR" else None


def _gif(f, head):
    return struct.unpack("<HH", head[6:10])


def _bmp(f, head):
    if struct.unpack("<I", head[14:18])[0] == 12:  # OS/2 BITMAPCOREHEADER: 16-bit sizes
        return struct.unpack("<HH", head[18:22])
    width, height = struct.unpack("<ii", head[18:26])
    return abs(width), abs(height)  # a negative height is a top-down bitmap


def _webp(f, head):
    if head[8:12] != b"WEBP":
        return None
    chunk = head[12:16]
    if chunk == b"VP8 ":  # lossy: 14-bit sizes after the key frame's start code
        width, height = struct.unpack("<HH", head[26:30])
        return width & 0x3FFF, height & 0x3FFF
    if chunk == b"VP8L":  # lossless: 14-bit sizes minus one, packed after the signature byte
        bits = struct.unpack("<I", head[21:25])[0]
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X":  # extended: 24-bit canvas sizes minus one
        return int.from_bytes(head[24:27], "little") + 1, int.from_bytes(head[27:30], "little") + 1
    return None


def _jpeg(f, head):
    f.seek(2)
    while True:
        marker = f.read(2)
        while marker[:1] == b"\xff" and marker[1:2] == b"\xff":  # fill bytes before a marker
            marker = marker[1:] + f.read(1)
        if len(marker) < 2 or marker[0] != 0xFF:
            return None
        kind = marker[1]
        if kind in (0xD8, 0x01) or 0xD0 <= kind <= 0xD7:  # markers without a length
            continue
        length = struct.unpack(">H", f.read(2))[0]
        if kind in _JPEG_FRAMES:
            height, width = struct.unpack(">xHH", f.read(5))
            return width, height
        if kind == 0xDA or length < 2:  # scan data before any frame header: not a JPEG this can read
            return None
        f.seek(length - 2, io.SEEK_CUR)


def _tiff(f, head):
    order = "<" if head[:2] == b"II" else ">"
    f.seek(struct.unpack(order + "I", head[4:8])[0])
    count = struct.unpack(order + "H", f.read(2))[0]
    sizes = {}
    for _ in range(count):
        tag, kind, _n, value = struct.unpack(order + "HHI4s", f.read(12))
        if tag in (256, 257):  # ImageWidth, ImageLength: SHORT or LONG
            sizes[tag] = struct.unpack(order + ("H" if kind == 3 else "I"), value[:2] if kind == 3 else value)[0]
    return (sizes[256], sizes[257]) if len(sizes) == 2 else None


def _box(tag: bytes, layout: str, swap: bool):
    """ISO boxes (JPEG 2000, AVIF): the first `tag` box in the file's first 64 KiB holds the size."""
    def read(f, head):
        f.seek(0)
        data = f.read(65536)
        at = data.find(tag)
        if at < 0:
            return None
        a, b = struct.unpack_from(layout, data, at + len(tag))
        return (b, a) if swap else (a, b)
    return read


def _raster(f, head):
    return struct.unpack(">II", head[4:12])


def _codestream(f, head):  # a bare JPEG 2000 codestream: its SIZ segment's reference grid
    return struct.unpack(">II", head[8:16])


def _radiance(f, head):
    f.seek(0)
    for _ in range(64):  # header lines, a blank one, then the resolution line: "-Y height +X width"
        raw = f.readline(512)
        if not raw.endswith(b"\n"):
            return None
        line = raw.split()
        if len(line) == 4 and line[0] in (b"-Y", b"+Y"):
            return int(line[3]), int(line[1])
    return None


def _pnm(f, head):
    f.seek(2)
    numbers: list = []
    while len(numbers) < 2:
        line = f.readline(256)
        if not line.endswith(b"\n"):  # cut short: the number at its end may be cut too
            return None
        numbers += [int(n) for n in line.split(b"#")[0].split()]
    return numbers[0], numbers[1]


_READERS = ((b"\x89PNG\r\n\x1a\n", _png), (b"GIF87a", _gif), (b"GIF89a", _gif), (b"BM", _bmp), (b"RIFF", _webp),
            (b"\xff\xd8", _jpeg), (b"II*\x00", _tiff), (b"MM\x00*", _tiff),
            *((b"P" + bytes([c]), _pnm) for c in b"123456Ff"), (b"\x00\x00\x00\x0cjP  ", _box(b"ihdr", ">II", True)),
            (b"\xff\x4f\xff\x51", _codestream), (b"\x59\xa6\x6a\x95", _raster), (b"#?RADIANCE", _radiance), (b"#?RGBE", _radiance))
_AVIF = _box(b"ispe", ">4xII", False)  # after an ftyp box of any length: matched by its brand below
