import numpy as np
import pytest

from fusionrt.runtime.errors import InputError
from fusionrt.runtime.manifest import PreprocessSpec
from fusionrt.runtime.preprocess import load_image, preprocess, preprocess_batch

SPEC = PreprocessSpec(224, 224, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def _torchvision(bgr, spec, antialias):
    import torch
    from torchvision.transforms import v2

    rgb = torch.from_numpy(np.ascontiguousarray(bgr[:, :, ::-1])).permute(2, 0, 1)
    transform = v2.Compose([
        v2.Resize((spec.height, spec.width), interpolation=v2.InterpolationMode.BILINEAR, antialias=antialias),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(spec.mean, spec.std),
    ])
    return transform(rgb).numpy()


def test_upscaling_matches_torchvision_transform():
    """A real photo made small (like the 64 px emoji) and brought up to 224: the training-time transform."""
    import cv2
    from skimage import data

    small = cv2.resize(data.chelsea()[:, :, ::-1], (64, 48), interpolation=cv2.INTER_AREA)
    ours = preprocess(small, SPEC)
    theirs = _torchvision(small, SPEC, antialias=False)
    one_level = 1 / 255 / min(SPEC.std)  # both round the resized uint8 image; they may differ by one grey level
    assert ours.shape == theirs.shape == (3, 224, 224)
    assert np.abs(ours - theirs).max() <= one_level + 1e-5
    assert np.abs(ours - theirs).mean() < 0.5 * one_level  # most pixels agree exactly


def test_downscaling_is_close_to_torchvision_antialias():
    from skimage import data

    photo = data.coffee()[:, :, ::-1]  # 400x600 RGB -> BGR
    ours = preprocess(photo, SPEC)
    theirs = _torchvision(photo, SPEC, antialias=True)
    assert np.abs(ours - theirs).mean() < 0.05  # area averaging vs antialiased bilinear: close, not equal


def test_grey_and_bgra_and_paths(tmp_path):
    import cv2

    grey = np.full((10, 10), 200, np.uint8)
    assert load_image(grey).shape == (10, 10, 3)
    bgra = np.zeros((4, 4, 4), np.uint8)  # fully transparent -> white
    assert (load_image(bgra) == 255).all()
    cv2.imwrite(str(tmp_path / "x.png"), grey)
    assert preprocess_batch([tmp_path / "x.png", grey], SPEC).shape == (2, 3, 224, 224)
    png = (tmp_path / "x.png").read_bytes()  # an encoded file's bytes (what a Triton client sends) decode the same
    np.testing.assert_array_equal(load_image(png), load_image(tmp_path / "x.png"))


@pytest.mark.parametrize("bad, message", [
    ("/no/such/file.png", "not found"),
    (np.zeros((4, 4, 3), np.float32), "expected a uint8 image"),
    (np.zeros((4, 4, 2), np.uint8), "expected an HxWx3"),
    (42, "expected an image path, encoded image bytes or a numpy"),
    (b"\x89PNG but cut short", "could not be decoded: expected an encoded PNG"),
    (b"", "0 bytes"),
])
def test_bad_images_are_refused(bad, message):
    with pytest.raises(InputError, match=message):
        preprocess(bad, SPEC)


def test_undecodable_file(tmp_path):
    path = tmp_path / "broken.png"
    path.write_bytes(b"not a png")
    with pytest.raises(InputError, match="could not be decoded"):
        load_image(path)
