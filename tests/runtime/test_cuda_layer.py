"""The cuda-python layer: what can be checked without a GPU here; tests/gpu/gpu_check.py covers the rest on one."""

import pytest

from fusionrt.runtime.errors import BackendUnavailable
from fusionrt.runtime.optional import is_available
from tests.hardware import gpu_count, no_cuda_driver


def test_device_count_is_what_the_driver_reports_and_zero_without_one(monkeypatch):
    from fusionrt.runtime import cuda

    if not is_available("cuda.bindings.runtime"):
        with pytest.raises(BackendUnavailable, match="cuda-bindings"):
            cuda.cudart()
        assert cuda.device_count() == 0
        return
    from cuda.bindings import runtime as rt

    err, count = rt.cudaGetDeviceCount()
    if err == rt.cudaError_t.cudaSuccess:  # a GPU machine: the driver's own count, at least one
        assert cuda.device_count() == count > 0
    else:  # no driver here: the error code becomes 0 devices, not a raise
        assert err == rt.cudaError_t.cudaErrorInsufficientDriver and cuda.device_count() == 0
    # an error code from the driver (here a made-up one) means no usable device, whatever count came with it
    monkeypatch.setattr(cuda, "cudart", lambda: type("R", (), {"cudaGetDeviceCount": staticmethod(lambda: (100, 3))}))
    assert cuda.device_count() == 0


@pytest.mark.skipif(gpu_count() == 0, reason="needs an NVIDIA GPU and cuda-bindings (none here)")
def test_gpu_roundtrip_across_two_streams_and_graph():
    import numpy as np

    from fusionrt.runtime import cuda

    n = 1 << 20
    with cuda.Stream() as s1, cuda.Stream() as s2, cuda.PinnedBuffer((n,), np.float32) as src, \
            cuda.PinnedBuffer((n,), np.float32) as dst, cuda.DeviceBuffer(4 * n) as d1, cuda.DeviceBuffer(4 * n) as d2, \
            cuda.Event() as uploaded:
        src.array[:] = np.random.default_rng(0).standard_normal(n, dtype=np.float32)
        dst.array[:] = np.nan
        d1.copy_from_host(src, s1)
        uploaded.record(s1)
        s2.wait(uploaded)
        d2.copy_from_device(d1, s2)
        d2.copy_to_host(dst, s2)
        s2.synchronize()
        assert np.array_equal(src.array, dst.array)
        dst.array[:] = np.nan
        with cuda.Graph(s1, lambda: (d1.copy_from_host(src, s1), d1.copy_to_host(dst, s1))) as graph:
            graph.launch()
            s1.synchronize()
        assert np.array_equal(src.array, dst.array)


def _unbuilt(cls, **fields):
    """An instance whose __init__ never ran (its own CUDA call would fail first here), holding null handles."""
    obj = object.__new__(cls)
    obj.__dict__.update(fields)
    return obj


@pytest.mark.skipif(not no_cuda_driver(), reason="needs cuda-bindings without a CUDA driver (the GPU test covers a GPU)")
def test_every_cuda_call_matches_the_installed_cuda_bindings():
    """Each wrapper's call reaches the driver with arguments cuda-bindings accepts: a wrong name, argument count or
    type would raise AttributeError or TypeError here, before the clean 'no driver' error."""
    import numpy as np

    from fusionrt.runtime import cuda

    rt = cuda.cudart()
    stream = _unbuilt(cuda.Stream, handle=rt.cudaStream_t(0), owned=True)
    event = _unbuilt(cuda.Event, handle=rt.cudaEvent_t())
    host = _unbuilt(cuda.PinnedBuffer, ptr=4096, nbytes=16, array=None)
    device = _unbuilt(cuda.DeviceBuffer, ptr=4096, nbytes=16)
    graph = _unbuilt(cuda.Graph, stream=stream, graph=rt.cudaGraph_t(), exec=rt.cudaGraphExec_t())
    created = _unbuilt(cuda.Stream, handle=rt.cudaStream_t(4096), owned=True)  # capture needs a created stream
    calls = {
        "Stream()": cuda.Stream,
        "Stream.synchronize": stream.synchronize,
        "Stream.wait": lambda: stream.wait(event),
        "Stream.close": stream.close,
        "Stream.capturing": stream.capturing,
        "Event()": cuda.Event,
        "Event(timing=False)": lambda: cuda.Event(timing=False),
        "Event.record": lambda: event.record(stream),
        "Event.record(external)": lambda: event.record(stream, external=True),
        "Event.synchronize": event.synchronize,
        "Event.elapsed_ms": lambda: event.elapsed_ms(event),
        "Event.close": event.close,
        "PinnedBuffer()": lambda: cuda.PinnedBuffer((4,), np.float32),
        "PinnedBuffer.close": host.close,
        "DeviceBuffer()": lambda: cuda.DeviceBuffer(16),
        "DeviceBuffer.copy_from_host": lambda: device.copy_from_host(host, stream),
        "DeviceBuffer.copy_to_host": lambda: device.copy_to_host(host, stream, 8),
        "DeviceBuffer.copy_from_device": lambda: device.copy_from_device(device, stream),
        "DeviceBuffer.close": device.close,
        "Graph() (begin and end capture)": lambda: cuda.Graph(created, lambda: None),
        "Graph instantiate": graph._instantiate,
        "Graph.launch": graph.launch,
        "Graph.close": graph.close,
        "Graph.close (captured, not instantiated)": _unbuilt(cuda.Graph, graph=rt.cudaGraph_t(), exec=None).close,
        "compute_capability": cuda.compute_capability,
    }
    for name, call in calls.items():
        with pytest.raises(BackendUnavailable, match="cudaErrorInsufficientDriver") as raised:
            call()
        assert "CUDA call failed" in str(raised.value), name
    cuda.clear_error()  # cudaGetLastError: it returns the error it clears, it never raises
    borrowed = cuda.Stream(1234)  # a caller's handle: wrapped without a call, never destroyed
    assert borrowed.ptr == 1234 and not borrowed.owned
    borrowed.close()


