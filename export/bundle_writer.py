"""Write a bundle: three ONNX files, tokenizer.json and a manifest, checked against PyTorch first."""

from __future__ import annotations

import errno
import os

import shutil
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from fusionrt.export.model import FusionClassifier
from fusionrt.export.onnx_export import OPSET, export_module
from fusionrt.export.parity import check_parity
from fusionrt.runtime.backends.onnxruntime import OnnxRuntimeBackend
from fusionrt.runtime.bundle import Bundle
from fusionrt.bundling.staging import TEMP_PREFIX, WriteLock, replace_directory
from fusionrt.runtime.errors import BundleError, CheckpointError
from fusionrt.runtime.manifest import FUSION_HEAD, IMAGE_ENCODER, TEXT_ENCODER, Component, Manifest, ModelFile, Profile, TokenizerSpec, sha256_of
from fusionrt.runtime.optional import installed_versions
from fusionrt.runtime.preprocess import preprocess_batch
from fusionrt.runtime.tokenize import TextTokenizer

__all__ = ["export_bundle", "DEFAULT_TOLERANCE"]

DEFAULT_TOLERANCE = 1e-4  # max |logit diff| ONNX vs PyTorch, FP32
_PRODUCERS = ("fusionrt", "torch", "torchvision", "timm", "transformers", "onnx", "onnxruntime", "onnxscript")


def export_bundle(model: FusionClassifier, out_dir, images: Sequence, texts: Sequence[str], profile: Profile | None = None,
                  opset: int = OPSET, dynamo: bool = True, tolerance: float = DEFAULT_TOLERANCE,
                  overwrite: bool = False) -> Bundle:
    """Export `model` to `out_dir` and return the opened Bundle.

    images/texts: real samples (paths or BGR arrays, and strings) used as export examples and for the
    parity check; at least two, so the batch axis is exercised. Nothing is written to `out_dir` unless
    every output passes the parity check.
    """
    out_dir = Path(out_dir)
    _check_target(out_dir, overwrite)
    if len(images) < 2 or len(images) != len(texts):
        raise CheckpointError(f"export needs 2 or more (image, text) samples of equal count, found {len(images)} and {len(texts)}.")
    if model.tokenizer is None or not hasattr(model.tokenizer, "backend_tokenizer"):
        raise CheckpointError("the checkpoint has no fast tokenizer (tokenizer.json) in text_encoder/; save one with the model.")
    model = model.float().eval()
    config = model.config
    profile = (profile or Profile.for_text(config.max_seq_len)).check_seq(config.max_seq_len)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}export-", dir=out_dir.parent))  # same file system: renames
    try:
        model.tokenizer.backend_tokenizer.save(str(staging / "tokenizer.json"))
        tokenizer = TextTokenizer(staging / "tokenizer.json", config.max_seq_len)
        pixels, tokens = preprocess_batch(images, config.preprocess), tokenizer(texts)
        components, torch_outputs = _export_parts(model, staging, pixels, tokens, opset, dynamo)
        references, candidates = _run_both(staging, components, pixels, tokens, *torch_outputs)
        tolerances = {key: _tolerance(key, tolerance, references[key]) for key in references}
        checks = check_parity(references, candidates, tolerances)
        manifest = Manifest(
            labels=tuple(config.labels),
            preprocess=config.preprocess,
            tokenizer=TokenizerSpec("tokenizer.json", config.max_seq_len, sha256_of(staging / "tokenizer.json")),
            components=components,
            profile=profile,
            parity={
                "samples": len(images),
                "checks": [{"component": c.component, "output": c.output, "max_abs_diff": c.max_abs_diff,
                            "tolerance": c.tolerance} for c in checks],
                "max_abs_logit_diff": max(c.max_abs_diff for c in checks if c.output == "logits"),
            },
            producer={**installed_versions(_PRODUCERS), "opset": str(opset), "exporter": "dynamo" if dynamo else "torchscript"},
        )
        manifest.write(staging)
        _replace(staging, out_dir, overwrite)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return Bundle.open(out_dir)


