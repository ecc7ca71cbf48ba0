"""TensorRT backend for TensorRT 10.x, 11.x and TensorRT-RTX engines, on cuda-python.

Each component owns an engine, one execution context, one CUDA stream, and device + pinned host buffers sized
for its profile's largest shapes (no allocation per call). Called one by one (`infer`), a component copies in,
runs and copies out on its own stream. The pipeline's fused path (`TensorRTFusion`) enqueues the image and text
branches on their two streams at once and the head on a third stream (the caller's, when one is passed) after
`cudaStreamWaitEvent` on both; the head reads the encoders' device outputs directly; one host sync per call;
optionally the whole sequence is captured as a CUDA graph per (batch, sequence) bucket (`trt_fusion.py`)."""

from __future__ import annotations

import importlib.util
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Mapping

import numpy as np

from fusionrt.runtime import cuda
from fusionrt.runtime.backends.base import Backend, BackendOptions
from fusionrt.runtime.backends.trt_compat import TrtApi, load_api
from fusionrt.runtime.backends.trt_fusion import TensorRTFusion
from fusionrt.runtime.device_array import DeviceArray
from fusionrt.runtime.errors import BackendUnavailable, EngineMismatch, InputError
from fusionrt.runtime.manifest import FUSION_HEAD, IMAGE_ENCODER, TEXT_ENCODER

__all__ = ["TensorRTBackend", "TensorRTRTXBackend", "TensorRTOptions", "TensorRTFusion", "check_engine"]


def _gpu(device: int = 0) -> tuple:
    """(compute capability 'X.Y', GPU name) of `device`, made current. Without cuda-bindings the error says what to
    install; without a GPU (or with fewer), what there is."""
    cuda.cudart()  # BackendUnavailable naming the package to install, when cuda-bindings is missing
    count = cuda.device_count()
    if count == 0:
        raise BackendUnavailable("no CUDA GPU found: TensorRT engines run on an NVIDIA GPU. Use backend='onnxruntime' "
                                 "or 'openvino' on this machine.")
    if not 0 <= device < count:
        raise BackendUnavailable(f"CUDA device {device} asked for: expected 0..{count - 1} on this machine ({count} "
                                 "GPUs). Pass device=N within that range.")
    cuda.set_device(device)
    (major, minor), name = cuda.compute_capability(device)
    return f"{major}.{minor}", name


_LOGGERS: dict = {}  # one TensorRT logger per product: TensorRT warns when a second, different one is passed


def _logger(trt):
    if trt.Logger not in _LOGGERS:  # keyed by the product's Logger class: one per TensorRT package
        _LOGGERS[trt.Logger] = trt.Logger(trt.Logger.WARNING)
    return _LOGGERS[trt.Logger]


def check_engine(record, api: TrtApi, gpu_cc: str, gpu_name: str) -> None:
    """Raise EngineMismatch, saying what to run, when `record` was built for another product, version or GPU.
    Checked before deserializing: a mismatched plan fails inside TensorRT with a far less helpful message."""
    from packaging.version import Version

    found = []
    if record.product != api.product:
        found.append(f"product {record.product} (running {api.product})")
    if Version(record.version) != api.version:
        found.append(f"version {record.version} (running {api.version})")
    if record.compute_capability and record.compute_capability != gpu_cc:
        found.append(f"compute capability {record.compute_capability} (this GPU, {gpu_name}, is {gpu_cc})")
    if found:
        target = "tensorrt-rtx" if api.product == "tensorrt_rtx" else "tensorrt"
        raise EngineMismatch(f"engine {record.path} was built for {', '.join(found)}. Rebuild it here: "
                             f"fusionrt build BUNDLE --target {target} --precision {record.precision}")


def _select(comp, precision: str, api: TrtApi, gpu_cc: str, gpu_name: str):
    mine = [e for e in comp.engines if e.precision == precision and e.product == api.product]
    for record in mine:
        try:
            check_engine(record, api, gpu_cc, gpu_name)
            return record
        except EngineMismatch:
            continue
    if mine:
        check_engine(mine[0], api, gpu_cc, gpu_name)  # raises, naming the difference
    raise BackendUnavailable(f"{comp.name}: the bundle has no {precision} engine for {api.product} {api.version} "
                             f"(it has {[(e.product, e.version, e.precision) for e in comp.engines] or 'none'}). "
                             f"Run: fusionrt build BUNDLE --precision {precision}")