def _fake_capture_runtime(calls: list, capturing: set):
    from types import SimpleNamespace

    active, none = 1, 0
    return SimpleNamespace(
        cudaError_t=SimpleNamespace(cudaSuccess=0),
        cudaStreamCaptureMode=SimpleNamespace(cudaStreamCaptureModeThreadLocal=2),
        cudaStreamCaptureStatus=SimpleNamespace(cudaStreamCaptureStatusActive=active),
        cudaStreamBeginCapture=lambda stream, mode: (calls.append("begin") or capturing.add(stream) or (0,)),
        cudaStreamIsCapturing=lambda stream: (0, active if stream in capturing else none),
        cudaStreamEndCapture=lambda stream: (calls.append(f"end {stream}") or capturing.discard(stream) or
                                             (0, "partial graph")),
        cudaGraphDestroy=lambda graph: (calls.append(f"destroy {graph}") or (0,)),
        cudaGetLastError=lambda: (calls.append("clear error") or (0,)))


def test_a_failed_capture_ends_every_capture_frees_the_graph_and_clears_the_error(monkeypatch):
    """The stream (and a forked one left unjoined) must leave capture mode, or every later call on it fails; the
    partial graph must be freed; and the thread's error cleared, or the next CUDA call reports this one."""
    from fusionrt.runtime import cuda

    calls, capturing = [], set()
    monkeypatch.setattr(cuda, "cudart", lambda: _fake_capture_runtime(calls, capturing))
    stream = _unbuilt(cuda.Stream, handle=4096, owned=False)
    fork = _unbuilt(cuda.Stream, handle=8192, owned=True)

    def enqueue():
        capturing.add(8192)  # the work forked onto another stream, then TensorRT refused
        raise ValueError("TensorRT refused the capture")

    with pytest.raises(ValueError, match="TensorRT refused"):
        cuda.Graph(stream, enqueue, forked=(fork,))
    assert calls == ["begin", "end 4096", "destroy partial graph", "end 8192", "clear error"] and not capturing


@pytest.mark.parametrize("handle", [0, 1, 2])
def test_a_default_stream_refuses_capture(monkeypatch, handle):
    from fusionrt.runtime import cuda

    calls = []
    monkeypatch.setattr(cuda, "cudart", lambda: _fake_capture_runtime(calls, set()))
    with pytest.raises(BackendUnavailable, match="a default stream .* cannot be captured"):
        cuda.Graph(_unbuilt(cuda.Stream, handle=handle, owned=False), lambda: None)
    assert calls == []  # refused before any capture began


def test_an_external_record_is_asked_only_while_capturing(monkeypatch):
    """cudaEventRecordExternal is invalid outside a capture: a timing mark outside one is a plain record."""
    from types import SimpleNamespace

    from fusionrt.runtime import cuda

    flags, capturing = [], set()
    fake = _fake_capture_runtime([], capturing)
    fake.cudaEventRecordDefault, fake.cudaEventRecordExternal = 0, 1
    fake.cudaEventRecordWithFlags = lambda event, stream, flag: (flags.append(flag) or (0,))
    monkeypatch.setattr(cuda, "cudart", lambda: fake)
    stream, event = _unbuilt(cuda.Stream, handle=4096, owned=False), _unbuilt(cuda.Event, handle=SimpleNamespace())
    event.record(stream, external=True)
    capturing.add(4096)
    event.record(stream, external=True)
    event.record(stream)
    assert flags == [0, 1, 0]
