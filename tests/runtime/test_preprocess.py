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


@pytest.fixture(scope="module")
def bomb(tmp_path_factory):
    from tests.bad_inputs import png_bomb

    path = tmp_path_factory.mktemp("bomb") / "bomb.png"
    path.write_bytes(png_bomb(10_000, 10_000))  # 100 MP of black in ~100 KB
    return path


def test_a_decompression_bomb_is_refused_from_its_header_without_decoding(bomb, monkeypatch):
    import cv2

    def no_decoding(*args):
        raise AssertionError("the bomb was handed to the decoder")

    monkeypatch.setattr(cv2, "imdecode", no_decoding)
    monkeypatch.setattr(cv2, "imread", no_decoding)
    for source in (bomb, bomb.read_bytes()):
        with pytest.raises(InputError, match=r"10000x10000 = 100,000,000 pixels, more than the cap of 64,000,000"):
            load_image(source)
    with pytest.raises(InputError, match=r"image 1 of the batch of 2: .*more than the cap"):
        preprocess_batch([np.zeros((8, 8, 3), np.uint8), bomb], SPEC)


def test_the_pixel_cap_is_configurable(tmp_path, monkeypatch):
    import cv2

    path = tmp_path / "wide.png"
    cv2.imwrite(str(path), np.zeros((1000, 2000, 3), np.uint8))
    with pytest.raises(InputError, match="2000x1000 = 2,000,000 pixels, more than the cap of 1,999,999"):
        load_image(path, pixel_cap=1_999_999)
    assert load_image(path, pixel_cap=2_000_000).shape == (1000, 2000, 3)
    monkeypatch.setenv("FUSIONRT_MAX_PIXELS", "1000000")
    with pytest.raises(InputError, match="more than the cap of 1,000,000"):
        preprocess_batch([path], SPEC)
    monkeypatch.setenv("FUSIONRT_MAX_PIXELS", "a lot")
    with pytest.raises(InputError, match="FUSIONRT_MAX_PIXELS='a lot': expected a whole number"):
        load_image(path)


def test_an_image_that_does_not_fit_in_memory_fails_alone(bomb, tmp_path):
    """Under a memory limit a 100 MP image (allowed by a raised cap) cannot be converted: an InputError for it, and
    the next image works. A subprocess, so that the limit binds only there."""
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(f"""
        import resource
        import cv2  # before the limit: loading OpenCV's libraries under it crashes
        import numpy as np
        from fusionrt.runtime.errors import InputError
        from fusionrt.runtime.preprocess import load_image
        with open("/proc/self/statm") as f:
            in_use = int(f.read().split()[0]) * resource.getpagesize()
        resource.setrlimit(resource.RLIMIT_AS, (in_use + 250 * 2**20, resource.RLIM_INFINITY))
        try:
            load_image({str(bomb)!r}, pixel_cap=10**9)
            print("decoded")
        except InputError as exc:
            print("InputError:", exc)
        print(load_image(np.zeros((8, 8, 3), np.uint8)).shape)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("InputError:") and ("Insufficient memory" in lines[0] or "out of memory" in lines[0])
    assert lines[1] == "(8, 8, 3)"
