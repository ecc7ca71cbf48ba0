"""Reference architectures for `fusionrt bench --arch`: speed without a checkpoint.

The model is built with seeded random weights (same seed, same weights), exported once and cached; its INT8
models are calibrated on a small synthetic set and marked speed-only in the manifest: their fidelity means
nothing, their speed is real. `fusionrt calibrate` on a user's bundle still needs real data."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fusionrt.runtime.errors import InputError
from fusionrt.runtime.optional import require
from fusionrt.bundling import save_manifest

__all__ = ["ARCHS", "Arch", "reference_model", "reference_bundle", "default_cache"]


@dataclass(frozen=True)
class Arch:
    image_backbone: str
    hidden: int
    layers: int
    heads: int
    intermediate: int
    head_hidden: tuple = (512,)
    classes: int = 10


ARCHS = {
    "resnet50+bert-base": Arch("resnet50", hidden=768, layers=12, heads=12, intermediate=3072),
    # small enough for tests and a quick look; same code path
    "resnet18+bert-tiny": Arch("resnet18", hidden=128, layers=2, heads=2, intermediate=512, head_hidden=(64,)),
}
SYNTHETIC_SAMPLES = 56  # 32 calibrate, 24 held out (two held-out splits of 12: the calibration code's minimum checks apply)


def default_cache() -> Path:
    from fusionrt.runtime.environment import cache_root

    return cache_root() / "arch"


def _arch(name: str) -> Arch:
    if name not in ARCHS:
        raise InputError(f"--arch '{name}' unknown: expected one of {sorted(ARCHS)}.")
    return ARCHS[name]


def reference_model(name: str, seed: int = 0):
    """The architecture with seeded random weights, BERT tokenizer (MiniLM's: bert-base-uncased vocabulary)."""
    torch = require("torch", "--arch")
    transformers = require("transformers", "--arch")
    from fusionrt.export.factory import minilm_folder
    from fusionrt.export.model import FusionClassifier, FusionConfig

    a = _arch(name)
    torch.manual_seed(seed)
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(minilm_folder()), local_files_only=True)
    text = transformers.BertModel(transformers.BertConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=a.hidden, num_hidden_layers=a.layers, num_attention_heads=a.heads,
        intermediate_size=a.intermediate, max_position_embeddings=512))
    config = FusionConfig(labels=tuple(f"class_{i}" for i in range(a.classes)), image_backbone=a.image_backbone,
                          head_hidden=a.head_hidden, max_seq_len=512)
    return FusionClassifier(config, text, None, tokenizer).eval()


def _synthetic_dataset(folder: Path, classes: int, seed: int) -> Path:
    """Random images and texts for speed-only INT8 (never for fidelity)."""
    import cv2

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    words = ["road", "car", "person", "sign", "light", "truck", "bicycle", "tree", "building", "night", "rain"]
    with open(folder / "data.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["image", "text", "label"])
        for i in range(SYNTHETIC_SAMPLES):
            image = rng.integers(0, 256, (224, 224, 3), dtype=np.uint8)
            cv2.imwrite(str(folder / f"{i}.png"), image)
            text = " ".join(rng.choice(words, size=int(rng.integers(4, 40))))
            writer.writerow([f"{i}.png", text, f"class_{i % classes}"])
    return folder / "data.csv"


def _ov_form() -> str:
    """The text encoder's int8-ov form the reference bundle is calibrated with: INT8 math in this CPU kind's form
    (the bench measures INT8's speed at its --seq, not at the synthetic texts' lengths `auto` would time)."""
    from fusionrt.runtime.backends.openvino import int8_linear_form
    from fusionrt.runtime.cpu import cpu_kind

    return int8_linear_form(cpu_kind())


def _ov_recipe() -> str:
    """The int8-ov recipe in the cache key: NNCF's, and the linear layers' form (0: no nncf)."""
    from fusionrt.calibration import openvino_int8

    return f"{openvino_int8.RECIPE}{_ov_form()}" if openvino_int8.available() else "0"


def reference_bundle(name: str, cache: Path | None = None, seed: int = 0, say=print) -> tuple:
    """(bundle dir, checkpoint dir) for `name`, built once per (arch, seed, torch version, export and quantization recipes)
    and cached."""
    torch = require("torch", "--arch")
    from fusionrt.calibration.calibrate import calibrate_bundle
    from fusionrt.export.bundle_writer import export_bundle
    from fusionrt.export.model import FusionClassifier
    from fusionrt.runtime.bundle import Bundle
    from fusionrt.runtime.manifest import Profile

    from fusionrt.calibration.quantize import RECIPE
    from fusionrt.export.onnx_export import EXPORT_RECIPE

    folder = Path(cache or default_cache()) / (f"{name}-seed{seed}-torch{torch.__version__.split('+')[0]}"
                                               f"-e{EXPORT_RECIPE}-q{RECIPE}"
                                               f"-ov{_ov_recipe()}")
    bundle_dir, checkpoint_dir, done = folder / "bundle", folder / "checkpoint", folder / "complete.json"
    if done.is_file():
        return bundle_dir, checkpoint_dir
    a = _arch(name)
    say(f"building {name} (seeded random weights) in {folder}: once, then cached")
    model = reference_model(name, seed)
    model.save_pretrained(checkpoint_dir)
    data = _synthetic_dataset(folder / "synthetic", a.classes, seed)
    rng = np.random.default_rng(seed)
    images = [rng.integers(0, 256, (224, 224, 3), dtype=np.uint8) for _ in range(2)]
    export_bundle(FusionClassifier.from_pretrained(checkpoint_dir), bundle_dir, images,
                  ["a car stops at the light", "a person crosses the road at night in the rain"],
                  Profile(seq=(1, 128, 512)), overwrite=True)
    say(f"calibrating {name} on {SYNTHETIC_SAMPLES} synthetic samples (speed-only INT8)")
    calibrate_bundle(bundle_dir, data, samples=32, method="minmax", precision="int8", openvino_linear=_ov_form())
    bundle = Bundle.open(bundle_dir)
    calibration = {**bundle.manifest.calibration, "speed_only": True,
                   "why": "synthetic calibration data: INT8 speed is real, its accuracy is not measured"}
    import dataclasses

    save_manifest(bundle, dataclasses.replace(bundle.manifest, calibration=calibration))
    done.write_text(json.dumps({"arch": name, "seed": seed, "torch": torch.__version__}) + "\n")
    return bundle_dir, checkpoint_dir
