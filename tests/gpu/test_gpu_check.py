"""tests/gpu/gpu_check.py's check of the TensorRT runner (copy engines standing in for TensorRT): run here on an
emulated GPU, so the script's own logic is tested before a GPU session spends its minutes on it; on a GPU, for real."""

import ctypes
from types import SimpleNamespace

import pytest

from fusionrt.runtime.optional import is_available
from tests.gpu import copy_engine, gpu_check
from tests.hardware import gpu_count, no_cuda_driver
from tests.runtime.trt_emulation import Gpu, emulated_cuda


def _cudart(gpu: Gpu):
    """The one runtime call a copy engine makes, done on host memory; its arguments are first checked against the
    installed cuda-bindings where that has no driver to reach."""

    def memcpy_2d_async(dst, dpitch, src, spitch, width, height, kind, stream):
        if no_cuda_driver():
            from cuda.bindings import runtime as rt

            err, = rt.cudaMemcpy2DAsync(dst, dpitch, src, spitch, width, height, kind, stream)
            assert err == rt.cudaError_t.cudaErrorInsufficientDriver  # the arguments passed cuda-bindings' checks
        gpu.submit(lambda: [ctypes.memmove(dst + r * dpitch, src + r * spitch, width) for r in range(height)], stream)
        return (0,)

    kinds = SimpleNamespace(cudaMemcpyDeviceToDevice=3)
    if is_available("cuda.bindings.runtime"):
        from cuda.bindings import runtime as rt

        kinds = rt.cudaMemcpyKind
    return SimpleNamespace(cudaMemcpy2DAsync=memcpy_2d_async, cudaMemcpyKind=kinds, cudaStream_t=int)


def test_fused_path_check_passes_on_an_emulated_gpu_and_catches_a_wrong_hand_off(monkeypatch):
    from fusionrt.runtime.backends import tensorrt as trt_backend

    gpu = Gpu()
    emulated = emulated_cuda(gpu)
    for name in ("PinnedBuffer", "DeviceBuffer", "Event", "Graph", "Stream", "set_device", "clear_error"):
        monkeypatch.setattr(trt_backend.cuda, name, getattr(emulated, name))
    emulated.set_device(0)
    cu = SimpleNamespace(Stream=emulated.Stream, cudart=lambda: _cudart(gpu), cuda_call=lambda result: None)
    report = gpu_check.check_fused_path(cu, head_stream=1234, calls=18)
    assert report["eager"]["results_equal"] and report["eager"]["timings_read"] and report["eager"]["graphs"] == []
    assert report["cuda_graphs"]["results_equal"] and report["cuda_graphs"]["timings_read"]
    assert report["cuda_graphs"]["graphs"] == ["1 8", "32 8", "8 8", "text given 1", "text given 32", "text given 8"]
    assert not gpu.open  # every buffer, event and graph released

    # The check must be able to fail: a head that keeps reading its own, never written, input buffers is caught.
    monkeypatch.setattr(copy_engine.CopyContext, "set_tensor_address",
                        lambda self, name, address: self.addresses.setdefault(name, int(address)) or True)
    report = gpu_check.check_fused_path(cu, calls=3)
    assert not report["eager"]["results_equal"] and not report["cuda_graphs"]["results_equal"]


@pytest.mark.skipif(gpu_count() == 0, reason="needs an NVIDIA GPU and cuda-bindings (none here)")
def test_fused_path_check_on_a_gpu():
    from fusionrt.runtime import cuda

    report = gpu_check.check_fused_path(cuda)
    assert all(r["results_equal"] and r["timings_read"] for r in report.values()), report



def test_without_a_gpu_the_script_says_so(monkeypatch, capsys):
    monkeypatch.setattr("sys.argv", ["gpu_check.py"])
    if gpu_count() > 0:
        pytest.skip("checks the no-GPU message")
    assert gpu_check.main() == 2
    assert "needs an NVIDIA GPU" in capsys.readouterr().err


def test_report_prints_what_ran_when_a_section_failed(capsys):
    fused = {"eager": {"results_equal": True, "timings_read": True, "call_us_median": 41.0, "graphs": []}}
    report = {"torch": "2.x", "seconds": 1.0, "cuda_layer": {"error": "Traceback ..."},
              "borrowed_streams": {"error": "Traceback ..."}, "fused_path": fused, "branches": {"error": "Traceback ..."}}
    gpu_check.print_report(report, SimpleNamespace(seq=128, iters=5))
    out = capsys.readouterr().out
    assert "eager: results equal=True" in out and "41.0 us/call" in out and "total 1.0 s" in out


def test_the_contract_checks_pass_on_an_emulated_gpu(monkeypatch):
    """The contract section's own logic (graph replays over changing shapes, a capture that fails, sync=False then
    close, two clones on two threads), run here so a GPU session does not spend its minutes on a broken script."""
    from fusionrt.runtime.backends import tensorrt as trt_backend
    from tests.gpu import gpu_contracts

    gpu = Gpu()
    emulated = emulated_cuda(gpu)
    for name in ("PinnedBuffer", "DeviceBuffer", "Event", "Graph", "Stream", "set_device", "clear_error"):
        monkeypatch.setattr(trt_backend.cuda, name, getattr(emulated, name))
    emulated.set_device(0)
    runtime = _cudart(gpu)
    runtime.cudaGetLastError = lambda: (0,)
    cu = SimpleNamespace(Stream=emulated.Stream, cudart=lambda: runtime, cuda_call=lambda result: None)
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        assert gpu_contracts.graph_replays(cu, folder) is True
        assert gpu_contracts.failed_capture(cu, folder) is True
    assert gpu_contracts.clones_and_close(cu) is True
    assert not gpu.open
