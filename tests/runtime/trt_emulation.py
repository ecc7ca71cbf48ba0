"""An emulated GPU for the TensorRT runner's tests: host memory stands in for device memory, and stand-ins for
TensorRT's engine and context read and write tensors at the addresses the runner gives them, as TensorRT does.

The stand-ins accept only what the real TensorRT classes they are given have (TensorRT-RTX's, or TensorRT 11's
runtime from tensorrt-lean): an attribute the class lacks, or a call that none of its signatures accepts
(argument count, str/int/tuple types), fails the test. Real CUDA semantics
still need a GPU (tests/runtime/test_cuda_layer.py's GPU test and benchmarks/gpu_check.py)."""

import ctypes
import hashlib
import re
from types import SimpleNamespace

import numpy as np
from packaging.version import Version

__all__ = ["Checked", "check_call", "Gpu", "view", "emulated_cuda", "emulated_engine", "emulated_trt",
           "install_emulated_cuda", "onnx_models", "emulate_tensorrt"]


# -- stand-ins that accept only the real classes' API --------------------------------------------------
def _params(signature: str) -> list:
    """The parameters of one pybind11 signature line, `self` left out."""
    inner = signature[signature.index("(") + 1:]
    params, depth, current = [], 0, ""
    for ch in inner:
        if ch in "([<":
            depth += 1
        elif ch in ")]>":
            if depth == 0:
                break
            depth -= 1
        if ch == "," and depth == 0:
            params.append(current.strip())
            current = ""
        else:
            current += ch
    params.append(current.strip())
    return [p for p in params if p and not p.startswith("self")]


def _accepts(param: str, value) -> bool:
    annotation = param.split(":", 1)[1].split("=")[0].strip() if ":" in param else ""
    checks = {"str": lambda v: isinstance(v, str), "tuple": lambda v: isinstance(v, tuple),
              "list": lambda v: isinstance(v, list),
              "typing.SupportsInt": lambda v: isinstance(v, (int, np.integer)) and not isinstance(v, bool)}
    return checks.get(annotation, lambda v: True)(value)


def check_call(cls, name: str, args: tuple) -> None:
    method = getattr(cls, name)
    signatures = [re.sub(r"^\d+\.\s*", "", line.strip()) for line in (method.__doc__ or "").splitlines()]
    signatures = [s for s in signatures if s.startswith(f"{method.__name__}(") and "*args" not in s]
    assert signatures, f"{cls.__name__}.{name}: no signature in its docstring"
    for signature in signatures:
        params = _params(signature)
        required = sum("=" not in p for p in params)
        if required <= len(args) <= len(params) and all(_accepts(p, v) for p, v in zip(params, args)):
            return
    raise AssertionError(f"{cls.__name__}.{name}{args!r} matches none of: {signatures}")


class Checked:
    """An instance of a real TensorRT class, as far as the runner can tell: `impl` gives the behaviour."""

    def __init__(self, cls, **impl):
        self._cls, self._impl = cls, impl

    def __setattr__(self, name, value):  # test bookkeeping only (a real object would refuse new attributes)
        object.__setattr__(self, name, value)

    def __getattr__(self, name):
        if not hasattr(self._cls, name):  # as the real object would: code that probes with getattr sees it missing
            raise AttributeError(f"{self._cls.__name__} has no attribute {name!r}")
        assert name in self._impl, f"the emulation lacks {self._cls.__name__}.{name}: add it"
        value = self._impl[name]
        if isinstance(getattr(self._cls, name), property):
            return value

        def call(*args):
            check_call(self._cls, name, args)
            return value(*args)

        return call


# -- an emulated GPU: host memory, work queued per stream and run in stream order -----------------------
class Gpu:
    """Streams are queues: work runs when a stream is synchronized (or an event on it waited for), in the order
    events and waits say, never sooner; nothing orders two streams but an event. So a read that does not wait for
    its producer's stream reads what was there before, as on a GPU. It learns CUDA's rules the runner must keep:
    an external event record only while capturing; no capture on a default stream (0, legacy, per-thread); a
    context replays only the graph of its current shapes; no two live contexts of an engine on one optimization
    profile; a CUDA call only on a thread that set its device."""

    LEGACY, PER_THREAD = 1, 2

    def __init__(self):
        self.streams: dict = {}  # handle -> _Queue
        self.capture = None  # the ops of a capture in progress
        self.open: set = set()
        self.capturable = True  # what contexts answer to is_stream_capturable
        self.threads: set = set()  # threads that set their device
        for handle in (self.LEGACY, self.PER_THREAD):
            self.queue(handle)

    def queue(self, handle):
        if handle not in self.streams:
            self.streams[handle] = _Queue(self, handle)
        return self.streams[handle]

    def check_thread(self):
        import threading

        assert threading.get_ident() in self.threads, "a CUDA call on a thread that never set its device"

    def submit(self, op, handle):
        self.check_thread()
        if self.capture is not None:
            self.capture.append(op)
        else:
            self.queue(handle).ops.append(op)


