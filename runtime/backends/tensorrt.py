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
from fusionrt.runtime.backends.trt_io import EngineIO
from fusionrt.runtime.errors import BackendUnavailable, EngineMismatch
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
        self.io: EngineIO | None = None
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
            self.io = EngineIO(trt, self.engine, self.context, stream, record.path)
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

    def capturable(self) -> bool:
        """Whether this context may be captured into a CUDA graph on its stream (TensorRT-RTX and recent TensorRT
        say so; where the call does not exist, a capture is simply tried)."""
        query = getattr(self.context, "is_stream_capturable", None)
        return bool(query(self.stream.ptr)) if query is not None else True

    def enqueue_run(self) -> None:
        if not self.context.execute_async_v3(self.stream.ptr):
            raise BackendUnavailable(f"{self.api.product}: enqueue failed for {self.record.path} (see its log).")

    def _infer(self, feeds: Mapping[str, np.ndarray]) -> dict:
        io = self.io
        with self._lock:
            for name in io.input_names:  # the fused path may have pointed the head at the encoders' outputs
                io.bind(name)
            io.set_inputs(feeds)
            io.enqueue_copy_in()
            self.enqueue_run()
            io.enqueue_copy_out()
            self.stream.synchronize()
            return io.outputs()

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
        if getattr(self, "io", None) is not None:
            self.io.close()
        self.context = self.engine = self._runtime = None  # TensorRT frees them when the last reference goes
        if getattr(self, "stream", None) is not None:
            self.stream.close()
        super().close()


class TensorRTRTXBackend(TensorRTBackend):
    """TensorRT for RTX: the same runtime API (TensorRT 11's), its own package and engines."""

    name = "tensorrt_rtx"
    product = "tensorrt_rtx"
