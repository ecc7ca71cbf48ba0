"""OpenVINO backend: the bundle's ONNX files compiled by OpenVINO for an Intel/AMD CPU, an Intel GPU or NPU.

OpenVINO reads the ONNX bytes directly (no conversion step, no torch). What each precision runs is the resolver's
(`fusionrt.runtime.resolve`): fp32 with FP32 forced (OpenVINO's CPU default is BF16 where the CPU has it, which flips
samples); fp16 the device's 16-bit float on the FP32 file (BF16 on a CPU that has it, FP16 on a GPU); int8 the
`int8-ov` IR (.xml + .bin: NNCF's text encoder, the int8-cpu recipe's image encoder and head) where the bundle has
it, else the int8-trt Q/DQ ONNX, its float parts in that 16-bit float. `calibrate` judges these on OpenVINO itself
(the `int8-ov` policy, where openvino is installed); a bundle calibrated without it runs FP32 here unless asked
otherwise. Both branches run at once with OpenVINO's asynchronous infer requests (the image branch runs while the
text branch runs on the caller's thread), then the head."""

from __future__ import annotations

import dataclasses
import threading
import time
from dataclasses import dataclass
from typing import Literal, Mapping

import numpy as np

from fusionrt.runtime.backends.base import Backend, BackendOptions
from fusionrt.runtime.cpu import cpu_kind
from fusionrt.runtime.errors import BackendUnavailable
from fusionrt.runtime.execution import Executor, Result, Timings, host_results_only
from fusionrt.runtime.optional import require
from fusionrt.runtime.manifest import FUSION_HEAD, IMAGE_ENCODER, TEXT_ENCODER

__all__ = ["OpenVINOBackend", "OpenVINOOptions", "OpenVINOExecutor", "compile_model", "int8_source",
           "int8_linear_form", "LINEAR_FORMS", "WEIGHTS"]

_HINT_PRECISION = {"f32": "fp32", "bf16": "bf16", "f16": "fp16"}
# the int8-ov text encoder's linear layers: INT8 math as NNCF writes them, or as 1x1 convolutions (see
# calibration/openvino_linear.py); or INT8 weights with float math, where that is faster (calibration measures it)
WEIGHTS = "weights"
LINEAR_FORMS = ("matmul", "conv", WEIGHTS)


def int8_linear_form(kind) -> str:
    """The linear layers' form OpenVINO runs fast in INT8 math on this CPU kind: 'conv' (1x1 convolutions) where its
    INT8 GEMM has no fast kernel (no VNNI, or oneDNN limited below it), else 'matmul'."""
    if not kind.for_onednn().vnni:
        return "conv"
    return "matmul"


@dataclass(frozen=True)
class OpenVINOOptions(BackendOptions):
    device: Literal["CPU", "GPU", "NPU", "AUTO"] = "CPU"
    threads: int = 0  # inference threads per model; 0 = OpenVINO's choice
    precision_hint: Literal["f32", "bf16", "f16"] | None = None  # override every part's float (default: the resolver's)
    performance_hint: Literal["latency", "throughput"] = "latency"
    # OpenVINO pins each compiled model's threads to cores. None: its choice when the branches run one after the
    # other, off when they run at once (it pins both branches' threads to the same cores, which then take turns).
    pinning: bool | None = None

    def for_branches(self, concurrent: bool) -> "OpenVINOOptions":
        return self if self.pinning is not None or not concurrent else dataclasses.replace(self, pinning=False)


