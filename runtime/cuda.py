"""A thin cuda-python (cuda-bindings) layer: calls that raise, and GPU resources that free themselves
on `close()` / context exit (never only in `__del__`).

Imported only by the TensorRT backend and the GPU check; nothing here runs at import time.
"""

from __future__ import annotations

import numpy as np

from fusionrt.runtime.errors import BackendUnavailable
from fusionrt.runtime.optional import require

__all__ = ["cudart", "cuda_call", "Stream", "Event", "PinnedBuffer", "DeviceBuffer", "Graph", "device_count",
           "compute_capability", "set_device", "clear_error", "LEGACY_STREAM", "PER_THREAD_STREAM"]

# CUDA's special stream handles (driver_types.h): cudaStreamLegacy and cudaStreamPerThread. Handle 0 is the legacy
# default stream too, and CUDA Array Interface v3 forbids it (its meaning is ambiguous there).
LEGACY_STREAM, PER_THREAD_STREAM = 1, 2


def cudart():
    return require("cuda.bindings.runtime", "CUDA (pip install cuda-bindings)")


def cuda_call(result):
    """cuda-python returns (err, *values): raise on error, return the values (one value unwrapped)."""
    err, *values = result if isinstance(result, tuple) else (result,)
    rt = cudart()
    if int(err) != int(rt.cudaError_t.cudaSuccess):
        _, name = rt.cudaGetErrorName(err)
        _, text = rt.cudaGetErrorString(err)
        raise BackendUnavailable(f"CUDA call failed: {name.decode() if isinstance(name, bytes) else name}: "
                                 f"{text.decode() if isinstance(text, bytes) else text}")
    if not values:
        return None
    return values[0] if len(values) == 1 else tuple(values)


def device_count() -> int:
    """Number of visible GPUs; 0 where the driver is missing (cudaGetDeviceCount returns an error, not a raise)."""
    try:
        err, count = cudart().cudaGetDeviceCount()
    except BackendUnavailable:
        return 0
    return int(count) if int(err) == 0 else 0


def set_device(device: int) -> None:
    """Make `device` current for this thread: streams, buffers and engines made after this live on it."""
    cuda_call(cudart().cudaSetDevice(int(device)))


def clear_error() -> None:
    """Reset the thread's last (non-sticky) CUDA error, e.g. after a failed capture, so later calls do not report it
    (cudaGetLastError returns the error and resets it)."""
    cudart().cudaGetLastError()


def compute_capability(device: int = 0) -> tuple:
    rt = cudart()
    props = cuda_call(rt.cudaGetDeviceProperties(device))
    name = props.name.decode(errors="replace").rstrip("\x00") if isinstance(props.name, bytes) else str(props.name)
    return (int(props.major), int(props.minor)), name


class _Resource:
    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class Stream(_Resource):
    """A non-blocking CUDA stream we own, or a caller's stream handle we only borrow (never destroyed)."""

    def __init__(self, handle: int | None = None):
        rt = cudart()
        self.owned = handle is None
        self.handle = cuda_call(rt.cudaStreamCreateWithFlags(rt.cudaStreamNonBlocking)) if self.owned \
            else rt.cudaStream_t(int(handle))

    @property
    def ptr(self) -> int:
        return int(self.handle)

    def capturing(self) -> bool:
        """Whether a stream capture is recording this stream's work now (cudaStreamIsCapturing)."""
        rt = cudart()
        status = cuda_call(rt.cudaStreamIsCapturing(self.handle))
        return int(status) == int(rt.cudaStreamCaptureStatus.cudaStreamCaptureStatusActive)

    def synchronize(self) -> None:
        cuda_call(cudart().cudaStreamSynchronize(self.handle))

    def wait(self, event: "Event") -> None:
        """Work queued on this stream after this call waits for `event` (cudaStreamWaitEvent)."""
        cuda_call(cudart().cudaStreamWaitEvent(self.handle, event.handle, 0))

    def close(self) -> None:
        if self.owned and self.handle is not None:
            cuda_call(cudart().cudaStreamDestroy(self.handle))
        self.handle = None


class Event(_Resource):
    def __init__(self, timing: bool = True):
        rt = cudart()
        flags = rt.cudaEventDefault if timing else rt.cudaEventDisableTiming
        self.handle = cuda_call(rt.cudaEventCreateWithFlags(flags))

    def record(self, stream: Stream, external: bool = False) -> "Event":
        """Record on `stream`. Inside a stream capture a plain record only joins streams within the graph: the
        event is never recorded on replay, so it cannot be timed or queried after a launch. `external=True` makes
        it an event-record node that fires on every replay (what a timing mark needs), and only while capturing:
        outside a capture cudaEventRecordExternal is invalid (cuEventRecordWithFlags; PyTorch's CUDAEvent.h passes
        it only while capturing), and a plain record is what is meant."""
        rt = cudart()
        flags = rt.cudaEventRecordExternal if external and stream.capturing() else rt.cudaEventRecordDefault
        cuda_call(rt.cudaEventRecordWithFlags(self.handle, stream.handle, flags))
        return self

    def synchronize(self) -> None:
        cuda_call(cudart().cudaEventSynchronize(self.handle))

    def elapsed_ms(self, start: "Event") -> float:
        return float(cuda_call(cudart().cudaEventElapsedTime(start.handle, self.handle)))

    def close(self) -> None:
        if self.handle is not None:
            cuda_call(cudart().cudaEventDestroy(self.handle))
        self.handle = None


