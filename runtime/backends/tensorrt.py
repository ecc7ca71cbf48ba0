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
from fusionrt.runtime.backends.trt_compat import TrtApi, load_api, save_runtime_cache
from fusionrt.runtime.backends.trt_fusion import TensorRTFusion
from fusionrt.runtime.backends.trt_io import EngineIO
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


class _Shared:
    """What a backend and its clones share: the deserialized engine, its free optimization profiles, and (TensorRT-RTX)
    the runtime cache of its JIT-compiled kernels, kept on disk per engine so each process compiles them once."""

    def __init__(self, api: TrtApi, logger, runtime, engine, record):
        self.api, self.logger, self.runtime, self.engine, self.record = api, logger, runtime, engine, record
        count = int(getattr(engine, "num_optimization_profiles", 1) or 1)
        self._free, self._lock = list(range(count)), threading.Lock()
        self.runtime_cache = api.runtime_cache(engine, record)

    @classmethod
    def load(cls, api: TrtApi, plan, record) -> "_Shared":
        logger = _logger(api.trt)
        runtime = api.trt.Runtime(logger)
        data = bytes(plan) if isinstance(plan, (bytes, bytearray, memoryview)) else Path(plan).read_bytes()
        engine = runtime.deserialize_cuda_engine(data)
        if engine is None:
            raise EngineMismatch(f"{api.product} {api.version} could not deserialize {record.path} (see its log): "
                                 "rebuild it with `fusionrt build` on this machine.")
        return cls(api, logger, runtime, engine, record)

    def take_profile(self) -> int:
        with self._lock:
            if not self._free:
                count = int(getattr(self.engine, "num_optimization_profiles", 1) or 1)
                raise BackendUnavailable(f"{self.record.path} has {count} optimization profile(s), all in use: TensorRT "
                                         "runs at most one context per profile at once. Close a clone, or rebuild with "
                                         f"`fusionrt build --contexts {count + 1}` (or more).")
            return self._free.pop(0)

    def give_profile(self, profile: int) -> None:
        with self._lock:
            self._free.append(profile)
            self._free.sort()


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
                 cuda_graphs: bool = False, device: int = 0):
        """plan: the engine's bytes (what `Bundle.read` checked) or its path; or `shared`, the _Shared engine of the
        backend this one is a clone of. Each backend takes an optimization profile of its own: TensorRT requires a
        separate profile for each context that runs at the same time as another."""
        super().__init__(inputs, outputs)
        self.api, self.record, self.stream, self.device = api, record, stream, device
        self.io: EngineIO | None = None
        self.context = self.profile = None
        self._lock = threading.Lock()  # one call at a time uses this context and these buffers
        self.shared = shared or _Shared.load(api, plan, record)
        self.engine = self.shared.engine
        self.cuda_graphs = cuda_graphs
        try:
            self.profile = self.shared.take_profile()
            self.context = api.create_context(self.engine, cuda_graphs, self.shared.runtime_cache)
            if self.context is None:  # TensorRT returns None where it cannot (out of GPU memory, most often)
                raise BackendUnavailable(f"{api.product} could not create an execution context for {record.path}: "
                                         "expected free GPU memory for its activations. Close other pipelines or "
                                         "clones, or rebuild with a smaller --batch/--seq range.")
            if self.profile and not self.context.set_optimization_profile_async(self.profile, stream.ptr):
                raise BackendUnavailable(f"{api.product} refused optimization profile {self.profile} of {record.path}.")
            self.io = EngineIO(api.trt, self.engine, self.context, stream, record.path, self.profile)
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
    def execution(cls, precision: str, options: TensorRTOptions, available=None, int8_float=None):
        """What an engine at `precision` was built from and computes (the installed TensorRT's typing decides;
        int8_float is OpenVINO's)."""
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
        if borrowed is not None and int(borrowed) in (0, cuda.LEGACY_STREAM, cuda.PER_THREAD_STREAM):
            raise InputError(f"stream={borrowed}: a default CUDA stream (0 is torch's default stream): TensorRT's "
                             "enqueue on it synchronizes the device, it cannot be captured into a CUDA graph, and the "
                             "CUDA Array Interface forbids advertising it. Expected a created stream: s = "
                             "torch.cuda.Stream(); Pipeline.load(..., stream=s.cuda_stream).")
        stream = cuda.Stream(int(borrowed) if borrowed is not None else None)
        try:
            return cls(api, plan, record, comp.inputs, comp.outputs, stream, cuda_graphs=options.cuda_graphs,
                       device=options.device)
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
        if options.cuda_graphs:
            head.api.check_cuda_graphs([b.record for b in backends.values()])
        # TensorRT-RTX runs CUDA graphs itself (its contexts were made with them on): no capture of our own there
        return TensorRTFusion(backends[IMAGE_ENCODER], backends[TEXT_ENCODER], head, wiring,
                              graphs=options.cuda_graphs and head.api.product != "tensorrt_rtx")

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
            cuda.set_device(self.device)  # the current device is per thread: this one may not be the loading one
            for name in io.input_names:  # the fused path may have pointed the head at the encoders' outputs
                io.bind(name)
            io.set_inputs(feeds)
            io.enqueue_copy_in()
            self.enqueue_run()
            io.enqueue_copy_out()
            self.stream.synchronize()
            return io.outputs()

    def clone(self) -> "TensorRTBackend":
        """The same engine with its own execution context, optimization profile, buffers and stream: run it from
        another thread. BackendUnavailable when every profile of the engine is in use."""
        cuda.set_device(self.device)
        stream = cuda.Stream()
        try:
            return type(self)(self.api, None, self.record, self.input_specs, self.output_specs, stream,
                              shared=self.shared, cuda_graphs=self.cuda_graphs, device=self.device)
        except BaseException:
            stream.close()
            raise

    def close(self) -> None:
        """Wait for this stream's work, then free the buffers, the context, the profile and the stream: every one
        even where one fails (the first error is raised)."""
        errors = []
        stream = getattr(self, "stream", None)
        steps = [lambda: cuda.set_device(self.device)]
        if stream is not None and stream.handle is not None:
            steps.append(stream.synchronize)
        if getattr(self, "io", None) is not None:
            steps.append(self.io.close)
        if getattr(self, "shared", None) is not None and self.shared.runtime_cache is not None:
            steps.append(lambda: save_runtime_cache(self.shared.runtime_cache, self.record))
        for step in steps:
            try:
                step()
            except Exception as exc:  # noqa: BLE001 - free the rest, then raise the first
                errors.append(exc)
        self.io, self.context = None, None  # TensorRT frees the context when the last reference goes
        if getattr(self, "profile", None) is not None:
            self.shared.give_profile(self.profile)
            self.profile = None
        if stream is not None:
            try:
                stream.close()
            except Exception as exc:  # noqa: BLE001
                errors.append(exc)
        super().close()
        if errors:
            raise errors[0]


class TensorRTRTXBackend(TensorRTBackend):
    """TensorRT for RTX: the same runtime API (TensorRT 11's), its own package and engines."""

    name = "tensorrt_rtx"
    product = "tensorrt_rtx"
