"""A stand-in for TensorRT engines, to run fusionrt's TensorRT runner (`TensorRTBackend`, `TensorRTFusion`) on a GPU
that has no TensorRT (TensorRT cannot be installed on the lent machines).

A copy engine answers the engine and context calls the runner makes, and its `execute_async_v3` enqueues one 2-D
device copy per input, on the stream it is given, at the addresses the runner set: each output row is the bytes of
that row's inputs, side by side. So the result shows whether every input arrived, from which buffer, in which
order, and whether the head waited for both branches. Everything else (pinned buffers, streams, events, CUDA graphs,
borrowed streams, close) is the runner's own code on real CUDA."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np

__all__ = ["LAYOUTS", "WIRING", "open_copy_backends", "logits_bytes", "expected_bytes"]

MAX_BATCH = 32
# component -> (inputs {name: (dtype, width)}, output name); each output is float32, as wide as its inputs' bytes
LAYOUTS = {
    "image_encoder": ({"pixel_values": ("float32", 12)}, "image_features"),
    "text_encoder": ({"input_ids": ("int64", 8), "attention_mask": ("int64", 8)}, "text_features"),
    "fusion_head": ({"image_features": ("float32", 12), "text_features": ("float32", 32)}, "logits"),
}


def _wiring():
    from fusionrt.runtime.wiring import Wiring

    return Wiring(image_input="pixel_values", image_output="image_features", text_inputs=("input_ids", "attention_mask"),
                  text_output="text_features", head_inputs=("image_features", "text_features"), logits="logits")


WIRING = _wiring()


def _row_bytes(inputs) -> int:
    return sum(np.dtype(dtype).itemsize * width for dtype, width in inputs.values())


class CopyEngine:
    """The calls of TensorRT's ICudaEngine that the runner makes."""

    num_optimization_profiles = 4  # a context per profile may run at once: the runner and three clones

    def __init__(self, cu, inputs: dict, output: str, sleep=None):
        self.cu, self.inputs, self.output, self.sleep = cu, inputs, output, sleep
        self.names = [*inputs, output]
        self.num_io_tensors = len(self.names)

    def get_tensor_name(self, index: int) -> str:
        return self.names[index]

    def get_tensor_mode(self, name: str) -> str:
        return "input" if name in self.inputs else "output"

    def get_tensor_profile_shape(self, name: str, profile: int) -> list:
        width = self.inputs[name][1]
        return [(1, width), (MAX_BATCH, width), (MAX_BATCH, width)]

    def get_tensor_dtype(self, name: str):
        return np.dtype(self.inputs[name][0] if name in self.inputs else "float32")

    def create_execution_context(self, *config) -> "CopyContext":
        return CopyContext(self)


class CopyContext:
    """The calls of TensorRT's IExecutionContext that the runner makes."""

    def __init__(self, engine: CopyEngine):
        self.engine, self.shapes, self.addresses = engine, {}, {}

    def set_input_shape(self, name: str, shape) -> bool:
        self.shapes[name] = tuple(shape)
        return True

    def get_tensor_shape(self, name: str) -> tuple:
        if name in self.engine.inputs:
            return self.shapes[name]
        batch = self.shapes[next(iter(self.engine.inputs))][0]
        return (batch, _row_bytes(self.engine.inputs) // 4)

    def set_tensor_address(self, name: str, address: int) -> bool:
        self.addresses[name] = int(address)
        return True

    def set_optimization_profile_async(self, index: int, stream_handle: int) -> bool:
        return 0 <= index < self.engine.num_optimization_profiles

    def infer_shapes(self) -> list:
        return [name for name in self.engine.inputs if name not in self.shapes]

    def execute_async_v3(self, stream_handle: int) -> bool:
        cu, rt = self.engine.cu, self.engine.cu.cudart()
        if self.engine.sleep is not None:  # a slow kernel first: a missing wait on this stream's work then shows
            self.engine.sleep(int(stream_handle))
        batch, pitch, offset = self.get_tensor_shape(self.engine.output)[0], _row_bytes(self.engine.inputs), 0
        for name, (dtype, width) in self.engine.inputs.items():
            nbytes = np.dtype(dtype).itemsize * width
            cu.cuda_call(rt.cudaMemcpy2DAsync(self.addresses[self.engine.output] + offset, pitch, self.addresses[name],
                                              nbytes, nbytes, batch, rt.cudaMemcpyKind.cudaMemcpyDeviceToDevice,
                                              rt.cudaStream_t(int(stream_handle))))
            offset += nbytes
        return True


def _api(cu, component: str, sleep=None):
    """A TrtApi whose module deserializes every plan into this component's copy engine (`sleep(stream)`: a slow kernel
    it enqueues before its copies)."""
    from packaging.version import Version

    from fusionrt.runtime.backends.trt_compat import TrtApi

    inputs, output = LAYOUTS[component]
    logger = type("Logger", (), {"WARNING": 2, "__init__": lambda self, severity: None})
    module = SimpleNamespace(Logger=logger, TensorIOMode=SimpleNamespace(INPUT="input", OUTPUT="output"),
                             nptype=np.dtype,
                             Runtime=lambda _: SimpleNamespace(deserialize_cuda_engine=lambda _: CopyEngine(cu, inputs, output,
                                                                                               sleep)))
    return TrtApi("tensorrt", module, Version("10.0"))


def open_copy_backends(cu, folder: Path, head_stream: int | None = None, sleep=None) -> dict:
    """The three components as TensorRTBackends over copy engines; the head on a caller's stream when given."""
    from fusionrt.runtime.backends.tensorrt import TensorRTBackend
    from fusionrt.runtime.manifest import TensorSpec

    backends = {}
    try:
        for component, (inputs, output) in LAYOUTS.items():
            plan = Path(folder) / f"{component}.copy-engine"
            plan.write_bytes(b"copy engine")
            specs = tuple(TensorSpec(name, dtype, ("batch", width)) for name, (dtype, width) in inputs.items())
            out = (TensorSpec(output, "float32", ("batch", _row_bytes(inputs) // 4)),)
            stream = cu.Stream(head_stream if component == "fusion_head" else None)
            try:
                backends[component] = TensorRTBackend(_api(cu, component, sleep), plan,
                                                      SimpleNamespace(path=str(plan)), specs, out, stream)
            except BaseException:
                stream.close()
                raise
    except BaseException:
        for backend in backends.values():
            backend.close()
        raise
    return backends


def logits_bytes(logits: np.ndarray) -> np.ndarray:
    """The head's output as bytes, one row per sample (compared as bytes: int64 bytes read as float32 can be NaN)."""
    return np.ascontiguousarray(logits).view(np.uint8).reshape(len(logits), -1)


def expected_bytes(pixels: np.ndarray, tokens: dict) -> np.ndarray:
    """What the copy engines' head returns, as bytes: each row's pixel, id and mask bytes side by side."""
    rows = [np.ascontiguousarray(a).view(np.uint8).reshape(len(pixels), -1)
            for a in (pixels, tokens["input_ids"], tokens["attention_mask"])]
    return np.concatenate(rows, axis=1)
