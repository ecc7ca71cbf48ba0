"""The one image preprocessing path: BGR uint8 (OpenCV's convention) -> normalized NCHW float32.

Training, export parity, calibration, fidelity and the runtime all call `preprocess_batch`, so the
model never sees pixels prepared two different ways.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from fusionrt.runtime.errors import InputError
from fusionrt.runtime.image_header import image_size
from fusionrt.runtime.manifest import PreprocessSpec

__all__ = ["MAX_PIXELS", "load_image", "max_pixels", "preprocess", "preprocess_batch"]

MAX_PIXELS = 64_000_000  # an encoded image past this is refused unread: 8K video is 33 MP, a 61 MP camera still fits
_BLEND_ROWS = 256
_FORMATS = "PNG/JPEG/BMP/GIF/WebP/TIFF/PNM/JPEG 2000/AVIF"

_INTERP = {"linear": 1, "cubic": 2, "area": 3}  # cv2.INTER_LINEAR / INTER_CUBIC / INTER_AREA


def max_pixels() -> int:
    """The pixel cap: FUSIONRT_MAX_PIXELS when set, else MAX_PIXELS."""
    value = os.environ.get("FUSIONRT_MAX_PIXELS", "")
    try:
        return int(value) if value else MAX_PIXELS
    except ValueError:
        raise InputError(f"FUSIONRT_MAX_PIXELS={value!r}: expected a whole number of pixels (e.g. 64000000).") from None


def load_image(source, pixel_cap: int | None = None) -> np.ndarray:
    """Return an HxWx3 BGR uint8 array from a path, an encoded file's bytes or an array (grey and BGRA are converted).
    An encoded image of more than `pixel_cap` pixels (default: `max_pixels()`) is refused from its header, before
    it is decoded."""
    import cv2

    cap = max_pixels() if pixel_cap is None else pixel_cap
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise InputError(f"image file '{path}' not found. Check the path (relative paths are from the current directory).")
        with open(path, "rb") as f:
            _check_header(image_size(f), cap, f"image file '{path}'")
        image = _decode(lambda: cv2.imread(str(path), cv2.IMREAD_UNCHANGED), f"image file '{path}'")
        if image is None:
            raise InputError(f"image file '{path}' could not be decoded: expected {_FORMATS}. Re-save it in one of those formats.")
    elif isinstance(source, np.ndarray):
        image = source
    elif isinstance(source, (bytes, bytearray, memoryview)):
        what = f"image bytes ({len(source)} bytes, starting {bytes(source[:8])!r})"
        if len(source):
            _check_header(image_size(source), cap, what)
        image = _decode(lambda: cv2.imdecode(np.frombuffer(source, np.uint8), cv2.IMREAD_UNCHANGED), what) \
            if len(source) else None
        if image is None:
            raise InputError(f"{what} could not be decoded: expected an encoded {_FORMATS} file. Send the file's "
                             "bytes, not raw pixels.")
    else:
        raise InputError(f"expected an image path, encoded image bytes or a numpy HxWx3 BGR uint8 array, found "
                         f"{type(source).__name__}.")
    try:
        return _to_bgr(image)
    except (MemoryError, cv2.error) as exc:  # OpenCV's failed allocations are a cv2.error
        raise InputError(f"an image of shape {image.shape} could not be converted to BGR ({_reason(exc)}); send a "
                         "smaller image.") from None


def _check_header(size, cap: int, what: str) -> None:
    if size is None:
        raise InputError(f"{what} could not be decoded: expected an encoded {_FORMATS} file, found a header of none "
                         "of them (or one cut short). Re-save it as PNG or JPEG.")
    width, height = size
    if width * height > cap:
        raise InputError(f"{what} is {width}x{height} = {width * height:,} pixels, more than the cap of {cap:,}: "
                         "refused before decoding (a small file can hold a huge image). Resize it, or raise the cap "
                         "(FUSIONRT_MAX_PIXELS, or max_pixels= on Pipeline.load) if such images are expected.")


def _decode(decode, what: str):
    """OpenCV's decoder, its allocation failures an InputError for this image alone."""
    import cv2

    try:
        return decode()
    except (MemoryError, cv2.error) as exc:  # OpenCV's failed allocations and codec errors are a cv2.error
        raise InputError(f"{what} could not be decoded ({_reason(exc)}); send a smaller image, or an intact "
                         f"{_FORMATS} file.") from None


