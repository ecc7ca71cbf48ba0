"""Which file and which arithmetic a backend runs for a precision: the one place that decides it.

The backends open what `resolve` names, calibration judges what it names (so what it judged is what runs), and
`fusionrt build`, `fusionrt triton` and the manifest's policies read it too. An `Execution` says:
- `target`: whose calibrated judgement applies: int8-cpu (ONNX Runtime's CPU kernels), int8-trt (TensorRT's Q/DQ
  arithmetic on an FP16 base), int8-ov (OpenVINO's kernels);
- `flavour`: the bundle file;
- `float_precision`: the arithmetic of what is not INT8 (fp32, fp16 or bf16);
- `hints`: the backend's settings that make it so (TensorRT builder flags, OpenVINO's precision hint, ...).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

from fusionrt.runtime.errors import BackendUnavailable, InputError
from fusionrt.runtime.manifest import FLAVOURS, INT8_FLOATS

__all__ = ["Execution", "resolve", "target_of", "TARGETS", "PRECISIONS", "DEVICES"]

TARGETS = ("int8-cpu", "int8-trt", "int8-ov")
PRECISIONS = ("fp32", "fp16", "int8")
# the devices each backend resolves for (what its options call them)
DEVICES = {"onnxruntime": ("cpu", "cuda", "tensorrt"), "openvino": ("CPU", "GPU", "NPU", "AUTO"),
           "tensorrt": ("gpu",), "tensorrt_rtx": ("gpu",)}


@dataclass(frozen=True)
class Execution:
    backend: str
    device: str
    precision: str  # what was asked for the part: fp32 | fp16 | int8
    target: str  # the calibrated policy (and its judgement) that applies
    flavour: str  # the bundle file it runs
    float_precision: str  # the arithmetic of everything that is not INT8: fp32 | fp16 | bf16
    hints: Mapping = field(default_factory=dict)  # backend settings (see each rule below)

    @property
    def key(self) -> tuple:
        """Same key, same computation: two precisions that resolve alike (fp16 on ONNX Runtime's CPU) are one."""
        return self.backend, self.device, self.flavour, self.float_precision, tuple(sorted(self.hints.items()))


def target_of(backend: str, device: str | None = None) -> str:
    """The policy target of a backend on a device (int8-cpu, int8-trt or int8-ov)."""
    return resolve(backend, "int8", device).target


def resolve(backend: str, precision: str, device: str | None = None, *, bf16: bool | None = None,
            strongly_typed: bool = True, available=None, int8_float: str | None = None) -> Execution:
    """What `backend` on `device` runs for a part at `precision`.

    bf16: the CPU has BF16 (OpenVINO's CPU float then is BF16; None: read this machine's); strongly_typed: TensorRT 11
    and TensorRT-RTX (the ONNX's types rule) rather than 10.x (builder flags pick precisions); available: the part's
    file flavours, where a fallback depends on them (None: assume every flavour); int8_float: the float under
    OpenVINO's INT8 parts on a CPU as its int8-ov policy was judged (`Policy.int8_float`): 'fp32' keeps FP32 there
    where the CPU has BF16; 'bf16' or None: the CPU's own 16-bit float (BF16 where it has it, else FP32)."""
    if precision not in PRECISIONS:
        raise InputError(f"precision: expected one of {PRECISIONS}, found '{precision}'.")
    if int8_float not in (None, *INT8_FLOATS):
        raise InputError(f"int8_float: expected None or one of {INT8_FLOATS}, found {int8_float!r}.")
    if backend not in DEVICES:
        raise BackendUnavailable(f"unknown backend '{backend}': expected one of {sorted(DEVICES)}.")
    device = device or DEVICES[backend][0]
    if device not in DEVICES[backend]:
        raise BackendUnavailable(f"backend {backend}: device '{device}' unknown, expected one of {DEVICES[backend]}.")
    available = FLAVOURS if available is None else tuple(available)
    has = available.__contains__
    if backend == "openvino":
        target, flavour, float_precision, hints = _openvino(precision, device, has, bf16, int8_float)
    else:
        rule = _onnxruntime if backend == "onnxruntime" else _tensorrt
        target, flavour, float_precision, hints = rule(precision, device, has, bf16, strongly_typed)
    return Execution(backend, device, precision, target, flavour, float_precision, hints)


def _onnxruntime(precision: str, device: str, has, bf16, strongly_typed) -> tuple:
    if device == "cpu":
        # FP16 is a GPU precision: ONNX Runtime's x86 kernels have no FP16 math and would only add casts; the FP32 file
        # gives the same answers (it is the fidelity reference), faster.
        flavour = {"fp32": "fp32", "fp16": "fp32", "int8": "int8-cpu"}[precision]
        return "int8-cpu", flavour, "fp32", {}
    if device == "tensorrt":
        # TensorRT 10 under the EP (weakly typed): the INT8 flag with the FP16 flag, as int8-trt is judged; the Q/DQ
        # nodes say where INT8 goes (no calibration table).
        flavour = {"fp32": "fp32", "fp16": "fp16", "int8": "int8-trt"}[precision]
        hints = {"trt_fp16_enable": precision != "fp32", "trt_int8_enable": precision == "int8"}
        return "int8-trt", flavour, "fp32" if precision == "fp32" else "fp16", hints
    # CUDA EP: what int8-trt is judged on, the Q/DQ graph on its FP16 base, as written
    flavour = {"fp32": "fp32", "fp16": "fp16", "int8": "int8-trt-fp16" if has("int8-trt-fp16") else "int8-trt"}[precision]
    return "int8-trt", flavour, "fp32" if precision == "fp32" or flavour == "int8-trt" else "fp16", {}


def _openvino(precision: str, device: str, has, bf16, int8_float) -> tuple:
    if device == "CPU":
        if bf16 is None:
            from fusionrt.runtime.cpu import cpu_kind

            bf16 = bool(cpu_kind().for_onednn().bf16)  # under ONEDNN_MAX_CPU_ISA too
        half = "bf16" if bf16 else "fp32"  # OpenVINO's 16-bit float on a CPU is BF16, where the CPU has it
        if precision == "int8" and int8_float == "fp32":  # the policy judged BF16 under INT8 and kept FP32
            half = "fp32"
    else:
        half = "fp16"
    float_precision = "fp32" if precision == "fp32" else half
    # int8: OpenVINO's own INT8 file (NNCF) where the bundle has one, else the symmetric Q/DQ graph
    flavour = {"fp32": "fp32", "fp16": "fp32", "int8": "int8-ov" if has("int8-ov") else "int8-trt"}[precision]
    hint = {"fp32": "f32", "bf16": "bf16", "fp16": "f16"}[float_precision]
    return "int8-ov", flavour, float_precision, {"INFERENCE_PRECISION_HINT": hint}


def _tensorrt(precision: str, device: str, has, bf16, strongly_typed) -> tuple:
    if precision == "fp32":
        return "int8-trt", "fp32", "fp32", {"builder_flags": ()}
    if strongly_typed:  # TensorRT 11, TensorRT-RTX: the ONNX's own types; the float the Q/DQ graph keeps is FP16
        flavour = "fp16" if precision == "fp16" else "int8-trt-fp16" if has("int8-trt-fp16") else "int8-trt"
        return "int8-trt", flavour, "fp16" if flavour != "int8-trt" else "fp32", {"builder_flags": ()}
    flags = ("FP16",) if precision == "fp16" else ("INT8", "FP16")  # 10.x: the float under INT8 in FP16 too
    return "int8-trt", "fp32" if precision == "fp16" else "int8-trt", "fp16", {"builder_flags": flags}