class _Tensor:
    """One I/O tensor: a device buffer and a pinned host buffer, both sized for the profile's largest shape."""

    def __init__(self, name: str, dtype, max_shape: tuple, min_shape: tuple | None = None):
        self.name, self.dtype, self.max_shape = name, np.dtype(dtype), tuple(max_shape)
        self.min_shape = tuple(min_shape) if min_shape is not None else tuple(1 for _ in max_shape)
        self.host = cuda.PinnedBuffer(self.max_shape, self.dtype)
        self.device = cuda.DeviceBuffer(self.host.nbytes)
        self.shape = self.max_shape

    def view(self, shape) -> np.ndarray:
        return self.host.array.reshape(-1)[: int(np.prod(shape))].reshape(shape)

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * self.dtype.itemsize

    def close(self) -> None:
        self.device.close()
        self.host.close()


@dataclass(frozen=True)
class TensorRTOptions(BackendOptions):
    stream: int | None = None  # a caller's CUDA stream handle (torch, CuPy): the head runs and the results land on it
    cuda_graphs: bool = False  # capture each (batch, sequence) shape of the fused call as a CUDA graph
    device: int = 0  # the CUDA device the engines run on


class TensorRTBackend(Backend):
    name = "tensorrt"
    Options = TensorRTOptions
    product: ClassVar[str] = "tensorrt"  # the Python package whose runtime deserializes the plans

    def __init__(self, api: TrtApi, plan, record, inputs: tuple, outputs: tuple, stream: cuda.Stream, shared=None,
                 cuda_graphs: bool = False):
        """plan: the engine's bytes (what `Bundle.read` checked) or its path; or `shared`, the (logger, runtime,
        engine) of the backend this one is a clone of."""
        super().__init__(inputs, outputs)
        trt = api.trt
        self.api, self.record, self.stream = api, record, stream
        self._tensors: dict = {}
        self._lock = threading.Lock()  # one call at a time uses this context and these buffers
        if shared is not None:
            self._logger, self._runtime, self.engine = shared
        else:
            self._logger = _logger(trt)
            self._runtime = trt.Runtime(self._logger)
            data = bytes(plan) if isinstance(plan, (bytes, bytearray, memoryview)) else Path(plan).read_bytes()
            self.engine = self._runtime.deserialize_cuda_engine(data)
        if self.engine is None:
            raise EngineMismatch(f"{api.product} {api.version} could not deserialize {record.path} (see its log): rebuild it "
                                 "with `fusionrt build` on this machine.")
        self.cuda_graphs = cuda_graphs
        self.context = api.create_context(self.engine, cuda_graphs)  # RTX: its built-in graphs when asked
        try:
            self._allocate(trt)
        except BaseException:
            self.close()
            raise

    # -- what a backend class provides -----------------------------------------------------------------
    @classmethod
    def usable(cls) -> bool:
        return importlib.util.find_spec(cls.product) is not None and cuda.device_count() > 0

    @classmethod
    def device_of(cls, options: TensorRTOptions) -> str:
        return "gpu"

    @classmethod
    def execution(cls, precision: str, options: TensorRTOptions, available=None):
        """What an engine at `precision` was built from and computes (the installed TensorRT's typing decides)."""
        from fusionrt.runtime.resolve import resolve

        return resolve(cls.name, precision, "gpu", strongly_typed=load_api(cls.product).strongly_typed,
                       available=available)

    @classmethod
    def target(cls, options: TensorRTOptions) -> str:
        return "int8-trt"  # every TensorRT engine is built from the TensorRT flavour

    @classmethod
    def open(cls, bundle, component: str, precision: str, options: TensorRTOptions) -> "TensorRTBackend":
        api = load_api(cls.product)
        gpu_cc, gpu_name = _gpu(options.device)
        comp = bundle.manifest.components[component]
        record = _select(comp, precision, api, gpu_cc, gpu_name)
        plan = bundle.read(record.path, record.sha256, verify=options.verify)  # read once: these bytes are the engine
        borrowed = options.stream if component == FUSION_HEAD else None
        stream = cuda.Stream(int(borrowed) if borrowed is not None else None)
        try:
            return cls(api, plan, record, comp.inputs, comp.outputs, stream, cuda_graphs=options.cuda_graphs)
        except BaseException:
            stream.close()
            raise

    @classmethod
    def executor(cls, backends: Mapping[str, "TensorRTBackend"], wiring, options: TensorRTOptions,
                 concurrent: bool = True):
        """TensorRTFusion: with concurrent branches, on two CUDA streams; else the generic one."""
        if not concurrent:
            return super().executor(backends, wiring, options, False)
        head = backends[FUSION_HEAD]
        # TensorRT-RTX runs CUDA graphs itself (its contexts were made with them on): no capture of our own there
        return TensorRTFusion(backends[IMAGE_ENCODER], backends[TEXT_ENCODER], head, wiring,
                              graphs=options.cuda_graphs and not head.api.builtin_cuda_graphs)

    def _allocate(self, trt) -> None:
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.input_names = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.output_names = [n for n in names if n not in self.input_names]
        lowest = {}
        for name in self.input_names:  # the largest shapes of profile 0, to size the buffers once
            low, _, high = self.engine.get_tensor_profile_shape(name, 0)
            lowest[name] = tuple(low)
            self._set_shape(name, tuple(high))
        for name in names:
            shape = tuple(self.context.get_tensor_shape(name))
            self._tensors[name] = _Tensor(name, trt.nptype(self.engine.get_tensor_dtype(name)), shape, lowest.get(name))
            self.context.set_tensor_address(name, self._tensors[name].device.ptr)

    def _set_shape(self, name: str, shape: tuple) -> None:
        if not self.context.set_input_shape(name, tuple(shape)):  # False: TensorRT refused it (it logs why)
            raise InputError(f"input '{name}': TensorRT refused shape {list(shape)} for {self.record.path}; expected a "
                             "shape inside the engine's optimization profile (see its log).")

    # -- the tensors, by name ----------------------------------------------------------------------------
    def capturable(self) -> bool:
        """Whether this context may be captured into a CUDA graph on its stream (TensorRT-RTX and recent TensorRT
        say so; where the call does not exist, a capture is simply tried)."""
        query = getattr(self.context, "is_stream_capturable", None)
        return bool(query(self.stream.ptr)) if query is not None else True

    def layout(self, name: str) -> tuple:
        """(element dtype, per-sample shape at the profile's maximum) of one I/O tensor."""
        tensor = self._tensors[name]
        return np.dtype(tensor.dtype), tuple(tensor.max_shape[1:])

    def input_shapes(self) -> tuple:
        """The input shapes set now, as ((name, shape), ...)."""
        return tuple((name, self._tensors[name].shape) for name in self.input_names)

    def buffer_bytes(self) -> dict:
        """name -> bytes of its pinned host buffer (sized once, for the profile's largest shape)."""
        return {name: t.host.nbytes for name, t in self._tensors.items()}

    def device_address(self, name: str) -> int:
        """The device address of this backend's own buffer for tensor `name` (valid until close)."""
        return self._tensors[name].device.ptr

    def bind(self, name: str, address: int | None = None) -> None:
        """Make input `name` read from `address` (another backend's device output), or from its own buffer."""
        self.context.set_tensor_address(name, self.device_address(name) if address is None else address)

    def write_input(self, name: str, array: np.ndarray) -> None:
        """Copy `array` into input `name`'s pinned buffer (its shape must have been set); nothing enqueued."""
        self._tensors[name].view(array.shape)[...] = array

    # -- the steps, enqueued on `self.stream` (the fused path calls them directly) --------------------
    def set_shapes(self, shapes: Mapping[str, tuple]) -> None:
        """Set the input shapes (host side, nothing enqueued); output shapes follow."""
        for name, shape in shapes.items():
            tensor = self._tensors.get(name) if name in self.input_names else None
            if tensor is None:
                raise InputError(f"'{name}' is not an input of {self.record.path}: expected some of {self.input_names}.")
            if len(shape) != len(tensor.max_shape):
                raise InputError(f"input '{name}': expected {len(tensor.max_shape)} dimensions, found shape {list(shape)}.")
            if any(s > m for s, m in zip(shape, tensor.max_shape)):
                raise InputError(f"input '{name}': shape {list(shape)} exceeds the engine's profile maximum "
                                 f"{list(tensor.max_shape)}; rebuild with a larger --batch/--seq range.")
            if any(s < m for s, m in zip(shape, tensor.min_shape)):
                raise InputError(f"input '{name}': shape {list(shape)} is below the engine's profile minimum "
                                 f"{list(tensor.min_shape)}; rebuild with a smaller --batch/--seq range.")
            tensor.shape = tuple(shape)
            self._set_shape(name, tuple(shape))
        for name in self.output_names:
            self._tensors[name].shape = tuple(self.context.get_tensor_shape(name))

    def set_inputs(self, feeds: Mapping[str, np.ndarray]) -> None:
        """Set the shapes and copy `feeds` into the pinned buffers (host side, nothing enqueued)."""
        self.set_shapes({name: array.shape for name, array in feeds.items()})
        for name, array in feeds.items():
            self.write_input(name, array)

    def enqueue_copy_in(self, names=None) -> None:
        for name in names if names is not None else self.input_names:
            t = self._tensors[name]
            t.device.copy_from_host(t.host, self.stream, t.nbytes)

    def enqueue_copy_in_device(self, name: str, source: DeviceArray) -> None:
        """Input `name` from a caller's device array: one device-to-device copy, nothing through the host."""
        self._tensors[name].device.copy_from_address(source.ptr, self.stream, source.nbytes)

    def output_shape(self, name: str) -> tuple:
        return tuple(self._tensors[name].shape)

    def enqueue_run(self) -> None:
        if not self.context.execute_async_v3(self.stream.ptr):
            raise BackendUnavailable(f"{self.api.product}: enqueue failed for {self.record.path} (see its log).")

    def enqueue_copy_out(self) -> None:
        for name in self.output_names:
            t = self._tensors[name]
            t.device.copy_to_host(t.host, self.stream, t.nbytes)

    def outputs(self) -> dict:
        """Copies of the outputs' host buffers at their current shapes (after the stream's work is done)."""
        return {name: self._tensors[name].view(self._tensors[name].shape).copy() for name in self.output_names}

    def _infer(self, feeds: Mapping[str, np.ndarray]) -> dict:
        with self._lock:
            for name in self.input_names:  # the fused path may have pointed the head at the encoders' outputs
                self.bind(name)
            self.set_inputs(feeds)
            self.enqueue_copy_in()
            self.enqueue_run()
            self.enqueue_copy_out()
            self.stream.synchronize()
            return self.outputs()

    def clone(self) -> "TensorRTBackend":
        """The same engine with its own execution context, buffers and stream: run it from another thread."""
        stream = cuda.Stream()  # on the current device: clone on the thread that will use it, after open's set_device
        try:
            return type(self)(self.api, None, self.record, self.input_specs, self.output_specs, stream,
                              shared=(self._logger, self._runtime, self.engine), cuda_graphs=self.cuda_graphs)
        except BaseException:
            stream.close()
            raise

    def close(self) -> None:
        if getattr(self, "stream", None) is not None and self.stream.handle is not None:
            self.stream.synchronize()
        for tensor in getattr(self, "_tensors", {}).values():
            tensor.close()
        self._tensors = {}
        self.context = self.engine = self._runtime = None  # TensorRT frees them when the last reference goes
        if getattr(self, "stream", None) is not None:
            self.stream.close()
        super().close()


class TensorRTRTXBackend(TensorRTBackend):
    """TensorRT for RTX: the same runtime API (TensorRT 11's), its own package and engines."""

    name = "tensorrt_rtx"
    product = "tensorrt_rtx"
