"""What this machine has, for the tests' skips: a GPU, a CUDA driver, TensorRT-RTX. One place, so every skip
asks the same question the same way."""

import pytest

from fusionrt.runtime.optional import is_available

__all__ = ["gpu_count", "no_cuda_driver", "needs_rtx"]


def gpu_count() -> int:
    """Visible NVIDIA GPUs; 0 without cuda-bindings or a driver."""
    if not is_available("cuda.bindings.runtime"):
        return 0
    from fusionrt.runtime import cuda

    return cuda.device_count()


def no_cuda_driver() -> bool:
    """cuda-bindings installed, no CUDA driver: every call returns cudaErrorInsufficientDriver, but only after
    cuda-bindings has checked the call's arguments (their number and types)."""
    if not is_available("cuda.bindings.runtime"):
        return False
    from cuda.bindings import runtime as rt

    return rt.cudaGetDeviceCount()[0] == rt.cudaError_t.cudaErrorInsufficientDriver


needs_rtx = pytest.mark.skipif(not is_available("tensorrt_rtx"),
                               reason="tensorrt-rtx-cu13 is not installed (make install adds it)")