class PinnedBuffer(_Resource):
    """Page-locked host memory viewed as a numpy array (`.array`); the buffer owns it until `close()`."""

    def __init__(self, shape, dtype):
        self.dtype, self.shape = np.dtype(dtype), tuple(shape)
        self.nbytes = int(np.prod(self.shape)) * self.dtype.itemsize
        self.ptr = int(cuda_call(cudart().cudaMallocHost(max(self.nbytes, 1))))
        import ctypes

        raw = (ctypes.c_byte * max(self.nbytes, 1)).from_address(self.ptr)
        self.array = np.frombuffer(raw, dtype=self.dtype, count=int(np.prod(self.shape))).reshape(self.shape)

    def close(self) -> None:
        if self.ptr:
            self.array = None
            cuda_call(cudart().cudaFreeHost(self.ptr))
        self.ptr = 0


class DeviceBuffer(_Resource):
    def __init__(self, nbytes: int):
        self.nbytes = int(nbytes)
        self.ptr = int(cuda_call(cudart().cudaMalloc(max(self.nbytes, 1))))

    def copy_from_host(self, host: PinnedBuffer, stream: Stream, nbytes: int | None = None) -> None:
        rt = cudart()
        cuda_call(rt.cudaMemcpyAsync(self.ptr, host.ptr, nbytes or host.nbytes, rt.cudaMemcpyKind.cudaMemcpyHostToDevice,
                                     stream.handle))

    def copy_to_host(self, host: PinnedBuffer, stream: Stream, nbytes: int | None = None) -> None:
        rt = cudart()
        cuda_call(rt.cudaMemcpyAsync(host.ptr, self.ptr, nbytes or host.nbytes, rt.cudaMemcpyKind.cudaMemcpyDeviceToHost,
                                     stream.handle))

    def copy_from_address(self, address: int, stream: Stream, nbytes: int) -> None:
        """Device to device, from memory we do not own (a caller's device array)."""
        rt = cudart()
        cuda_call(rt.cudaMemcpyAsync(self.ptr, int(address), int(nbytes), rt.cudaMemcpyKind.cudaMemcpyDeviceToDevice,
                                     stream.handle))

    def copy_from_device(self, other: "DeviceBuffer", stream: Stream, nbytes: int | None = None) -> None:
        rt = cudart()
        cuda_call(rt.cudaMemcpyAsync(self.ptr, other.ptr, nbytes or other.nbytes,
                                     rt.cudaMemcpyKind.cudaMemcpyDeviceToDevice, stream.handle))

    def close(self) -> None:
        if self.ptr:
            cuda_call(cudart().cudaFree(self.ptr))
        self.ptr = 0


class Graph(_Resource):
    """Capture the work a callable enqueues on `stream` (and on the streams it forks to) into a CUDA graph; `launch()`
    replays it. A capture that fails leaves no stream capturing and no pending CUDA error behind."""

    def __init__(self, stream: Stream, enqueue, forked: tuple = ()):
        rt = cudart()
        if stream.ptr in (0, LEGACY_STREAM, PER_THREAD_STREAM):  # the default streams cannot be captured
            raise BackendUnavailable("CUDA graphs: a default stream (0, legacy or per-thread) cannot be captured; "
                                     "pass a created stream (torch.cuda.Stream(), cupy.cuda.Stream()).")
        self.stream, self.graph, self.exec = stream, None, None
        cuda_call(rt.cudaStreamBeginCapture(stream.handle, rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal))
        try:
            enqueue()
            self.graph = cuda_call(rt.cudaStreamEndCapture(stream.handle))
        except BaseException:
            self._abandon(rt, forked)
            raise
        try:
            self._instantiate()
        except BaseException:
            self.close()
            clear_error()
            raise

    def _abandon(self, rt, forked: tuple) -> None:
        """After a failed capture: end it on the origin stream (it ends on every joined stream with it; an unjoined
        fork invalidates the capture), end it on any forked stream still capturing, drop the partial graph, and
        clear the thread's error so that the next call does not report this one."""
        if self.stream.capturing():
            err, graph = rt.cudaStreamEndCapture(self.stream.handle)
            if int(err) == 0 and graph is not None:
                rt.cudaGraphDestroy(graph)
        for other in forked:
            if other.handle is not None and other.capturing():
                rt.cudaStreamEndCapture(other.handle)
        clear_error()

    def _instantiate(self) -> None:
        self.exec = cuda_call(cudart().cudaGraphInstantiate(self.graph, 0))

    def launch(self) -> None:
        cuda_call(cudart().cudaGraphLaunch(self.exec, self.stream.handle))

    def close(self) -> None:
        rt = cudart()
        if self.exec is not None:
            cuda_call(rt.cudaGraphExecDestroy(self.exec))
            self.exec = None
        if self.graph is not None:
            cuda_call(rt.cudaGraphDestroy(self.graph))
            self.graph = None
