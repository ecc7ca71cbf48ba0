"""The cuda-python layer: what can be checked without a GPU here; benchmarks/gpu_check.py covers the rest on one."""

import pytest

from fusionrt.runtime.errors import BackendUnavailable
from fusionrt.runtime.optional import is_available


def test_device_count_is_zero_or_more_without_raising():
    from fusionrt.runtime import cuda

    if not is_available("cuda.bindings.runtime"):
        with pytest.raises(BackendUnavailable, match="cuda-bindings"):
            cuda.cudart()
        assert cuda.device_count() == 0
    else:
        assert cuda.device_count() >= 0


def _gpu_count():
    if not is_available("cuda.bindings.runtime"):
        return 0
    from fusionrt.runtime import cuda

    return cuda.device_count()


@pytest.mark.skipif(_gpu_count() == 0, reason="needs an NVIDIA GPU and cuda-bindings (none here)")
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
