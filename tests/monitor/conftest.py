"""The site's tests: a tiny bundle whose labels follow the frames' colour (events need frames that change the label),
frames of each colour, and gated live sources."""

import csv
import threading
import time

import numpy as np
import pytest

from fusionrt.data.dataset import LabeledDataset
from fusionrt.runtime.pipeline import Pipeline
from tests.conftest import COLORS, tiny_model, write_shape_dataset

TEXT = "a shape"  # every row's text: the label is in the frame alone


def colour_encoder():
    """Mean intensity of each channel, each sign: features that tell the colours apart with no training."""
    import torch

    conv = torch.nn.Conv2d(3, 6, 1)
    with torch.no_grad():
        conv.weight.copy_(torch.cat([torch.eye(3), -torch.eye(3)]).reshape(6, 3, 1, 1) * 3)
        conv.bias.zero_()
    return torch.nn.Sequential(conv, torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())


@pytest.fixture(scope="session")
def colour_bundle(tmp_path_factory):
    from fusionrt.export.bundle_writer import export_bundle
    from fusionrt.export.train import TrainSettings, train_head

    folder = tmp_path_factory.mktemp("colours")
    train, test = write_shape_dataset(folder)
    for path in (train, test):
        rows = list(csv.reader(open(path)))
        with open(path, "w", newline="") as fh:
            csv.writer(fh).writerows([rows[0]] + [[r[0], TEXT, r[2]] for r in rows[1:]])
    model = tiny_model(image_encoder=colour_encoder())
    train_head(model, LabeledDataset.read(train), TrainSettings(epochs=40, batch_size=16, lr=3e-3))
    data = LabeledDataset.read(test).head(4)
    export_bundle(model, folder / "bundle", [s.image for s in data], [s.text for s in data], dynamo=False)
    return folder / "bundle"


@pytest.fixture(scope="module")
def pipe(colour_bundle):
    with Pipeline.load(colour_bundle, backend="onnxruntime", tune=False) as p:
        yield p


def colour_frame(label: str, seed: int, size=(96, 64)) -> np.ndarray:
    """A square of the label's colour on dark noise, BGR."""
    rng = np.random.default_rng(seed)
    frame = rng.integers(0, 60, size=(size[1], size[0], 3), dtype=np.uint8)
    frame[size[1] // 4: 3 * size[1] // 4, size[0] // 4: 3 * size[0] // 4] = COLORS[label]
    return frame


@pytest.fixture(scope="module")
def colour_frames(pipe):
    """label -> frames the pipeline gives that label (checked here, so each test's known content is known)."""
    out = {label: [colour_frame(label, seed) for seed in range(4)] for label in COLORS}
    for label, frames in out.items():
        assert [pipe.classify(f, TEXT).label for f in frames] == [label] * len(frames)
    return out


class GatedCamera:
    """A live source (a callable the stream reopens) giving frames of `frames` every `period_s` until `stall` is set,
    then nothing (a camera that hangs), until `release` or the end of the test."""

    def __init__(self, frames: list, period_s: float = 0.02):
        self.frames, self.period_s = frames, period_s
        self.stall, self.release = threading.Event(), threading.Event()
        self.given = 0

    def __call__(self):
        return self._frames()

    def _frames(self):
        while not self.release.is_set():
            if self.stall.is_set():
                time.sleep(0.05)
                continue
            time.sleep(self.period_s)
            self.given += 1
            yield self.frames[self.given % len(self.frames)]


@pytest.fixture
def cameras():
    made = []

    def make(frames, period_s=0.02):
        made.append(GatedCamera(frames, period_s))
        return made[-1]
    yield make
    for cam in made:
        cam.release.set()


def frames_array(frames) -> np.ndarray:
    return np.stack(frames)