def _export_parts(model, staging: Path, pixels, tokens: dict, opset: int, dynamo: bool) -> tuple:
    """({component: Component}, (image features, text features, logits) from PyTorch): each part exported to ONNX
    in `staging` with named dynamic axes, on the real samples."""
    t_pixels = torch.from_numpy(pixels)
    t_tokens = {k: torch.from_numpy(v) for k, v in tokens.items()}
    with torch.no_grad():
        image_features = model.image_encoder(t_pixels)
        text_features = model.text_encoder(t_tokens["input_ids"], t_tokens["attention_mask"])
        logits = model.head(image_features, text_features)
    batch, seq = {0: "batch"}, {0: "batch", 1: "sequence"}
    jobs = {
        IMAGE_ENCODER: (model.image_encoder, (t_pixels,), ["pixel_values"], ["image_features"],
                        {"pixel_values": batch, "image_features": batch}),
        TEXT_ENCODER: (model.text_encoder, (t_tokens["input_ids"], t_tokens["attention_mask"]),
                       ["input_ids", "attention_mask"], ["text_features"],
                       {"input_ids": seq, "attention_mask": seq, "text_features": batch}),
        FUSION_HEAD: (model.head, (image_features, text_features), ["image_features", "text_features"], ["logits"],
                      {"image_features": batch, "text_features": batch, "logits": batch}),
    }
    components = {}
    for name, (module, args, ins, outs, dynamic) in jobs.items():
        path = staging / f"{name}.onnx"
        in_specs, out_specs = export_module(module, args, path, ins, outs, dynamic, opset, dynamo)
        components[name] = Component(name, {"fp32": ModelFile(path.name, sha256_of(path))}, in_specs, out_specs)
    return components, (image_features, text_features, logits)


def _run_both(folder, components, pixels, tokens, image_features, text_features, logits):
    """Run each ONNX file on the same inputs as PyTorch, plus the ONNX chain end to end."""
    def session(name):
        comp = components[name]
        return OnnxRuntimeBackend(folder / comp.files["fp32"].path, comp.inputs, comp.outputs, ["CPUExecutionProvider"])

    with session(IMAGE_ENCODER) as img, session(TEXT_ENCODER) as txt, session(FUSION_HEAD) as head:
        onnx_image = img.infer({"pixel_values": pixels})["image_features"]
        onnx_text = txt.infer(tokens)["text_features"]
        ref = {"image_features": image_features.numpy(), "text_features": text_features.numpy()}
        onnx_head = head.infer(ref)["logits"]
        chained = head.infer({"image_features": onnx_image, "text_features": onnx_text})["logits"]
    references = {
        (IMAGE_ENCODER, "image_features"): ref["image_features"],
        (TEXT_ENCODER, "text_features"): ref["text_features"],
        (FUSION_HEAD, "logits"): logits.numpy(),
        ("pipeline", "logits"): logits.numpy(),
    }
    candidates = {
        (IMAGE_ENCODER, "image_features"): onnx_image,
        (TEXT_ENCODER, "text_features"): onnx_text,
        (FUSION_HEAD, "logits"): onnx_head,
        ("pipeline", "logits"): chained,
    }
    return references, candidates


def _tolerance(key, logit_tolerance: float, reference: np.ndarray) -> float:
    """Logits use the fixed tolerance; features scale with their magnitude (float32 rounding grows with it)."""
    if key[1] == "logits":
        return logit_tolerance
    return max(logit_tolerance, 1e-5 * float(np.max(np.abs(reference))) * 10)


def _check_target(out_dir: Path, overwrite: bool) -> None:
    """`out_dir` must be new, empty, or (with overwrite) a folder that reads as a bundle; nothing else is replaced."""
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise BundleError(f"--out '{out_dir}' is a file: expected a new or empty folder, or a bundle to replace.")
    if not any(out_dir.iterdir()):
        return
    try:
        Manifest.read(out_dir)
    except BundleError as exc:
        raise BundleError(f"'{out_dir}' is a non-empty folder that does not read as a bundle ({exc}): expected an "
                          "empty or new folder, or a bundle to replace; nothing was changed. Choose another --out."
                          ) from None
    if not overwrite:
        raise BundleError(f"'{out_dir}' already holds a bundle: expected an empty or new folder. Pass --overwrite to "
                          "replace it.")


def _fresh(out_dir: Path) -> bool:
    return not out_dir.is_dir() or not any(out_dir.iterdir())


def _replace(staging: Path, out_dir: Path, overwrite: bool) -> None:
    """The finished bundle in `staging` takes `out_dir`'s place in one atomic step (see `replace_directory`); an old
    bundle there is replaced under its write lock, so no calibrate or build is writing into it meanwhile. Two exports
    to one new folder: the first rename wins, the second then finds a bundle (replaced with overwrite, else refused)."""
    if _fresh(out_dir):
        try:
            os.replace(staging, out_dir)  # a new or empty folder: one rename, which fails if it is no longer empty
            return
        except OSError as exc:
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR):
                raise
        # another export got there first: judge what it left, as if it had been there at our start
    with WriteLock(out_dir, "export"):
        _check_target(out_dir, overwrite)  # again, under the lock
        replace_directory(staging, out_dir)
