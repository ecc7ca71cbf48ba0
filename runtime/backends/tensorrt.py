"""TensorRT backend for TensorRT 10.x, 11.x and TensorRT-RTX engines, on cuda-python.

Each component owns an engine, one execution context, one CUDA stream, and device + pinned host buffers sized
for its profile's largest shapes (no allocation per call). Called one by one (`infer`), a component copies in,
runs and copies out on its own stream. The pipeline's fused path (`TensorRTFusion`) enqueues the image and text
branches on their two streams at once and the head on a third stream (the caller's, when one is passed) after
`cudaStreamWaitEvent` on both; the head reads the encoders' device outputs directly; one host sync per call;
optionally the whole sequence is captured as a CUDA graph per (batch, sequence) bucket."""

from __future__ import annotations

import importlib.util
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Mapping

import numpy as np

from fusionrt.runtime import cuda
from fusionrt.runtime.backends.base import Backend, BackendOptions, check_spec
from fusionrt.runtime.backends.trt_compat import TrtApi, load_api
from fusionrt.runtime.errors import BackendUnavailable, EngineMismatch, InputError
from fusionrt.runtime.device_array import DeviceArray, as_device_array
from fusionrt.runtime.execution import Result, Timings

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
    fuses = True
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
    def int8_target(cls, options: TensorRTOptions) -> str:
        """Engines are built from the TensorRT Q/DQ flavour."""
        return "int8-trt"

    @classmethod
    def open(cls, bundle, component: str, precision: str, options: TensorRTOptions) -> "TensorRTBackend":
        api = load_api(cls.product)
        gpu_cc, gpu_name = _gpu(options.device)
        comp = bundle.manifest.components[component]
        record = _select(comp, precision, api, gpu_cc, gpu_name)
        plan = bundle.read(record.path, record.sha256, verify=options.verify)  # read once: these bytes are the engine
        borrowed = options.stream if component == "fusion_head" else None
        stream = cuda.Stream(int(borrowed) if borrowed is not None else None)
        try:
            return cls(api, plan, record, comp.inputs, comp.outputs, stream, cuda_graphs=options.cuda_graphs)
        except BaseException:
            stream.close()
            raise

    @classmethod
    def fuse(cls, backends: Mapping[str, "TensorRTBackend"], wiring, options: TensorRTOptions) -> "TensorRTFusion":
        head = backends["fusion_head"]
        # TensorRT-RTX runs CUDA graphs itself (its contexts were made with them on): no capture of our own there
        return TensorRTFusion(backends["image_encoder"], backends["text_encoder"], head, wiring,
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


class TensorRTFusion:
    """Both branches at once on two streams, the head after both (events), one host sync; CUDA graphs optional.
    With the text's features given (the pipeline's text cache), the image branch and the head alone. Tensors are
    addressed by the manifest's names (`wiring`); the backends are driven through their public steps."""

    def __init__(self, image: TensorRTBackend, text: TensorRTBackend, head: TensorRTBackend, wiring,
                 graphs: bool = False):
        self.image, self.text, self.head, self.wiring, self.use_graphs = image, text, head, wiring, graphs
        for name, source in ((wiring.image_output, image), (wiring.text_output, text)):
            # The head reads these buffers as they are: element type and feature width must agree byte for byte.
            (out_dtype, out_shape), (in_dtype, in_shape) = source.layout(name), head.layout(name)
            if (out_dtype, out_shape) != (in_dtype, in_shape):
                raise EngineMismatch(f"{name}: the encoder's engine writes {out_dtype} {list(out_shape)} per sample but "
                                     f"the head's engine reads {in_dtype} {list(in_shape)}; rebuild the engines from "
                                     "one bundle with `fusionrt build`.")
        # Two kinds of event, because a CUDA graph treats them differently: joins order the streams (inside a
        # capture they become graph edges), marks time the steps (captured as event-record nodes, so they are
        # recorded again on every replay and can be read after it).
        self.joins = {k: cuda.Event(timing=False) for k in ("fork", "image_done", "text_done", "input_ready")}
        self._device_input: DeviceArray | None = None  # this call's image input, when a device array
        self._device_output = False
        self._pending = False  # a call returned without waiting for its work (sync=False)
        self._ran: set = set()  # which optional branch the last call ran
        self.marks = {k: cuda.Event() for k in ("start", "image0", "image1", "text0", "text1", "head1")}
        self.graphs: dict = {}
        self._enqueued: dict = {}  # backend -> the input shapes of its last eager enqueue
        self._lock = threading.Lock()  # the contexts, buffers and graphs serve one call at a time (clone for more)

    def _enqueue(self, with_text: bool = True) -> None:
        """Both branches (or the image branch alone, when the head's text features come from the pipeline's cache),
        then the head on the main stream."""
        joins, marks, main, w = self.joins, self.marks, self.head.stream, self.wiring
        branches = [(self.image, "image", w.image_output)]
        if with_text:
            branches.append((self.text, "text", w.text_output))
        joins["fork"].record(main)  # the branches start after the caller's earlier work on `main`
        marks["start"].record(main, external=True)
        source = self._device_input
        if source is not None and source.stream is not None:  # the producer's writes come first
            joins["input_ready"].record(cuda.Stream(source.stream))
            self.image.stream.wait(joins["input_ready"])
        for backend, branch, _ in branches:
            backend.stream.wait(joins["fork"])
            marks[f"{branch}0"].record(backend.stream, external=True)
            if backend is self.image and source is not None:
                backend.enqueue_copy_in_device(w.image_input, source)  # device to device: no host copy of the frame
            else:
                backend.enqueue_copy_in()
            backend.enqueue_run()
            if branch == "text":
                backend.enqueue_copy_out()  # a few KiB: the features the pipeline's text cache keeps
            marks[f"{branch}1"].record(backend.stream, external=True)
            joins[f"{branch}_done"].record(backend.stream)
        if not with_text:  # cached features: uploaded to the head's own input while the image branch runs
            self.head.bind(w.text_output)
            self.head.enqueue_copy_in([w.text_output])
        for backend, branch, name in branches:
            main.wait(joins[f"{branch}_done"])
            self.head.bind(name, backend.device_address(name))  # no host round trip
        self.head.enqueue_run()
        if not self._device_output:
            self.head.enqueue_copy_out()
        marks["head1"].record(main, external=True)

    def run(self, pixels, tokens: Mapping[str, np.ndarray], text_features: np.ndarray | None = None,
            device_output: bool = False, sync: bool = True) -> Result:
        """Both branches at once, then the head; with `text_features` given, the image branch and the head.
        `pixels`: a numpy array, or a device array (`__cuda_array_interface__`: CuPy, torch), copied device to device
        after its producer's stream. device_output: the logits as a DeviceArray over the head's output buffer (valid
        until the next call; no copy to the host). Calls with either run without CUDA graphs. sync=False (with
        device_output): return without waiting for the head; its results are ordered on the head's stream (the
        caller's, with `stream=`); timings are not read, and the next call waits before reusing the buffers."""
        if not sync and not device_output:
            raise InputError("sync=False leaves the results on the GPU: expected device_output=True with it.")
        with self._lock:
            if self._pending:  # the last call did not wait: its copies may still read our pinned buffers
                self.head.stream.synchronize()
                self._pending = False
            return self._run_locked(pixels, tokens, text_features, device_output, sync)

    def _run_locked(self, pixels, tokens, text_features, device_output: bool, sync: bool = True) -> Result:
        w, m, timings = self.wiring, self.marks, Timings()
        device = as_device_array(pixels)
        if device is not None:
            check_spec(next(s for s in self.image.input_specs if s.name == w.image_input), device.dtype, device.shape)
            self.image.set_shapes({w.image_input: device.shape})
        else:
            image_feeds = {w.image_input: pixels}
            self.image.check(image_feeds)
            self.image.set_inputs(image_feeds)
        self._device_input, self._device_output = device, device_output
        graphs = device is None and not device_output  # a graph would bake in the caller's pointer or the copy-out
        n = device.shape[0] if device is not None else len(pixels)
        if text_features is None:
            text_feeds = w.text_feeds(tokens)
            self.text.check(text_feeds)
            self.text.set_inputs(text_feeds)
            self._head_shapes(n, self.text.layout(w.text_output)[1][0])
            self._run((n, tokens[w.text_inputs[0]].shape[1]), self._enqueue, (self.image, self.text, self.head), graphs,
                      sync)
            if not sync:
                self.text.stream.synchronize()  # the few KiB of text features the text cache keeps, not the head
            text_features = self.text.outputs()[w.text_output]
        else:
            self._head_shapes(n, text_features.shape[1])
            self.head.write_input(w.text_output, text_features)
            self._run(("text given", n), lambda: self._enqueue(with_text=False), (self.image, self.head), graphs, sync)
        if sync:
            if "text" in self._ran:
                timings.text_ms = m["text1"].elapsed_ms(m["text0"])
                timings.branches_ms = max(m["image1"].elapsed_ms(m["start"]), m["text1"].elapsed_ms(m["start"]))
            else:
                timings.branches_ms = m["image1"].elapsed_ms(m["start"])
            timings.image_ms = m["image1"].elapsed_ms(m["image0"])
            timings.head_ms = m["head1"].elapsed_ms(m["start"]) - timings.branches_ms
        else:
            self._pending = True
        if device_output:
            logits = DeviceArray(self.head.device_address(w.logits), self.head.output_shape(w.logits),
                                 self.head.layout(w.logits)[0], self.head.stream.ptr, owner=self)
        else:
            logits = self.head.outputs()[w.logits]
        return Result(logits, text_features, timings)

    def _head_shapes(self, n: int, text_width: int) -> None:
        w = self.wiring
        self.head.set_shapes({w.image_output: (n, *self.image.layout(w.image_output)[1]),
                              w.text_output: (n, text_width)})

    def _run(self, key: tuple, enqueue, backends: tuple, graphs: bool = True, sync: bool = True) -> None:
        """Enqueue one call, eagerly or as the CUDA graph of its shape `key`, and wait for it (one host sync). A
        shape is captured only when every context in the call last enqueued eagerly at its shapes of now: after a
        shape change, TensorRT's first enqueue does set-up work a capture must not record (shapes A, B, A: the second
        A runs eagerly, the third is captured)."""
        shapes = {id(b): b.input_shapes() for b in backends}
        ready = all(self._enqueued.get(k) == v for k, v in shapes.items())
        if graphs and self.use_graphs and key not in self.graphs and ready:
            self.graphs[key] = self._capture(key, enqueue, backends)
        graph = self.graphs.get(key) if graphs else None
        if graph is not None:
            graph.launch()
        else:
            enqueue()
            self._enqueued.update(shapes)
        self._ran = {"text"} if self.text in backends else set()
        if sync:
            self.head.stream.synchronize()

    def _capture(self, key: tuple, enqueue, backends: tuple):
        """A CUDA graph of the whole call for this shape, or None (run eagerly) where the engines cannot be
        captured: some TensorRT engines refuse stream capture, and the pipeline must still run. Each context is
        asked first whether it can be captured."""
        shape = f"batch {key[1]} with text features given" if key[0] == "text given" else \
            f"batch {key[0]}, sequence {key[1]}"
        refusing = [b.record.path for b in backends if not b.capturable()]
        if refusing:
            warnings.warn(f"CUDA graphs: {', '.join(refusing)} cannot be stream-captured (TensorRT says so); {shape} "
                          "runs without a graph. Rebuild with `fusionrt build --cuda-graphs`.", RuntimeWarning,
                          stacklevel=4)
            return None
        try:
            return cuda.Graph(self.head.stream, enqueue)
        except BackendUnavailable as exc:
            warnings.warn(f"CUDA graph capture failed for {shape} ({exc}); this shape runs without a graph.",
                          RuntimeWarning, stacklevel=4)
            return None

    def close(self) -> None:
        for graph in self.graphs.values():
            if graph is not None:
                graph.close()
        for event in (*self.joins.values(), *self.marks.values()):
            event.close()
        self.graphs, self.joins, self.marks = {}, {}, {}