def int8_source(manifest) -> tuple:
    """(flavour, why): which file OpenVINO runs for an INT8 part of this bundle, and why, in words (`fusionrt info`).
    Needs no openvino: it reads the manifest and the resolver."""
    from fusionrt.runtime.resolve import resolve

    flavours = {c: resolve("openvino", "int8", "CPU", bf16=False, available=comp.files).flavour
                for c, comp in manifest.components.items()}
    judged = "int8-ov" in manifest.policies
    if set(flavours.values()) == {"int8-ov"}:
        # a bundle from before the choice was recorded has NNCF's MatMul form
        linear, here = manifest.calibration.get("openvino_linear", "matmul"), int8_linear_form(cpu_kind())
        form = {"conv": ", linear layers as 1x1 convolutions (fast without VNNI)",
                "matmul": ", linear layers as MatMuls (fast with VNNI)",
                WEIGHTS: ", the text encoder's weights INT8 with float math (faster than INT8 math on the calibrating "
                         "CPU at the calibration texts' lengths" + _timed(manifest.calibration) + ")"}.get(linear, "")
        if linear and linear not in (here, WEIGHTS):  # 'weights' was measured, not read off the CPU kind
            form += (f"; this CPU runs the '{here}' form faster: `fusionrt calibrate` here (or with --openvino-linear "
                     f"{here}) writes it")
        sources = manifest.calibration.get("openvino_sources") or {c: "nncf" for c in manifest.components}
        made = "; ".join(f"{c}: {'NNCF' if how == 'nncf' else 'the ' + how + ' recipe'}" for c, how in sources.items())
        return "int8-ov", f"OpenVINO IR of every part ({made})" + form + ("" if judged else
                                                                     ", but no int8-ov policy: FP32 unless asked")
    if "int8-trt" in manifest.components[FUSION_HEAD].files:
        return "int8-trt", ("the bundle has no int8-ov flavour (NNCF's INT8, OpenVINO's fast path), so int8 parts run "
                            "the int8-trt Q/DQ files, slower on a CPU without AMX; install 'fusionrt[openvino]' (nncf) "
                            "and run `fusionrt calibrate` again to write it") + (
            "" if judged else "; no int8-ov policy either: FP32 unless asked")
    return "", "the bundle is not calibrated: OpenVINO runs FP32 (run `fusionrt calibrate` for INT8)"


def _timed(calibration: dict) -> str:
    """'; text encoder per call: weights 2.5 ms, conv 3.4 ms' where calibration timed the forms."""
    timed = calibration.get("openvino_linear_ms") or {}
    return ("; text encoder per call: " + ", ".join(f"{f} {ms:.2f} ms" for f, ms in timed.items())) if timed else ""


def _ov():
    return require("openvino", "the openvino backend")


def compile_model(data, device: str = "CPU", hint: str = "f32", threads: int = 0,
                  performance_hint: str = "latency", core=None, pinning: bool | None = None):
    """An OpenVINO compiled model from ONNX bytes, an IR's (graph, weights) bytes, or a path: the one place the
    backend sets OpenVINO's hints. hint: INFERENCE_PRECISION_HINT (f32, bf16, f16), as the resolver names it;
    pinning: ENABLE_CPU_PINNING on a CPU (None: OpenVINO's choice)."""
    core = core or _ov().Core()
    config = {"PERFORMANCE_HINT": performance_hint.upper()}
    if device in ("CPU", "GPU"):
        config["INFERENCE_PRECISION_HINT"] = hint
    if threads and device == "CPU":
        config["INFERENCE_NUM_THREADS"] = int(threads)
    if pinning is not None and device == "CPU":
        config["ENABLE_CPU_PINNING"] = bool(pinning)
    if isinstance(data, tuple):  # an IR's graph and weights, as bytes
        model = core.read_model(bytes(data[0]), bytes(data[1]))
    elif isinstance(data, (bytes, bytearray, memoryview)):
        model = core.read_model(bytes(data))
    else:  # a path: ONNX, or an IR's .xml with its .bin beside it
        model = core.read_model(str(data))
    return core.compile_model(model, device, config)