def _reason(exc: BaseException) -> str:
    if isinstance(exc, MemoryError):
        return "out of memory"
    return " ".join(str(exc).split())[-160:]


def _to_bgr(image: np.ndarray) -> np.ndarray:
    import cv2

    if image.dtype == np.uint16:
        image = (image >> 8).astype(np.uint8)
    if image.dtype != np.uint8:
        raise InputError(f"expected a uint8 image, found dtype {image.dtype}. Convert with `np.clip(img, 0, 255).astype(np.uint8)`.")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (3, 4)) or min(image.shape[:2]) < 1:
        raise InputError(f"expected an HxWx3 BGR image (or HxW grey, HxWx4 BGRA), found shape {image.shape}.")
    if image.ndim == 2:
        return cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_GRAY2BGR)
    if image.shape[2] == 4:
        return _over_white(image)
    return image


def _over_white(bgra: np.ndarray) -> np.ndarray:
    """Transparent pixels become white, which is what a viewer shows for them; a band of rows at a time, so a large
    image costs its uint8 result, not several float copies of itself."""
    out = np.empty(bgra.shape[:2] + (3,), np.uint8)
    for top in range(0, bgra.shape[0], _BLEND_ROWS):
        band = bgra[top:top + _BLEND_ROWS]
        alpha = band[:, :, 3:4].astype(np.float32) / 255.0
        out[top:top + _BLEND_ROWS] = np.round(band[:, :, :3].astype(np.float32) * alpha + 255.0 * (1.0 - alpha))
    return out


def preprocess(image, spec: PreprocessSpec, out: np.ndarray | None = None, pixel_cap: int | None = None) -> np.ndarray:
    """One image -> a (3, H, W) float32 array (written into `out` when given; the caller owns it)."""
    import cv2

    bgr = load_image(image, pixel_cap)
    h, w = bgr.shape[:2]
    if (h, w) != (spec.height, spec.width):
        shrinking = h > spec.height or w > spec.width
        interp = cv2.INTER_AREA if shrinking else _INTERP[spec.interpolation]
        bgr = cv2.resize(bgr, (spec.width, spec.height), interpolation=interp)
    # (x / 255 - mean) / std as one multiply-add per channel plane, written straight into the CHW output: about 8x
    # faster than normalizing the HWC image and transposing it (at a camera's rate this was most of the reader's time)
    std = np.asarray(spec.std, dtype=np.float64)
    scale, shift = (1.0 / (255.0 * std)).astype(np.float32), (-np.asarray(spec.mean) / std).astype(np.float32)
    target = np.empty((3, spec.height, spec.width), np.float32) if out is None else out
    for c in range(3):  # c: the encoder's channel; its plane in the BGR frame
        np.multiply(bgr[:, :, c if spec.channel_order == "bgr" else 2 - c], scale[c], out=target[c])
        target[c] += shift[c]
    return target


def preprocess_batch(images: Sequence, spec: PreprocessSpec, pixel_cap: int | None = None) -> np.ndarray:
    """Images (paths, encoded bytes or BGR arrays) -> an (N, 3, H, W) float32 array. An encoded image past
    `pixel_cap` pixels (default `max_pixels()`) is an InputError naming it."""
    if isinstance(images, (str, Path, np.ndarray)) or not isinstance(images, Sequence):
        raise InputError(f"expected a list of images (paths or BGR arrays), found {type(images).__name__}. Wrap one "
                         "image in a list: [image].")
    if len(images) == 0:
        raise InputError("expected at least one image, found an empty list.")
    batch = np.empty((len(images), 3, spec.height, spec.width), dtype=np.float32)
    for i, image in enumerate(images):
        try:
            preprocess(image, spec, out=batch[i], pixel_cap=pixel_cap)
        except InputError as exc:
            if len(images) == 1:
                raise
            raise InputError(f"image {i} of the batch of {len(images)}: {exc}") from None
    return batch
