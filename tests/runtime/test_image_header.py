"""image_size: an encoded image's size from its header, the same as the decoder's, for every format OpenCV writes."""

import cv2
import numpy as np
import pytest

from fusionrt.runtime.image_header import image_size

IMAGE = np.random.default_rng(0).integers(0, 255, (37, 53, 3), np.uint8)
FORMATS = {  # name: (extension, image, encoder flags)
    "png": (".png", IMAGE, []), "jpeg": (".jpg", IMAGE, []),
    "progressive jpeg": (".jpg", IMAGE, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1]), "bmp": (".bmp", IMAGE, []),
    "webp lossy": (".webp", IMAGE, []), "webp lossless": (".webp", IMAGE, [cv2.IMWRITE_WEBP_QUALITY, 101]),
    "webp with alpha": (".webp", np.dstack([IMAGE, IMAGE[:, :, 0]]), []), "tiff": (".tiff", IMAGE, []),
    "tiff 16-bit": (".tiff", IMAGE.astype(np.uint16), []), "ppm": (".ppm", IMAGE, []), "pgm": (".pgm", IMAGE[:, :, 0], []),
    "gif": (".gif", IMAGE, []), "jpeg 2000": (".jp2", IMAGE, []), "avif": (".avif", IMAGE, []),
    "sun raster": (".ras", IMAGE, []), "radiance hdr": (".hdr", IMAGE.astype(np.float32) / 255, []),
    "pfm": (".pfm", IMAGE.astype(np.float32) / 255, []),
}


def _encoded(name: str) -> bytes:
    ext, image, flags = FORMATS[name]
    try:
        ok, data = cv2.imencode(ext, image, flags)
    except cv2.error:
        ok = False
    if not ok:
        pytest.skip(f"this OpenCV build writes no {ext}")
    return data.tobytes()


@pytest.mark.parametrize("name", FORMATS)
def test_the_header_gives_the_decoders_size(name):
    data = _encoded(name)
    height, width = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED).shape[:2]
    assert image_size(data) == (width, height)


@pytest.mark.parametrize("name", FORMATS)
def test_a_header_cut_short_is_unknown_not_an_exception(name):
    data = _encoded(name)
    for end in range(0, 64):
        assert image_size(data[:end]) in (None, (53, 37))


def test_a_jpeg_whose_frame_header_follows_large_metadata_segments():
    data = _encoded("jpeg")
    exif = b"\xff\xe1" + (60_002).to_bytes(2, "big") + bytes(60_000)  # two APP1 segments: past any fixed read
    assert image_size(data[:2] + exif + exif + data[2:]) == (53, 37)


def test_unknown_formats_are_none():
    assert image_size(b"not an image at all, just words") is None
    assert image_size(b"") is None
