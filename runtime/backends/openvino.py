"""OpenVINO backend: the bundle's ONNX files compiled by OpenVINO for an Intel/AMD CPU, an Intel GPU or NPU.

OpenVINO reads the ONNX bytes directly (no conversion step, no torch). Precisions per part:
- fp32: the FP32 file with FP32 forced (OpenVINO's CPU default is BF16 where the CPU has it, which flips samples);
- fp16: the device's 16-bit float, on the FP32 file: BF16 on a CPU that has it (AVX-512 BF16, AMX), FP16 on a GPU;
- int8: the bundle's symmetric Q/DQ flavour (`int8-trt`), its float parts in that 16-bit float.
`calibrate` measures these on OpenVINO itself (the `int8-ov` policy, where openvino is installed); bundles without it
use the int8-trt policy. Both branches run at once with OpenVINO's asynchronous infer requests (the image branch runs
while the text branch runs on the caller's thread), then the head."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Literal, Mapping

import numpy as np

from fusionrt.runtime.backends.base import Backend, BackendOptions
from fusionrt.runtime.errors import BackendUnavailable
from fusionrt.runtime.execution import Result, Timings, host_results_only
from fusionrt.runtime.optional import require

__all__ = ["OpenVINOBackend", "OpenVINOOptions", "OpenVINOExecutor", "compile_model", "inference_hint"]

FLAVOUR_FOR_PRECISION = {"fp32": "fp32", "fp16": "fp32", "int8": "int8-trt"}  # fp16: the FP32 file, a 16-bit hint


@dataclass(frozen=True)
class OpenVINOOptions(BackendOptions):
    device: Literal["CPU", "GPU", "NPU", "AUTO"] = "CPU"
    threads: int = 0  # inference threads per model; 0 = OpenVINO's choice
    precision_hint: Literal["f32", "bf16"] | None = None  # override the hint of every part (default: by precision)
    performance_hint: Literal["latency", "throughput"] = "latency"


def _ov():
    return require("openvino", "the openvino backend")


def inference_hint(core, device: str, precision: str) -> str:
    """OpenVINO's INFERENCE_PRECISION_HINT for a part at `precision`: f32 for fp32; for fp16 and int8 (its float
    parts) the device's 16-bit float: bf16 on a CPU that has it, f16 on a GPU, else f32."""
    if precision == "fp32":
        return "f32"
    if device == "CPU":
        return "bf16" if "BF16" in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES") else "f32"
    return "f16"


def compile_model(data: bytes, device: str = "CPU", precision: str = "fp32", threads: int = 0,
                  performance_hint: str = "latency", precision_hint: str | None = None, core=None):
    """An OpenVINO compiled model from ONNX bytes: the one place the backend (and calibration, which measures what the
    backend runs) sets OpenVINO's hints. precision_hint overrides the one `precision` implies."""
    core = core or _ov().Core()
    config = {"PERFORMANCE_HINT": performance_hint.upper()}
    if device in ("CPU", "GPU"):
        config["INFERENCE_PRECISION_HINT"] = precision_hint or inference_hint(core, device, precision)
    if threads and device == "CPU":
        config["INFERENCE_NUM_THREADS"] = int(threads)
    return core.compile_model(core.read_model(data), device, config)


class OpenVINOBackend(Backend):
    name = "openvino"
    Options = OpenVINOOptions
    fuses = True  # its executor runs the image branch as an asynchronous infer request
    package = "openvino"

    def __init__(self, compiled, inputs: tuple, outputs: tuple):
        super().__init__(inputs, outputs)
        self.compiled = compiled
        self._local = threading.local()  # an infer request is not thread-safe: one per thread

    @property
    def request(self):
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self.compiled.create_infer_request()
        return request

    @classmethod
    def int8_target(cls, options: OpenVINOOptions) -> str:
        return "int8-ov"

    @classmethod
    def open(cls, bundle, component: str, precision: str, options: OpenVINOOptions) -> "OpenVINOBackend":
        ov = _ov()
        comp = bundle.manifest.components[component]
        flavour = FLAVOUR_FOR_PRECISION[precision]
        if flavour not in comp.files:
            raise BackendUnavailable(f"{component}: no {flavour} model in the bundle (has {sorted(comp.files)}). Run "
                                     "`fusionrt calibrate BUNDLE --data DATA` for int8, or load with precision='fp32'.")
        core = ov.Core()
        if options.device != "AUTO" and options.device not in core.available_devices:
            raise BackendUnavailable(f"OpenVINO device '{options.device}' not found: this machine has "
                                     f"{core.available_devices}. Pass device='CPU' (or 'AUTO').")
        data = bundle.read(comp.files[flavour].path, comp.files[flavour].sha256, verify=options.verify)
        try:
            compiled = compile_model(data, options.device, precision, options.threads, options.performance_hint,
                                     options.precision_hint, core)
        except RuntimeError as exc:
            raise BackendUnavailable(f"OpenVINO could not compile {component} for {options.device} ({exc}).") from exc
        return cls(compiled, comp.inputs, comp.outputs)

    @classmethod
    def fuse(cls, backends: Mapping[str, "OpenVINOBackend"], wiring, options: OpenVINOOptions) -> "OpenVINOExecutor":
        return OpenVINOExecutor(backends, wiring)

    def _infer(self, feeds: Mapping[str, np.ndarray]) -> dict:
        request = self.request
        request.infer(dict(feeds))
        return {spec.name: np.array(request.get_tensor(spec.name).data, copy=True) for spec in self.output_specs}

    def clone(self) -> "OpenVINOBackend":
        """The same compiled model (OpenVINO runs it from many requests at once) with requests of its own."""
        return type(self)(self.compiled, self.input_specs, self.output_specs)

    def close(self) -> None:
        self.compiled, self._local = None, threading.local()
        super().close()


class OpenVINOExecutor:
    """The image branch as an asynchronous infer request while the text branch runs on the caller's thread (or the
    text's features are given), then the head. Each calling thread has its own requests."""

    def __init__(self, backends: Mapping[str, OpenVINOBackend], wiring):
        self.image, self.text, self.head = (backends[c] for c in ("image_encoder", "text_encoder", "fusion_head"))
        self.wiring = wiring

    def run(self, pixels: np.ndarray, tokens: Mapping[str, np.ndarray], text_features: np.ndarray | None = None,
            device_output: bool = False, sync: bool = True) -> Result:
        host_results_only(device_output, sync, "OpenVINO")
        w, timings = self.wiring, Timings()
        image_feeds = {w.image_input: pixels}
        self.image.check(image_feeds)
        start = time.perf_counter()
        request = self.image.request
        request.start_async(image_feeds)  # returns at once; OpenVINO runs it on its own threads
        if text_features is None:
            text_start = time.perf_counter()
            text_features = self.text.infer(w.text_feeds(tokens))[w.text_output]
            timings.text_ms = (time.perf_counter() - text_start) * 1e3
        request.wait()
        image_features = np.array(request.get_tensor(w.image_output).data, copy=True)
        timings.branches_ms = timings.image_ms = (time.perf_counter() - start) * 1e3  # the async request's wall time
        features = {w.image_output: image_features, w.text_output: text_features}
        head_start = time.perf_counter()
        logits = self.head.infer({n: features[n] for n in w.head_inputs})[w.logits]
        timings.head_ms = (time.perf_counter() - head_start) * 1e3
        return Result(logits, text_features, timings)

    def close(self) -> None:
        pass
