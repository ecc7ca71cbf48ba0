"""Held-out evaluation for calibration: the FP32 reference (features, logits, outcome) of one split, and the outcome
of any part file run as an `Execution` against it.

Every file runs through the runtime's own backends, as the resolver says it runs (`run_part`), so what calibration
judges is what a pipeline computes. TensorRT, which cannot run here, is emulated as its arithmetic is written: the
Q/DQ graph it builds from, run as written on ONNX Runtime's CPU kernels (exact integer products, the float between
in the file's own FP16)."""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from fusionrt.calibration.fidelity import head_outcome
from fusionrt.runtime.resolve import Execution, resolve
from fusionrt.runtime.manifest import ENCODERS, FUSION_HEAD, IMAGE_ENCODER, TEXT_ENCODER

__all__ = ["ENCODERS", "REFERENCE", "open_part", "run_part", "bf16_round", "Evaluator"]

REFERENCE = resolve("onnxruntime", "fp32", "cpu")  # FP32 on ONNX Runtime's CPU kernels: what everything is judged against


@contextmanager
def open_part(spec, path, execution: Execution):
    """A runtime backend running the part `spec` (a manifest Component) from `path` as `execution` says."""
    from fusionrt.runtime.backends.onnxruntime import OnnxRuntimeBackend, OnnxRuntimeOptions

    if execution.backend == "openvino":
        from fusionrt.runtime.backends.openvino import OpenVINOBackend, OpenVINOOptions

        backend = OpenVINOBackend.load(path, spec, execution, OpenVINOOptions(device=execution.device))
    elif execution.backend == "onnxruntime":
        backend = OnnxRuntimeBackend.load(path, spec, execution, OnnxRuntimeOptions(device=execution.device,
                                                                                   spinning=True))
    else:  # TensorRT's arithmetic, emulated: the Q/DQ as written (no fusion into this CPU's integer kernels)
        backend = OnnxRuntimeBackend.load(path, spec, REFERENCE, OnnxRuntimeOptions(optimize=False, spinning=True))
    with backend:
        yield backend


def run_part(spec, path, execution: Execution, feeds: list, seconds: dict | None = None) -> np.ndarray:
    """The part from `path` over every feed, outputs concatenated; `seconds[spec.name]` gets the inference time."""
    with open_part(spec, path, execution) as backend:
        name, names = spec.outputs[0].name, {s.name for s in spec.inputs}
        start = time.perf_counter()
        out = np.concatenate([backend.infer({k: v for k, v in f.items() if k in names})[name] for f in feeds])
        if seconds is not None:
            seconds[spec.name] = time.perf_counter() - start
        return out


def bf16_round(x: np.ndarray) -> np.ndarray:
    """`x` rounded to bfloat16 (8 bits of mantissa, round to nearest even), as float32: a harmless perturbation."""
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounded = (bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))) & np.uint32(0xFFFF0000)
    return rounded.view(np.float32)


@dataclass
class Evaluator:
    """The FP32 reference on one split's feeds, and outcomes of other part files against it."""

    manifest: object
    files: dict  # component -> its FP32 file
    feeds: list
    labels: object

    def __post_init__(self):
        self.wiring = self.manifest.wiring
        self.seconds: dict = {}  # FP32 model time per component on this split
        self.fp32 = {c: self.features(c, self.files[c], REFERENCE, self.seconds) for c in ENCODERS}
        self.logits = self.head(self.files[FUSION_HEAD], self.fp32[IMAGE_ENCODER], self.fp32[TEXT_ENCODER],
                                REFERENCE, self.seconds)
        self.outcome = head_outcome(self.logits, self.logits, self.labels, len(self.manifest.labels))

    @property
    def n(self) -> int:
        return len(self.logits)

    def features(self, component: str, path, execution: Execution, seconds: dict | None = None) -> np.ndarray:
        return run_part(self.manifest.components[component], path, execution, self.feeds, seconds)

    def head_feed(self, image: np.ndarray, text: np.ndarray) -> dict:
        return {self.wiring.image_output: image.astype(np.float32), self.wiring.text_output: text.astype(np.float32)}

    def head(self, path, image: np.ndarray, text: np.ndarray, execution: Execution, seconds: dict | None = None):
        return run_part(self.manifest.components[FUSION_HEAD], path, execution, [self.head_feed(image, text)],
                        seconds)

    def judge_logits(self, logits: np.ndarray) -> dict:
        return head_outcome(logits, self.logits, self.labels, len(self.manifest.labels))

    def pipeline(self, files: dict, execution: Execution) -> dict:
        """The outcome with every part from `files` (component -> path), all run as `execution` says."""
        image = self.features(IMAGE_ENCODER, files[IMAGE_ENCODER], execution)
        text = self.features(TEXT_ENCODER, files[TEXT_ENCODER], execution)
        return self.judge_logits(self.head(files[FUSION_HEAD], image, text, execution))
