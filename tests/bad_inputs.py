"""Inputs that attack the runtime, built in the test: a decompression bomb and a huge caption."""

import struct
import zlib


def png_bomb(width: int = 10_000, height: int = 10_000) -> bytes:
    """A valid greyscale PNG of width x height black pixels: a few hundred KB that decode to width*height bytes."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    z = zlib.compressobj(9)
    row = bytes(width + 1)  # filter byte 0, then the row's pixels
    pixels = b"".join(z.compress(row) for _ in range(height)) + z.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


def huge_text(megabytes: int = 10) -> str:
    """A caption of about `megabytes` MB of ordinary words."""
    words = ("a red circle on a dark background with a small square beside it and nothing else ").split()
    line = " ".join(words)
    return " ".join([line] * (megabytes * 2**20 // (len(line) + 1)))