def _check_float(compiled, name: str, asked: str, device: str) -> None:
    """OpenVINO's CPU plugin takes a float it cannot run as FP32, silently: what runs would then not be what the
    precision names (and calibration judged), so a CPU part that would run another float than asked is refused."""
    if device != "CPU":
        return
    ran = compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
    if ran != asked:
        raise BackendUnavailable(
            f"OpenVINO would run {name} in {ran}, not the {asked} asked: this CPU ({cpu_kind().label}) has no {asked} "
            f"kernels for OpenVINO. Pass precision_hint='f32' (INT8 parts stay INT8, their float f32) or precision='fp32'.")


class OpenVINOBackend(Backend):
    name = "openvino"
    Options = OpenVINOOptions
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
    def device_of(cls, options: OpenVINOOptions) -> str:
        return options.device

    @classmethod
    def execution(cls, precision: str, options: OpenVINOOptions, available=None, int8_float=None):
        execution = super().execution(precision, options, available, int8_float)
        if options.precision_hint is None:
            return execution
        # the user's override: the float it names, with its hint (judged or not, as asked)
        return dataclasses.replace(execution, float_precision=_HINT_PRECISION[options.precision_hint],
                                   hints={"INFERENCE_PRECISION_HINT": options.precision_hint})

    @classmethod
    def load(cls, model, component, execution, options: OpenVINOOptions, bundle=None) -> "OpenVINOBackend":
        core = _ov().Core()
        if options.device != "AUTO" and options.device not in core.available_devices:
            raise BackendUnavailable(f"OpenVINO device '{options.device}' not found: this machine has "
                                     f"{core.available_devices}. Pass device='CPU' (or 'AUTO').")
        try:
            compiled = compile_model(model, options.device, execution.hints["INFERENCE_PRECISION_HINT"],
                                     options.threads, options.performance_hint, core, options.pinning)
        except RuntimeError as exc:
            raise BackendUnavailable(f"OpenVINO could not compile {component.name} for {options.device} ({exc}).") from exc
        _check_float(compiled, component.name, execution.hints["INFERENCE_PRECISION_HINT"], options.device)
        return cls(compiled, component.inputs, component.outputs)

    @classmethod
    def executor(cls, backends: Mapping[str, "OpenVINOBackend"], wiring, options: OpenVINOOptions, concurrent: bool):
        """With concurrent branches, the image branch as an asynchronous request beside the text branch."""
        return OpenVINOExecutor(backends, wiring) if concurrent else super().executor(backends, wiring, options, False)

    def _infer(self, feeds: Mapping[str, np.ndarray]) -> dict:
        # shared, not copied, both ways (half of a small model's call time): the caller waits, and the results are
        # copied out before the request runs again
        results = self.request.infer(dict(feeds), share_inputs=True, share_outputs=True)
        return {spec.name: np.array(results[spec.name], copy=True) for spec in self.output_specs}

    def clone(self) -> "OpenVINOBackend":
        """The same compiled model (OpenVINO runs it from many requests at once) with requests of its own."""
        return type(self)(self.compiled, self.input_specs, self.output_specs)

    def close(self) -> None:
        self.compiled, self._local = None, threading.local()
        super().close()


class OpenVINOExecutor(Executor):
    """The image branch as an asynchronous infer request while the text branch runs on the caller's thread (or the
    text's features are given), then the head. Each calling thread has its own requests."""

    def __init__(self, backends: Mapping[str, OpenVINOBackend], wiring):
        self.image, self.text, self.head = (backends[c] for c in (IMAGE_ENCODER, TEXT_ENCODER, FUSION_HEAD))
        self.wiring = wiring

    def run(self, pixels: np.ndarray, tokens: Mapping[str, np.ndarray], text_features: np.ndarray | None = None,
            device_output: bool = False, sync: bool = True) -> Result:
        host_results_only(device_output, sync, "OpenVINO")
        w, timings = self.wiring, Timings()
        image_feeds = {w.image_input: pixels}
        self.image.check(image_feeds)
        start = time.perf_counter()
        request = self.image.request
        # returns at once; OpenVINO runs it on its own threads, reading `pixels` (shared: held until the wait)
        request.start_async(image_feeds, share_inputs=True)
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