class _Queue:
    def __init__(self, gpu, handle):
        self.gpu, self.handle, self.ops, self.done = gpu, handle, [], 0

    def mark(self) -> int:
        return self.done + len(self.ops)

    def run_to(self, mark: int) -> None:
        while self.done < mark and self.ops:
            op = self.ops.pop(0)
            self.done += 1
            op()

    def flush(self) -> None:
        self.run_to(self.mark())


def view(address: int, dtype, shape) -> np.ndarray:
    dtype, count = np.dtype(dtype), int(np.prod(shape))
    raw = (ctypes.c_byte * (count * dtype.itemsize)).from_address(address)
    return np.frombuffer(raw, dtype=dtype, count=count).reshape(shape)


def emulated_cuda(gpu: Gpu):
    class Buffer:
        def __init__(self, nbytes):
            self.memory = np.zeros(max(int(nbytes), 1) + 256, np.uint8)  # cudaMalloc's 256-byte alignment
            self.ptr, self.nbytes = self.memory.ctypes.data + (-self.memory.ctypes.data % 256), int(nbytes)
            gpu.open.add(self)

        def close(self):
            gpu.open.discard(self)
            self.ptr = 0

    class PinnedBuffer(Buffer):
        def __init__(self, shape, dtype):
            super().__init__(int(np.prod(shape)) * np.dtype(dtype).itemsize)
            self.array = view(self.ptr, dtype, shape)

    class DeviceBuffer(Buffer):
        def _copy(self, dst, src, nbytes, stream):
            assert nbytes <= self.nbytes, f"copy of {nbytes} bytes into a {self.nbytes}-byte buffer"
            gpu.submit(lambda: ctypes.memmove(dst, src, nbytes), stream.handle)

        def copy_from_address(self, address, stream, nbytes):
            self._copy(self.ptr, int(address), int(nbytes), stream)

        def copy_from_host(self, host, stream, nbytes=None):
            self._copy(self.ptr, host.ptr, nbytes or host.nbytes, stream)

        def copy_to_host(self, host, stream, nbytes=None):
            self._copy(host.ptr, self.ptr, nbytes or host.nbytes, stream)

    class Stream:
        def __init__(self, handle=None):  # a caller's handle is borrowed, as in the real layer
            self.owned = handle is None
            self.handle = id(self) if handle is None else int(handle)
            self.ptr = self.handle
            gpu.queue(self.handle)

        def capturing(self):
            return gpu.capture is not None

        def wait(self, event):
            gpu.check_thread()
            if gpu.capture is not None or event.at is None:
                return  # inside a capture a wait is an edge of the graph; an event never recorded: nothing to wait
            queue, mark = event.at
            gpu.queue(self.handle).ops.append(lambda: queue.run_to(mark))

        def synchronize(self):
            assert gpu.capture is None, "synchronize inside a capture"
            gpu.queue(self.handle).flush()

        def close(self):
            self.handle = None

    class Event:
        def __init__(self, timing=True):
            self.at, self.time = None, None
            gpu.open.add(self)

        def record(self, stream, external=False):
            gpu.check_thread()
            assert not external or gpu.capture is not None, "an external event record outside a stream capture"
            gpu.submit(self._stamp, stream.handle)  # when the stream reaches it: the time the work before it ended
            if gpu.capture is None:
                queue = gpu.queue(stream.handle)
                self.at = (queue, queue.mark())
            return self

        def _stamp(self):
            import time

            self.time = time.perf_counter()

        def synchronize(self):
            if self.at is not None:
                self.at[0].run_to(self.at[1])

        def elapsed_ms(self, start):
            assert self.time is not None and start.time is not None, \
                "elapsed time of an event the stream has not reached (CUDA: cudaErrorNotReady)"
            return (self.time - start.time) * 1e3

        def close(self):
            gpu.open.discard(self)

    class Graph:
        def __init__(self, stream, enqueue, forked=()):
            if stream.handle in (0, Gpu.LEGACY, Gpu.PER_THREAD):
                from fusionrt.runtime.errors import BackendUnavailable

                raise BackendUnavailable("CUDA graphs: a default stream cannot be captured")
            self.stream, gpu.capture = stream, []
            try:
                enqueue()
            finally:  # a failed capture leaves nothing capturing and no error (the real layer's cleanup, tested there)
                self.ops, gpu.capture = gpu.capture, None
            gpu.open.add(self)

        def launch(self):
            gpu.submit(lambda: [op() for op in self.ops], self.stream.handle)

        def close(self):
            gpu.open.discard(self)

    def set_device(device):
        import threading

        gpu.threads.add(threading.get_ident())

    def clear_error():
        pass

    return SimpleNamespace(PinnedBuffer=PinnedBuffer, DeviceBuffer=DeviceBuffer, Stream=Stream, Event=Event,
                           Graph=Graph, set_device=set_device, clear_error=clear_error)


