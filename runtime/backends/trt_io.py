"""A TensorRT execution context's inputs and outputs: a device buffer and a pinned host buffer per tensor, sized once
for the profile's largest shapes (no allocation per call), and the steps a call enqueues on the context's stream
(copies in and out, shapes, bindings) that `TensorRTBackend.infer` and the fused path (`TensorRTFusion`) both use."""

from __future__ import annotations

from typing import Mapping

import numpy as np

from fusionrt.runtime import cuda
from fusionrt.runtime.device_array import DeviceArray
from fusionrt.runtime.errors import InputError

__all__ = ["EngineIO"]


class _Tensor:
    """One I/O tensor: a device buffer and a pinned host buffer, both sized for the profile's largest shape."""

    def __init__(self, name: str, dtype, max_shape: tuple, min_shape: tuple | None = None):
        self.name, self.dtype, self.max_shape = name, np.dtype(dtype), tuple(max_shape)
        self.min_shape = tuple(min_shape) if min_shape is not None else tuple(1 for _ in max_shape)
        self.host = cuda.PinnedBuffer(self.max_shape, self.dtype)
        try:
            self.device = cuda.DeviceBuffer(self.host.nbytes)
        except BaseException:  # out of device memory: the pinned buffer is not left behind
            self.host.close()
            raise
        self.shape = self.max_shape

    def view(self, shape) -> np.ndarray:
        return self.host.array.reshape(-1)[: int(np.prod(shape))].reshape(shape)

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * self.dtype.itemsize

    def close(self) -> None:
        try:
            self.device.close()
        finally:
            self.host.close()


class EngineIO:
    """The buffers of one execution context (of `engine`, at optimization `profile`), on `stream`."""

    def __init__(self, trt, engine, context, stream, path: str, profile: int = 0):
        self.engine, self.context, self.stream, self.path, self.profile = engine, context, stream, path, profile
        self._tensors: dict = {}
        try:
            self._allocate(trt)
        except BaseException:
            self.close()
            raise

    def _allocate(self, trt) -> None:
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.input_names = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.output_names = [n for n in names if n not in self.input_names]
        lowest = {}
        for name in self.input_names:  # the largest shapes of its profile, to size the buffers once
            low, _, high = self.engine.get_tensor_profile_shape(name, self.profile)
            lowest[name] = tuple(low)
            self._set_shape(name, tuple(high))
        self._check_shapes()
        for name in names:
            shape = tuple(self.context.get_tensor_shape(name))
            self._tensors[name] = _Tensor(name, trt.nptype(self.engine.get_tensor_dtype(name)), shape, lowest.get(name))
            self._address(name, self._tensors[name].device.ptr)

    def _address(self, name: str, address: int) -> None:
        """Bind `name` to `address`; TensorRT refuses (False) an address it cannot use, one not 256-byte aligned among
        them (cudaMalloc's are; an offset into another buffer may not be)."""
        if address % 256 or not self.context.set_tensor_address(name, int(address)):
            raise InputError(f"tensor '{name}' of {self.path}: TensorRT refused address {address:#x}: expected one "
                             "aligned to 256 bytes, of device memory that stays allocated.")

    def _check_shapes(self) -> None:
        """Every shape resolved: TensorRT names the tensors it cannot infer (IExecutionContext.infer_shapes)."""
        infer = getattr(self.context, "infer_shapes", None)
        missing = list(infer()) if infer is not None else []
        if missing:
            raise InputError(f"{self.path}: TensorRT cannot infer the shapes of {missing} from the input shapes set; "
                             f"expected every input of the engine ({self.input_names}) with a shape.")

    def _set_shape(self, name: str, shape: tuple) -> None:
        if not self.context.set_input_shape(name, tuple(shape)):  # False: TensorRT refused it (it logs why)
            raise InputError(f"input '{name}': TensorRT refused shape {list(shape)} for {self.path}; expected a "
                             "shape inside the engine's optimization profile (see its log).")

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
        self._address(name, self.device_address(name) if address is None else address)

    def write_input(self, name: str, array: np.ndarray) -> None:
        """Copy `array` into input `name`'s pinned buffer (its shape must have been set); nothing enqueued."""
        self._tensors[name].view(array.shape)[...] = array

    # -- the steps, enqueued on `self.stream` (the fused path calls them directly) --------------------
    def set_shapes(self, shapes: Mapping[str, tuple]) -> None:
        """Set the input shapes (host side, nothing enqueued); output shapes follow."""
        for name, shape in shapes.items():
            tensor = self._tensors.get(name) if name in self.input_names else None
            if tensor is None:
                raise InputError(f"'{name}' is not an input of {self.path}: expected some of {self.input_names}.")
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
        self._check_shapes()
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

    def enqueue_copy_out(self) -> None:
        for name in self.output_names:
            t = self._tensors[name]
            t.device.copy_to_host(t.host, self.stream, t.nbytes)

    def outputs(self) -> dict:
        """Copies of the outputs' host buffers at their current shapes (after the stream's work is done)."""
        return {name: self._tensors[name].view(self._tensors[name].shape).copy() for name in self.output_names}

    def close(self) -> None:
        """Free every buffer, even where one fails (the first error raised)."""
        errors = []
        for tensor in self._tensors.values():
            try:
                tensor.close()
            except Exception as exc:  # noqa: BLE001 - free the rest, then raise the first
                errors.append(exc)
        self._tensors = {}
        if errors:
            raise errors[0]
