"""Device arrays in and out: any object with `__cuda_array_interface__` (CuPy, torch CUDA tensors, Numba,
PyNvVideoCodec frames) as a pointer, shape and dtype, with no copy through the host; and device results handed back
the same way."""

from __future__ import annotations

import sys
from dataclasses import dataclass

import numpy as np

from fusionrt.runtime.errors import InputError

LEGACY_STREAM = 1  # cudaStreamLegacy (fusionrt.runtime.cuda, not imported here: this module needs no CUDA)

__all__ = ["DeviceArray", "as_device_array"]


@dataclass(frozen=True)
class DeviceArray:
    """C-contiguous memory on the GPU. `stream`: the CUDA stream its producer wrote it on, which work reading it waits
    for (a handle, or 1 / 2 for the legacy / per-thread default stream), None where no wait is needed. `owner` keeps
    the producer's object (and so the memory) alive."""

    ptr: int
    shape: tuple
    dtype: np.dtype
    stream: int | None = None
    owner: object = None

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * np.dtype(self.dtype).itemsize

    @property
    def __cuda_array_interface__(self) -> dict:
        return {"shape": tuple(self.shape), "typestr": np.dtype(self.dtype).str, "data": (int(self.ptr), False),
                "version": 3, "strides": None, "stream": self.stream}

    def __len__(self) -> int:
        return int(self.shape[0])


def as_device_array(obj) -> DeviceArray | None:
    """`obj` as a DeviceArray when it is one on the GPU (has `__cuda_array_interface__`); None for host arrays.
    InputError for a device array fusionrt cannot read as is (strided, or DLPack only)."""
    if isinstance(obj, DeviceArray):
        return obj
    interface = getattr(obj, "__cuda_array_interface__", None)
    if interface is None:
        if hasattr(obj, "__dlpack__") and not isinstance(obj, np.ndarray):
            raise InputError(f"a {type(obj).__name__} given by DLPack only: expected a numpy array, or a device array "
                             "with __cuda_array_interface__ (CuPy, torch). Wrap it: cupy.from_dlpack(x).")
        return None
    shape, dtype = tuple(int(s) for s in interface["shape"]), np.dtype(interface["typestr"])
    strides = interface.get("strides")
    if strides is not None and tuple(strides) != tuple(np.empty(shape, dtype).strides):
        raise InputError(f"a device array of shape {list(shape)} with strides {list(strides)}: expected a C-contiguous "
                         "one. Call .contiguous() (torch) or cupy.ascontiguousarray first.")
    return DeviceArray(int(interface["data"][0]), shape, dtype, _producer_stream(obj, interface), obj)


def _producer_stream(obj, interface: dict) -> int | None:
    """The stream to wait on before reading `obj`, by the CUDA Array Interface (v3): its `stream` entry, 1 and 2
    meaning the legacy and per-thread default streams, None no wait, 0 forbidden. An export without the entry (v2:
    torch's) says nothing: torch's own current stream then, else the legacy default stream, which orders work on
    every blocking stream."""
    if "stream" in interface:
        stream = interface["stream"]
        if stream == 0:
            raise InputError(f"a {type(obj).__name__} whose __cuda_array_interface__ names stream 0: the interface "
                             "forbids it (ambiguous); expected None, 1, 2 or a stream handle.")
        return None if stream is None else int(stream)
    torch = sys.modules.get("torch") if type(obj).__module__.startswith("torch") else None
    if torch is not None:
        handle = int(torch.cuda.current_stream(obj.device).cuda_stream)
        return handle or LEGACY_STREAM  # torch's default stream is the legacy one
    return LEGACY_STREAM