def emulated_engine(trt, gpu: Gpu, model: tuple):
    """model: (inputs {name: (dtype, min shape, max shape)}, outputs {name: (dtype, width)}, function[, profiles])."""
    import weakref

    inputs, outputs, function = model[:3]
    profiles = model[3] if len(model) > 3 else 2
    names = [*inputs, *outputs]
    dtype = {"float32": trt.DataType.FLOAT, "float16": trt.DataType.HALF, "int64": trt.DataType.INT64}
    live = weakref.WeakSet()  # the engine's contexts still referenced

    def make_context(*config):
        shapes, addresses, state = {}, {}, {"profile": 0, "ran": None}

        def output_shape(name):
            batch = shapes[next(iter(inputs))][0]
            return (batch, outputs[name][1])

        def set_input_shape(name, shape):
            low, high = inputs[name][1], inputs[name][2]
            assert all(lo <= s <= hi for s, lo, hi in zip(shape, low, high)), f"{name} {shape} outside the profile"
            shapes[name] = tuple(shape)
            return True

        def set_profile(index, stream):
            assert 0 <= index < profiles, f"profile {index} of an engine with {profiles}"
            state["profile"] = index
            return True

        def execute_async_v3(stream_handle):
            # TensorRT reads the shapes and addresses set now; the work runs later on the stream.
            mine = [c for c in live if c is not context]
            assert all(c.state["profile"] != state["profile"] for c in mine), \
                f"two live contexts of one engine on optimization profile {state['profile']}"
            now = {n: (addresses[n], shapes[n]) for n in inputs}
            out = {n: (addresses[n], output_shape(n)) for n in outputs}
            captured = gpu.capture is not None
            at = tuple(sorted(shapes.items()))

            def run():
                if captured:  # a replay: the context must not have run another shape since the capture
                    assert state["ran"] in (None, at), f"a graph of shapes {at} replayed after the context ran {state['ran']}"
                state["ran"] = at
                feeds = {n: view(a, inputs[n][0], s).copy() for n, (a, s) in now.items()}
                for n, value in function(**feeds).items():
                    view(out[n][0], outputs[n][0], out[n][1])[...] = value

            gpu.submit(run, stream_handle)
            return True

        def set_tensor_address(name, pointer):
            assert pointer % 256 == 0, f"{name}: address {pointer:#x} is not 256-byte aligned"
            addresses[name] = pointer
            return True

        context = Checked(trt.IExecutionContext, set_input_shape=set_input_shape,
                          get_tensor_shape=lambda n: shapes[n] if n in inputs else output_shape(n),
                          set_tensor_address=set_tensor_address, execute_async_v3=execute_async_v3,
                          is_stream_capturable=lambda stream: gpu.capturable,
                          set_optimization_profile_async=set_profile,
                          infer_shapes=lambda: [n for n in inputs if n not in shapes])
        context.runtime_config = config[0] if config else None  # what it was created with (RTX: its graph strategy)
        context.state = state
        live.add(context)
        return context

    def runtime_config():
        impl = {"cuda_graph_strategy": None, "create_runtime_cache": lambda: SimpleNamespace(
            serialize=lambda: b"cache", deserialize=lambda blob: True), "set_runtime_cache": lambda cache: True}
        config = SimpleNamespace(**impl)
        return config

    return Checked(trt.ICudaEngine, num_io_tensors=len(names), get_tensor_name=lambda i: names[i],
                   get_tensor_mode=lambda n: trt.TensorIOMode.INPUT if n in inputs else trt.TensorIOMode.OUTPUT,
                   get_tensor_profile_shape=lambda n, p: (p < profiles or _fail(f"profile {p}")) and
                   [inputs[n][1], inputs[n][2], inputs[n][2]],
                   get_tensor_dtype=lambda n: dtype[(inputs.get(n) or outputs[n])[0]],
                   num_optimization_profiles=profiles,
                   create_execution_context=make_context, create_runtime_config=runtime_config)


