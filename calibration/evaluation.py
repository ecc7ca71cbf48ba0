"""Held-out evaluation for calibration: the FP32 reference (features, logits, outcome) and the outcome of any other
model file, or mix of them, against it, on ONNX Runtime."""

from __future__ import annotations

import time

import numpy as np

from fusionrt.calibration.fidelity import head_outcome
from fusionrt.runtime.backends.onnxruntime import OnnxRuntimeBackend

__all__ = ["ENCODERS", "run_component", "run_component_ov", "bf16_round", "Evaluator"]

ENCODERS = ("image_encoder", "text_encoder")


def run_component(spec, path, feeds: list, exact: bool = False, seconds: dict | None = None) -> np.ndarray:
    """The component `spec` (a manifest Component) from `path` over every feed, outputs concatenated;
    `seconds[spec.name]` gets the inference time when a dict is passed. exact=True runs the Q/DQ as written."""
    with OnnxRuntimeBackend(path, spec.inputs, spec.outputs, ["CPUExecutionProvider"], optimize=not exact) as b:
        name, names = spec.outputs[0].name, {s.name for s in spec.inputs}
        start = time.perf_counter()
        out = np.concatenate([b.infer({k: v for k, v in f.items() if k in names})[name] for f in feeds])
        if seconds is not None:
            seconds[spec.name] = time.perf_counter() - start
        return out


def run_component_ov(spec, path, feeds: list, precision: str, seconds: dict | None = None) -> np.ndarray:
    """Like `run_component`, on OpenVINO's CPU kernels at `precision` (fp16: the CPU's 16-bit float, BF16 where it has
    it), compiled as the openvino backend compiles it."""
    from pathlib import Path

    from fusionrt.runtime.backends.openvino import compile_model

    request = compile_model(Path(path).read_bytes(), "CPU", precision).create_infer_request()
    names, output = {s.name for s in spec.inputs}, spec.outputs[0].name
    start, out = time.perf_counter(), []
    for feed in feeds:
        request.infer({k: v for k, v in feed.items() if k in names})
        out.append(np.array(request.get_tensor(output).data, copy=True))
    if seconds is not None:
        seconds[spec.name] = time.perf_counter() - start
    return np.concatenate(out)


def bf16_round(x: np.ndarray) -> np.ndarray:
    """`x` rounded to bfloat16 (8 bits of mantissa, round to nearest even), as float32: a harmless perturbation."""
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounded = (bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))) & np.uint32(0xFFFF0000)
    return rounded.view(np.float32)


class Evaluator:
    """The FP32 reference on the held-out feeds, and outcomes of other models against it."""

    def __init__(self, manifest, fp32_files: dict, feeds: list, labels):
        self.manifest, self.wiring, self.files, self.feeds, self.labels = manifest, manifest.wiring, fp32_files, feeds, labels
        self.seconds: dict = {}  # FP32 model time per component on the held-out split
        self.fp32 = {c: self.features(c, fp32_files[c], seconds=self.seconds) for c in ENCODERS}
        self.logits = self.head(fp32_files["fusion_head"], self.fp32["image_encoder"], self.fp32["text_encoder"],
                                seconds=self.seconds)
        self.outcome = head_outcome(self.logits, self.logits, labels, len(manifest.labels))

    def features(self, component: str, path, exact: bool = False, seconds: dict | None = None) -> np.ndarray:
        return run_component(self.manifest.components[component], path, self.feeds, exact, seconds)

    def head(self, path, image: np.ndarray, text: np.ndarray, exact: bool = False, seconds: dict | None = None):
        feed = {self.wiring.image_output: image.astype(np.float32), self.wiring.text_output: text.astype(np.float32)}
        return run_component(self.manifest.components["fusion_head"], path, [feed], exact, seconds)

    def features_ov(self, component: str, path, precision: str, seconds: dict | None = None) -> np.ndarray:
        return run_component_ov(self.manifest.components[component], path, self.feeds, precision, seconds)

    def head_ov(self, path, image: np.ndarray, text: np.ndarray, precision: str, seconds: dict | None = None):
        feed = {self.wiring.image_output: image.astype(np.float32), self.wiring.text_output: text.astype(np.float32)}
        return run_component_ov(self.manifest.components["fusion_head"], path, [feed], precision, seconds)

    def judge_logits(self, logits: np.ndarray) -> dict:
        return head_outcome(logits, self.logits, self.labels, len(self.manifest.labels))

    def component_alone(self, component: str, path, exact: bool = False) -> dict:
        """The outcome with `component` from `path` and the other two parts FP32."""
        if component == "fusion_head":
            return self.judge_logits(self.head(path, self.fp32["image_encoder"], self.fp32["text_encoder"], exact))
        features = dict(self.fp32, **{component: self.features(component, path, exact)})
        return self.judge_logits(self.head(self.files["fusion_head"], features["image_encoder"], features["text_encoder"]))