def _fail(what):
    raise AssertionError(what)


def emulated_trt(trt, gpu: Gpu, model_of, builtin_graphs: bool = False):
    """A stand-in for the tensorrt module: the real Logger, TensorIOMode and nptype; a Runtime whose plans
    deserialize into emulated engines (`model_of(plan bytes)` says which model). builtin_graphs: expose the real
    CudaGraphStrategy (TensorRT-RTX's own CUDA graphs)."""

    def runtime(logger):
        check_call(trt.Runtime, "__init__", (logger,))
        return Checked(trt.Runtime, deserialize_cuda_engine=lambda data: emulated_engine(trt, gpu, model_of(bytes(data))))

    module = SimpleNamespace(Logger=trt.Logger, Runtime=runtime, TensorIOMode=trt.TensorIOMode, nptype=trt.nptype)
    if builtin_graphs:
        module.CudaGraphStrategy = trt.CudaGraphStrategy
    return module


def install_emulated_cuda(monkeypatch, gpu: Gpu):
    """The CUDA layer's classes and calls, emulated; this thread has set its device (as a load does)."""
    from fusionrt.runtime.backends import tensorrt as trt_backend

    cu = emulated_cuda(gpu)
    for name in ("PinnedBuffer", "DeviceBuffer", "Event", "Graph", "Stream", "set_device", "clear_error"):
        monkeypatch.setattr(trt_backend.cuda, name, getattr(cu, name))
    cu.set_device(0)
    return cu


def onnx_models(bundle, precision: str) -> dict:
    """sha256 of each `precision` engine plan in the bundle -> a model that runs, on ONNX Runtime, the ONNX file that
    engine was built from, with the engine's profile ranges (so the emulated engine computes what the real one
    would, up to TensorRT's numerics)."""
    import onnxruntime as ort

    from fusionrt.runtime.backends.trt_compat import TrtApi
    from fusionrt.runtime.bundle import Bundle
    from fusionrt.runtime.manifest import Profile

    manifest, models = Bundle.open(bundle).manifest, {}
    api = TrtApi("tensorrt_rtx", None, Version("1.0"))
    for comp in manifest.components.values():
        flavour = api.onnx_flavour(precision, comp.files)
        session = ort.InferenceSession(str(bundle / comp.files[flavour].path), providers=["CPUExecutionProvider"])
        for engine in (e for e in comp.engines if e.precision == precision):
            profile = Profile.from_dict(engine.profile)
            inputs = {t.name: (t.dtype, *profile.shapes_for(t)[::2]) for t in comp.inputs}  # (dtype, min, max)
            outputs = {t.name: (t.dtype, t.shape[1]) for t in comp.outputs}
            names = [o.name for o in session.get_outputs()]
            models[engine.sha256] = (inputs, outputs,
                                     lambda s=session, n=names, **feeds: dict(zip(n, s.run(None, feeds))),
                                     engine.contexts)
            assert hashlib.sha256((bundle / engine.path).read_bytes()).hexdigest() == engine.sha256
    return models


def emulate_tensorrt(monkeypatch, bundle, precisions=("fp32",)) -> Gpu:
    """Make `Pipeline.load(bundle, backend='tensorrt_rtx')` run here: the bundle's real engine files and records,
    on the emulated GPU, each engine computing with ONNX Runtime on the ONNX it was built from."""
    import tensorrt_rtx as trt

    from fusionrt.runtime.backends import tensorrt as trt_backend
    from fusionrt.runtime.backends.trt_compat import TrtApi
    from tests.conftest import RTX_CC

    gpu = Gpu()
    install_emulated_cuda(monkeypatch, gpu)
    models = {k: v for p in precisions for k, v in onnx_models(bundle, p).items()}
    module = emulated_trt(trt, gpu, lambda plan: models[hashlib.sha256(plan).hexdigest()], builtin_graphs=True)
    monkeypatch.setattr(trt_backend, "load_api", lambda product: TrtApi(product, module, Version(trt.__version__)))
    monkeypatch.setattr(trt_backend, "_gpu", lambda device=0: (trt_backend.cuda.set_device(device) or RTX_CC,
                                                                "an emulated GPU"))
    return gpu
